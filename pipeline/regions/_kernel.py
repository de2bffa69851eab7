"""The numba kernel behind :func:`pipeline.regions.boxes.slice_label_boxes` (one pass over a label volume).

Kept apart from the public API so each module stays small; nothing here is meant to be called directly.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.core.cores import threads_setting

try:  # numba is a hard dependency of the project; the fallback only keeps the module importable.
    import numba
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only on installs without numba
    HAVE_NUMBA = False

# ----------------------------------------------------------------------------------------------------
# numba kernel
# ----------------------------------------------------------------------------------------------------

_CNT, _RMIN, _RMAX, _CMIN, _CMAX = range(5)  # columns of the per-label scratch (one cache line per label)


def _skip_py(words, wi, wend, value):  # pragma: no cover - compiled
    """First word index >= ``wi`` (and < ``wend``) whose word is not ``value``."""
    while wi < wend and words[wi] == value:
        wi += 1
    return wi


def _run_end_py(flat, words, e, end, wend, shift, v, mult):  # pragma: no cover - compiled
    """End (exclusive) of the run of label ``v`` that continues at ``e``: element by element up to a word
    boundary, then whole words holding ``v`` eight (or four, two) elements at a time, then the tail."""
    emask = (1 << shift) - 1
    while e < end and (e & emask) != 0 and flat[e] == v:
        e += 1
    if e < end and (e & emask) == 0:
        wi = _skip(words, e >> shift, wend, np.uint64(v) * mult)
        if (wi << shift) > e:
            e = wi << shift
        while e < end and flat[e] == v:
            e += 1
    return e


def _record_py(st, touched, nt, v, r, c0, c1, n):  # pragma: no cover - compiled
    """Fold the run ``[c0, c1]`` of label ``v`` on row ``r`` into the scratch; returns the touched count."""
    if st[v, _CNT] == 0:
        touched[nt] = v
        nt += 1
        st[v, _RMIN] = r
        st[v, _CMIN] = c0
        st[v, _CMAX] = c1
    else:
        if c0 < st[v, _CMIN]:
            st[v, _CMIN] = c0
        if c1 > st[v, _CMAX]:
            st[v, _CMAX] = c1
    st[v, _RMAX] = r
    st[v, _CNT] += n
    return nt


def _next_run_py(flat, words, e, end, wend, shift, mult, nlab):  # pragma: no cover - compiled
    """The next run of one label in ``[e, end)`` (background words skipped a word at a time): returns
    ``(start, stop, label, flags)``, ``start == end`` when the row holds no further run; ``flags`` marks
    values skipped on the way (1 = negative, 2 = >= ``nlab``). Shared by the box and the count kernels."""
    emask = (1 << shift) - 1
    flag = 0
    while e < end:
        if (e & emask) == 0:
            wi = _skip(words, e >> shift, wend, np.uint64(0))
            if (wi << shift) > e:
                e = wi << shift
                if e >= end:
                    break
        v = flat[e]
        if v == 0:
            e += 1
            continue
        if v < 0 or v >= nlab:
            flag |= 1 if v < 0 else 2
            e += 1
            continue
        return e, _run_end(flat, words, e + 1, end, wend, shift, v, mult), np.int64(v), flag
    return end, end, np.int64(0), flag


def _scan_row_py(flat, words, row0, end, r, shift, mult, nlab, st, touched, nt):  # pragma: no cover - compiled
    """Every run of one image row; returns (touched count, flags: 1 = negative value, 2 = value >= nlab)."""
    wend = end >> shift  # words entirely before ``end``
    e = row0
    flag = 0
    while e < end:
        e0, e, v, f = _next_run(flat, words, e, end, wend, shift, mult, nlab)
        flag |= f
        if e0 < end:
            nt = _record(st, touched, nt, v, r, e0 - row0, e - 1 - row0, e - e0)
    return nt, flag


def _flush_py(k, st, touched, nt, cap, out):  # pragma: no cover - compiled
    """Write slice ``k``'s labels (sorted) into ``out[field, k, i]`` and reset their scratch."""
    ts = np.sort(touched[:nt])
    for i in range(min(nt, cap)):
        v = ts[i]
        out[0, k, i] = v
        out[1, k, i] = st[v, _RMIN]
        out[2, k, i] = st[v, _RMAX]
        out[3, k, i] = st[v, _CMIN]
        out[4, k, i] = st[v, _CMAX]
        out[5, k, i] = st[v, _CNT]
    for i in range(nt):
        st[ts[i], _CNT] = 0


def _boxes_kernel_py(  # pragma: no cover - compiled; covered through slice_label_boxes
    flat, words, R, C, shift, mult, nlab, cap, chunk_bounds, out, n_distinct, flags
):
    """One pass over the volume: per slice, extents of every label, updated at run boundaries.

    ``flat`` is the C-contiguous volume as 1-D; ``words`` is its longest prefix viewed as uint64,
    so that word ``i`` holds elements ``[i * epw, (i + 1) * epw)`` (``epw`` = 8 for uint8, 4 for
    16-bit, ...).  Background words and words holding one repeated label are skipped a whole
    word at a time; ``mult`` broadcasts a label into a word.  Each chunk of slices owns a scratch
    table indexed by label id plus the list of labels it touched on the current slice, so the
    reset after a slice costs O(labels present), not O(nlab).  ``flags[chunk]`` gets bit 1 for a
    negative value and bit 2 for a value >= ``nlab`` (both skipped; the caller raises/retries).
    """
    nchunks = chunk_bounds.shape[0] - 1
    ntouch = max(min(nlab, R * C), 1)
    for ch in prange(nchunks):
        st = np.zeros((nlab, 5), np.int64)
        touched = np.zeros(ntouch, np.int64)
        flag = 0  # local: writing flags[ch] per row would bounce one cache line between threads
        for k in range(chunk_bounds[ch], chunk_bounds[ch + 1]):
            nt = 0
            for r in range(R):
                row0 = (k * R + r) * C
                nt, f = _scan_row(flat, words, row0, row0 + C, r, shift, mult, nlab, st, touched, nt)
                flag |= f
            n_distinct[k] = nt
            if nt:
                _flush(k, st, touched, nt, cap, out)
        flags[ch] = flag


def _as_own_function(fn: Callable[..., Any], name: str) -> types.FunctionType:
    """A copy of ``fn`` under another name. numba's on-disk cache is keyed by the function's file, qualified
    name and line, not by its compile flags: two dispatchers of one function (parallel and serial) shared
    one cache entry, so whichever compiled first served both. A serial kernel loaded as the parallel one
    launched numba's OpenMP pool in the process pool's fork server, and every forked worker that then ran
    a parallel kernel aborted ("fork() called from a process already using GNU OpenMP"); a parallel kernel
    loaded as the serial one ran volumes on one thread."""
    assert isinstance(fn, types.FunctionType)
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    copy = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = name
    copy.__doc__ = fn.__doc__
    return copy


if HAVE_NUMBA:
    _helper = njit(cache=True, nogil=True, inline="always")
    _skip = _helper(_skip_py)
    _run_end = _helper(_run_end_py)
    _record = _helper(_record_py)
    _next_run = _helper(_next_run_py)
    _scan_row = _helper(_scan_row_py)
    _flush = _helper(_flush_py)
    # the same kernel compiled twice: threads for volumes, serial for a slice or two (a thread-pool
    # launch per 2-D call costs milliseconds when the other core is busy)
    _boxes_kernel = njit(cache=True, parallel=True, nogil=True)(_boxes_kernel_py)
    _boxes_kernel_serial = njit(cache=True, parallel=False, nogil=True)(
        _as_own_function(_boxes_kernel_py, "_boxes_kernel_serial_py"))


_WORD_MULT = {1: 0x0101010101010101, 2: 0x0001000100010001, 4: 0x0000000100000001, 8: 1}
_WORD_SHIFT = {1: 3, 2: 2, 4: 1, 8: 0}


def as_label_volume(labels: np.ndarray) -> np.ndarray:
    """``labels`` as a ``(K, R, C)`` integer array (bool viewed as uint8), or ``ValueError``: the input check
    of :func:`~pipeline.regions.boxes.slice_label_boxes` and :func:`~pipeline.regions.counts.slice_label_counts`."""
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise ValueError(f"expected a (K, R, C) label volume, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"label volume must hold integers, got dtype {arr.dtype}")
    return arr


def kernel_threads() -> int:
    """Threads of the 3-D box pass: ``MEDREG_KERNEL_THREADS``, else 1 in a build's worker processes (each
    already has a core: a thread pool per worker only oversubscribes them) and numba's thread count (the
    cores) elsewhere."""
    return min(threads_setting("MEDREG_KERNEL_THREADS", numba.get_num_threads()), numba.get_num_threads())


def run_kernel(lab: np.ndarray, nlab: int, cap: int) -> tuple[np.ndarray, ...]:
    """Run the numba kernel on a C-contiguous integer volume whose labels are all < ``nlab``."""
    K, R, C = lab.shape
    itemsize = lab.dtype.itemsize
    shift = _WORD_SHIFT[itemsize]
    flat = lab.reshape(-1)
    n_words = flat.size >> shift
    words = flat[: n_words << shift].view(np.uint64)
    mult = np.uint64(_WORD_MULT[itemsize])
    threads = 1 if K <= 2 else kernel_threads()  # one or two slices: serial, numba's pool not even asked
    if threads <= 1:
        nchunks = 1
    else:
        per_thread = 4 if nlab <= 65536 else 1  # scratch is nlab x 5 x 8 bytes per chunk
        nchunks = max(1, min(K, threads * per_thread))
    bounds = np.linspace(0, K, nchunks + 1).round().astype(np.int64)
    out = np.empty((6, K, cap), np.int64)  # label, rmin, rmax, cmin, cmax, count
    n_distinct = np.zeros(K, np.int64)
    flags = np.zeros(nchunks, np.int64)
    kernel = _boxes_kernel if nchunks > 1 and K > 2 else _boxes_kernel_serial
    kernel(flat, words, R, C, shift, mult, nlab, cap, bounds, out, n_distinct, flags)
    if np.any(flags & 1):
        raise ValueError(negative_message(lab))
    if np.any(flags & 2):
        raise LabelTooLarge
    return (*out, n_distinct)


class LabelTooLarge(Exception):
    """A label id >= the scratch size the kernel was given (retry with a larger one)."""


def negative_message(lab: np.ndarray) -> str:
    return (
        f"label volume holds negative values (min {int(lab.min())}, dtype {lab.dtype}): label ids "
        "must be >= 0 with 0 = background; convert or remap the labels before computing boxes"
    )
