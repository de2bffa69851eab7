"""Benchmark B1: per-slice label boxes of a CT-sized label volume.

Builds a synthetic ``300 x 512 x 512`` uint8 label volume with ~100 organ-like labels (ellipsoids of
varied sizes placed with a seeded generator) and times, best of ``--repeats`` after one warm-up call:

* ``arr.copy()`` -- the memory-bandwidth floor (one read + one write of the volume);
* ``pipeline.regions.boxes.slice_label_boxes`` -- ours: one pass, every slice and every label;
* ``scipy.ndimage.find_objects`` slice by slice (extents only, no counts);
* ``skimage.measure.regionprops`` slice by slice (extents + areas).

Run: ``python -m benchmarks.b1_boxes [--quick] [--repeats N] [--threads N]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np


def make_volume(shape: tuple[int, int, int], n_labels: int = 100, seed: int = 0) -> np.ndarray:
    """Deterministic organ-like label volume: ``n_labels`` ellipsoids inside an elliptic 'body'.

    A few large organs (liver/lung-sized), many mid-sized ones and small ones (vessels, glands);
    later labels overwrite earlier ones where they overlap, as adjacent organs touch.
    """
    rng = np.random.default_rng(seed)
    K, R, C = shape
    vol = np.zeros(shape, np.uint8)
    body_r, body_c = R * 0.38, C * 0.45  # body cross-section radii (rows, cols)
    for lab in range(1, n_labels + 1):
        frac = rng.random()
        if lab <= 6:  # large organs
            size = rng.uniform(0.18, 0.30)
        elif frac < 0.6:
            size = rng.uniform(0.05, 0.12)
        else:
            size = rng.uniform(0.015, 0.05)
        rk = max(2.0, size * K * rng.uniform(0.8, 1.6))
        rr = max(2.0, size * R * rng.uniform(0.6, 1.0))
        rc = max(2.0, size * C * rng.uniform(0.6, 1.0))
        # centre inside the body ellipse
        ang, rad = rng.uniform(0, 2 * np.pi), np.sqrt(rng.random()) * 0.8
        cr = R / 2 + rad * body_r * np.sin(ang)
        cc = C / 2 + rad * body_c * np.cos(ang)
        ck = rng.uniform(0, K)
        k0, k1 = int(max(0, ck - rk)), int(min(K, ck + rk + 1))
        r0, r1 = int(max(0, cr - rr)), int(min(R, cr + rr + 1))
        c0, c1 = int(max(0, cc - rc)), int(min(C, cc + rc + 1))
        if k0 >= k1 or r0 >= r1 or c0 >= c1:
            continue
        kk = ((np.arange(k0, k1) - ck) / rk)[:, None, None] ** 2
        rr2 = ((np.arange(r0, r1) - cr) / rr)[None, :, None] ** 2
        cc2 = ((np.arange(c0, c1) - cc) / rc)[None, None, :] ** 2
        inside = (kk + rr2 + cc2) <= 1.0
        sub = vol[k0:k1, r0:r1, c0:c1]
        sub[inside] = lab
    return vol


def best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (numba JIT / cache load, page faults)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="60x256x256 volume, fewer repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="numba threads (default: all)")
    ap.add_argument("--skip-slow", action="store_true", help="do not time regionprops")
    args = ap.parse_args(argv)

    import numba
    from scipy import ndimage
    from skimage.measure import regionprops

    from pipeline.regions.boxes import slice_label_boxes

    if args.threads:
        numba.set_num_threads(args.threads)
    shape = (60, 256, 256) if args.quick else (300, 512, 512)
    repeats = args.repeats or (3 if args.quick else 5)
    t0 = time.perf_counter()
    vol = make_volume(shape)
    build_s = time.perf_counter() - t0
    fg = float((vol > 0).mean())
    n_present = int(np.unique(vol).size - 1)
    print(
        f"volume {shape} uint8, {n_present} labels, {fg:.1%} voxels labelled "
        f"(built in {build_s:.1f} s); numba threads {numba.get_num_threads()}; best of {repeats}"
    )

    res = slice_label_boxes(vol)
    print(f"ours: {len(res)} (slice, label) boxes")

    def find_objects_per_slice() -> None:
        for k in range(vol.shape[0]):
            ndimage.find_objects(vol[k])

    def regionprops_per_slice() -> None:
        for k in range(vol.shape[0]):
            for p in regionprops(vol[k]):
                _ = p.bbox, p.area

    timings = {
        "arr.copy() (floor)": best_of(vol.copy, repeats),
        "ours slice_label_boxes": best_of(lambda: slice_label_boxes(vol), repeats),
        "scipy find_objects/slice": best_of(find_objects_per_slice, repeats),
    }
    if not args.skip_slow:
        timings["skimage regionprops/slice"] = best_of(regionprops_per_slice, max(1, repeats // 2))
    ours = timings["ours slice_label_boxes"]
    print(f"{'method':<28}{'ms':>10}{'x ours':>10}")
    for name, ms in timings.items():
        print(f"{name:<28}{ms:>10.1f}{ms / ours:>10.2f}")
    print(
        f"ours = {ours / timings['arr.copy() (floor)']:.2f} x copy; "
        f"find_objects = {timings['scipy find_objects/slice'] / ours:.1f} x ours"
        + (
            f"; regionprops = {timings['skimage regionprops/slice'] / ours:.1f} x ours"
            if "skimage regionprops/slice" in timings
            else ""
        )
    )
    return timings


if __name__ == "__main__":
    main()
