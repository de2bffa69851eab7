"""Anatomical order facts (``data/anatomy/orientation.yaml``), resolved against the glossary.

A fact lists structures in the order they appear along one image direction on some display axes (the
spine below the liver on axial CT; the lungs above the liver on coronal views).  Each listed term stands for
itself and every glossary term below it in the ``parent`` chain, so a fact about ``vertebrae`` covers
``vertebrae_T12`` and one about ``lung`` covers ``lung_upper_lobe_left``; the nearest listed ancestor wins.
The rules validator uses these facts for its orientation guard (:mod:`pipeline.validate.orientation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from pipeline.language.glossary import DATA_DIR, Glossary, load_glossary
from schemas.anatomy import OrderFact, OrientationSpec

ORIENTATION_FILE = DATA_DIR / "anatomy" / "orientation.yaml"

__all__ = ["ORIENTATION_FILE", "OrderRule", "load_orientation_facts"]


@dataclass(frozen=True)
class OrderRule:
    """One order fact with every glossary term it covers mapped to its tier (0 = first)."""

    name: str
    code: str
    description: str
    axes: tuple[str, ...]
    modalities: tuple[str, ...]
    direction: str  # "down" (compare centre y) or "right" (compare centre x)
    first: str
    last: str
    tier_of: dict[str, int]
    listed: tuple[tuple[str, ...], ...]  # the tiers as written in the file

    def applies(self, axis: str, modality: str) -> bool:
        return axis in self.axes and modality.upper() in self.modalities

    def tier(self, term: str) -> int | None:
        return self.tier_of.get(term)


def _expand(fact: OrderFact, glossary: Glossary, where: str) -> dict[str, int]:
    listed: dict[str, int] = {}
    unknown: list[str] = []
    for i, tier in enumerate(fact.tiers):
        for t in tier:
            if t not in glossary:
                unknown.append(t)
            listed[t] = i
    if unknown:
        raise ValueError(f"{where}: terms not in the glossary: {sorted(unknown)} (add them to data/glossary/ first)")
    out: dict[str, int] = {}
    for tid in glossary:
        for cand in (tid, *glossary.ancestors(tid)):
            if cand in listed:
                out[tid] = listed[cand]
                break
    return out


def _rules(spec: OrientationSpec, glossary: Glossary, origin: str) -> tuple[OrderRule, ...]:
    out = []
    for name, fact in spec.root.items():
        out.append(
            OrderRule(
                name=name,
                code=fact.code or name,
                description=fact.description,
                axes=tuple(fact.axes),
                modalities=tuple(m.upper() for m in fact.modalities),
                direction=fact.direction,
                first=fact.first,
                last=fact.last,
                tier_of=_expand(fact, glossary, f"{origin}: {name}"),
                listed=tuple(tuple(t) for t in fact.tiers),
            )
        )
    return tuple(out)


@lru_cache(maxsize=4)
def _load_cached(path: str) -> tuple[OrderRule, ...]:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise FileNotFoundError(f"orientation facts file {p} cannot be read ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{p.name}: not valid YAML ({exc})") from exc
    try:
        spec = OrientationSpec.model_validate(data)
    except ValueError as exc:
        raise ValueError(f"orientation facts file {p.name}: {exc}") from exc
    return _rules(spec, load_glossary(), p.name)


def load_orientation_facts(path: str | Path | None = None) -> tuple[OrderRule, ...]:
    """The order facts (cached per file; the shipped file by default), resolved against the glossary."""
    return _load_cached(str(Path(path) if path else ORIENTATION_FILE))
