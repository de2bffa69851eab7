"""Voxel counts of every label on every slice of a volume, along all three axes in one pass.

Slice selection (:func:`pipeline.ingest.convert.convert_3d`) needs, for each axis it shows, which labels
have at least ``min_label_pixels`` voxels on which slice: counts, not boxes. Along the first axis of a
``(K, R, C)`` volume that is what :func:`pipeline.regions.boxes.slice_label_boxes` gives; along the other
two it needed a transposed copy of the whole label volume first (78 MB for a 512x512x300 CT, ~0.13 s a
case, and memory traffic that two worker processes share badly: B5). Here one pass over the volume as
stored walks each row's runs of one label (background words skipped eight voxels at a time, as the box
kernel does) and adds each run to three tables: its slice along axis 0, its row along axis 1, and its
columns along axis 2 (as +1 / -1 at the run's ends, summed afterwards).

The tables are ``extent x labels``, so the fast path takes label ids below :data:`MAX_TABLE_LABELS`
(TotalSegmentator's 117, any uint8 map, most uint16 maps); larger ids, non-integer arrays and a missing
numba go through ``slice_label_boxes`` on each axis, which gives the same counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.regions._kernel import (
    _WORD_MULT,
    _WORD_SHIFT,
    HAVE_NUMBA,
    as_label_volume,
    kernel_threads,
    negative_message,
)

#: label ids below this use the one-pass tables (3 tables of extent x ids int64: ~6 MB at 512 and 1024)
MAX_TABLE_LABELS = 1024


@dataclass(frozen=True)
class SliceLabelCounts:
    """Non-zero voxel counts of one axis, sorted by ``(slice, label)``."""

    slice: np.ndarray  # int64 (M,)
    label: np.ndarray  # int64 (M,)
    count: np.ndarray  # int64 (M,)


def _counts_kernel_py(flat, words, K, R, C, shift, mult, nlab, bounds, ck, cr, dc, flags):  # pragma: no cover
    """Runs of every row of slices ``bounds[ch]..bounds[ch+1]`` (one chunk per thread) added to ``ck[k]``
    (axis 0, shared: chunks own their slices), ``cr[ch, r]`` (axis 1) and ``dc[ch, c]`` (axis 2, +1 at a
    run's first column and -1 after its last). ``flags[ch]``: 1 = a negative value, 2 = a value >= nlab."""
    for ch in prange(bounds.shape[0] - 1):
        flag = 0
        for k in range(bounds[ch], bounds[ch + 1]):
            for r in range(R):
                row0 = (k * R + r) * C
                end = row0 + C
                wend = end >> shift
                e = row0
                while e < end:
                    e0, e, v, f = _next_run(flat, words, e, end, wend, shift, mult, nlab)
                    flag |= f
                    if e0 < end:
                        n = e - e0
                        ck[k, v] += n
                        cr[ch, r, v] += n
                        dc[ch, e0 - row0, v] += 1
                        dc[ch, e - row0, v] -= 1
        flags[ch] = flag


if HAVE_NUMBA:
    from numba import njit, prange

    from pipeline.regions._kernel import _as_own_function, _next_run

    _counts_kernel = njit(cache=True, parallel=True, nogil=True)(_counts_kernel_py)
    _counts_kernel_serial = njit(cache=True, parallel=False, nogil=True)(
        _as_own_function(_counts_kernel_py, "_counts_kernel_serial_py"))


def _nonzero(table: np.ndarray) -> SliceLabelCounts:
    s, lab = np.nonzero(table)  # row-major: sorted by (slice, label)
    return SliceLabelCounts(s.astype(np.int64), lab.astype(np.int64), table[s, lab].astype(np.int64))


class _TooLarge(Exception):
    pass


def _run(arr: np.ndarray, nlab: int, flipped: tuple[bool, ...]) -> tuple[SliceLabelCounts, ...]:
    K, R, C = arr.shape
    shift = _WORD_SHIFT[arr.dtype.itemsize]
    flat = arr.reshape(-1)
    words = flat[: (flat.size >> shift) << shift].view(np.uint64)
    threads = kernel_threads() if K > 2 else 1
    nchunks = max(1, min(K, threads))
    bounds = np.linspace(0, K, nchunks + 1).round().astype(np.int64)
    ck = np.zeros((K, nlab), np.int64)
    cr = np.zeros((nchunks, R, nlab), np.int64)
    dc = np.zeros((nchunks, C + 1, nlab), np.int64)
    flags = np.zeros(nchunks, np.int64)
    kernel = _counts_kernel if nchunks > 1 else _counts_kernel_serial
    kernel(flat, words, K, R, C, shift, np.uint64(_WORD_MULT[arr.dtype.itemsize]), nlab, bounds, ck, cr, dc, flags)
    if np.any(flags & 1):
        raise ValueError(negative_message(arr))
    if np.any(flags & 2):
        raise _TooLarge
    tables = (ck, cr.sum(axis=0), np.cumsum(dc.sum(axis=0), axis=0)[:C])
    return tuple(_nonzero(t[::-1] if f else t) for t, f in zip(tables, flipped, strict=True))


def _via_boxes(arr: np.ndarray, axes: tuple[int, ...]) -> dict[int, SliceLabelCounts]:
    from pipeline.regions.boxes import slice_label_boxes

    out = {}
    for ax in axes:
        b = slice_label_boxes(arr if ax == 0 else np.moveaxis(arr, ax, 0))
        out[ax] = SliceLabelCounts(b.slice, b.label, b.count)
    return out


def slice_label_counts(labels: np.ndarray, axes: tuple[int, ...] = (0, 1, 2)) -> dict[int, SliceLabelCounts]:
    """``{axis: counts}``: the voxels of every non-zero label on every slice along each of ``axes`` of a
    ``(K, R, C)`` integer volume (0 is background; a negative value raises ``ValueError``), the same
    numbers :func:`pipeline.regions.boxes.slice_label_boxes` counts on the volume with that axis moved
    first. One pass over the volume for all axes; a view with reversed axes is read in place, any other
    non C-contiguous view is copied once."""
    arr = as_label_volume(labels)
    axes = tuple(sorted(set(axes)))
    if arr.size == 0 or not HAVE_NUMBA or arr.dtype.itemsize not in _WORD_SHIFT:
        return _via_boxes(arr, axes)
    arr = arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
    # a reoriented volume is a view with reversed axes (e.g. strides (R*C, -C, -1)): counted as stored,
    # each reversed axis's table is read back to front, so nothing is copied
    view = arr
    flipped = tuple(st < 0 for st in arr.strides)
    arr = np.ascontiguousarray(arr[tuple(slice(None, None, -1) if f else slice(None) for f in flipped)])
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8:
        if int(arr.max()) > np.iinfo(np.int64).max:
            return _via_boxes(view, axes)
        arr = arr.view(np.int64)
    nlab = 256 if arr.dtype.itemsize == 1 else 128  # optimistic: most label maps hold small ids
    try:
        got = _run(arr, nlab, flipped)
    except _TooLarge:
        hi = int(arr.max())
        if hi >= MAX_TABLE_LABELS:
            return _via_boxes(view, axes)
        got = _run(arr, hi + 1, flipped)
    return {ax: got[ax] for ax in axes}
