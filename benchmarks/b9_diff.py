"""Benchmark B9: ``medreg diff`` of a 1M-row release pair on one core.

Synthesises two releases in a temporary folder (never inside the repository): ``--rows`` rows (default
1,000,000) of the builder's row contract, ~2 KB each like real rows (system prompt, bilingual
conversations, 3-6 regions, two verdicts), in 18 (split, task, lang) groups of 10,000-row shards, with
manifests.  The second release removes 2 % of the cases, adds a source (2 % more rows), changes one
source's licence (~5 % of the rows), flips a verdict on 1 % and moves 0.5 % of the patients to another
split.  Then, in a child process pinned to one CPU with ``POLARS_MAX_THREADS=1``, it times (best of
``--repeats``):

* ``read bytes``   -- baseline 1: reading every shard byte of both releases once (Python, 8 MB blocks);
* ``polars scan``  -- baseline 2: one polars pass over both releases' shard lines (hash of each line);
* ``diff``         -- ours: :func:`pipeline.versions.diff.diff_releases` (keys + line hashes of both,
  join, then part hashes and verdicts of the changed rows only).

With ``--nested`` it also times what the diff avoids: polars' JSON reader with the full nested row schema
(``pipeline.versions.frame.ROW_SCHEMA``) over the first release.  It checks the diff's counts against what
was synthesised and prints the ratios and peak memory.
Target: the diff of 1M rows in under a minute on one core.

Run: ``python -m benchmarks.b9_diff [--rows N] [--quick] [--repeats N] [--keep DIR] [--nested]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

SPLITS = ("train", "validation", "test")
TASKS = ("region_to_text", "text_to_region", "grounded_report")
LANGS = ("en", "zh")
TERMS = ["liver", "spleen", "kidney_left", "kidney_right", "aorta", "stomach", "pancreas", "gallbladder",
         "inferior_vena_cava", "colon", "duodenum", "esophagus", "heart", "lung_upper_lobe_left", "vertebrae_L1"]
SYSTEM = ("You are a helpful medical assistant. Your task is grounded report generation: describe the structures "
          "and findings in the medical image one by one and locate each of them. A region is given as a bounding "
          "box [x1, y1, x2, y2] with integer coordinates from 0 to 999, scaled to the image width and height: x1 "
          "and y1 are the top left corner, x2 and y2 the bottom right corner.")
ROWS_PER_CASE = 6
SHARD_ROWS = 10_000


def _row(i: int, case: int, source: str, split: str, task: str, lang: str, licence: str, verdict: str) -> dict:
    rid = hashlib.blake2b(i.to_bytes(8, "little"), digest_size=10).hexdigest()
    img = hashlib.sha256(f"img{case}".encode()).hexdigest()
    n = 3 + (i % 4)
    regions = []
    lines = []
    for k in range(n):
        term = TERMS[(i + 3 * k) % len(TERMS)]
        x0, y0 = (37 * (i + k)) % 700, (53 * (i + 2 * k)) % 700
        box = [x0, y0, x0 + 120 + k, y0 + 90 + k]
        regions.append({"term": term, "box": box, "box_px": [b // 2 for b in box], "area": 900 + 17 * k,
                        "label_id": k + 1})
        text = f"<ref>{term}</ref><box>[[{box[0]}, {box[1]}, {box[2]}, {box[3]}]]</box>"
        lines.append(text + (": 该区域位于图像中部，面积较小。" if lang == "zh" else
                             ": In the center of the image, this structure occupies a small area."))
    return {
        "id": rid, "image": f"images/{img[:2]}/{img}.png", "width": 512, "height": 512,
        "conversations": [{"from": "system", "value": SYSTEM},
                          {"from": "human", "value": "<image>\nDescribe the structures visible in this CT image."},
                          {"from": "gpt", "value": "\n".join(lines)}],
        "meta": {"task": task, "subtask": "open", "lang": lang, "source": source, "licence": licence,
                 "case_id": f"case{case:07d}", "patient_id": f"p{case:016x}", "split": split, "modality": "CT",
                 "body_region": "abdomen", "axis": "axial", "slice_index": i % 300, "template_id": "grg.en.q001",
                 "regions": regions, "window": "CT abdomen W400/L40",
                 "transform": '{"orientation":"SPL","position_mm":12.5,"spacing":[1.5,0.8,0.8]}',
                 "validation": [{"validator": "rules", "version": "1", "verdict": "pass", "score": 1.0, "reason": "",
                                 "codes": ""},
                                {"validator": "stats", "version": "1", "verdict": verdict, "score": 0.5,
                                 "reason": "", "codes": ""}]},
    }


class _Writer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[tuple[str, str, str], tuple[object, int, int]] = {}
        self.shards: list[dict] = []
        self.images: set[str] = set()

    def add(self, row: dict) -> None:
        m = row["meta"]
        key = (m["split"], m["task"], m["lang"])
        fh, n, part = self.files.get(key, (None, 0, 0))
        if fh is None or n >= SHARD_ROWS:
            if fh is not None:
                fh.close()  # type: ignore[attr-defined]
                part += 1
            path = self.root / "data" / key[0] / f"{key[1]}.{key[2]}.{part:05d}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.shards.append({"path": path.relative_to(self.root).as_posix(), "split": key[0]})
            fh, n = open(path, "wb", buffering=1 << 22), 0  # noqa: SIM115
        fh.write(orjson.dumps(row) + b"\n")  # type: ignore[attr-defined]
        self.files[key] = (fh, n + 1, part)
        self.images.add(row["image"])

    def close(self, name: str, version: str, licence_of: dict[str, str]) -> None:
        for fh, _, _ in self.files.values():
            fh.close()  # type: ignore[attr-defined]
        manifest = {"name": name, "version": version, "config": {"name": name, "version": version},
                    "shards": self.shards, "images": [{"path": p} for p in sorted(self.images)],
                    "counts": {"regions_by_term": {}, "validation": {}}, "dropped": {},
                    "sources": [{"name": s, "licence": lic} for s, lic in sorted(licence_of.items())]}
        (self.root / "manifest.json").write_bytes(orjson.dumps(manifest))


def synthesise(root: Path, rows: int) -> dict[str, int]:
    """Write releases root/a and root/b; returns the expected diff counts."""
    a, b = _Writer(root / "a"), _Writer(root / "b")
    cases = rows // ROWS_PER_CASE
    want = {"removed": 0, "added": 0, "changed": 0, "licence": 0, "verdict": 0, "split": 0}
    for c in range(cases):
        source = f"src{c % 10}"
        split = SPLITS[0 if c % 10 < 8 else 1 + c % 2]
        removed, moved = c % 50 == 7, c % 200 == 3  # 2 % of the cases go, 0.5 % of the patients move
        for k in range(ROWS_PER_CASE):
            i = c * ROWS_PER_CASE + k
            task, lang = TASKS[k // 2], LANGS[k % 2]
            row = _row(i, c, source, split, task, lang, "Apache-2.0", "pass")
            a.add(row)
            if removed:
                want["removed"] += 1
                continue
            flip = i % 100 == 42  # 1 % of the rows: stats pass -> flag
            lic = "CC-BY-4.0" if source == "src3" and (c // 10) % 2 == 0 else "Apache-2.0"  # 5 % of the rows
            new_split = SPLITS[(SPLITS.index(split) + 1) % 3] if moved else split
            if flip or lic != "Apache-2.0" or moved:
                row = _row(i, c, source, new_split, task, lang, lic, "flag" if flip else "pass")
                want["changed"] += 1
                want["licence"] += lic != "Apache-2.0"
                want["verdict"] += flip
                want["split"] += moved
            b.add(row)
    for c in range(cases, cases + cases // 50):  # a new source: 2 % more rows
        for k in range(ROWS_PER_CASE):
            b.add(_row(c * ROWS_PER_CASE + k, c, "src-new", "train", TASKS[k // 2], LANGS[k % 2], "Apache-2.0",
                       "pass"))
            want["added"] += 1
    a.close("synthetic", "1", {f"src{i}": "Apache-2.0" for i in range(10)})
    b.close("synthetic", "2", {**{f"src{i}": "Apache-2.0" for i in range(10)}, "src-new": "Apache-2.0"})
    want["old"] = cases * ROWS_PER_CASE
    return want


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure(root: Path, repeats: int, want: dict[str, int], nested: bool = False) -> int:
    """The timed part (run in a child pinned to one CPU, POLARS_MAX_THREADS=1)."""
    import polars as pl

    from pipeline.versions.diff import diff_releases

    files = sorted(str(p) for p in root.rglob("*.jsonl"))
    size = sum(os.path.getsize(f) for f in files)

    def read_bytes() -> int:
        n = 0
        for f in files:
            with open(f, "rb") as fh:
                while block := fh.read(1 << 23):
                    n += len(block)
        return n

    def polars_scan() -> int:
        lf = pl.scan_csv(files, has_header=False, separator="\x1f", quote_char=None, schema={"line": pl.String()})
        return lf.select(pl.col("line").hash().sum()).collect(engine="streaming").item()

    t_read, _ = _best(read_bytes, repeats)
    t_scan, _ = _best(polars_scan, repeats)
    t_diff, d = _best(lambda: diff_releases(root / "a", root / "b"), repeats)
    t_nested = 0.0
    if nested:
        from pipeline.versions.frame import ROW_SCHEMA

        files_a = sorted(str(p) for p in (root / "a").rglob("*.jsonl"))
        t_nested, _ = _best(lambda: pl.scan_ndjson(files_a, schema=ROW_SCHEMA).select(pl.all().hash())
                            .collect(engine="streaming").height, 1)
    assert isinstance(d, dict)
    r, f = d["rows"], d["changed_fields"]
    got = {"old": r["old"], "removed": r["removed"], "added": r["added"], "changed": r["changed"],
           "licence": f.get("meta.licence", 0), "verdict": f.get("validation", 0), "split": f.get("split", 0)}
    ok = all(got[k] == want[k] for k in got)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"polars threads: {pl.thread_pool_size()}, CPUs: {sorted(os.sched_getaffinity(0))}")
    print(f"releases: {r['old']:,} + {r['new']:,} rows, {size / 1e9:.2f} GB of shards")
    print(f"counts {'verified' if ok else 'WRONG'}: {got}" + ("" if ok else f" != {want}"))
    print(f"{'step':<14}{'best s':>9}{'ratio':>9}")
    print(f"{'read bytes':<14}{t_read:>9.2f}{1.0:>9.2f}")
    print(f"{'polars scan':<14}{t_scan:>9.2f}{t_scan / t_read:>9.2f}")
    print(f"{'diff':<14}{t_diff:>9.2f}{t_diff / t_read:>9.2f}   ({t_diff / t_scan:.2f}x the polars scan)")
    if nested:
        print(f"{'nested JSON':<14}{t_nested:>9.2f}{t_nested / t_read:>9.2f}   (first release only: polars' JSON "
              f"reader with the full Row schema, {r['old'] / t_nested / 1e3:,.0f} k rows/s)")
    print(f"diff rate: {(r['old'] + r['new']) / t_diff / 1e3:,.0f} k rows/s; peak RSS {peak:,.0f} MB; "
          f"target < 60 s for 1M rows: {'met' if t_diff < 60 else 'NOT met'}")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100k rows")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="synthesise into this folder and keep it")
    ap.add_argument("--nested", action="store_true", help="also time a full nested JSON parse (slow)")
    ap.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--want", type=str, default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure is not None:
        return measure(args.measure, args.repeats, orjson.loads(args.want), args.nested)
    rows = 100_000 if args.quick else args.rows
    root = args.keep or Path(tempfile.mkdtemp(prefix="medreg-b9-"))
    try:
        t0 = time.perf_counter()
        want = synthesise(root, rows)
        print(f"synthesised {rows:,}-row pair in {time.perf_counter() - t0:.1f} s under {root}")
        env = {**os.environ, "POLARS_MAX_THREADS": "1"}
        cpu = min(os.sched_getaffinity(0))
        cmd = [sys.executable, "-m", "benchmarks.b9_diff", "--measure", str(root), "--repeats", str(args.repeats),
               "--want", orjson.dumps(want).decode(), *(["--nested"] if args.nested else [])]
        return subprocess.call(["taskset", "-c", str(cpu), *cmd] if shutil.which("taskset") else cmd, env=env)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
