"""Pack possibly-overlapping binary masks into as few non-overlapping integer label layers as possible.

One packer for every reader whose structures come as separate masks (DICOM SEG segments, a folder of
per-structure NIfTI masks): each mask goes, in the order given, into the first layer where it overlaps
nothing already placed, else into a new layer; every voxel of a layer holds one label (0 = none).

Masks are given as :class:`MaskRuns`: the non-empty stretches of the mask in the layers' memory order
(``"C"`` or ``"F"``), so a structure that fills 1 % of a 512x512x300 volume costs 1 % of it, and a mask
read from a file never has to exist as a full volume (pipeline.ingest.readers.nifti.read_mask_runs).
Stretches come as a list of ``(start, segment)`` pairs, or packed into three arrays (the sparse
inflater's ~3,000 trimmed row segments a structure), which the packer checks and places in one call.
Layers are allocated in the same order as the masks, so no step makes a transposing copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from math import prod
from typing import Any, Literal

import numpy as np
from numba import njit

from pipeline.ingest import buffers

Order = Literal["C", "F"]
_BLOCK = 1 << 20  # voxels per step when cutting a full array into runs


@dataclass
class MaskRuns:
    """A binary mask on a grid of ``shape`` as ``(start, segment)`` pairs in ``order`` flat indexing.

    A segment is a 1-D integer or bool array whose non-zero entries are foreground (often a view of the
    decompressed file, so nothing is copied); segments do not overlap and are sorted by start; voxels
    outside every segment are background.
    """

    shape: tuple[int, ...]
    order: Order = "C"
    runs: list[tuple[int, np.ndarray]] = field(default_factory=list)
    packed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    """More segments, packed: ``(starts, offs, values)``, segment ``k`` = ``values[offs[k]:offs[k + 1]]``
    at flat index ``starts[k]`` (int64 arrays; ``offs`` has one entry more than ``starts``)."""

    def __bool__(self) -> bool:
        return bool(self.runs) or (self.packed is not None and self.packed[0].size > 0)

    def segments(self) -> Iterator[tuple[int, np.ndarray]]:
        """Every ``(start, segment)`` pair, the listed ones then the packed ones."""
        yield from self.runs
        if self.packed is not None:
            starts, offs, values = self.packed
            for k in range(starts.size):
                yield int(starts[k]), values[offs[k] : offs[k + 1]]

    @property
    def row(self) -> int:
        """Elements of one image row in the flat order (the fastest-varying axis)."""
        return int(self.shape[0] if self.order == "F" else self.shape[-1])

    def extend(self, runs: Iterable[tuple[int, np.ndarray]]) -> None:
        self.runs.extend(runs)

    def count(self) -> int:
        packed = np.count_nonzero(self.packed[2]) if self.packed is not None else 0
        return int(sum(np.count_nonzero(s) for _, s in self.runs) + packed)

    def to_array(self) -> np.ndarray:
        """The full boolean mask (for tests and small volumes)."""
        flat = np.zeros(prod(self.shape), bool)
        for start, seg in self.segments():
            flat[start : start + seg.size] = seg != 0
        return flat.reshape(self.shape, order=self.order)

    @classmethod
    def from_array(cls, mask: np.ndarray, order: Order = "C") -> MaskRuns:
        """Runs of the non-zero voxels of ``mask`` (copied once if it is not contiguous in ``order``)."""
        flat = np.asarray(mask).ravel(order=order)
        out = cls(tuple(int(s) for s in mask.shape), order)
        for pos in range(0, flat.size, _BLOCK):
            out.extend(runs_of_chunk(flat[pos : pos + _BLOCK], pos, out.row))
        return out

    @classmethod
    def from_slices(cls, slices: Mapping[int, np.ndarray], shape: tuple[int, int, int]) -> MaskRuns:
        """Runs of a C-order ``(K, R, C)`` mask given sparsely as ``{slice index: (R, C) mask}``."""
        out = cls(tuple(shape), "C")
        plane = int(shape[1]) * int(shape[2])
        for k in sorted(slices):
            out.extend(runs_of_chunk(np.ascontiguousarray(slices[k]).ravel(), int(k) * plane, out.row))
        return out


@njit(cache=True, nogil=True)
def _any_nonzero(v: np.ndarray) -> bool:  # pragma: no cover - compiled
    """True at the first non-zero entry (numpy's ``any`` always reads the whole array)."""
    i, n = 0, v.size
    while i < n and v[i] == 0:
        i += 1
    return i < n


def _any(v: np.ndarray) -> bool:
    if v.dtype.itemsize == 1 and v.size >= 64 and v.size % 8 == 0:
        return bool(_any_nonzero(v.view(np.uint64)))  # 8 voxels per compare
    return bool(_any_nonzero(v))


@njit(cache=True, nogil=True)
def _overlaps(flat: np.ndarray, start: int, seg: np.ndarray) -> bool:  # pragma: no cover - compiled
    i, n = 0, seg.size
    while i < n and (seg[i] == 0 or flat[start + i] == 0):
        i += 1
    return i < n


@njit(cache=True, nogil=True)
def _overlaps_packed(flat: np.ndarray, starts: np.ndarray, offs: np.ndarray,
                     values: np.ndarray) -> bool:  # pragma: no cover - compiled
    """Whether any packed segment's foreground meets a labelled voxel of ``flat``; a segment is checked
    whole without a branch (vectorised: trimmed segments are short), the answer between segments."""
    for k in range(starts.size):
        seg = values[offs[k] : offs[k + 1]]
        under = flat[starts[k] : starts[k] + seg.size]
        hit = False
        for i in range(seg.size):
            hit |= (seg[i] != 0) & (under[i] != 0)
        if hit:
            return True
    return False


@njit(cache=True, nogil=True)
def _put_packed(flat: np.ndarray, starts: np.ndarray, offs: np.ndarray, values: np.ndarray,
                label: int) -> None:  # pragma: no cover - compiled
    """``label`` under every packed segment's foreground (trimmed segments are mostly foreground: a plain
    branch, on views, is ~3x faster here than the bit select of :func:`_put_label`)."""
    lab = flat.dtype.type(label)
    for k in range(starts.size):
        seg = values[offs[k] : offs[k + 1]]
        out = flat[starts[k] : starts[k] + seg.size]
        for i in range(seg.size):
            if seg[i] != 0:
                out[i] = lab


@njit(cache=True, nogil=True)
def _place_packed(flat: np.ndarray, starts: np.ndarray, offs: np.ndarray, values: np.ndarray,
                  label: int) -> bool:  # pragma: no cover - compiled
    """:func:`_put_packed` unless a segment's foreground meets a labelled voxel: then the segments written
    so far are cleared again (their foreground voxels were all unlabelled) and False. One pass over the
    segments instead of a check and a put (the cost is per segment: ~350,000 in a TotalSegmentator case);
    each segment is checked whole without a branch (vectorised) before it is written."""
    lab = flat.dtype.type(label)
    for k in range(starts.size):
        a, o, m = starts[k], offs[k], offs[k + 1] - offs[k]
        hit = flat.dtype.type(0)
        for i in range(m):  # non-zero where both are (unsigned); unsigned indices: vectorised
            hit |= min(values[np.uint64(o + i)], flat[np.uint64(a + i)])
        if hit:
            for j in range(k):
                seg = values[offs[j] : offs[j + 1]]
                out = flat[starts[j] : starts[j] + seg.size]
                for i in range(seg.size):
                    if seg[i] != 0:
                        out[i] = 0
            return False
        seg = values[o : o + m]
        out = flat[a : a + m]
        for i in range(m):
            if seg[i] != 0:
                out[i] = lab
    return True


@njit(cache=True, nogil=True)
def _put_label(flat: np.ndarray, start: int, seg: np.ndarray, label: int) -> None:  # pragma: no cover - compiled
    """``flat[start + i] = label`` where ``seg[i]`` is foreground, as a bit select (no branch: vectorised,
    3x faster on the row blocks of a mask)."""
    out = flat[start : start + seg.size]
    lab = flat.dtype.type(label)
    zero = flat.dtype.type(0)
    for i in range(seg.size):
        m = zero - flat.dtype.type(seg[i] != 0)  # all ones where foreground
        out[i] = (out[i] & ~m) | (lab & m)


def _partial_run(v: np.ndarray, pos: int, copy: bool) -> list[tuple[int, np.ndarray]]:
    nz = np.flatnonzero(v)
    if nz.size == 0:
        return []
    seg = v[nz[0] : nz[-1] + 1]
    return [(pos + int(nz[0]), seg.copy() if copy else seg)]


def runs_of_chunk(values: np.ndarray, pos: int, row: int, *, copy: bool = False) -> list[tuple[int, np.ndarray]]:
    """Runs of the non-zero entries of the 1-D ``values`` that start at flat index ``pos``.

    Whole rows of ``row`` elements are the unit: consecutive rows holding a foreground voxel form one
    run (a structure's rows on one slice are usually one run); partial rows at the ends of the chunk are
    trimmed to their first and last foreground voxel. Segments are views of ``values`` unless ``copy``
    (a reader's transient decompression buffer: keeping views would keep whole chunks alive).
    """
    v = np.asarray(values).reshape(-1)
    if v.size == 0 or not _any(v):
        return []
    head = min((-pos) % row, v.size)
    body = (v.size - head) // row * row
    out = _partial_run(v[:head], pos, copy) if head else []
    if body:
        rows = v[head : head + body].reshape(-1, row)
        if rows.dtype.itemsize * row % 8 == 0 and rows.flags.c_contiguous:
            hit = rows.view(np.uint64).any(axis=1)
        else:
            hit = rows.any(axis=1)
        idx = np.flatnonzero(hit)
        if idx.size:
            cuts = np.flatnonzero(np.diff(idx) > 1)
            firsts = idx[np.r_[0, cuts + 1]]
            lasts = idx[np.r_[cuts, idx.size - 1]]
            for r0, r1 in zip(firsts.tolist(), lasts.tolist(), strict=True):
                a, b = head + r0 * row, head + (r1 + 1) * row
                out.append((pos + a, v[a:b].copy() if copy else v[a:b]))
    if head + body < v.size:
        out.extend(_partial_run(v[head + body :], pos + head + body, copy))
    return out


def _zeros(n: int, dtype: np.dtype[Any] | type) -> np.ndarray:
    """A zeroed layer of ``n`` elements; a full-size one reuses a previous case's buffer while cases are
    built (pipeline/ingest/buffers.py)."""
    dt = np.dtype(dtype)
    return buffers.zeros(n * dt.itemsize).view(dt)


class LayerPacker:
    """Greedy first-fit packing of masks into non-overlapping ``dtype`` label layers of one ``shape``."""

    def __init__(self, shape: tuple[int, ...], *, order: Order = "C", dtype: type[np.unsignedinteger] = np.uint16,
                 ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.order: Order = order
        self.dtype = np.dtype(dtype)
        self.max_label = int(np.iinfo(dtype).max)
        self._flat: list[np.ndarray] = []
        self.labels: list[list[int]] = []  # labels placed in each layer, in placement order
        self.overlaps: set[tuple[int, int]] = set()  # (smaller, larger) label pairs that share voxels

    @property
    def layers(self) -> list[np.ndarray]:
        """The layers as arrays of ``shape`` (views of the packer's storage, contiguous in ``order``)."""
        return [f.reshape(self.shape, order=self.order) for f in self._flat]

    def _check(self, runs: MaskRuns) -> None:
        if tuple(runs.shape) != self.shape or runs.order != self.order:
            raise ValueError(f"mask runs of shape {runs.shape} ({runs.order} order) do not fit layers of shape "
                             f"{self.shape} ({self.order} order)")

    def clashes(self, layer: int, runs: MaskRuns) -> set[int]:
        """Labels of ``layer`` under the mask."""
        flat = self._flat[layer]
        found: set[int] = set()
        for start, seg in runs.segments():
            under = flat[start : start + seg.size][seg != 0]
            if under.any():
                found.update(int(v) for v in np.unique(under) if v)
        return found

    def overlaps_layer(self, layer: int, runs: MaskRuns) -> bool:
        flat = self._flat[layer]
        if runs.packed is not None and _overlaps_packed(flat, *runs.packed):
            return True
        return any(_overlaps(flat, start, seg) for start, seg in runs.runs)

    def add(self, label: int, runs: MaskRuns, *, record_overlaps: bool = False) -> int:
        """Place the mask as ``label`` in the first layer it does not overlap; returns the layer index.

        With ``record_overlaps`` every layer tried records its clashing labels in :attr:`overlaps`.
        An empty mask is placed nowhere and returns -1.
        """
        self._check(runs)
        if not runs:
            return -1
        if not 0 < label <= self.max_label:
            raise ValueError(f"label {label} does not fit a {self.dtype} layer (1..{self.max_label})")
        for i in range(len(self._flat)):
            if record_overlaps:
                clash = self.clashes(i, runs)
                self.overlaps.update((min(label, c), max(label, c)) for c in clash)
                if clash:
                    continue
            elif runs.packed is not None and not runs.runs:  # check and place in one pass
                if not _place_packed(self._flat[i], *runs.packed, label):
                    continue
                self.labels[i].append(label)
                return i
            elif self.overlaps_layer(i, runs):
                continue
            self._put(i, label, runs)
            return i
        self._flat.append(_zeros(prod(self.shape), self.dtype))
        self.labels.append([])
        self._put(len(self._flat) - 1, label, runs)
        return len(self._flat) - 1

    def _put(self, layer: int, label: int, runs: MaskRuns) -> None:
        flat = self._flat[layer]
        for start, seg in runs.runs:
            _put_label(flat, start, seg, label)
        if runs.packed is not None:
            _put_packed(flat, *runs.packed, label)
        self.labels[layer].append(label)
