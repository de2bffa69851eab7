"""Benchmark B8: sample generation (``pipeline.language.tasks.generate``) against writing the rows.

Builds a deterministic set of synthetic display slices holding ``--regions`` regions in total (CT-like
abdomen/chest slices: 4-16 terms per slice drawn from the TotalSegmentator vocabulary, some terms with
several components), then times, in the same process with the steps taking turns in every round (one
warm-up round, then ``--repeats`` rounds):

* ``generate``         -- ours: every sample of every slice for the default task mix
  (1 region->text, 1 text->region, 1 grounded report per slice per language; en + zh);
* ``orjson in memory`` -- baseline 1: serialising those same rows (InternVL chat + meta, as the builder
  writes them) with ``orjson.dumps``, in memory;
* ``orjson write``     -- baseline 2: the release writer's path with orjson alone (shards of 1,000 rows,
  temp file, fsync, rename).

The target is generate <= 3 x orjson; the strict reading is against baseline 1 (baseline 2 depends on the
disk's fsync time).  Both ratios are printed, best round against best round, with the medians beside them
to show the spread on a shared machine.  The time the cyclic garbage collector spent inside the best
generate round is printed too: it scans every live object (here also the fixtures: the slices and the
baseline rows) and lands on whichever step allocates when a collection is due, i.e. on generate.

Run: ``python -m benchmarks.b8_samples [--quick] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.regions.coords import normalise_box
from pipeline.language.glossary import load_label_map
from pipeline.language.tasks import Generated, SliceContext, TaskMix, generate
from pipeline.core.types import Region

MIX = TaskMix(
    tasks={"region_to_text": 1.0, "text_to_region": 1.0, "grounded_report": 1.0},
    langs=["en", "zh"],
    negative_ratio=0.05,
    max_regions_per_sample=8,
)


def make_slices(n_regions: int, seed: int = 0) -> list[SliceContext]:
    """Slices until ``n_regions`` regions exist (deterministic)."""
    r = np.random.default_rng(seed)
    vocab = sorted(set(load_label_map("totalseg_total").values()))
    slices: list[SliceContext] = []
    total = 0
    while total < n_regions:
        w, h = 512, int(r.integers(384, 513))
        n_terms = int(r.integers(4, 17))
        terms = [vocab[i] for i in r.choice(len(vocab), n_terms, replace=False)]
        regions: list[Region] = []
        for t in terms:
            for comp in range(int(r.choice([1, 1, 1, 1, 2, 3]))):
                if total + len(regions) >= n_regions:
                    break
                x0, y0 = int(r.integers(0, w - 40)), int(r.integers(0, h - 40))
                x1, y1 = x0 + int(r.integers(4, 120)), y0 + int(r.integers(4, 120))
                px = (x0, y0, min(x1, w - 1), min(y1, h - 1))
                regions.append(Region(t, px, normalise_box(px, w, h), (px[2] - px[0]) * (px[3] - px[1]), comp))
        if not regions:
            break
        total += len(regions)
        present = {rg.term for rg in regions}
        slices.append(SliceContext("CT", "abdomen", "axial", w, h, regions, [t for t in vocab if t not in present]))
    return slices


def make_rngs(n: int) -> list[np.random.Generator]:
    """Per-slice generators (made by the builder, outside the timed generation)."""
    return [np.random.default_rng([7, i]) for i in range(n)]


def run_generate(slices: list[SliceContext], rngs: list[np.random.Generator] | None = None) -> list[list[Generated]]:
    rngs = rngs or make_rngs(len(slices))
    return [generate(ctx, MIX, rng) for ctx, rng in zip(slices, rngs, strict=True)]


def to_rows(slices: list[SliceContext], gens: list[list[Generated]]) -> list[dict]:
    """Rows shaped as pipeline.release.case writes them (InternVL chat + meta)."""
    rows = []
    for i, (ctx, gs) in enumerate(zip(slices, gens, strict=True)):
        for g in gs:
            rows.append(
                {
                    "id": f"bench-{i}-{g.task}-{g.lang}-{g.key}",
                    "image": f"images/ab/{i:064x}.png",
                    "width": ctx.width,
                    "height": ctx.height,
                    "conversations": g.conversations,
                    "meta": {
                        "task": g.task, "subtask": g.subtask, "lang": g.lang, "source": "bench",
                        "licence": "CC-BY-4.0", "case_id": f"case{i // 8}", "patient_id": f"{i // 8:016x}",
                        "split": "train", "modality": ctx.modality, "body_region": ctx.body_region,
                        "axis": ctx.axis, "slice_index": i % 8, "position_mm": None,
                        "template_id": g.template_id,
                        "regions": [
                            {"term": r.term, "box": list(r.box), "box_px": list(r.box_px), "area": r.area,
                             "label_id": r.label_id}
                            for r in g.regions
                        ],
                        "transform": {"window": "CT abdomen W400/L40"},
                        "validation": [],
                    },
                }
            )  # fmt: skip
    return rows


def serialise_orjson(rows: list[dict]) -> int:
    """orjson only, into memory: ``orjson.dumps(row) + b"\\n"`` per row (no file)."""
    import orjson

    dumps = orjson.dumps
    return sum(len(dumps(row) + b"\n") for row in rows)


def write_orjson(rows: list[dict], folder: Path, rows_per_shard: int = 1000) -> int:
    """The release writer's path with orjson alone: one JSONL line per row, shards of ``rows_per_shard``
    rows, each shard written to a temp name, flushed, fsynced and renamed into place."""
    import orjson

    dumps = orjson.dumps
    total = 0
    for k in range(0, len(rows), rows_per_shard):
        data = b"".join([dumps(row) + b"\n" for row in rows[k : k + rows_per_shard]])
        path = folder / f"shard-{k // rows_per_shard:05d}.jsonl"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        total += len(data)
    return total


def interleaved_times(
    fns: dict[str, Callable[[object], object]], repeats: int, setups: dict[str, Callable[[], object]]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall times in ms of each ``fn(setup())`` per round, and the cyclic-GC pause time in ms inside each
    call; the functions take turns in every round (so that load from other processes hits all of them
    alike); ``setup`` is not timed; one warm-up round first (glossary/template load, caches)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    gc_ms: dict[str, list[float]] = {name: [] for name in fns}
    pause = [0.0, 0.0]  # [start of the running collection, total in this call]

    def on_gc(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            pause[0] = time.perf_counter()
        else:
            pause[1] += time.perf_counter() - pause[0]

    gc.callbacks.append(on_gc)
    try:
        for rnd in range(repeats + 1):
            for name, fn in fns.items():
                arg = setups.get(name, lambda: None)()
                pause[1] = 0.0
                t0 = time.perf_counter()
                fn(arg)
                dt = time.perf_counter() - t0
                if rnd > 0:
                    times[name].append(dt * 1e3)
                    gc_ms[name].append(pause[1] * 1e3)
    finally:
        gc.callbacks.remove(on_gc)
    return times, gc_ms


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regions", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="10k regions, 3 repeats")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    n_regions = 10_000 if args.quick else args.regions
    repeats = args.repeats or (3 if args.quick else 7)

    slices = make_slices(n_regions)
    gens = run_generate(slices)
    rows = to_rows(slices, gens)
    with tempfile.TemporaryDirectory(prefix="b8-") as tmp:
        folder = Path(tmp)
        n_bytes = write_orjson(rows, folder)
        print(
            f"{len(slices)} slices, {sum(len(s.regions) for s in slices)} regions -> {len(rows)} rows "
            f"({n_bytes / 1e6:.1f} MB JSONL in {math.ceil(len(rows) / 1000)} shards); "
            f"{repeats} rounds after a warm-up, steps interleaved"
        )
        times, gc_ms = interleaved_times(
            {
                "orjson in memory": lambda _: serialise_orjson(rows),
                "orjson write": lambda _: write_orjson(rows, folder),
                "ours generate": lambda rngs: run_generate(slices, rngs),  # type: ignore[arg-type]
            },
            repeats,
            {"ours generate": lambda: make_rngs(len(slices))},
        )
    best = {name: min(ts) for name, ts in times.items()}
    median = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"{'step':<20}{'best ms':>10}{'median ms':>11}{'GC in best':>12}{'GC median':>11}   (GC: collector pauses, ms)")
    for name, ts in times.items():
        gc_best = gc_ms[name][ts.index(best[name])]
        print(
            f"{name:<20}{best[name]:>10.1f}{median[name]:>11.1f}{gc_best:>12.1f}"
            f"{statistics.median(gc_ms[name]):>11.1f}"
        )
    gen = "ours generate"
    out: dict[str, float] = dict(best)
    for base, key in (("orjson in memory", "ratio_in_memory"), ("orjson write", "ratio")):
        ratio = best[gen] / best[base]
        ok = "OK" if ratio <= 3.0 else "OVER"
        print(
            f"generate / {base:<16} = {ratio:5.2f}x best/best (target <= 3.00: {ok}); "
            f"{median[gen] / median[base]:5.2f}x median/median"
        )
        out[key] = ratio
    return out


if __name__ == "__main__":
    main()
