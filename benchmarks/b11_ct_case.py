"""B11: one full-size CT case by stage -- seconds and peak RSS -- and the projected full-dataset wall time.

The case is a corpus case (benchmarks/corpus.py: 512x512x300 int16 CT, ~110 TotalSegmentator labels),
in the combined label-map layout and in TotalSegmentator's per-structure layout. Stages are the pipeline
functions ``process_case`` calls, called one by one:

* read        adapter.load (decompress, parse, orient; for the mask folder: 117 files packed into layers)
* boxes       pipeline.ingest.convert.convert (3-D count pass for all axes, slice selection, window, square
              pixels, 2-D regions) -- the 3-D count pass alone is also shown, not added
* png         encode_png + the content-addressed image store
* language    rows_for_slice (sample generation, both languages)
* validation  the per-case rule validators (apply_rows_policy)
* write       rows serialised with orjson and written to one part file (what a case task writes)

Peak RSS per stage: the process's resident set sampled every 2 ms while the stage runs. Then
``process_case`` is timed whole, alone and as two processes at once (the throughput of two workers on
this machine), and 1,228 cases (TotalSegmentator v2) are projected from the measured per-case cost.

    python -m benchmarks.b11_ct_case [--corpus DIR] [--shape 512,512,300] [--repeat 2] [--no-parallel]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

N_CASES = 1228  # TotalSegmentator v2


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRss:
    """Highest RSS seen (sampled every ``period`` s) between enter and exit."""

    def __init__(self, period: float = 0.002) -> None:
        self.period, self.peak, self._stop = period, 0.0, threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.period)

    def __enter__(self) -> PeakRss:
        self.peak = rss_mb()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())


def stage(results: dict[str, list[tuple[float, float]]], name: str, fn: Callable[[], Any]) -> Any:
    with PeakRss() as peak:
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
    results.setdefault(name, []).append((dt, peak.peak))
    return out


def profile_case(corpus: Path, layout: str, out: Path) -> dict[str, list[tuple[float, float]]]:
    from pipeline.ingest.convert import convert
    from pipeline.regions.counts import slice_label_counts
    from pipeline.release.case import assign_split, rows_for_slice, task_mix
    from pipeline.core.ids import hash_patient
    from pipeline.core.atomic import write_bytes_atomic
    from pipeline.release.images import ImageStore, encode_png
    from pipeline.validate.base import ValidationItem
    from pipeline.validate.stage import apply_rows_policy, case_validators_for
    from schemas.config import load_config
    from sources.base import get_adapter, load_card

    card = load_card(str(corpus / "cards" / f"corpus-ct-{layout}.yaml"))
    cfg = load_config(corpus / "configs" / f"ct-{layout}.yaml")
    adapter = get_adapter(card, corpus / "ct")
    ref = adapter.discover()[0]
    import numpy as np

    slice_label_counts(np.zeros((3, 8, 8), np.uint8))  # numba: load the compiled kernels before timing
    slice_label_counts(np.zeros((3, 8, 8), np.uint16))
    res: dict[str, list[tuple[float, float]]] = {}
    study = stage(res, "read", lambda: adapter.load(ref))

    def box_pass() -> None:
        for layer in study.layers:
            slice_label_counts(layer.array, (0, 1))

    stage(res, "(3-D count pass alone, axial + coronal)", box_pass)
    conv = stage(res, "boxes", lambda: convert(study, card, card.box_policy, cfg.slicing))
    store = ImageStore(out / f"store-{layout}")
    level = cfg.output.png_compress_level
    rels = stage(res, "png", lambda: [store.put(encode_png(sl.image, level)) for sl in conv.slices])
    patient = hash_patient(ref.source, ref.patient_id)
    kw = dict(ref=ref, card=card, cfg=cfg, mix=task_mix(cfg, None), modality=study.modality,
              body_region=card.body_region, split=assign_split(ref.official_split, patient, cfg), patient=patient,
              vocabulary=adapter.vocabulary(), transform=study.transform)
    rows = stage(res, "language", lambda: [rows_for_slice(sl, image_rel=rel, **kw)
                                           for sl, (_sha, rel) in zip(conv.slices, rels, strict=True)])
    validators = case_validators_for(cfg.validation)

    def validate() -> list[dict[str, Any]]:
        kept: list[dict[str, Any]] = []
        for sl, (sha, _rel), rs in zip(conv.slices, rels, rows, strict=True):
            items = [ValidationItem(row=r, image=sl.image, label_slices=sl.label_slices, image_sha=sha) for r in rs]
            kept.extend(apply_rows_policy(items, validators, cfg.validation)[0])
        return kept

    kept = stage(res, "validation", validate)
    stage(res, "write", lambda: write_bytes_atomic(out / f"part-{layout}.jsonl",
                                                   b"".join(orjson.dumps(r) + b"\n" for r in kept)))
    res["rows"] = [(float(len(kept)), 0.0)]
    return res


def _whole_case(args: tuple[str, str, str]) -> float:
    corpus, layout, out = args
    from pipeline.release.case import process_case
    from pipeline.release.images import ImageStore
    from pipeline.validate.stage import case_validators_for
    from schemas.config import load_config
    from sources.base import get_adapter, load_card

    card = load_card(str(Path(corpus) / "cards" / f"corpus-ct-{layout}.yaml"))
    cfg = load_config(Path(corpus) / "configs" / f"ct-{layout}.yaml")
    adapter = get_adapter(card, Path(corpus) / "ct")
    ref = adapter.discover()[0]
    t0 = time.perf_counter()
    r = process_case(card, adapter, ref, cfg, ImageStore(Path(out)), None, case_validators_for(cfg.validation))
    assert not r.errors, r.errors
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=None, help="a corpus folder with at least one CT case (default: make one)")
    ap.add_argument("--shape", default="512,512,300")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--layouts", default="labelmap,masks")
    ap.add_argument("--no-parallel", action="store_true", help="skip the two-process run")
    ap.add_argument("--quick", action="store_true", help="a 256x256x120 case, one repeat")
    args = ap.parse_args(argv)
    if args.quick:
        args.shape, args.repeat = "256,256,120", 1
    layouts = args.layouts.split(",")
    with tempfile.TemporaryDirectory() as td:
        corpus = Path(args.corpus) if args.corpus else Path(td) / "corpus"
        if not args.corpus:
            from benchmarks.corpus import generate

            shape = tuple(int(v) for v in args.shape.split(","))
            generate(corpus, ct=2, ct_shape=shape, ct_layouts=tuple(layouts), progress=False)  # type: ignore[arg-type]
        out = Path(td) / "out"
        out.mkdir()
        whole: dict[str, float] = {}
        for layout in layouts:
            runs: dict[str, list[tuple[float, float]]] = {}
            for _ in range(args.repeat):
                for k, v in profile_case(corpus, layout, out).items():
                    runs.setdefault(k, []).extend(v)
            report(layout, runs)
            whole[layout] = min(_whole_case((str(corpus), layout, str(out / f"w{i}"))) for i in range(args.repeat))
            print(f"  process_case whole, one process: {whole[layout]:.2f} s")
            if not args.no_parallel:
                with mp.get_context("spawn").Pool(2) as pool:
                    pool.map(_whole_case, [(str(corpus), layout, str(out / "warm"))] * 2)  # imports, numba cache
                    t0 = time.perf_counter()
                    pool.map(_whole_case, [(str(corpus), layout, str(out / f"p{i}")) for i in range(2)])
                    two = time.perf_counter() - t0
                factor = 2 * whole[layout] / two
                print(f"  two cases in two processes at once: {two:.2f} s wall -> {factor:.2f}x the throughput of one")
            else:
                factor = 2.0
            one_machine = N_CASES * whole[layout] / factor
            cluster = N_CASES * whole[layout] / 16
            print(f"  projected {N_CASES} cases: one 2-core machine (2 processes, {factor:.2f}x) "
                  f"{one_machine / 3600:.2f} h; 16 workers (one case per worker-core at this machine's per-case "
                  f"cost, storage not limiting) {cluster / 60:.1f} min")
        if len(whole) == 2:
            print(f"per-structure masks / combined label map (process_case): {whole['masks'] / whole['labelmap']:.2f}x")


def report(layout: str, runs: dict[str, list[tuple[float, float]]]) -> None:
    rows = runs.pop("rows")[0][0]
    print(f"\nB11 one full-size CT case, {layout} layout ({int(rows)} rows kept), best of {len(runs['read'])}:")
    print(f"  {'stage':<40}{'seconds':>9}{'peak RSS MB':>13}")
    total = 0.0
    for name, vals in runs.items():
        best = min(v[0] for v in vals)
        peak = max(v[1] for v in vals)
        if not name.startswith("("):
            total += best
        print(f"  {name:<40}{best:9.3f}{peak:13.0f}")
    print(f"  {'sum of stages':<40}{total:9.3f}")


if __name__ == "__main__":
    main()
