"""The box toolkit: pixel <-> MedRegA/InternVL 0..999 boxes, box text, IoU and one-to-one matching.

Everything that turns boxes into text, compares two boxes or matches two sets of boxes lives here (the
task generator, the grounding judge and the evaluation kit all call these functions):

* :func:`normalise_box` / :func:`denormalise_box` -- the one pair of coordinate conversions;
* :func:`format_boxes`, :func:`box_tag`, :func:`ref_box` -- ``[[x1, y1, x2, y2], ...]``, ``<box>...</box>``
  and ``<ref>term</ref><box>...</box>`` exactly as MedRegA writes them; :func:`order_boxes` -- their order;
* :func:`box_iou`, :func:`iou_matrix` -- IoU on continuous edges (invariant to scaling each axis, so the
  0..999 grid and pixels give the same value);
* :func:`match_max_iou` (Hungarian assignment maximising the summed IoU), :func:`count_matches_at` (the
  most one-to-one pairs at IoU >= t, or > t) and :func:`hungarian_iou` (summed matched IoU / max count).

Convention (docs/architecture.md, "Coordinates"):

* A pixel box is ``[x_min, y_min, x_max, y_max]`` in **inclusive** integer pixel indices of the
  written image.
* Its continuous extent is ``[x_min, x_max + 1) x [y_min, y_max + 1)``.  The normalised box scales those
  continuous edges by ``999 / width`` (resp. ``height``), rounds half away from zero, clips to 0..999
  and keeps the box non-degenerate (``x1 < x2`` and ``y1 < y2``).
* Decoding is ``value / 999 * size``: the continuous edge in pixels.  :func:`denormalise_box` turns the
  continuous edges back into inclusive pixel indices (``x_max = ceil(edge) - 1``).

The round trip ``denormalise_box(normalise_box(b, w, h), w, h)`` stays within one pixel of ``b`` on
every side for images up to 999 px; above that the 0..999 grid itself quantises each edge to size/999 px
(tests/test_coords.py states and checks the exact bound with hypothesis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SCALE = 999
_QUAD = "[{:d}, {:d}, {:d}, {:d}]".format

__all__ = [
    "SCALE",
    "box_iou",
    "box_tag",
    "count_matches_at",
    "denormalise_box",
    "denormalise_edges",
    "format_boxes",
    "hungarian_iou",
    "iou_matrix",
    "match_max_iou",
    "normalise_box",
    "order_boxes",
    "ref_box",
]


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def normalise_box(box_px: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box -> normalised ``[x1, y1, x2, y2]`` integers in 0..999.

    ``box_px`` may hold floats (detection datasets give sub-pixel boxes); the continuous right/bottom
    edge is then ``x_max + 1`` as for integer boxes.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    x0, y0, x1, y1 = (float(v) for v in box_px)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"degenerate pixel box {list(box_px)}: need x_min<=x_max and y_min<=y_max")
    nx0 = _round_half_up(x0 * SCALE / width)
    ny0 = _round_half_up(y0 * SCALE / height)
    nx1 = _round_half_up((x1 + 1) * SCALE / width)
    ny1 = _round_half_up((y1 + 1) * SCALE / height)
    nx0, nx1 = _clip_pair(nx0, nx1)
    ny0, ny1 = _clip_pair(ny0, ny1)
    return nx0, ny0, nx1, ny1


def _clip_pair(a: int, b: int) -> tuple[int, int]:
    a = min(max(a, 0), SCALE)
    b = min(max(b, 0), SCALE)
    if b <= a:  # keep non-degenerate: grow towards the side that has room
        if a < SCALE:
            b = a + 1
        else:
            a = SCALE - 1
            b = SCALE
    return a, b


def denormalise_edges(box: Sequence[int], width: int, height: int) -> tuple[float, float, float, float]:
    """Normalised box -> continuous pixel edges ``(x0, y0, x1_exclusive, y1_exclusive)``."""
    x1, y1, x2, y2 = box
    return (x1 / SCALE * width, y1 / SCALE * height, x2 / SCALE * width, y2 / SCALE * height)


def denormalise_box(box: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """Normalised box -> inclusive integer pixel box on an image of ``width`` x ``height``."""
    ex0, ey0, ex1, ey1 = denormalise_edges(box, width, height)
    x0 = min(max(_round_half_up(ex0), 0), width - 1)
    y0 = min(max(_round_half_up(ey0), 0), height - 1)
    x1 = min(max(_round_half_up(ex1) - 1, x0), width - 1)
    y1 = min(max(_round_half_up(ey1) - 1, y0), height - 1)
    return x0, y0, x1, y1


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes given as continuous ``[x1, y1, x2, y2]`` (e.g. two normalised boxes)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def format_boxes(boxes: Sequence[Sequence[int]]) -> str:
    """``[[x1, y1, x2, y2], ...]`` exactly as MedRegA writes it inside ``<box>`` (integer values, Python or
    numpy)."""
    return "[" + ", ".join([_QUAD(*b) for b in boxes]) + "]"


def box_tag(boxes: Sequence[Sequence[int]]) -> str:
    """``<box>[[x1, y1, x2, y2], ...]</box>``: every box of one term in one list."""
    return "<box>" + format_boxes(boxes) + "</box>"


def one_box_tag(box: Sequence[int]) -> str:
    """``<box>[[x1, y1, x2, y2]]</box>`` for one integer box: :func:`box_tag` of ``[box]`` at a third of its
    cost (no integer check; the language stage formats one per sampled region)."""
    return f"<box>[[{box[0]}, {box[1]}, {box[2]}, {box[3]}]]</box>"


def ref_box(text: str, boxes: Sequence[Sequence[int]]) -> str:
    """``<ref>text</ref><box>[[...], ...]</box>``: a term's display text and all of its boxes."""
    return "<ref>" + text + "</ref>" + box_tag(boxes)


def order_boxes(boxes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Deterministic order: top-to-bottom, then left-to-right (then by the far edges)."""
    return sorted((tuple(int(v) for v in b) for b in boxes), key=lambda b: (b[1], b[0], b[3], b[2]))


def iou_matrix(rows: Sequence[Sequence[float]], cols: Sequence[Sequence[float]]) -> np.ndarray:
    """``m[i, j] = box_iou(rows[i], cols[j])`` for every pair, as float64 (vectorised)."""
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(cols, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0.0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0.0, None)
    inter = ix * iy
    area_a = np.clip(a[:, 2] - a[:, 0], 0.0, None) * np.clip(a[:, 3] - a[:, 1], 0.0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0.0, None) * np.clip(b[:, 3] - b[:, 1], 0.0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def match_max_iou(m: np.ndarray) -> list[tuple[int, int, float]]:
    """Hungarian one-to-one assignment of rows to columns maximising the summed IoU of an IoU matrix:
    ``[(row, col, iou), ...]`` sorted by row; ``min(rows, cols)`` pairs (pairs of IoU 0 included)."""
    from scipy.optimize import linear_sum_assignment

    if m.size == 0:
        return []
    rr, cc = linear_sum_assignment(-m)
    return [(int(r), int(c), float(m[r, c])) for r, c in zip(rr, cc, strict=True)]


def count_matches_at(m: np.ndarray, threshold: float, *, strict: bool = False) -> int:
    """The most one-to-one pairs with IoU >= ``threshold`` (``> threshold`` when ``strict``) that an
    IoU matrix allows (maximum-cardinality matching, ties broken towards higher IoU)."""
    from scipy.optimize import linear_sum_assignment

    if m.size == 0:
        return 0
    ok = (m > threshold) if strict else (m >= threshold - 1e-12)
    if not ok.any():
        return 0
    okf = ok.astype(np.float64)
    rr, cc = linear_sum_assignment(-(okf + 1e-6 * m))
    return int(sum(okf[r, c] for r, c in zip(rr, cc, strict=True)))


def hungarian_iou(pred: Sequence[Sequence[float]], true: Sequence[Sequence[float]]) -> tuple[float, list[float]]:
    """``(sum of matched IoUs / max(#pred, #true), matched IoUs)`` under the IoU-maximising one-to-one
    assignment: missing and extra boxes both cost.  ``(0.0, [])`` when either side is empty."""
    if len(pred) == 0 or len(true) == 0:
        return 0.0, []
    matched = [iou for _, _, iou in match_max_iou(iou_matrix(pred, true))]
    return float(sum(matched) / max(len(pred), len(true))), matched
