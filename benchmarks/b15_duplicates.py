"""Benchmark B15: cross-patient duplicate grouping (``find_groups``) on clusters of near-identical images.

A release's images are grouped by equal pixels or perceptual hashes (64-bit phash) at most
``near_threshold`` bits apart.  Real releases have large clusters of near-identical images (blank or
nearly blank slices, adjacent CT slices, a scale corpus resampled from one scan); in the 10,000-case
SA-Med2D-style scale corpus every image ended in one near-duplicate group, and the release step took
66 s and +52 MB there (issue 10, B4).  This benchmark makes N members in clusters of near hashes (each a
centre with 0-3 bits flipped, every member its own patient) and times the grouping against the previous
implementation, kept here as the baseline: all near pairs in one Python set (distances through
``np.unpackbits``: 72 bytes an entry) and a group's largest distance over all member pairs in Python.
Both must give the same groups.  Peak memory is traced (tracemalloc, numpy included) in a separate run.

Run: ``python -m benchmarks.b15_duplicates [--n 2000,6000] [--clusters 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.versions.duplicates import Group, Member, UnionFind, _bands, find_groups

THRESHOLD = 4  # the config's default near_threshold


def members(n: int, clusters: int, seed: int = 0) -> list[Member]:
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2**63, clusters, dtype=np.uint64)
    out = []
    for i in range(n):
        h = int(centres[i % clusters])
        for b in rng.choice(64, int(rng.integers(0, 4)), replace=False):
            h ^= 1 << int(b)
        out.append(Member("bench", f"c{i:06d}", f"p{i:06d}", f"images/{i:06d}.png", "axial", 0, f"{i:064x}", h))
    return out


# ---------------------------------------------------------------------------- the previous implementation
def _previous_popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1).reshape(x.shape)


def _previous_near_pairs(hashes: np.ndarray, threshold: int, block: int = 2048) -> set[tuple[int, int]]:
    pairs: set[tuple[int, int]] = set()
    for shift, width in _bands(threshold):
        band = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(band, kind="stable")
        cuts = np.flatnonzero(np.diff(band[order])) + 1
        for idx in np.split(order, cuts):
            if len(idx) < 2:
                continue
            idx = np.sort(idx)
            h = hashes[idx]
            for start in range(0, len(idx), block):
                d = _previous_popcount(h[start:start + block, None] ^ h[None, :])
                ii, jj = np.nonzero(d <= threshold)
                for a, b in zip(ii + start, jj, strict=True):
                    if a < b:
                        pairs.add((int(idx[a]), int(idx[b])))
    return pairs


def _link(uf: UnionFind, members: list[Member], a: list[int], b: list[int]) -> None:
    """Union every member of ``a`` with every member of ``b`` of another patient (one link per patient pair
    suffices: the union is transitive)."""
    seen: set[tuple[str, str]] = set()
    for i in a:
        for j in b:
            pi, pj = members[i].patient, members[j].patient
            if pi != pj and (pi, pj) not in seen:
                seen.add((pi, pj))
                uf.union(i, j)


def previous_find_groups(ms: list[Member], near_threshold: int) -> list[Group]:
    uf = UnionFind(len(ms))
    by_pixel: dict[str, list[int]] = defaultdict(list)
    by_hash: dict[int, list[int]] = defaultdict(list)
    for i, m in enumerate(ms):
        by_pixel[m.pixel].append(i)
        by_hash[m.phash].append(i)
    for idx in by_pixel.values():
        _link(uf, ms, idx, idx)
    for idx in by_hash.values():
        _link(uf, ms, idx, idx)
    uniq = sorted(by_hash)
    for a, b in sorted(_previous_near_pairs(np.array(uniq, dtype=np.uint64), near_threshold)):
        _link(uf, ms, by_hash[uniq[a]], by_hash[uniq[b]])
    comps: dict[int, list[Member]] = defaultdict(list)
    for i, m in enumerate(ms):
        comps[uf.find(i)].append(m)
    groups = []
    for group in comps.values():
        if len({m.patient for m in group}) < 2:
            continue
        group = sorted(group, key=lambda m: (m.source, m.case_id, m.axis, m.slice_index, m.image))
        exact = len({m.pixel for m in group}) == 1
        dist = 0 if exact else max(bin(a.phash ^ b.phash).count("1") for a in group for b in group)
        groups.append(Group("exact" if exact else "near", dist, group))
    groups.sort(key=lambda g: (g.members[0].case_id,))
    return groups


# ---------------------------------------------------------------------------- measuring
def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _peak_mb(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="2000,6000")
    ap.add_argument("--clusters", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="N = 1000")
    args = ap.parse_args(argv)
    ns = [1000] if args.quick else [int(v) for v in args.n.split(",")]
    print(f"B15: find_groups over N images in {args.clusters} clusters of near hashes (threshold {THRESHOLD})")
    print(f"{'N':>7s} {'previous s':>11s} {'now s':>8s} {'ratio':>7s} {'previous MB':>12s} {'now MB':>8s} "
          f"{'groups':>7s}")
    find_groups(members(50, 2), THRESHOLD)  # warm-up
    for n in ns:
        ms = members(n, args.clusters)
        t_old, old = _timed(lambda ms=ms: previous_find_groups(ms, THRESHOLD))
        t_new, new = _timed(lambda ms=ms: find_groups(ms, THRESHOLD))
        key = sorted((g.kind, g.distance, tuple(m.case_id for m in g.members)) for g in old)
        if key != sorted((g.kind, g.distance, tuple(m.case_id for m in g.members)) for g in new):
            raise SystemExit("B15: the previous and the current grouping disagree")
        mb_old = _peak_mb(lambda ms=ms: previous_find_groups(ms, THRESHOLD))
        mb_new = _peak_mb(lambda ms=ms: find_groups(ms, THRESHOLD))
        print(f"{n:7d} {t_old:11.2f} {t_new:8.2f} {t_old / t_new:6.1f}x {mb_old:12.1f} {mb_new:8.1f} {len(new):7d}",
              flush=True)


if __name__ == "__main__":
    main()
