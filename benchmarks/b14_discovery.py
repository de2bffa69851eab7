"""Benchmark B14: mask-folder discovery, one folder listing (``FolderIndex``) vs ``Path.glob`` per image.

Writes N empty image files and 2N mask files (``<stem>_<label>.png``) into two folders of a temporary
directory, then times the per-image mask lookup that ``mask_folder_2d`` discovery does for every image:
``Path.glob("masks/<stem>_*.png")`` (the old code: every call rescans the folder, N^2 entries in all) and
``FolderIndex.glob`` (the folder listed once, a bisect on the literal prefix). Both give the same files.

Run: ``python -m benchmarks.b14_discovery [--n 1000,4000] [--quick]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sources.base import FolderIndex


def _tree(root: Path, n: int) -> list[str]:
    (root / "images").mkdir()
    (root / "masks").mkdir()
    stems = [f"case{i:06d}" for i in range(n)]
    for s in stems:
        (root / "images" / f"{s}.png").touch()
        for label in ("liver", "spleen"):
            (root / "masks" / f"{s}_{label}.png").touch()
    return stems


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="1000,4000")
    ap.add_argument("--quick", action="store_true", help="N = 500, 1000")
    args = ap.parse_args(argv)
    ns = [500, 1000] if args.quick else [int(v) for v in args.n.split(",")]
    print("B14: per-image mask lookup over N images with 2N masks in one folder")
    print(f"{'N':>7s} {'Path.glob s':>12s} {'FolderIndex s':>14s} {'ratio':>8s}")
    for n in ns:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            stems = _tree(root, n)
            t = time.perf_counter()
            old = [sorted(p for p in root.glob(f"masks/{s}_*.png") if p.is_file()) for s in stems]
            t_old = time.perf_counter() - t
            t = time.perf_counter()
            index = FolderIndex(root)
            new = [index.glob(f"masks/{s}_*.png") for s in stems]
            t_new = time.perf_counter() - t
            if old != new:
                raise SystemExit("B14: FolderIndex and Path.glob disagree")
            print(f"{n:7d} {t_old:12.3f} {t_new:14.3f} {t_old / t_new:7.0f}x")


if __name__ == "__main__":
    main()
