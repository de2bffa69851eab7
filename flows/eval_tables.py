"""Terminal tables for ``medreg eval`` (rich): one table per task (default protocol) or per MedRegA
evaluator (``--protocol medrega``), one line per language and ``all``."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from pipeline.evaluate.run import EvalReport

Columns = list[tuple[tuple[str, ...], str]]

_DEFAULT: dict[str, Columns] = {
    "region_to_text": [
        (("accuracy",), "acc"), (("accuracy_lenient",), "acc~"), (("exact_match",), "exact"),
        (("term_precision",), "termP"), (("term_f1",), "termF1"),
    ],
    "text_to_region": [
        (("mean_iou",), "mIoU"), (("acc@0.25",), "@.25"), (("acc@0.5",), "@.5"), (("acc@0.75",), "@.75"),
        (("box", "precision"), "boxP"), (("box", "recall"), "boxR"), (("box", "f1"), "boxF1"),
        (("object", "f1"), "objF1"), (("absent_acc",), "absent"),
    ],
    "grounded_report": [
        (("mean_iou",), "mIoU"), (("acc@0.5",), "@.5"), (("box", "f1"), "boxF1"), (("object", "f1"), "objF1"),
        (("term_recall",), "termR"), (("term_precision",), "termP"), (("text_f1",), "textF1"),
        *[((k,), k) for k in ("BLEU-1", "BLEU-4", "ROUGE-L", "METEOR")],
    ],
}
_MULTI: Columns = [
    (("box_recall",), "boxR"), (("box_precision",), "boxP"), (("box_f1",), "boxF1"), (("box_iou",), "boxIoU"),
    (("object_recall",), "objR"), (("object_f1",), "objF1"), (("object_iou",), "objIoU"),
    (("object_box_f1",), "objBoxF1"), (("object_box_alignment",), "align"),
]
_MEDREGA: dict[str, Columns] = {
    "R2T": [(("accuracy",), "acc"), (("recall",), "recall"), (("precision",), "prec"), (("f1",), "F1"),
            (("bleu1",), "BLEU-1")],
    "SS": [(("iou",), "IoU"), (("acc@0.25",), "@>.25"), (("acc@0.5",), "@>.5"), (("acc@0.75",), "@>.75")],
    "SM": [(("recall",), "recall"), (("precision",), "prec"), (("f1",), "F1"), (("iou",), "IoU")],
    "MS": _MULTI,
    "MM": _MULTI,
    "GR": [*_MULTI, *[((k,), k) for k in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "METEOR")]],
    "negative": [(("absent_acc",), "absent")],
}
_CAPTIONS = {
    "region_to_text": "acc~ = lenient: a parent/child term counts",
    "text_to_region": "@t = share of GT boxes matched at IoU >= t; absent = absent-target negatives answered right",
    "grounded_report": "termR/termP = terms named anywhere in the report; textF1 = token F1 vs the reference; "
                       "BLEU (corpus), ROUGE-L, METEOR per language (.report / .template: by meta.text_source)",
    "SS": "MedRegA SS: IoU of the first (or best) box; @>t = share of samples with IoU > t",
    "SM": "MedRegA SM: Hungarian, terms ignored, match at IoU >= 0.75; per-sample means",
    "MS": "MedRegA MS: Hungarian at IoU >= 0.5 + object alignment; per-sample means",
    "MM": "MedRegA MM: Hungarian at IoU >= 0.5 + object alignment; per-sample means",
    "GR": "grounded report boxes with MedRegA's MM evaluator; text: corpus BLEU-1..4, ROUGE-L, METEOR per language",
    "R2T": "MedRegA R2T: whitespace token sets; acc = share of samples with recall >= 0.75",
}


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def _get(metrics: dict[str, Any], path: tuple[str, ...]) -> Any:
    v: Any = metrics
    for part in path:
        v = v.get(part) if isinstance(v, dict) else None
    return v


def _table_key(report: EvalReport, group: str, metrics: dict[str, Any]) -> str:
    return str(metrics.get("evaluator", group)) if report.protocol == "medrega" else group.split(".")[0]


def render_tables(report: EvalReport) -> list[Table]:
    """One rich table per task (or MedRegA evaluator group), a line per language and ``all``."""
    order: list[str] = []
    for key in report.groups:
        group = key.split("/")[0]
        if group not in order:
            order.append(group)
    tables = []
    for group in order:
        lines = [(k.split("/")[1], m) for k, m in report.groups.items() if k.split("/")[0] == group]
        kind = _table_key(report, group, lines[0][1])
        cols = (_MEDREGA if report.protocol == "medrega" else _DEFAULT).get(kind, [])
        tb = Table(title=f"{group} ({report.release}, splits: {', '.join(report.splits)}, protocol: {report.protocol})",
                   caption=_CAPTIONS.get(kind))
        tb.add_column("lang", no_wrap=True)
        tb.add_column("n", justify="right", no_wrap=True)
        tb.add_column("miss", justify="right", no_wrap=True)
        for _path, label in cols:
            tb.add_column(label, justify="right", no_wrap=True, min_width=5)
        for lang, metrics in lines:
            values = [_fmt(_get(metrics, path)) for path, _ in cols]
            tb.add_row(lang, str(metrics["samples"]), str(metrics["missing"]), *values)
        tables.append(tb)
    return tables
