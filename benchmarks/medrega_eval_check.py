"""Put MedRegA's own text-to-region evaluators beside ``medreg eval --protocol medrega`` (a check; CPU only).

    python -m benchmarks.medrega_eval_check --medrega MedRegA/src [--site DIR] [--release DIR]

``--medrega`` is the ``src`` folder of a github.com/xmed-lab/MedRegA checkout (not part of the project);
``--site`` an extra folder holding torchvision (``pip install --no-deps --target DIR torchvision``).  The four
evaluator classes of ``src/eval/regt2r/evaluator_reg.py`` run unchanged: they are taken from the file by name
(the module's top-level imports pull BERTScore, torchmetrics and the report-generation scorers, which these
classes never call).  They score answer files in MedRegA's own layout ``[{"answer", "gt", "hw"}]``; the same
answers go through :func:`pipeline.evaluate.run.evaluate_rows` with ``protocol="medrega"``, and every metric is
printed side by side under MedRegA's names (``paper_keys``).  Where the two differ, the difference is one of
the documented bug fixes (docs/evaluation.md), and the line says which.

Two answer sets: hand-made cases (perfect, half-box shift, one box dropped, one extra box, wrong term, IoU
exactly 0.5, two terms swapped, one term wrong) and a release's own text-to-region rows answered with their
reference (perfect) and with every box shifted by half its width.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from benchmarks.loaders_check import _build_release, _torchvision_without_cuda_kernels

CLASSES = {"SS": "SingleRegionSingleObjectEvaluator", "SM": "SingleRegionMultiObjectEvaluator",
           "MS": "MultiRegionSingleObjectEvaluator", "MM": "MultiRegionMultiObjectEvaluator"}
SUBTASK = {"sr_so": "SS", "sr_mo": "SM", "mr_so": "MS", "mr_mo": "MM"}
#: (evaluator, MedRegA key) -> which documented fix explains a difference
FIXES = {("MS", "object_iou"): "fix 2/3: MS sums every pair's IoU over aligned pairs (>1 or inf)",
         ("SM", "precision"): "names only (fix 1)", ("SM", "recall"): "names only (fix 1)",
         **{("SS", f"acc{t}"): "float32 pixels: an IoU of exactly t computes as t + 6e-8 > t" for t in (25, 50, 75)}}


def _their_evaluators(medrega_src: Path) -> dict[str, Any]:
    import numpy as np
    import torch
    from scipy.optimize import linear_sum_assignment
    from torchvision.ops.boxes import box_area

    path = medrega_src / "eval" / "regt2r" / "evaluator_reg.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    keep = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in CLASSES.values()]
    keep += [n for n in tree.body if isinstance(n, ast.Assign)]  # PATTERN_* and BBOX_SCALE
    ns: dict[str, Any] = {"re": re, "torch": torch, "np": np, "ast": ast, "box_area": box_area,
                          "linear_sum_assignment": linear_sum_assignment}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), ns)  # their code
    return {k: ns[v] for k, v in CLASSES.items()}


def _g(term: str, *boxes: tuple[int, ...]) -> str:
    return f"<ref>{term}</ref><box>[" + ", ".join("[" + ", ".join(map(str, b)) + "]" for b in boxes) + "]</box>"


def _row(rid: str, subtask: str, regions: list[tuple[str, tuple[int, ...]]], reference: str) -> dict[str, Any]:
    return {"id": rid, "image": "x.png", "width": 640, "height": 480,
            "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": reference}],
            "meta": {"task": "text_to_region", "subtask": subtask, "lang": "en", "split": "test", "body_region": "",
                     "regions": [{"term": t, "box": list(b)} for t, b in regions]}}


def hand_cases() -> list[tuple[dict[str, Any], str]]:
    a, b, c = (100, 100, 300, 300), (500, 500, 700, 700), (800, 800, 900, 900)
    one, two, pair = _g("liver", a), _g("liver", a, b), _g("liver", a) + _g("spleen", b)
    return [
        (_row("perfect", "sr_so", [("liver", a)], one), one),
        (_row("half_shift", "sr_so", [("liver", a)], one), _g("liver", (200, 100, 400, 300))),
        (_row("wrong_term", "sr_so", [("liver", a)], one), _g("spleen", a)),
        (_row("iou_half", "sr_so", [("liver", a)], one), _g("liver", (100, 100, 300, 200))),
        (_row("dropped", "sr_mo", [("liver", a), ("liver", b)], two), _g("liver", a)),
        (_row("extra", "sr_mo", [("liver", a), ("liver", b)], two), _g("liver", a, b, c)),
        (_row("swapped", "mr_so", [("liver", a), ("spleen", b)], pair), _g("liver", b) + _g("spleen", a)),
        (_row("one_wrong", "mr_so", [("liver", a), ("spleen", b)], pair), _g("liver", a) + _g("kidney", b)),
        (_row("mm", "mr_mo", [("liver", a), ("liver", c), ("spleen", b)], _g("liver", a, c) + _g("spleen", b)),
         _g("liver", a) + _g("spleen", b)),
    ]


def _shift(answer: str) -> str:
    def one(m: re.Match[str]) -> str:
        x1, y1, x2, y2 = (int(v) for v in m.groups())
        s = math.ceil((x2 - x1) / 2)
        d = s if x2 + s <= 999 or x1 - s < 0 else -s
        return f"[{x1 + d}, {y1}, {x2 + d}, {y2}]"

    return re.sub(r"\[(\d+), (\d+), (\d+), (\d+)\]", one, answer)


def release_cases(release: Path) -> list[tuple[dict[str, Any], str]]:
    from pipeline.release.export import iter_release_rows

    out = []
    for r in iter_release_rows(release):
        if r["meta"]["task"] == "text_to_region" and r["meta"]["subtask"] in SUBTASK:
            ref = r["conversations"][-1]["value"]
            out += [(dict(r, id=r["id"] + ":perfect"), ref), (dict(r, id=r["id"] + ":shifted"), _shift(ref))]
    return out


def compare(cases: list[tuple[dict[str, Any], str]], theirs: dict[str, Any]) -> list[str]:
    from pipeline.evaluate.run import evaluate_rows

    lines = []
    by_kind: dict[str, list[tuple[dict[str, Any], str]]] = defaultdict(list)
    for row, ans in cases:
        by_kind[SUBTASK[row["meta"]["subtask"]]].append((row, ans))
    for kind, items in sorted(by_kind.items()):
        pred_list = [{"answer": a, "gt": r["conversations"][-1]["value"], "hw": [r["height"], r["width"]]}
                     for r, a in items]
        with contextlib.redirect_stdout(io.StringIO()):  # their evaluators print matched samples
            got = theirs[kind]().eval_pred_list(pred_list)
        flat = {k: float(v) for k, v in _flatten(got).items()}
        rep = evaluate_rows([r for r, _ in items], {r["id"]: a for r, a in items}, protocol="medrega")
        ours = rep.groups[f"text_to_region.{items[0][0]['meta']['subtask']}/all"]["paper_keys"]
        for key, value in sorted(flat.items()):
            mine = ours.get(key)
            same = mine is not None and abs(mine - value) < 1e-4
            note = "" if same else FIXES.get((kind, key), "DIFFERENT")
            lines.append(f"{kind:3} n={len(items):3} {key:22} MedRegA {value:9.4f}  medreg "
                         f"{'null' if mine is None else f'{mine:9.4f}'}  {'=' if same else note}")
    return lines


def _flatten(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v) if isinstance(v, dict) else {k: v})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--medrega", type=Path, required=True, help="MedRegA checkout's src/ folder")
    ap.add_argument("--site", type=Path, help="extra site folder with torchvision")
    ap.add_argument("--release", type=Path, help="a release (default: built from the sample data)")
    args = ap.parse_args(argv)
    _torchvision_without_cuda_kernels(args.site)
    theirs = _their_evaluators(args.medrega)
    print("hand-made cases")
    print("\n".join(compare(hand_cases(), theirs)))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        release = args.release or _build_release(Path(tmp), "none")
        cases = release_cases(release)
        print(f"\n{release.name}: {len(cases)} answers (own reference and half-box shift) to text-to-region rows")
        print("\n".join(compare(cases, theirs)))
    return 0


if __name__ == "__main__":
    orjson.dumps({})  # the project's JSON library is importable: run from the repository root
    sys.exit(main())
