"""Benchmark B7: reading a CT DICOM series, ours vs SimpleITK.

Synthesises a ``300 x 512 x 512`` int16 CT series (realistic tags, one file per slice, file names and
InstanceNumbers shuffled, explicit VR little endian) in a temporary folder with pydicom, then times, best
of ``--repeats`` after one warm-up each (warm page cache for both):

* ``pipeline.ingest.readers.dicom.read_series(folder)`` -- ours: scan + group + sort by position + pixels +
  rescale to HU (int16) + notes;
* SimpleITK alone: ``ImageSeriesReader.GetGDCMSeriesFileNames(folder)`` + ``Execute()`` (GDCM sorts and
  rescales too), then ``GetArrayViewFromImage``.

Both results are checked to be equal voxel for voxel.  Target: ours <= 1.2x SimpleITK.

Run: ``python -m benchmarks.b7_dicom_series [--slices 300] [--size 512] [--repeats 5] [--workers N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.ingest.readers.dicom import read_series
from tests.synthetic_dicom import write_synthetic_series


def make_series(folder: Path, slices: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    # body-like phantom: air outside an ellipse, soft tissue with noise, a "spine"
    yy, xx = np.mgrid[0:size, 0:size]
    body = ((yy - size / 2) / (0.38 * size)) ** 2 + ((xx - size / 2) / (0.45 * size)) ** 2 < 1
    base = np.where(body, 1024 + 40, 0).astype(np.int16)
    vol = np.empty((slices, size, size), np.int16)
    for k in range(slices):
        vol[k] = base + rng.integers(-20, 20, size=(size, size), dtype=np.int16) * body
    write_synthetic_series(folder, vol, spacing=(1.25, 0.78, 0.78), origin=(-200.0, -200.0, -400.0), seed=seed)


def time_best(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=None, help="reader threads (default: min(8, 2 x cores))")
    args = ap.parse_args(argv)
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory(prefix="b7-") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        make_series(folder, args.slices, args.size)
        t_write = time.perf_counter() - t

        def ours():
            return read_series(folder, workers=args.workers)

        def itk():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
            return reader.Execute()

        t_ours, s = time_best(ours, args.repeats)
        t_itk, img = time_best(itk, args.repeats)
        ref = sitk.GetArrayViewFromImage(img)
        same = bool(np.array_equal(s.array, ref))
    res = {
        "slices": args.slices, "size": args.size, "write_s": round(t_write, 2),
        "ours_ms": round(t_ours * 1e3, 1), "simpleitk_ms": round(t_itk * 1e3, 1),
        "ratio": round(t_ours / t_itk, 3), "equal": same, "dtype": str(s.array.dtype),
    }
    print(f"B7 DICOM series {args.slices} x {args.size} x {args.size} int16 (written in {t_write:.1f} s)")
    print(f"  ours (read_series)             {res['ours_ms']:8.1f} ms")
    print(f"  SimpleITK (GDCM names+Execute) {res['simpleitk_ms']:8.1f} ms")
    print(f"  ratio ours/SimpleITK           {res['ratio']:8.3f}   (target <= 1.2)   voxel-equal: {same}")
    return res


if __name__ == "__main__":
    main()
