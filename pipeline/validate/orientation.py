"""Orientation guard: anterior/posterior and superior/inferior order of known structures on one image.

The anatomy comes from data (:mod:`pipeline.language.anatomy`, ``data/anatomy/orientation.yaml``), never
from lists in code.  For every applicable fact, every pair of present structures from two different tiers
is compared along the fact's direction by the structures' centres (the area-weighted mean of their box
centres).  A pair is *inverted* when the later-tier structure's centre lies before the earlier one's by more
than ``margin`` x the image size.  A pair is not compared when both boxes touch the same image border along
that direction, or one spans the whole image (the field of view cut them: their centres say nothing).

Verdict per fact code: ``fail`` when at least half of the compared pairs are inverted (the image is shown
upside down or mirrored front-to-back), ``flag`` when some but fewer are (one structure is off), and a
``pass`` note ``order_checked`` naming what was compared otherwise.  The reason names the structures
compared, their centres and the inverted pairs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.language.anatomy import OrderRule
from pipeline.validate.base import RegionFinding

_MAX_LISTED = 4  # inverted pairs spelt out in a reason


@dataclass(frozen=True)
class Placed:
    """One structure on the image: its centre and box extent along both image axes (pixels)."""

    term: str
    cx: float
    cy: float
    x0: int
    y0: int
    x1: int
    y1: int


def place_terms(regions: Iterable[dict[str, Any]]) -> dict[str, Placed]:
    """Per term: area-weighted mean of its box centres and the union of its boxes (``box_px`` inclusive).

    Regions repeated across rows (the same box in several rows of one slice) count once.
    """
    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    ext: dict[str, list[int]] = {}
    seen: set[tuple[str, tuple[int, ...]]] = set()
    for reg in regions:
        bp = reg.get("box_px")
        if not bp or len(bp) != 4:
            continue
        term = str(reg.get("term", ""))
        x0, y0, x1, y1 = (int(v) for v in bp)
        if (term, (x0, y0, x1, y1)) in seen or x1 < x0 or y1 < y0:
            continue
        seen.add((term, (x0, y0, x1, y1)))
        w = float(max(int(reg.get("area") or 0), 1))
        a = acc[term]
        a[0] += w * (x0 + x1 + 1) / 2.0
        a[1] += w * (y0 + y1 + 1) / 2.0
        a[2] += w
        e = ext.setdefault(term, [x0, y0, x1, y1])
        ext[term] = [min(e[0], x0), min(e[1], y0), max(e[2], x1), max(e[3], y1)]
    return {t: Placed(t, a[0] / a[2], a[1] / a[2], *ext[t]) for t, a in acc.items()}


def _cut(p: Placed, q: Placed, down: bool, size: int) -> bool:
    """True when the field of view decides the centres of ``p`` and ``q`` along the direction."""
    lo_p, hi_p = (p.y0, p.y1) if down else (p.x0, p.x1)
    lo_q, hi_q = (q.y0, q.y1) if down else (q.x0, q.x1)
    last = size - 1
    if (lo_p == 0 and hi_p == last) or (lo_q == 0 and hi_q == last):
        return True
    return (lo_p == 0 and lo_q == 0) or (hi_p == last and hi_q == last)


@dataclass
class _Compared:
    pairs: int = 0
    inverted: list[tuple[Placed, Placed]] = field(default_factory=list)
    tiers: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))


def _compare(rule: OrderRule, placed: dict[str, Placed], width: int, height: int, margin: float) -> _Compared:
    down = rule.direction == "down"
    size = height if down else width
    present = [(tier, p) for t, p in sorted(placed.items()) if (tier := rule.tier(t)) is not None]
    out = _Compared()
    for ta, a in present:
        for tb, b in present:
            if ta >= tb or _cut(a, b, down, size):
                continue
            out.pairs += 1
            out.tiers[ta].add(a.term)
            out.tiers[tb].add(b.term)
            ca, cb = (a.cy, b.cy) if down else (a.cx, b.cx)
            if cb - ca < -margin * size:
                out.inverted.append((a, b))
    return out


def _pairs(n: int) -> str:
    return f"{n} pair" if n == 1 else f"{n} pairs"


def _where(p: Placed, down: bool) -> str:
    return f"{p.term} ({'y' if down else 'x'}={p.cy if down else p.cx:.0f})"


def _describe(rule: OrderRule, c: _Compared, axis: str, modality: str) -> str:
    down = rule.direction == "down"
    before = "above" if down else "left of"
    compared = " | ".join(", ".join(sorted(c.tiers[i])) for i in sorted(c.tiers))
    if not c.inverted:
        return f"{rule.name} on {axis} {modality}: {_pairs(c.pairs)} in order ({compared})"
    shown = "; ".join(f"{_where(b, down)} lies {before} {_where(a, down)}" for a, b in c.inverted[:_MAX_LISTED])
    more = f"; +{len(c.inverted) - _MAX_LISTED} more" if len(c.inverted) > _MAX_LISTED else ""
    return (
        f"{len(c.inverted)} of {_pairs(c.pairs)} inverted on {axis} {modality}, {rule.first} must lie "
        f"image-{before} {rule.last} ({rule.name}): {shown}{more}; compared {compared}"
    )


def order_findings(
    regions: Iterable[dict[str, Any]],
    *,
    rules: Sequence[OrderRule],
    axis: str,
    modality: str,
    width: int,
    height: int,
    margin: float = 0.02,
    fail_fraction: float = 0.5,
) -> list[RegionFinding]:
    """Findings of the order facts that apply to an image of ``axis`` / ``modality`` with ``regions``."""
    applicable = [r for r in rules if r.applies(axis, modality)]
    if not applicable or width <= 0 or height <= 0:
        return []
    placed = place_terms(regions)
    out: list[RegionFinding] = []
    for rule in applicable:
        c = _compare(rule, placed, width, height, margin)
        if not c.pairs:
            continue
        n_inv = len(c.inverted)
        if not n_inv:
            out.append(RegionFinding("pass", "order_checked", _describe(rule, c, axis, modality)))
            continue
        verdict = "fail" if n_inv >= fail_fraction * c.pairs else "flag"
        out.append(RegionFinding(verdict, rule.code, _describe(rule, c, axis, modality)))
    return out
