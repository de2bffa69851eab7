"""Orientation, display slices, square pixels and slice selection.

Every 3-D volume is brought to the *display-canonical* layout once, on load (see pipeline/core/types.py):
``array[k, r, c]`` with axis 0 inferior→superior, axis 1 anterior→posterior, axis 2 right→left
(nibabel orientation codes ``("S", "P", "L")`` for increasing index).  Display images are then plain
views:

* axial    ``vol[k]``                      rows anterior→posterior, columns patient right→left
* coronal  ``vol[::-1, r, :]``             rows superior→inferior, columns patient right→left
* sagittal ``vol[::-1, :, c]``             rows superior→inferior, columns anterior→posterior

which is the radiological convention of docs/architecture.md.  Pixels are made square in physical
space by resampling the in-plane axis with the coarser spacing to the finer one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel import orientations as nio

CANONICAL_CODES = ("S", "P", "L")
AXES = ("axial", "coronal", "sagittal")
_AXIS_INDEX = {"axial": 0, "coronal": 1, "sagittal": 2}


@dataclass(frozen=True)
class CanonicalGeometry:
    spacing: tuple[float, float, float]  # mm along canonical (k, r, c)
    affine: np.ndarray  # 4x4 canonical voxel -> RAS+ mm
    source_codes: tuple[str, str, str]  # orientation codes of the file, e.g. ("R","A","S") or ("L","P","S")
    oblique_deg: float  # largest angle between a file axis and its nearest world axis


def orientation_codes(affine: np.ndarray) -> tuple[str, str, str]:
    return tuple(nio.aff2axcodes(affine))


def _obliquity_deg(affine: np.ndarray) -> float:
    rot = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0, keepdims=True)
    cos = np.abs(rot).max(axis=0).clip(0, 1)
    return float(np.degrees(np.arccos(cos)).max())


def canonical_transform(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform from the file's array axes to the canonical layout."""
    return nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(CANONICAL_CODES))


def to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, CanonicalGeometry]:
    """Reorder/flip a 3-D array (voxel -> RAS+ ``affine``) into the display-canonical layout.

    Only axis permutations and flips (views, no copy); near-axial oblique acquisitions take their
    closest axes.  Works for any NIfTI orientation (RAS, LPS, LAS, ...).  Extra trailing dimensions
    (e.g. colour) are kept.
    """
    if array.ndim < 3:
        raise ValueError(f"to_canonical needs a 3-D array, got shape {array.shape}")
    affine = np.asarray(affine, dtype=float)
    ornt = canonical_transform(affine)
    out = nio.apply_orientation(array, ornt) if array.ndim == 3 else _apply_ornt_nd(array, ornt)
    new_aff = affine @ nio.inv_ornt_aff(ornt, array.shape[:3])
    spacing = tuple(float(x) for x in np.linalg.norm(new_aff[:3, :3], axis=0))
    geom = CanonicalGeometry(
        spacing=spacing,  # type: ignore[arg-type]
        affine=new_aff,
        source_codes=orientation_codes(affine),
        oblique_deg=_obliquity_deg(affine),
    )
    return out, geom


def _apply_ornt_nd(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    t = array
    for ax, flip in enumerate(ornt[:, 1]):
        if flip == -1:
            t = np.flip(t, axis=ax)
    order = list(np.argsort(ornt[:, 0])) + list(range(3, array.ndim))
    return np.transpose(t, order)


def lps_to_ras_affine(affine_lps: np.ndarray) -> np.ndarray:
    """Convert a voxel->LPS affine (DICOM, ITK) into voxel->RAS+ (NIfTI, nibabel)."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ np.asarray(affine_lps, dtype=float)


def display_view(volume: np.ndarray, axis: str, index: int) -> np.ndarray:
    """The 2-D display image (a view) of a canonical volume on ``axis`` at ``index``."""
    if axis == "axial":
        return volume[index]
    if axis == "coronal":
        return volume[::-1, index]
    if axis == "sagittal":
        return volume[::-1, :, index]
    raise ValueError(f"unknown axis {axis!r}; use one of {AXES}")


def inplane_spacing(spacing: tuple[float, float, float], axis: str) -> tuple[float, float]:
    """(row spacing, column spacing) in mm of display images on ``axis``."""
    s0, s1, s2 = spacing
    return {"axial": (s1, s2), "coronal": (s0, s2), "sagittal": (s0, s1)}[axis]


def axis_index(axis: str) -> int:
    return _AXIS_INDEX[axis]


def square_shape(shape: tuple[int, int], spacing_rc: tuple[float, float]) -> tuple[int, int]:
    """Target (rows, cols) that makes pixels square at the finer of the two spacings."""
    sr, sc = spacing_rc
    if np.isclose(sr, sc, rtol=1e-3):
        return shape
    fine = min(sr, sc)
    return (max(1, int(round(shape[0] * sr / fine))), max(1, int(round(shape[1] * sc / fine))))


def upscale_factor(shape: tuple[int, int], upscale_to_px: int | None) -> int:
    """Largest integer factor that keeps the longer side of ``shape`` within ``upscale_to_px`` (at least 1).

    Used for small volumes (a card's ``display.upscale_to_px``): an integer factor keeps nearest-neighbour
    label resampling exact, so a box of ``n`` voxels becomes exactly ``n * factor`` pixels.
    """
    if not upscale_to_px or max(shape) <= 0:
        return 1
    return max(1, int(upscale_to_px) // int(max(shape)))


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Nearest source index for each output pixel centre (pixel-centre aligned; non-decreasing)."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resample_nearest(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D (or 2-D + channels) array; exact for labels."""
    if img.shape[:2] == tuple(shape):
        return img
    ri = nearest_index(img.shape[0], shape[0])
    ci = nearest_index(img.shape[1], shape[1])
    return img[ri][:, ci]


def resample_linear(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (pixel-centre aligned) of a 2-D float/int image; returns float32."""
    if img.shape[:2] == tuple(shape):
        return img.astype(np.float32, copy=False)
    from scipy import ndimage

    zr = shape[0] / img.shape[0]
    zc = shape[1] / img.shape[1]
    return ndimage.zoom(img.astype(np.float32, copy=False), (zr, zc), order=1, mode="nearest", grid_mode=True)


def select_slices(
    candidates: np.ndarray,
    spacing_mm: float,
    min_spacing_mm: float,
    max_slices: int,
) -> list[int]:
    """Pick slice indices from sorted ``candidates`` (slices with labels), deterministically.

    Greedy from the first candidate: keep a slice when it is at least ``min_spacing_mm`` from the last
    kept one; if more than ``max_slices`` remain, keep ``max_slices`` of them evenly spread (always
    including the first and last).
    """
    cand = np.unique(np.asarray(candidates, dtype=np.int64))
    if cand.size == 0:
        return []
    step = 0 if spacing_mm <= 0 else min_spacing_mm / spacing_mm
    kept = [int(cand[0])]
    for c in cand[1:]:
        if c - kept[-1] >= step - 1e-9:
            kept.append(int(c))
    if len(kept) > max_slices:
        pick = np.linspace(0, len(kept) - 1, max_slices).round().astype(int)
        kept = [kept[i] for i in sorted(set(pick.tolist()))]
    return kept
