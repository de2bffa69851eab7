"""The same picture entering a release twice (SA-Med2D-20M holds TotalSegmentator slices, BiomedParse
repackages public sets, one PET patient ships as DICOM and as NIfTI): detection and grouping.

* Each case records, per written image, :func:`image_fingerprint`: the sha256 of the display pixels
  (after display normalisation; an RGB image whose channels are equal counts as grey, so a grey and an
  RGB copy of one picture are equal) and a 64-bit perceptual hash (``imagehash.phash``: DCT of a 32x32
  grey thumbnail).  These land in the case summary (:class:`schemas.records.ImageInfo`).
* :func:`find_groups` links images of *different patients* that are *exact* duplicates (equal pixel
  hashes) or *near* duplicates (phash Hamming distance <= ``near_threshold``; default 4 of 64 bits);
  slices of one patient are never linked to each other (they share a split anyway).
  Measured on the shared samples: a resized (256-700 px) and JPEG re-encoded (quality 50-95) copy of a
  slice is 0-2 bits from the original; in the demo release (40 images, 10 sources) images of different
  patients are 14 bits or more apart, while written slices of one small volume can be 2-6 bits apart
  (never linked: one patient).  Candidate pairs come from multi-index hashing (the 64
  bits cut into ``threshold + 1`` bands: two hashes within the threshold share at least one band
  exactly), so no all-pairs comparison is made.

The split and drop decisions are made in :mod:`pipeline.versions.splits`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import hashlib
from dataclasses import dataclass

import imagehash
from typing import Any

import numpy as np
from PIL import Image

from schemas.records import CaseSummary


def normalised(img: np.ndarray) -> np.ndarray:
    """The display pixels as compared: uint8, grey when an RGB(A) image's colour channels are equal, alpha
    dropped."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise TypeError(f"display images are uint8, got {a.dtype}")
    if a.ndim == 3:
        if a.shape[2] == 4:
            a = a[:, :, :3]
        if a.shape[2] == 1 or (np.array_equal(a[:, :, 0], a[:, :, 1]) and np.array_equal(a[:, :, 0], a[:, :, 2])):
            a = a[:, :, 0]
    return np.ascontiguousarray(a)


def image_fingerprint(img: np.ndarray) -> tuple[str, str]:
    """(sha256 of the normalised pixels and their shape, phash as 16 hex digits)."""
    a = normalised(img)
    h = hashlib.sha256(f"{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest(), str(imagehash.phash(Image.fromarray(a)))


@dataclass(frozen=True)
class Member:
    """One image of one case."""

    source: str
    case_id: str
    patient: str
    image: str
    axis: str
    slice_index: int
    pixel: str
    phash: int


@dataclass
class Group:
    kind: str  # exact | near
    distance: int  # largest phash distance between two members (0 for exact)
    members: list[Member]

    @property
    def patients(self) -> list[str]:
        return sorted({m.patient for m in self.members})


def members_of(summaries: Sequence[CaseSummary]) -> list[Member]:
    """Every fingerprinted image of the cases that have rows."""
    out = []
    for s in summaries:
        if not s.rows:
            continue
        for im in s.images:
            if im.pixel_sha256 and im.phash:
                out.append(Member(s.source, s.case_id, s.patient, im.rel, im.axis, im.slice_index, im.pixel_sha256,
                                  int(im.phash, 16)))
    return out


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x)  # uint8, same shape: 1 byte per entry (unpackbits needed 72)


def _bands(threshold: int) -> list[tuple[int, int]]:
    """(shift, width) of ``threshold + 1`` bands covering 64 bits."""
    n = threshold + 1
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def iter_near_pairs(hashes: np.ndarray, threshold: int,
                    budget: int = 1 << 18) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index pairs (i < j, as two arrays per step) of distinct 64-bit hashes at most ``threshold`` bits apart
    (multi-index hashing: two such hashes agree on at least one of ``threshold + 1`` bands).  A pair can come
    more than once (from several bands).  Memory: ``budget`` distance entries at a time, however many pairs."""
    if threshold < 0 or len(hashes) < 2:
        return
    for shift, width in _bands(threshold):
        band = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(band, kind="stable")
        sb = band[order]
        cuts = np.flatnonzero(np.diff(sb)) + 1
        for idx in np.split(order, cuts):
            if len(idx) < 2:
                continue
            idx = np.sort(idx)
            h = hashes[idx]
            block = max(1, budget // len(idx))
            for start in range(0, len(idx), block):
                d = _popcount(h[start:start + block, None] ^ h[None, :])
                ii, jj = np.nonzero(d <= threshold)
                keep = ii + start < jj
                yield idx[ii[keep] + start], idx[jj[keep]]


def near_pairs(hashes: np.ndarray, threshold: int) -> set[tuple[int, int]]:
    """Index pairs (i < j) of distinct 64-bit hashes at most ``threshold`` bits apart, as a set."""
    return {(int(a), int(b)) for aa, bb in iter_near_pairs(hashes, threshold) for a, b in zip(aa, bb, strict=True)}


def _max_distance(hashes: list[int], budget: int = 1 << 20) -> int:
    """The largest bit distance between two of these 64-bit hashes (blocks of ``budget`` entries)."""
    h = np.array(sorted(set(hashes)), dtype=np.uint64)
    block = max(1, budget // len(h))
    return max(int(_popcount(h[s:s + block, None] ^ h[None, :]).max()) for s in range(0, len(h), block))


def find_groups(members: list[Member], near_threshold: int) -> list[Group]:
    """Groups of images of at least two patients, linked by exact (equal pixels) or near (phash within the
    threshold) duplicates between *different* patients, transitively (a group's patients end up in one
    split); slices of one patient are never linked to each other.  Deterministic order.

    Linking every cross-patient pair of members is what defines the groups; the same components come from
    far fewer edges, found and joined with numpy (hook and compress): a bucket
    (equal pixels, equal phash) holding two or more patients is connected as a whole; a near pair of phash
    buckets joins both unless they are one and the same single patient, and then each bucket is connected
    as a whole too.  Memory: a bounded batch of near pairs and a few integers per member."""
    n = len(members)
    if n == 0:
        return []
    patient = _codes([m.patient for m in members])
    edges: list[tuple[np.ndarray, np.ndarray]] = []
    _bucket_edges(_codes([m.pixel for m in members]), patient, None, edges)
    if near_threshold >= 0:
        hcode, uniq = _codes([m.phash for m in members], keys=True)
        first, single_patient, active = _bucket_edges(hcode, patient, None, edges)
        joined = _BucketComponents(len(uniq))
        for aa, bb in iter_near_pairs(np.array(uniq, dtype=np.uint64), near_threshold):
            same = single_patient[aa] & single_patient[bb] & (patient[first[aa]] == patient[first[bb]])
            aa, bb = aa[~same], bb[~same]
            if len(aa):
                joined.add(aa, bb)
                active[aa] = active[bb] = True
        _bucket_edges(hcode, patient, active & single_patient, edges)
        buckets = np.flatnonzero(active)
        edges.append((first[buckets], first[joined.representative()[buckets]]))
    label = _components(n, edges)
    order = np.argsort(label, kind="stable")
    cuts = np.flatnonzero(np.diff(label[order])) + 1
    groups = []
    for idx in np.split(order, cuts):
        if len(idx) < 2 or len(np.unique(patient[idx])) < 2:
            continue
        ms = sorted((members[i] for i in idx.tolist()),
                    key=lambda m: (m.source, m.case_id, m.axis, m.slice_index, m.image))
        exact = len({m.pixel for m in ms}) == 1
        dist = 0 if exact else _max_distance([m.phash for m in ms])
        groups.append(Group("exact" if exact else "near", dist, ms))
    groups.sort(key=lambda g: (g.members[0].source, g.members[0].case_id, g.members[0].axis,
                               g.members[0].slice_index, g.members[0].image))
    return groups


def _codes(values: list[Any], keys: bool = False) -> Any:
    """Integer codes of the values in sorted order of the distinct values (and those values, with ``keys``)."""
    uniq = sorted(set(values))
    index = {v: i for i, v in enumerate(uniq)}
    codes = np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))
    return (codes, uniq) if keys else codes


def _bucket_edges(code: np.ndarray, patient: np.ndarray, only: np.ndarray | None,
                  edges: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Star edges (member -> its bucket's first member) of the buckets with two or more patients, or of the
    buckets marked in ``only``.  Returns each bucket's first member, whether it holds a single patient, and
    an all-False mark per bucket."""
    k = int(code.max()) + 1
    order = np.lexsort((np.arange(len(code)), code))
    sc = code[order]
    starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])
    first = np.empty(k, dtype=np.int64)
    first[sc[starts]] = order[starts]
    lo = np.full(k, np.iinfo(np.int64).max)
    hi = np.full(k, -1)
    np.minimum.at(lo, code, patient)
    np.maximum.at(hi, code, patient)
    single = lo == hi
    star = ~single if only is None else only
    pick = star[code]
    if pick.any():
        members = np.flatnonzero(pick)
        edges.append((members, first[code[members]]))
    return first, single, np.zeros(k, dtype=bool)


class _BucketComponents:
    """Connected components of phash buckets joined by near pairs, merged every ``budget`` pairs so memory
    stays one batch of pairs and a label per bucket, however many pairs there are."""

    def __init__(self, k: int, budget: int = 1 << 18) -> None:
        self.k, self.budget = k, budget
        self.rep = np.arange(k)  # each bucket's representative (the smallest bucket of its component)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.size = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        self.pending.append((a, b))
        self.size += len(a)
        if self.size >= self.budget:
            self._merge()

    def _merge(self) -> None:
        if not self.pending:
            return
        nodes = np.arange(self.k)
        self.pending.append((nodes, self.rep))
        label = _components(self.k, self.pending)
        rep = np.full(int(label.max()) + 1, self.k)
        np.minimum.at(rep, label, nodes)
        self.rep = rep[label]
        self.pending, self.size = [], 0

    def representative(self) -> np.ndarray:
        self._merge()
        return self.rep


def _components(n: int, edges: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Each node's component, named by its smallest node, from edge arrays: hook each edge's larger root
    under the smaller, compress paths, repeat until every edge joins equal labels (numpy only: importing
    scipy's csgraph alone costs ~11 MB of resident memory in the build)."""
    label = np.arange(n)
    if not edges:
        return label
    a = np.concatenate([e[0] for e in edges])
    b = np.concatenate([e[1] for e in edges])
    while True:
        la, lb = label[a], label[b]
        if np.array_equal(la, lb):
            return label
        low = np.minimum(la, lb)
        np.minimum.at(label, la, low)
        np.minimum.at(label, lb, low)
        while True:  # pointer jumping: every node points at its root
            nxt = label[label]
            if np.array_equal(nxt, label):
                break
            label = nxt


