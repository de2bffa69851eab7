"""The declarative source card: everything about a dataset that is not code.

A card is a YAML file (``sources/cards/*.yaml`` for the shipped ones, any path for a user's own).
It names the adapter (a format family) that reads the files, and gives licence, modality, body region,
intensity preset, the label id -> canonical term map, the terms the dataset needs beyond the shipped
glossary (``terms``, validated like a glossary file), the box policy, the split rules and the adapter's
layout options (paths / globs).  See docs/adding-a-source.md.

This module is the card's *shape* only.  What needs the glossary or the adapters (the label table, that
every label maps to a known term, the adapter's typed ``layout``) is checked by ``sources.base.load_card``
(``sources/terms.py``, ``sources/layouts.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.language import TERM_ID_RE
from schemas.yamlio import load_yaml, validation_lines

from schemas.language import TermSpec


class BoxPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["component", "label"] = "component"
    min_pixels: int = Field(0, ge=0, description="drop connected components smaller than this")
    min_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="... or smaller than this image fraction")
    connectivity: Literal[1, 2] = 1  # 1 = 4-connected, 2 = 8-connected
    min_box_px: int = Field(3, ge=1, description="regions whose box is narrower or shorter than this are not emitted")


class IntensitySpec(BaseModel):
    """How a 3-D source's values become display grey levels (pipeline/ingest/intensity.py).

    CT: a named ``preset`` window in HU.  Others: ``percentiles`` of the foreground, or a fixed
    ``window`` in the image's own values (PET: SUV, e.g. ``[0, 10]``).  ``invert`` shows high values
    dark (PET readers' inverted grey).  ``suv_conversion`` says how a PET series whose values are not
    SUV becomes SUV (pipeline/ingest/readers/pet.py); ``none`` refuses such a series.
    """

    model_config = ConfigDict(extra="forbid")

    preset: str | None = None  # CT window name: abdomen, lung, bone, brain, soft_tissue, liver, mediastinum
    percentiles: tuple[float, float] = (0.5, 99.5)  # MR/PET/US window on foreground
    window: tuple[float, float] | None = Field(
        None, description="fixed [low, high] in the image's values (HU for CT, SUV for PET) instead of percentiles")
    invert: bool = Field(False, description="high values dark (inverted grey, as PET readers show SUV)")
    suv_conversion: Literal["none", "bqml_to_bw"] = Field(
        "none", description="PET series not in SUV: none = the case fails; bqml_to_bw = body-weight SUV from Bq/ml")

    @field_validator("percentiles")
    @classmethod
    def _percentiles_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] < v[1] <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {list(v)}")
        return v

    @field_validator("window")
    @classmethod
    def _window_ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"window must be [low, high] with low < high, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _one_window(self) -> IntensitySpec:
        if self.preset is not None and self.window is not None:
            raise ValueError("give either a CT window preset or a fixed window, not both")
        return self


class DisplaySpec(BaseModel):
    """Display images of a 3-D source beyond the house conventions (pipeline/ingest/convert.py)."""

    model_config = ConfigDict(extra="forbid")

    upscale_to_px: int | None = Field(
        None, ge=32, le=2048,
        description="small volumes (e.g. a 30x27-voxel PET crop): enlarge each display image by the largest integer "
        "factor that keeps its longer side <= this (image bilinear, labels nearest: boxes scale exactly)")


class SplitSpec(BaseModel):
    """How a dataset's official split is read.  ``none``: no official split (patient-hash split)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["none", "path_regex", "map"] = "none"
    # path_regex: {"train": "regex", "test": "regex"} tested against the case's primary path
    patterns: dict[str, str] = Field(default_factory=dict)
    # map: case_id -> split
    cases: dict[str, str] = Field(default_factory=dict)


class ReportSpec(BaseModel):
    """A report-grounded source: the language its reports are written in and, optionally, the accepted
    translations into the other language (docs/adding-a-source.md, "Report sentences")."""

    model_config = ConfigDict(extra="forbid")

    language: Literal["en", "zh"] = "en"
    # the accepted-translations file `medreg translate accept` writes (relative to the card file, or absolute);
    # without it the release has report rows in `language` only
    translations: str | None = None

    def translations_path(self, card_path: str | None) -> Path | None:
        if not self.translations:
            return None
        p = Path(self.translations).expanduser()
        if p.is_absolute() or not card_path:
            return p
        return Path(card_path).parent / p


class SourceCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    title: str
    adapter: str  # registered adapter id (medreg sources lists them)
    licence: str
    licence_note: str = ""
    citation: str = ""
    homepage: str = ""
    modality: str  # CT, MR, XR, US, endoscopy, fundus, dermoscopy, ...
    body_region: str | None = None
    root: str = "."  # data folder: relative to the samples root (or absolute / ~)
    intensity: IntensitySpec = Field(default_factory=IntensitySpec)
    display: DisplaySpec = Field(default_factory=DisplaySpec)
    label_map: str | None = None  # a named shipped label map (e.g. totalseg_total)
    labels: dict[str, str] = Field(default_factory=dict)  # dataset label (id or name) -> term
    # terms this dataset needs that the shipped glossary lacks: term id -> glossary entry (schemas.language)
    terms: dict[str, TermSpec] = Field(default_factory=dict)
    ignore_labels: list[str] = Field(default_factory=list)  # dataset labels deliberately not emitted
    resolve_labels_with_glossary: bool = False  # unknown label names resolved through glossary aliases
    # lesion/finding terms this source annotates exhaustively (every instance in every image): only these
    # are asked for as absent targets ("no cyst" is otherwise a claim the data does not make).  true: all
    # of the source's findings; a list: these terms (each one of the card's label terms)
    exhaustive_findings: bool | list[str] = False
    box_policy: BoxPolicy = Field(default_factory=BoxPolicy)
    split: SplitSpec = Field(default_factory=SplitSpec)
    report: ReportSpec | None = None  # report-grounded sources: report language, accepted translations
    layout: dict[str, Any] = Field(default_factory=dict)  # adapter options
    card_path: str | None = Field(default=None, exclude=True)

    @field_validator("labels", mode="before")
    @classmethod
    def _keys_to_str(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): str(t) for k, t in v.items()}
        return v

    @field_validator("exhaustive_findings")
    @classmethod
    def _finding_ids(cls, v: bool | list[str]) -> bool | list[str]:
        if isinstance(v, list):
            bad = [t for t in v if not TERM_ID_RE.match(t)]
            if bad or len(set(v)) < len(v):
                raise ValueError(f"exhaustive_findings: {bad or 'duplicates'}: list glossary term ids once each")
        return v

    @model_validator(mode="after")
    def _findings_are_labels(self) -> SourceCard:
        """A listed finding must be one of the card's own label terms.  Checked here against ``labels``; a
        card with a named ``label_map`` needs the glossary for that (tests/test_glossary.py checks the shipped
        cards), and a listed term the card never emits is simply never asked for."""
        if isinstance(self.exhaustive_findings, list) and not self.label_map:
            missing = sorted(set(self.exhaustive_findings) - set(self.labels.values()))
            if missing:
                raise ValueError(f"exhaustive_findings: {missing} are not terms of this card's labels")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> SourceCard:
        path = Path(path)
        data = load_yaml(path, what="source card")
        if not isinstance(data, dict):
            raise ValueError(f"source card {path.name}: must be a YAML mapping with name, adapter, licence, ...")
        try:
            card = cls.model_validate(data)
        except ValidationError as exc:  # keys and rules only: the file may not be a card at all (no values)
            raise ValueError(f"source card {path.name} is not a valid card:\n  "
                             + "\n  ".join(validation_lines(exc))) from None
        card.card_path = str(path)
        return card

    def resolve_root(self, samples_root: Path | None) -> Path:
        p = Path(self.root).expanduser()
        if p.is_absolute():
            return p
        if samples_root is not None:
            return samples_root / p
        if self.card_path:
            return Path(self.card_path).parent / p
        return p
