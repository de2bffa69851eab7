"""``--protocol medrega``: MedRegA's published evaluation definitions, with their bugs fixed.

MedRegA (github.com/xmed-lab/MedRegA, ``src/eval/regt2r/evaluator_reg.py`` and
``src/eval/regr2t/evaluator.py``) scores each text-to-region subtask with its own evaluator and region-to-text
by token overlap.  This module re-implements those definitions (their code needs torch/torchvision and a
GPU for BERTScore; none of it is imported) so a model's numbers on a release sit next to the paper's tables.
docs/evaluation.md has the table of every difference to the default protocol and the list of MedRegA bugs
fixed here:

* **SS** (``sr_so``: one term, one box): per sample the IoU of the first predicted box with the first
  ground-truth box, or the best predicted box when there are more predicted than ground-truth boxes (0
  with no box); ``iou`` = mean over samples; ``acc@t`` = share of samples with IoU **>** t.  Terms are
  not compared.
* **SM** (``sr_mo``: one term, several boxes): Hungarian assignment (maximum summed IoU) of all predicted
  to all ground-truth boxes, terms not compared; a pair is a match at IoU >= **0.75**.  Per sample recall =
  matches / ground-truth boxes, precision = matches / predicted boxes, F1; averaged over samples.
  ``iou`` = summed IoU of the assigned pairs / number of pairs.
* **MS** / **MM** (``mr_so`` / ``mr_mo``: several terms) and the boxes of **grounded reports**: the same
  assignment with matches at IoU >= 0.5, plus object alignment: an assigned pair is *aligned* when the
  predicted object text (lower-cased) is empty, contains, or is contained in the ground-truth term text.
  Per sample: box recall/precision/F1 (matches), object recall/precision/F1 (aligned pairs), object-box
  recall/precision/F1 (aligned matches), alignment (aligned matches / matches), detection (aligned
  matches / aligned pairs); averaged over samples.  ``box_iou`` = summed IoU of all assigned pairs / all
  ground-truth boxes; ``object_iou`` = summed IoU of aligned pairs / aligned pairs.
* **R2T** (region_to_text): lower-cased texts, boxes and grounding tags removed, split on whitespace into
  token sets; per sample precision, recall, F1 and BLEU-1; ``accuracy`` = share of samples with recall
  >= 0.75.  (MedRegA also reports BERTScore with microsoft/deberta-xlarge-mnli; not computed here.)
* **Grounded report text**: BLEU-1 of the tag-stripped report against the reference (the kit's tokeniser:
  jieba for Chinese, words for English), averaged over samples.

Absent-target negatives (``subtask: absent``) have no MedRegA definition (its SS evaluator crashes on a
row without a target box): they are scored as in the default protocol (``absent_acc``).  Answers are read
with the kit's parser (:mod:`pipeline.evaluate.answers`) in both protocols.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.evaluate.answers import parse_grounded
from pipeline.evaluate.scoring import is_negative, reference_answer, report_tokens
from pipeline.evaluate.text import bleu1, says_absent
from pipeline.language.glossary import Glossary
from pipeline.regions.coords import box_iou, iou_matrix, match_max_iou

__all__ = [
    "EVALUATORS", "MATCH_IOU", "PAPER_KEYS", "SM_IOU", "SS_THRESHOLDS", "MedregaSample", "aggregate_medrega",
    "score_row_medrega",
]

SS_THRESHOLDS: tuple[float, ...] = (0.25, 0.5, 0.75)
SM_IOU = 0.75  # SingleRegionMultiObjectEvaluator.hungarian_matching(iou_threshold=0.75)
MATCH_IOU = 0.5  # the MS / MM evaluators' threshold
R2T_ACC_RECALL = 0.75  # R2TEvaluator: a sample is correct when its token recall >= 0.75
#: text_to_region subtask -> MedRegA evaluator
EVALUATORS = {"sr_so": "SS", "sr_mo": "SM", "mr_so": "MS", "mr_mo": "MM"}

_BOXES_RE = re.compile(r"\[\[.*?\]\]")
_TAGS_RE = re.compile(r"</?(?:ref|box)>")

Box = tuple[int, int, int, int]


@dataclass
class MedregaSample:
    """One answer scored under the MedRegA protocol."""

    id: str
    task: str
    subtask: str
    lang: str
    kind: str  # SS / SM / MS / MM / GR / R2T / negative
    missing: bool = False
    values: dict[str, float] = field(default_factory=dict)  # per-sample values, averaged over samples
    sums: dict[str, float] = field(default_factory=dict)  # numerators/denominators of pooled ratios
    text_source: str = "template"  # grounded reports: the row's meta.text_source
    tokens: tuple[list[str], list[str]] | None = None  # grounded reports: (answer, reference) tokens

    @property
    def group(self) -> str:
        if self.kind == "negative":
            return "text_to_region.absent"
        if self.task == "text_to_region":
            return f"text_to_region.{self.subtask}"
        return self.task

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "task": self.task, "subtask": self.subtask, "lang": self.lang, "evaluator": self.kind,
            "missing": self.missing, "values": {k: round(v, 6) for k, v in self.values.items()},
            "sums": {k: round(v, 6) for k, v in self.sums.items()},
        }


def _objects(text: str) -> list[tuple[str, Box]]:
    """Every box of an answer with the (lower-cased) text of the object it belongs to, one per box."""
    return [((ref.term_text or "").lower(), b) for ref in parse_grounded(text) for b in ref.boxes]


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if (p + r) > 0 else 0.0


def _ss(pred: Sequence[Box], gt: Sequence[Box]) -> dict[str, float]:
    if not pred:
        return {"iou": 0.0}
    if len(pred) > len(gt):
        return {"iou": max(box_iou(p, gt[0]) for p in pred)}
    return {"iou": box_iou(pred[0], gt[0])}


def _pairs(pred: Sequence[Box], gt: Sequence[Box]) -> list[tuple[int, int, float]]:
    if not pred or not gt:
        return []
    return match_max_iou(iou_matrix(pred, gt))


def _sm(pred: Sequence[Box], gt: Sequence[Box]) -> tuple[dict[str, float], dict[str, float]]:
    pairs = _pairs(pred, gt)
    matches = sum(1 for _, _, iou in pairs if iou >= SM_IOU)
    r, p = _ratio(matches, len(gt)), _ratio(matches, len(pred))
    return {"recall": r, "precision": p, "f1": _f1(p, r)}, {
        "pair_iou": sum(iou for _, _, iou in pairs), "pairs": len(pairs)}


def _aligned(pred_obj: str, gt_obj: str) -> bool:
    return pred_obj == "" or pred_obj in gt_obj or gt_obj in pred_obj


def _multi(pred: list[tuple[str, Box]], gt: list[tuple[str, Box]]) -> tuple[dict[str, float], dict[str, float]]:
    """The MS / MM evaluators (one definition once MS's per-``<ref>`` object indices are fixed)."""
    pairs = _pairs([b for _, b in pred], [b for _, b in gt])
    aligned = [(iou, _aligned(pred[r][0], gt[c][0])) for r, c, iou in pairs]
    matches = sum(1 for iou, _ in aligned if iou >= MATCH_IOU)
    align_all = sum(1 for _, ok in aligned if ok)
    correct_align = sum(1 for iou, ok in aligned if ok and iou >= MATCH_IOU)
    n_gt, n_pred = len(gt), len(pred)
    v = {
        "box_recall": _ratio(matches, n_gt), "box_precision": _ratio(matches, n_pred),
        "object_recall": _ratio(align_all, n_gt), "object_precision": _ratio(align_all, n_pred),
        "object_box_recall": _ratio(correct_align, n_gt), "object_box_precision": _ratio(correct_align, n_pred),
        "object_box_alignment": _ratio(correct_align, matches),
        "object_box_detection": _ratio(correct_align, align_all),
    }
    for k in ("box", "object", "object_box"):
        v[f"{k}_f1"] = _f1(v[f"{k}_precision"], v[f"{k}_recall"])
    sums = {
        "pair_iou": sum(iou for iou, _ in aligned), "gt_boxes": n_gt,
        "aligned_iou": sum(iou for iou, ok in aligned if ok), "aligned": align_all,
    }
    return v, sums


def _r2t_clean(text: str) -> str:
    return _TAGS_RE.sub(" ", _BOXES_RE.sub("", text.lower()))


def _r2t(answer: str, reference: str) -> dict[str, float]:
    pred_tokens, ref_tokens = _r2t_clean(answer).split(), _r2t_clean(reference).split()
    p_set, r_set = set(pred_tokens), set(ref_tokens)
    common = len(p_set & r_set)
    p, r = _ratio(common, len(p_set)), _ratio(common, len(r_set))
    return {"precision": p, "recall": r, "f1": _f1(p, r), "accuracy": float(r >= R2T_ACC_RECALL),
            "bleu1": bleu1(pred_tokens, ref_tokens)}


def score_row_medrega(row: dict[str, Any], answer: str | None, glossary: Glossary) -> MedregaSample:
    """Score one answer (``None`` = missing, scored as an empty answer) under the MedRegA protocol."""
    m = row.get("meta", {})
    task, subtask, lang = str(m.get("task", "")), str(m.get("subtask", "")), str(m.get("lang", ""))
    s = MedregaSample(id=row["id"], task=task, subtask=subtask, lang=lang, kind="", missing=answer is None)
    answer = answer or ""
    reference = reference_answer(row)
    if task == "region_to_text":
        s.kind, s.values = "R2T", _r2t(answer, reference)
        return s
    if task not in ("text_to_region", "grounded_report"):
        raise ValueError(f"row {row['id']}: unknown task {task!r}")
    pred, gt = _objects(answer), _objects(reference)
    if task == "text_to_region" and (is_negative(row) or not gt):
        s.kind = "negative"
        s.values = {"absent_correct": float(not pred and says_absent(answer))}
        return s
    s.kind = EVALUATORS.get(subtask, "MM") if task == "text_to_region" else "GR"
    if s.kind == "SS":
        s.values = _ss([b for _, b in pred], [b for _, b in gt])
    elif s.kind == "SM":
        s.values, s.sums = _sm([b for _, b in pred], [b for _, b in gt])
    else:
        s.values, s.sums = _multi(pred, gt)
    if s.kind == "GR":
        s.tokens = report_tokens(answer, reference, lang, glossary)
        s.text_source = str(m.get("text_source") or "template")
        s.values["bleu1"] = bleu1(*s.tokens)
    return s


# ----------------------------------------------------------------------------------------- aggregation

#: MedRegA's own metric names -> the quantity (our name) its code computes under that name.  MedRegA's
#: MM/SM evaluators call matches / ground-truth boxes "precision" and matches / predicted boxes "recall".
PAPER_KEYS: dict[str, dict[str, str]] = {
    "SS": {"acc25": "acc@0.25", "acc50": "acc@0.5", "acc75": "acc@0.75", "iou": "iou"},
    "SM": {"precision": "recall", "recall": "precision", "f1": "f1", "iou": "iou"},
    "MS": {
        "box_acc": "box_recall", "box_iou": "box_iou", "object_acc": "object_recall", "object_iou": "object_iou",
        "object_box_acc": "object_box_recall", "object_box_alignment": "object_box_alignment",
        "object_box_detection": "object_box_detection",
    },
    "MM": {
        "box_pre": "box_recall", "box_recall": "box_precision", "box_f1": "box_f1", "box_iou": "box_iou",
        "object_pre": "object_recall", "object_rec": "object_precision", "object_f1": "object_f1",
        "object_iou": "object_iou", "object_box_pre": "object_box_recall",
        "object_box_recall": "object_box_precision", "object_box_f1": "object_box_f1",
        "object_box_alignment": "object_box_alignment", "object_box_detection": "object_box_detection",
    },
    "R2T": {"F1": "f1", "recall": "recall", "accuracy": "accuracy", "bleu1": "bleu1"},
}
PAPER_KEYS["GR"] = PAPER_KEYS["MM"]


def _mean(xs: Sequence[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def _pooled(samples: Sequence[MedregaSample], num: str, den: str) -> float | None:
    d = sum(s.sums.get(den, 0.0) for s in samples)
    return sum(s.sums.get(num, 0.0) for s in samples) / d if d else None


def aggregate_medrega(samples: Sequence[MedregaSample]) -> dict[str, Any]:
    """Metrics of one group (one evaluator, one or all languages); see the module docstring."""
    out: dict[str, Any] = {"samples": len(samples), "missing": sum(s.missing for s in samples)}
    if not samples:
        return out
    kind = samples[0].kind
    out["evaluator"] = kind
    keys = list(samples[0].values)
    for k in keys:
        out[k] = _mean([s.values[k] for s in samples])
    if kind == "SS":
        for t in SS_THRESHOLDS:
            out[f"acc@{t:g}"] = _mean([float(s.values["iou"] > t) for s in samples])
    elif kind == "SM":
        out["iou"] = _pooled(samples, "pair_iou", "pairs")
    elif kind in ("MS", "MM", "GR"):
        out["box_iou"] = _pooled(samples, "pair_iou", "gt_boxes")
        out["object_iou"] = _pooled(samples, "aligned_iou", "aligned")
    elif kind == "negative":
        out["absent_acc"] = out.pop("absent_correct")
    if kind in PAPER_KEYS:
        out["paper_keys"] = {name: out.get(ours) for name, ours in PAPER_KEYS[kind].items()}
    return out
