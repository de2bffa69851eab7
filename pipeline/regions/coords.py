"""The one pair of functions that converts between pixel boxes and MedRegA/InternVL 0..999 boxes.

Convention (docs/architecture.md, "Coordinates"):

* A pixel box is ``[x_min, y_min, x_max, y_max]`` in **inclusive** integer pixel indices of the
  written image.
* Its continuous extent is ``[x_min, x_max + 1) x [y_min, y_max + 1)``.  The normalised box scales those
  continuous edges by ``999 / width`` (resp. ``height``), rounds half away from zero, clips to 0..999
  and keeps the box non-degenerate (``x1 < x2`` and ``y1 < y2``).
* Decoding is ``value / 999 * size``: the continuous edge in pixels.  :func:`denormalise_box` turns the
  continuous edges back into inclusive pixel indices (``x_max = ceil(edge) - 1``).

The round trip ``denormalise_box(normalise_box(b, w, h), w, h)`` stays within one pixel of ``b`` on
every side for every image size (tests/test_coords.py checks this with hypothesis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SCALE = 999


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
    """``[[x1, y1, x2, y2], ...]`` exactly as MedRegA writes it inside ``<box>``."""
    return "[" + ", ".join("[" + ", ".join(str(int(v)) for v in b) + "]" for b in boxes) + "]"


def order_boxes(boxes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Deterministic order: top-to-bottom, then left-to-right (then by the far edges)."""
    return sorted((tuple(int(v) for v in b) for b in boxes), key=lambda b: (b[1], b[0], b[3], b[2]))
