"""Boxes from label maps: per-slice extents of every label in a volume, and 2-D regions per term.

Two entry points:

* :func:`slice_label_boxes` -- for an integer label volume ``(K, R, C)`` returns, for **every** slice
  ``k`` and **every** non-zero label present in it, the inclusive row/column extents and the pixel
  count, in one pass over the voxels (a numba kernel, parallel over slices).  This is what a 3-D study
  needs to decide which slices show which structure and where, without one pass per label.
* :func:`regions_2d` -- for one 2-D label slice and an ``id -> term`` map returns the pixel boxes to
  write into a sample: one per connected component (``policy="component"``) or one per label
  (``policy="label"``), after dropping dust (tiny components such as the stray JPEG pixel in a
  Kvasir-SEG mask).

Box conventions follow docs/architecture.md: a pixel box is ``(x_min, y_min, x_max, y_max)`` with
``x`` = column and ``y`` = row, inclusive indices; several boxes are ordered top-to-bottom, then
left-to-right (:func:`pipeline.regions.coords.order_boxes`).
"""

from __future__ import annotations

from collections import Counter

import builtins
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.regions.coords import normalise_box
from pipeline.core.types import Region

from pipeline.regions._kernel import HAVE_NUMBA, LabelTooLarge, as_label_volume, negative_message, run_kernel

__all__ = [
    "HAVE_NUMBA",
    "RegionPx",
    "SliceLabelBoxes",
    "regions_2d",
    "slice_label_boxes",
]

# Labels ids above this are remapped to dense ids first (per-thread scratch is indexed by label id).
_DIRECT_MAX_LABEL = (1 << 20) - 1
# Records reserved per slice before the (rare) overflow re-run; uint8 volumes never overflow.
_DEFAULT_CAP = 512


# ----------------------------------------------------------------------------------------------------
# Result type
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceLabelBoxes:
    """Per-(slice, label) extents as parallel arrays, sorted by ``(slice, label)``.

    ``rmin..rmax`` and ``cmin..cmax`` are inclusive row / column indices on slice ``slice``;
    ``count`` is the number of voxels of ``label`` on that slice.  ``shape`` is the volume's
    ``(K, R, C)``.
    """

    slice: np.ndarray  # int64
    label: np.ndarray  # int64
    rmin: np.ndarray  # int64
    rmax: np.ndarray
    cmin: np.ndarray
    cmax: np.ndarray
    count: np.ndarray  # int64
    shape: tuple[int, int, int]

    def __len__(self) -> int:
        return int(self.slice.shape[0])

    def _take(self, idx: np.ndarray | builtins.slice) -> SliceLabelBoxes:
        return SliceLabelBoxes(
            self.slice[idx], self.label[idx], self.rmin[idx], self.rmax[idx],
            self.cmin[idx], self.cmax[idx], self.count[idx], self.shape,
        )  # fmt: skip

    def for_slice(self, k: int) -> SliceLabelBoxes:
        """The records of slice ``k`` (sorted by label); empty when nothing is labelled there."""
        lo, hi = np.searchsorted(self.slice, [k, k + 1])
        return self._take(slice(int(lo), int(hi)))

    def for_label(self, label: int) -> SliceLabelBoxes:
        """The records of one label (sorted by slice)."""
        return self._take(np.flatnonzero(self.label == label))

    def labels(self) -> np.ndarray:
        """Sorted unique label ids present anywhere in the volume."""
        return np.unique(self.label)

    def slices_with_label(self, label: int) -> np.ndarray:
        """Sorted slice indices on which ``label`` has at least one voxel."""
        return self.slice[self.label == label]

    def volume_box(self, label: int) -> tuple[int, int, int, int, int, int]:
        """3-D inclusive box ``(kmin, rmin, cmin, kmax, rmax, cmax)`` of ``label``.

        Raises ``KeyError`` when the label is absent from the volume.
        """
        sel = self.label == label
        if not sel.any():
            raise KeyError(f"label {label} is not present in the volume")
        ks = self.slice[sel]
        return (
            int(ks.min()), int(self.rmin[sel].min()), int(self.cmin[sel].min()),
            int(ks.max()), int(self.rmax[sel].max()), int(self.cmax[sel].max()),
        )  # fmt: skip

    def volume_boxes(self) -> dict[int, tuple[int, int, int, int, int, int]]:
        """:meth:`volume_box` for every present label at once (vectorised)."""
        if len(self) == 0:
            return {}
        order = np.argsort(self.label, kind="stable")
        lab = self.label[order]
        starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
        red_min = [np.minimum.reduceat(a[order], starts) for a in (self.slice, self.rmin, self.cmin)]
        red_max = [np.maximum.reduceat(a[order], starts) for a in (self.slice, self.rmax, self.cmax)]
        out: dict[int, tuple[int, int, int, int, int, int]] = {}
        for i, s in enumerate(starts):
            out[int(lab[s])] = (
                int(red_min[0][i]), int(red_min[1][i]), int(red_min[2][i]),
                int(red_max[0][i]), int(red_max[1][i]), int(red_max[2][i]),
            )  # fmt: skip
        return out

    def volume_count(self, label: int) -> int:
        """Number of voxels of ``label`` in the whole volume."""
        return int(self.count[self.label == label].sum())

    def boxes_px(self) -> np.ndarray:
        """``(N, 4)`` int64 pixel boxes ``[x_min, y_min, x_max, y_max]`` (x = column, y = row)."""
        return np.stack([self.cmin, self.rmin, self.cmax, self.rmax], axis=1)


def _empty_boxes(shape: tuple[int, int, int]) -> SliceLabelBoxes:
    z = np.zeros(0, np.int64)
    return SliceLabelBoxes(z, z, z, z, z, z, z, shape)


def _boxes_numba(lab: np.ndarray, nlab: int) -> SliceLabelBoxes:
    K, R, C = lab.shape
    cap = max(1, min(nlab - 1, R * C, _DEFAULT_CAP))
    label, rmin, rmax, cmin, cmax, count, n_distinct = run_kernel(lab, nlab, cap)
    over = np.flatnonzero(n_distinct > cap)
    if over.size:  # a few slices hold more distinct labels than reserved: redo just those
        cap2 = int(n_distinct[over].max())
        sub = run_kernel(np.ascontiguousarray(lab[over]), nlab, cap2)
        wide = [np.zeros((K, cap2), np.int64) for _ in range(6)]
        for w, a, s in zip(wide, (label, rmin, rmax, cmin, cmax, count), sub[:6], strict=True):
            w[:, :cap] = a
            w[over] = s
        label, rmin, rmax, cmin, cmax, count = wide
        cap = cap2
    valid = np.arange(cap)[None, :] < np.minimum(n_distinct, cap)[:, None]
    slc = np.broadcast_to(np.arange(K, dtype=np.int64)[:, None], (K, cap))
    return SliceLabelBoxes(
        slc[valid], label[valid], rmin[valid], rmax[valid], cmin[valid], cmax[valid], count[valid],
        (K, R, C),
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# pure-numpy fallback (only used when numba is missing; also the cross-check in the tests)
# ----------------------------------------------------------------------------------------------------


def _boxes_numpy(lab: np.ndarray) -> SliceLabelBoxes:
    K, R, C = lab.shape
    parts: list[tuple[np.ndarray, ...]] = []
    for k in range(K):
        flat = lab[k].ravel()
        idx = np.flatnonzero(flat)
        if idx.size == 0:
            continue
        vals = flat[idx].astype(np.int64)
        if vals.min() < 0:
            raise ValueError(negative_message(lab))
        order = np.argsort(vals, kind="stable")
        vals = vals[order]
        idx = idx[order]
        rows = idx // C
        cols = idx % C
        starts = np.flatnonzero(np.r_[True, vals[1:] != vals[:-1]])
        n = np.diff(np.r_[starts, vals.size])
        parts.append((
            np.full(starts.size, k, np.int64), vals[starts],
            np.minimum.reduceat(rows, starts), np.maximum.reduceat(rows, starts),
            np.minimum.reduceat(cols, starts), np.maximum.reduceat(cols, starts),
            n.astype(np.int64),
        ))  # fmt: skip
    if not parts:
        return _empty_boxes((K, R, C))
    cols_ = [np.concatenate([p[i] for p in parts]).astype(np.int64) for i in range(7)]
    return SliceLabelBoxes(cols_[0], cols_[1], cols_[2], cols_[3], cols_[4], cols_[5], cols_[6], (K, R, C))


# ----------------------------------------------------------------------------------------------------
# public: slice_label_boxes
# ----------------------------------------------------------------------------------------------------

_NATIVE_NLAB = {
    np.dtype(np.uint8): 256,
    np.dtype(np.int8): 128,
    np.dtype(np.uint16): 65536,
    np.dtype(np.int16): 32768,
}


def _scratch_size(arr: np.ndarray, nlab: int) -> int:
    """Label slots for the kernel's scratch: ``nlab``, or max label + 1 when the array is small next to the
    scratch (a 2-D slice: zeroing 65,536 slots per call cost more than the slice itself, see B10)."""
    if nlab <= 256 or arr.size >= 16 * nlab:
        return nlab
    return min(nlab, max(int(arr.max()), 0) + 1)


def slice_label_boxes(labels: np.ndarray, *, use_numba: bool | None = None) -> SliceLabelBoxes:
    """Extents and voxel counts of every non-zero label on every slice of a ``(K, R, C)`` volume.

    ``labels`` is any integer (or bool) array; 0 is background and negative values raise
    ``ValueError``.  uint8/int8/uint16/int16 volumes are scanned once with no preparatory pass;
    wider dtypes are scanned once too while their ids stay below 65536, else rescanned after one
    ``min``/``max`` (and, for ids above 2**20 - 1, after a remap to dense ids).
    A non C-contiguous view (e.g. a transposed volume for coronal slicing) is copied once.

    The result is sorted by ``(slice, label)``; see :class:`SliceLabelBoxes` for the helpers.
    ``use_numba=False`` forces the pure-numpy path (the default uses numba when installed).
    """
    arr = as_label_volume(labels)
    K, R, C = (int(s) for s in arr.shape)
    if arr.size == 0:
        return _empty_boxes((K, R, C))
    if use_numba is None:
        use_numba = HAVE_NUMBA
    if not use_numba:
        return _boxes_numpy(arr)
    if not HAVE_NUMBA:  # pragma: no cover
        raise RuntimeError("use_numba=True but numba is not installed")

    arr = arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
    arr = np.ascontiguousarray(arr)
    nlab = _NATIVE_NLAB.get(arr.dtype)
    if nlab is not None:
        return _boxes_numba(arr, _scratch_size(arr, nlab))

    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8:
        if int(arr.max()) <= np.iinfo(np.int64).max:
            arr = arr.view(np.int64)  # same bits; avoids uint64/int64 mixing in the kernel
        else:
            raise ValueError("label ids above 2**63 - 1 are not supported")
    try:  # optimistic single pass: most wide-dtype label maps still have ids < 65536
        return _boxes_numba(arr, _scratch_size(arr, 65536))
    except LabelTooLarge:
        pass
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise ValueError(negative_message(arr))
    if hi <= _DIRECT_MAX_LABEL:
        return _boxes_numba(arr, hi + 1)
    # Huge sparse ids: remap present ids to dense 0..n-1 (0 stays 0 because it is the smallest).
    uniq, inv = np.unique(arr, return_inverse=True)
    dense = inv.reshape(arr.shape).astype(np.int32)
    if uniq[0] != 0:
        dense += 1
        uniq = np.r_[0, uniq]
    res = _boxes_numba(np.ascontiguousarray(dense), int(uniq.size))
    return SliceLabelBoxes(
        res.slice, uniq[res.label].astype(np.int64), res.rmin, res.rmax, res.cmin, res.cmax,
        res.count, res.shape,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# 2-D regions
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionPx:
    """One pixel box of one term on a 2-D slice (before normalisation)."""

    term: str
    label_id: int
    box_px: tuple[int, int, int, int]  # x_min, y_min, x_max, y_max inclusive (x = column, y = row)
    area: int  # foreground pixels inside the region (after dust removal)
    component: int = 0  # index within this label on this slice, in reading order

    def to_region(self, width: int, height: int) -> Region:
        """The :class:`pipeline.core.types.Region` with the 0..999 box for an image of this size."""
        return Region(
            term=self.term,
            box_px=self.box_px,
            box=normalise_box(self.box_px, width, height),
            area=self.area,
            component=self.component,
            label_id=self.label_id,
        )


def _structure(connectivity: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.generate_binary_structure(2, connectivity)


def _check_regions_args(a: np.ndarray, policy: str, connectivity: int, min_pixels: int, min_fraction: float) -> None:
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D label slice, got shape {a.shape}")
    if policy not in ("component", "label"):
        raise ValueError(f"policy must be 'component' or 'label', got {policy!r}")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (4-connected) or 2 (8-connected), got {connectivity}")
    if min_pixels < 0 or not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"need min_pixels >= 0 and 0 <= min_fraction <= 1, got {min_pixels}, {min_fraction}")


def regions_2d(
    label2d: np.ndarray,
    names: dict[int, str],
    *,
    policy: Literal["component", "label"] = "component",
    min_pixels: int = 0,
    min_fraction: float = 0.0,
    connectivity: int = 1,
    instance: bool = False,
    dropped: Counter[str] | None = None,
) -> list[RegionPx]:
    """Pixel boxes of the labelled structures of one 2-D slice.

    ``dropped`` (optional) counts what does not become a box: ``region:dust`` (components under the
    threshold) and ``region:unknown_label`` (label ids present on the slice without a term).

    * Labels not in ``names`` are ignored (treated as background).
    * Dust: a connected component (``connectivity`` 1 = 4-connected, 2 = 8-connected; components
      never join different label values) with fewer than ``max(min_pixels, min_fraction * H * W)``
      pixels is dropped before anything else.
    * ``policy="component"``: one box per surviving component; ``policy="label"``: one box per label,
      the union of its surviving components.  ``instance=True`` (the layer is one annotated instance)
      gives one union box per label whatever the policy.
    * Order: top-to-bottom, then left-to-right (``y_min, x_min, y_max, x_max``, then label id);
      ``component`` counts 0, 1, ... per label in that order.
    """
    a = np.asarray(label2d)
    _check_regions_args(a, policy, connectivity, min_pixels, min_fraction)
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    H, W = a.shape
    if a.size == 0:
        return []

    stats = slice_label_boxes(a[None])
    keep = np.array([lab for lab in stats.label.tolist() if lab in names], dtype=np.int64)
    if dropped is not None and stats.label.size > keep.size:
        dropped["region:unknown_label"] += int(stats.label.size - keep.size)
    if keep.size == 0:
        return []
    threshold = max(float(min_pixels), float(min_fraction) * H * W)
    per_label = instance or policy == "label"

    out: list[tuple[int, tuple[int, int, int, int], int]] = []  # (label, box, area)
    if per_label and threshold <= 1.0:
        # No component can be dust: the per-label extents are the answer (no labelling needed).
        for i in np.flatnonzero(np.isin(stats.label, keep)):
            out.append((
                int(stats.label[i]),
                (int(stats.cmin[i]), int(stats.rmin[i]), int(stats.cmax[i]), int(stats.rmax[i])),
                int(stats.count[i]),
            ))  # fmt: skip
    else:
        comps, comp_label = _components(a, keep, stats.label, connectivity)
        cst = slice_label_boxes(comps[None])
        ok = cst.count >= threshold
        if dropped is not None and not ok.all():
            dropped["region:dust"] += int((~ok).sum())
        lab_of = comp_label[cst.label[ok]]
        boxes = np.stack([cst.cmin[ok], cst.rmin[ok], cst.cmax[ok], cst.rmax[ok]], axis=1)
        areas = cst.count[ok]
        if per_label:
            for lab in np.unique(lab_of).tolist():
                sel = lab_of == lab
                b = boxes[sel]
                out.append((
                    int(lab),
                    (int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max())),
                    int(areas[sel].sum()),
                ))  # fmt: skip
        else:
            for lab, b, n in zip(lab_of.tolist(), boxes.tolist(), areas.tolist(), strict=True):
                out.append((int(lab), (b[0], b[1], b[2], b[3]), int(n)))

    out.sort(key=lambda t: (t[1][1], t[1][0], t[1][3], t[1][2], t[0]))
    next_index: dict[int, int] = {}
    regions: list[RegionPx] = []
    for lab, box, area in out:
        idx = next_index.get(lab, 0)
        next_index[lab] = idx + 1
        regions.append(RegionPx(names[lab], lab, box, area, idx))
    return regions


def _components(
    a: np.ndarray, keep: np.ndarray, present: np.ndarray, connectivity: int
) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the kept labels (different values never join).

    Returns the component image (0 = background, 1..n) and ``comp_label[i]`` = label id of
    component ``i``.
    """
    from scipy import ndimage

    if keep.size == 1:
        mask = a == keep[0]
        comps, n = ndimage.label(mask, structure=_structure(connectivity))
        return comps, np.full(n + 1, keep[0], np.int64)

    from skimage.measure import label as sk_label

    work = a if keep.size == present.size else np.where(np.isin(a, keep), a, 0)
    comps = sk_label(work, background=0, connectivity=connectivity)
    n = int(comps.max())
    comp_label = np.zeros(n + 1, np.int64)
    comp_label[comps.ravel()] = work.ravel()
    return comps, comp_label
