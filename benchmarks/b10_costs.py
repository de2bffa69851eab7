"""B10: the costs of issue 10 item 6, each before and after in one run.

1. TotalSegmentator's per-structure mask folder vs the combined label map of the same case
   (adapter.load, best of N). Before: the previous packing (nibabel read of each mask, a C-order uint16
   layer, ``layer[fg].any()`` and ``layer[fg] = id`` on the Fortran-ordered mask) timed on the first
   ``--before-masks`` files and scaled to all 117; after: run reader + one packer in the files' order.
   Then the mask folder read three ways (every byte inflated by ISA-L, the sparse inflater, the sparse
   inflater with the case's files read on two threads) against the label map on one and two threads, and
   both once more with the volume buffers of the previous load reused, as a worker process runs them
   (pipeline/ingest/buffers.py: no fresh pages to fault in).
2. gzip: reading the 512x512x300 CT (``read_nifti``) and draining all 117 mask files, zlib vs ISA-L.
   The B2 floor comparison is in benchmarks/b2_end_to_end.py.
3. ``regions_2d`` on SA-Med2D-style instance masks and label maps: the kernel's per-call scratch of
   65,536 label slots (before) vs sized to the slice's largest label (after), same code otherwise.

    python -m benchmarks.b10_costs [--corpus DIR] [--shape 512,512,300] [--repeat 3] [--before-masks 8]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def old_mask_folder_pack(files: list[Path], shape: tuple[int, ...]) -> None:
    """The packing this change replaced (sources/nifti.py before): full masks, C-order layers."""
    import nibabel as nib

    layers: list[np.ndarray] = []
    for lid, f in enumerate(files, start=1):
        mask = np.asanyarray(nib.load(str(f)).dataobj)
        fg = mask > 0
        if not fg.any():
            continue
        for arr in layers:
            if not arr[fg].any():
                break
        else:
            arr = np.zeros(shape, np.uint16)
            layers.append(arr)
        arr[fg] = lid


MASK_CONFIGS = {  # name: (layout, MEDREG_READ_THREADS, MEDREG_MASK_INFLATE, volume buffers reused)
    "label map, 1 thread": ("labelmap", "1", "sparse", False),
    "label map, 2 threads": ("labelmap", "2", "sparse", False),
    "label map, 1 thread, reused buffers": ("labelmap", "1", "sparse", True),
    "masks, inflate every byte, 1 thread (before)": ("masks", "1", "stream", False),
    "masks, sparse inflater, 1 thread": ("masks", "1", "sparse", False),
    "masks, sparse inflater, 2 threads": ("masks", "2", "sparse", False),
    "masks, sparse inflater, 1 thread, reused buffers": ("masks", "1", "sparse", True),
}


def mask_folders(corpus: Path, repeat: int, before_masks: int) -> dict[str, tuple[float, float]]:
    from pipeline.ingest import buffers
    from pipeline.ingest.readers.nifti import read_nifti
    from sources.base import get_adapter, load_card

    loaders = {}
    for layout in ("labelmap", "masks"):
        card = load_card(str(corpus / "cards" / f"corpus-ct-{layout}.yaml"))
        adapter = get_adapter(card, corpus / "ct")
        ref = adapter.discover()[0]
        adapter.load(ref)  # numba compile / cache load
        loaders[layout] = (adapter, ref)
    wall = {k: 1e9 for k in MASK_CONFIGS}
    cpu = {k: 1e9 for k in MASK_CONFIGS}
    saved = {k: os.environ.get(k) for k in ("MEDREG_READ_THREADS", "MEDREG_MASK_INFLATE")}
    try:
        for _ in range(repeat):  # interleaved: the machine's load changes between runs
            for name, (layout, threads, inflate, reuse) in MASK_CONFIGS.items():
                os.environ["MEDREG_READ_THREADS"], os.environ["MEDREG_MASK_INFLATE"] = threads, inflate
                adapter, ref = loaders[layout]
                with buffers.reuse_buffers() if reuse else contextlib.nullcontext():
                    if reuse:
                        adapter.load(ref)  # a worker's buffers are those of its previous case
                    t0, c0 = time.perf_counter(), time.process_time()
                    adapter.load(ref)
                wall[name] = min(wall[name], time.perf_counter() - t0)
                cpu[name] = min(cpu[name], time.process_time() - c0)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    files = sorted((corpus / "ct" / "s0001" / "segmentations").glob("*.nii.gz"))
    shape = read_nifti(corpus / "ct" / "s0001" / "segmentations.nii.gz")[0].shape
    before = best(lambda: old_mask_folder_pack(files[:before_masks], shape), 1) / before_masks
    after = (wall["masks, sparse inflater, 1 thread"] - wall["label map, 1 thread"]) / len(files)
    print(f"\n1. per-structure masks ({len(files)} files) vs combined label map, adapter.load, best of {repeat}")
    for name in MASK_CONFIGS:
        _, threads, _, reuse = MASK_CONFIGS[name]
        base = next(b for b, c in MASK_CONFIGS.items() if c[0] == "labelmap" and (c[1], c[3]) == (threads, reuse))
        print(f"   {name:<46}{wall[name]:6.2f} s wall {cpu[name]:6.2f} s CPU = {wall[name] / wall[base]:.2f}x "
              f"(CPU {cpu[name] / cpu[base]:.2f}x) the {base}")
    print(f"   per mask: before {before:.3f} s (the first packing, measured on {before_masks} masks; x{len(files)} = "
          f"{before * len(files):.0f} s per case), now {after:.3f} s -> {before / max(after, 1e-9):.0f}x less")
    return {k: (wall[k], cpu[k]) for k in MASK_CONFIGS}


def gzip_paths(corpus: Path, repeat: int) -> None:
    import nibabel as nib

    from pipeline.ingest.readers.gz import gunzip_chunks
    from pipeline.ingest.readers.nifti import read_nifti

    ct = corpus / "ct" / "s0001" / "ct.nii.gz"
    files = sorted((corpus / "ct" / "s0001" / "segmentations").glob("*.nii.gz"))
    res = {"nibabel": best(lambda: np.asanyarray(nib.load(str(ct)).dataobj), repeat)}
    drain = {}
    for b in ("zlib", "isal"):
        res[b] = best(lambda b=b: read_nifti(ct, backend_name=b), repeat)
        drain[b] = best(lambda b=b: [sum(len(c) for c in gunzip_chunks(f, backend_name=b)) for f in files], 1)
    print(f"\n2. gzip: read_nifti of the {ct.stat().st_size / 2**20:.0f} MiB CT ({ct.name}), best of {repeat}")
    print(f"   nibabel (zlib, whole file)   {res['nibabel']:6.2f} s")
    print(f"   ours, zlib chunks            {res['zlib']:6.2f} s")
    print(f"   ours, ISA-L chunks           {res['isal']:6.2f} s   -> "
          f"{res['zlib'] / res['isal']:.2f}x faster than zlib, {res['nibabel'] / res['isal']:.2f}x faster than nibabel")
    print(f"   inflate all {len(files)} mask files: zlib {drain['zlib']:.2f} s, ISA-L {drain['isal']:.2f} s "
          f"({drain['zlib'] / drain['isal']:.2f}x)")


def regions_scratch(samples_root: str, repeat: int) -> None:
    from benchmarks.corpus import make_slice_2d
    from pipeline.regions import boxes

    labels = [make_slice_2d(samples_root, i, 0)[1] for i in range(60)]
    masks = [(lab == v).astype(np.uint8) for lab in labels for v in np.unique(lab) if v][:400]
    names = {i: f"t{i}" for i in range(1, 256)}
    sizes = sorted({m.shape[::-1] for m in masks})
    jobs = {
        "instance masks, label policy, min_pixels 4 (SA-Med2D card)":
            (masks, dict(policy="label", min_pixels=4, instance=True)),
        "uint16 label maps, component policy, min_pixels 20":
            ([lab.astype(np.uint16) for lab in labels], dict(policy="component", min_pixels=20)),
    }
    sized = boxes._scratch_size
    print(f"\n3. regions_2d scratch: {len(masks)} masks / {len(labels)} label maps, sizes {sizes}, best of {repeat}")
    for name, (items, kw) in jobs.items():
        t = {"before": 1e9, "after": 1e9}
        try:
            for _ in range(repeat):  # interleaved: the machine's load changes between runs
                for tag, fn in (("before", lambda arr, nlab: nlab), ("after", sized)):
                    boxes._scratch_size = fn
                    for it in items[:3]:
                        boxes.regions_2d(it, names, **kw)
                    t[tag] = min(t[tag], best(lambda items=items, kw=kw: [boxes.regions_2d(it, names, **kw)
                                                                          for it in items], 1))
        finally:
            boxes._scratch_size = sized
        per = {k: v / len(items) * 1e3 for k, v in t.items()}
        print(f"   {name}: before {per['before']:.3f} ms, after {per['after']:.3f} ms per call "
              f"-> {t['before'] / t['after']:.2f}x")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=None, help="a corpus folder with CT case s0001 in both layouts")
    ap.add_argument("--shape", default="512,512,300")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--before-masks", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="a 256x256x120 case, fewer repeats")
    args = ap.parse_args(argv)
    from flows.samples import find_samples_root

    samples = str(find_samples_root(["totalseg-nifti"]))
    with tempfile.TemporaryDirectory() as td:
        corpus = Path(args.corpus) if args.corpus else Path(td)
        if not args.corpus:
            from benchmarks.corpus import generate

            shape = (256, 256, 120) if args.quick else tuple(int(v) for v in args.shape.split(","))
            generate(corpus, ct=1, ct_shape=shape, samples_root=samples, progress=False)  # type: ignore[arg-type]
        repeat = 1 if args.quick else args.repeat
        print(f"B10 on {os.cpu_count()} cores; case s0001 of {corpus}")
        mask_folders(corpus, repeat, args.before_masks)
        gzip_paths(corpus, repeat)
        regions_scratch(samples, repeat)


if __name__ == "__main__":
    main()
