"""Body region of a slice from where the bulk of its labelled mass lies (card ``body_region: auto``).

Each structure's area (foreground pixels of its regions on the slice) is shared equally among its glossary
body regions; the region with the largest total wins, ties in name order.  Regions listed as ``secondary``
in ``data/anatomy/body_regions.yaml`` (spine, limb, whole body) count only when no other region has mass.
A vote of structure names would call an upper-abdominal slice "thorax" because of its many small rib
masks; by mass the liver and the stomach decide.  Pure functions: the glossary and the rules are arguments
(the shipped ones by default).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import yaml

from pipeline.language.glossary import DATA_DIR, Glossary, load_glossary
from schemas.anatomy import BodyRegionRules

BODY_REGION_FILE = DATA_DIR / "anatomy" / "body_regions.yaml"

__all__ = ["BODY_REGION_FILE", "body_region_by_mass", "load_body_region_rules", "mass_by_region"]


@lru_cache(maxsize=4)
def _load_cached(path: str) -> BodyRegionRules:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"body region rules {p}: cannot be read ({exc})") from exc
    try:
        return BodyRegionRules.model_validate(data)
    except ValueError as exc:
        raise ValueError(f"body region rules {p.name}: {exc}") from exc


def load_body_region_rules(path: str | Path | None = None) -> BodyRegionRules:
    """The rules (cached per file; the shipped file by default)."""
    return _load_cached(str(Path(path) if path else BODY_REGION_FILE))


def mass_by_region(regions: Iterable[tuple[str, float]], glossary: Glossary | None = None) -> dict[str, float]:
    """Labelled mass (pixels) per glossary body region from ``(term, area)`` pairs; unknown terms add nothing."""
    gl = glossary if glossary is not None else load_glossary()
    mass: dict[str, float] = defaultdict(float)
    for term, area in regions:
        if term not in gl or area <= 0:
            continue
        body = gl.term(term).body_regions
        for r in body:
            mass[r] += float(area) / len(body)
    return dict(mass)


def body_region_by_mass(
    regions: Iterable[tuple[str, float]],
    glossary: Glossary | None = None,
    rules: BodyRegionRules | None = None,
) -> str | None:
    """The body region holding most of the labelled mass of ``(term, area)`` pairs, or ``None`` (no known term)."""
    secondary = set((rules or load_body_region_rules()).secondary)
    mass = mass_by_region(regions, glossary)
    main = {r: m for r, m in mass.items() if r not in secondary}
    pick = main or mass
    if not pick:
        return None
    return min(pick, key=lambda r: (-pick[r], r))
