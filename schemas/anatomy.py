"""Contracts of the anatomy facts in ``pipeline/language/data/anatomy/``.

:class:`OrientationSpec` -- ``orientation.yaml``, the anatomical order facts of the orientation guard.
:class:`BodyRegionRules` -- ``body_regions.yaml``, how a slice's body region follows from its labelled mass.

Orientation: one entry per fact: on display images of ``axes`` and ``modalities`` the structures of ``tiers`` appear in
that order along ``direction`` (``down``: the first tier at the image top; ``right``: at the image left).
``first`` / ``last`` are the anatomical words for the two ends (``anterior`` / ``posterior``), used in
the reason text.  Term ids are checked against the glossary when the file is loaded
(:func:`pipeline.language.anatomy.load_orientation_facts`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from schemas.language import BodyRegion

_CODE_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class OrderFact(BaseModel):
    """Structures in a fixed order along one image direction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    code: str | None = Field(None, description="finding code; default: the entry's name")
    axes: list[Literal["axial", "coronal", "sagittal"]] = Field(min_length=1)
    modalities: list[str] = Field(min_length=1)
    direction: Literal["down", "right"]
    first: str
    last: str
    tiers: list[list[str]] = Field(min_length=2)

    @model_validator(mode="after")
    def _tiers(self) -> OrderFact:
        seen: dict[str, int] = {}
        for i, tier in enumerate(self.tiers):
            if not tier:
                raise ValueError(f"tier {i} is empty")
            for t in tier:
                if t in seen:
                    raise ValueError(f"term {t!r} is in tier {seen[t]} and tier {i}")
                seen[t] = i
        if self.code is not None and not _CODE_RE.match(self.code):
            raise ValueError(f"code {self.code!r} must be snake_case")
        return self


class OrientationSpec(RootModel[dict[str, OrderFact]]):
    """The whole file: ``name: OrderFact``; the name is the finding code unless ``code`` is given."""

    @model_validator(mode="after")
    def _names(self) -> OrientationSpec:
        for name in self.root:
            if not _CODE_RE.match(name):
                raise ValueError(f"entry name {name!r} must be snake_case")
        return self


class BodyRegionRules(BaseModel):
    """``data/anatomy/body_regions.yaml``: how a slice's body region follows from its labelled mass."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secondary: list[BodyRegion] = Field(
        default_factory=list,
        description="regions spanning the body (spine, limb, whole body): count only when no other region has mass",
    )
