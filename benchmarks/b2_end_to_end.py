"""B2: one realistic CT case end to end vs the floor (decompress once + PNG-encode the written slices).

Synthetic 512x512x300 int16 CT (HU-like) with organ-like labels, written as .nii.gz.  Ours:
``process_case`` (load, orient, boxes, window, PNG, samples, rule validation), with .nii.gz read
through ISA-L (the default) and through zlib.  Floor: nibabel (zlib) decompression of image and
labels + PNG encoding of the same slices, and the same with ISA-L decompression.  Prints ms and ratios.

    python -m benchmarks.b2_end_to_end [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from isal import isal_zlib
from PIL import Image


def make_case(folder: Path, shape=(512, 512, 300), seed=0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x, y = np.ogrid[:nx, :ny]
    img = np.full(shape, -1000, np.int16)
    lab = np.zeros(shape, np.uint8)
    body = ((x - nx / 2) ** 2 / (0.45 * nx) ** 2 + (y - ny / 2) ** 2 / (0.35 * ny) ** 2) <= 1
    organs = []
    for lid in range(1, 41):
        cx, cy = rng.uniform(0.25, 0.75) * nx, rng.uniform(0.3, 0.7) * ny
        rx, ry = rng.uniform(0.02, 0.12) * nx, rng.uniform(0.02, 0.1) * ny
        z0 = int(rng.integers(0, nz - 20))
        z1 = int(min(nz, z0 + rng.integers(10, nz // 2)))
        organs.append((lid, ((x - cx) ** 2 / rx**2 + (y - cy) ** 2 / ry**2) <= 1, z0, z1, int(rng.integers(-50, 200))))
    noise = rng.normal(0, 15, (nx, ny)).astype(np.int16)
    for k in range(nz):
        sl = img[:, :, k]
        sl[body] = 40
        for lid, m, z0, z1, hu in organs:
            if z0 <= k < z1:
                sl[m] = hu
                lab[:, :, k][m] = lid
        sl += noise
    aff = np.diag([0.8, 0.8, 1.5, 1.0])
    ip, lp = folder / "ct.nii.gz", folder / "seg.nii.gz"
    nib.save(nib.Nifti1Image(img, aff), str(ip))
    nib.save(nib.Nifti1Image(lab, aff), str(lp))
    return ip, lp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="256x256x100 volume")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    shape = (256, 256, 100) if args.quick else (512, 512, 300)

    from pipeline.release.images import ImageStore, encode_png
    from pipeline.release.case import process_case
    from pipeline.validate.stage import case_validators_for
    from schemas.card import SourceCard
    from schemas.config import ReleaseConfig
    from sources.base import get_adapter

    with tempfile.TemporaryDirectory() as td:
        folder = Path(td)
        ip, lp = make_case(folder, shape)
        card = SourceCard(
            name="bench-ct", title="synthetic", adapter="nifti_labelmap", licence="CC0-1.0", modality="CT",
            body_region="abdomen", root=str(folder), labels={str(i): "liver" if i == 1 else f"rib_left_{(i % 12) + 1}" for i in range(1, 41)},
            box_policy={"mode": "label", "min_pixels": 4},
            layout={"cases": [{"id": "case", "image": "ct.nii.gz", "labels": "seg.nii.gz"}]},
        )
        cfg = ReleaseConfig.model_validate({"name": "b", "version": "1", "sources": [{"card": "x"}],
                                            "slicing": {"max_slices_per_case": 8, "min_spacing_mm": 10}})
        adapter = get_adapter(card, folder)
        (ref,) = adapter.discover()
        validators = case_validators_for(cfg.validation)

        times: dict[str, list[float]] = {"ours isal": [], "ours zlib": [], "floor zlib": [], "floor isal": []}
        n_written = 0
        for i in range(args.repeat):
            for backend in ("isal", "zlib"):  # interleaved; MEDREG_GZIP picks the inflater of read_nifti
                os.environ["MEDREG_GZIP"] = backend
                store = ImageStore(folder / f"store{i}-{backend}")
                t0 = time.perf_counter()
                res = process_case(card, adapter, ref, cfg, store, None, validators)
                times[f"ours {backend}"].append(time.perf_counter() - t0)
                assert not res.errors, res.errors
            os.environ.pop("MEDREG_GZIP", None)
            n_written = len(res.images)
            imgs = [np.asarray(Image.open(store.path(r.rel))) for r in res.images]
            t0 = time.perf_counter()
            np.asanyarray(nib.load(str(ip)).dataobj)
            np.asanyarray(nib.load(str(lp)).dataobj)
            for im in imgs:
                encode_png(im, cfg.output.png_compress_level)
            times["floor zlib"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            isal_zlib.decompress(ip.read_bytes(), wbits=31)
            isal_zlib.decompress(lp.read_bytes(), wbits=31)
            for im in imgs:
                encode_png(im, cfg.output.png_compress_level)
            times["floor isal"].append(time.perf_counter() - t0)
        b = {k: min(v) for k, v in times.items()}
        print(f"B2 end-to-end, volume {shape}, {n_written} slices written, best of {args.repeat}")
        print(f"  floor (nibabel decompress image+labels + PNG encode) {b['floor zlib'] * 1000:9.1f} ms")
        print(f"  floor (ISA-L decompress image+labels + PNG encode)   {b['floor isal'] * 1000:9.1f} ms")
        print(f"  ours  (process_case, .nii.gz through zlib)           {b['ours zlib'] * 1000:9.1f} ms")
        print(f"  ours  (process_case, .nii.gz through ISA-L)          {b['ours isal'] * 1000:9.1f} ms")
        print(f"  ratio ours/floor = {b['ours isal'] / b['floor zlib']:.2f}x against the nibabel floor (target <= 1.5x); "
              f"{b['ours isal'] / b['floor isal']:.2f}x against the ISA-L floor")
        print(f"  ISA-L vs zlib: ours {b['ours zlib'] / b['ours isal']:.2f}x faster, "
              f"floor {b['floor zlib'] / b['floor isal']:.2f}x faster")

if __name__ == "__main__":
    main()
