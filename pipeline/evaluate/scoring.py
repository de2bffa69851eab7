"""The evaluation kit's default protocol: score one answer against its row, and aggregate.

Input: a release folder (ground truth = each row's ``meta.regions``, ``meta.task``, ``meta.lang``) and
predictions as JSONL rows ``{"id": <sample id>, "answer": <model text>}``.  Answers are read with the one
answer parser (:mod:`pipeline.evaluate.answers`), so tagged (``<ref>..</ref><box>[[..]]</box>``), tag-stripped
(``liver[[..]]``), bare, corner-pair and full-width forms in English or Chinese all score alike.  Terms
are matched through the glossary (display names, synonyms, aliases, word order: ``right kidney`` ==
``kidney, right`` == ``右肾``).

Metrics (docs/evaluation.md has the definitions):

* **text_to_region** and **grounded_report** (box metrics): per sample, predicted boxes are assigned to
  terms (a box whose term the answer does not name goes to the ground-truth term it overlaps most) and,
  per term, matched one-to-one to ground-truth boxes with the Hungarian algorithm
  (:func:`scipy.optimize.linear_sum_assignment`).  ``mean_iou`` = mean over ground-truth boxes of the IoU
  of their match under the IoU-maximising assignment (0 when unmatched); ``acc@t`` = share of
  ground-truth boxes matched with IoU >= t under the assignment maximising the number of such matches;
  box precision/recall/F1 at IoU 0.5 (micro); object-level (per term) precision/recall/F1 and their
  macro mean.  Absent-target negatives (the requested structure is not in the image) are correct when the
  answer has no box and says the target is not present; any box on them is a false positive.
* **region_to_text**: ground-truth terms vs terms named in the answer -> accuracy (share of
  ground-truth terms named), lenient accuracy (an ancestor/descendant term counts, e.g. ``kidney`` for
  ``kidney_right``), exact match (named set == ground-truth set), term precision and F1, per-term accuracy.
* **grounded_report**: the box metrics, plus term recall / precision (every term named anywhere in the
  report) and a token-level F1 of the report text against the reference answer (boxes removed; Chinese
  tokenised with jieba, English by words).

Reading prediction files is :mod:`pipeline.evaluate.predictions`; running over a release and the
``medrega`` protocol (MedRegA's published definitions) are :mod:`pipeline.evaluate.run` and
:mod:`pipeline.evaluate.medrega`; boxes are compared with :mod:`pipeline.regions.coords`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.evaluate.answers import parse_grounded, strip_grounding
from pipeline.evaluate.text import resolve_ref, says_absent, spot_terms, text_f1, tokenize
from pipeline.language.glossary import Glossary, load_glossary
from pipeline.regions.coords import box_iou, count_matches_at, iou_matrix, match_max_iou

__all__ = [
    "IOU_THRESHOLDS",
    "PRF_IOU",
    "BoxMatch",
    "SampleScore",
    "aggregate",
    "is_negative",
    "match_boxes",
    "reference_answer",
    "says_absent",
    "score_row",
    "spot_terms",
    "text_f1",
    "tokenize",
]

IOU_THRESHOLDS: tuple[float, ...] = (0.25, 0.5, 0.75)
PRF_IOU = 0.5  # IoU at which box / object precision-recall is counted


# ----------------------------------------------------------------------------------------- rows


def is_negative(row: dict[str, Any]) -> bool:
    m = row.get("meta", {})
    sub = str(m.get("subtask") or "").lower()
    if "absent" in sub or "negative" in sub:
        return True
    return m.get("task") == "text_to_region" and not m.get("regions")


def _asked_terms(row: dict[str, Any], g: Glossary) -> list[str]:
    """Terms the question names in ``<ref>`` tags (the requested target of an absent negative)."""
    out: list[str] = []
    for t in row.get("conversations", []):
        if t.get("from") == "human":
            for ref in parse_grounded(str(t.get("value", ""))):
                tid = resolve_ref(ref.term_text, g)
                if tid and tid not in out:
                    out.append(tid)
    return out


# ----------------------------------------------------------------------------------------- boxes


@dataclass
class BoxMatch:
    """One term's ground-truth vs predicted boxes."""

    n_gt: int
    n_pred: int
    ious: list[float]  # per ground-truth box: IoU of its match under the IoU-maximising assignment (0 if none)
    hits: dict[float, int]  # threshold -> ground-truth boxes matched with IoU >= threshold (max-cardinality)


def match_boxes(
    gt: Sequence[Sequence[float]], pred: Sequence[Sequence[float]], thresholds: Iterable[float] = IOU_THRESHOLDS
) -> BoxMatch:
    """Hungarian matching of predicted to ground-truth boxes (one-to-one).

    ``ious``: for each ground-truth box, the IoU of its partner in the assignment maximising the summed
    IoU.  ``hits[t]``: the number of ground-truth boxes matched with IoU >= t in the assignment that
    maximises that number (ties broken by IoU), so no threshold is penalised by another's optimum.
    """
    thresholds = sorted(set(thresholds) | {PRF_IOU})
    n_gt, n_pred = len(gt), len(pred)
    ious = [0.0] * n_gt
    hits = {t: 0 for t in thresholds}
    if n_gt == 0 or n_pred == 0:
        return BoxMatch(n_gt, n_pred, ious, hits)
    m = iou_matrix(gt, pred)
    for r, _c, iou in match_max_iou(m):
        ious[r] = iou
    for t in thresholds:
        hits[t] = count_matches_at(m, t)
    return BoxMatch(n_gt, n_pred, ious, hits)


# ----------------------------------------------------------------------------------------- per sample


@dataclass
class SampleScore:
    """What one answer scored (the fields a task does not use stay empty)."""

    id: str
    task: str
    lang: str
    subtask: str | None
    missing: bool = False
    negative: bool = False
    absent_correct: bool | None = None  # negatives only
    # box metrics, per term: term -> BoxMatch
    boxes: dict[str, BoxMatch] = field(default_factory=dict)
    # term metrics
    gt_terms: list[str] = field(default_factory=list)
    pred_terms: list[str] = field(default_factory=list)
    lenient_hits: int = 0
    text_f1: float | None = None
    text_source: str = "template"  # grounded_report: the row's meta.text_source (report / template)
    tokens: tuple[list[str], list[str]] | None = None  # grounded_report: (answer, reference) tokens for BLEU etc.

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "task": self.task,
            "lang": self.lang,
            "subtask": self.subtask,
            "missing": self.missing,
        }
        if self.negative:
            out["negative"] = True
            out["absent_correct"] = self.absent_correct
        if self.boxes:
            out["boxes"] = {
                t: {
                    "gt": b.n_gt,
                    "pred": b.n_pred,
                    "ious": [round(x, 4) for x in b.ious],
                    "hits": {str(k): v for k, v in b.hits.items()},
                }
                for t, b in sorted(self.boxes.items())
            }
        out["gt_terms"] = self.gt_terms
        out["pred_terms"] = self.pred_terms
        if self.text_f1 is not None:
            out["text_f1"] = round(self.text_f1, 4)
        return out


def reference_answer(row: dict[str, Any]) -> str:
    for t in reversed(row.get("conversations", [])):
        if t.get("from") == "gpt":
            return str(t.get("value", ""))
    return ""


def report_tokens(answer: str, reference: str, lang: str, g: Glossary) -> tuple[list[str], list[str]]:
    """(answer, reference) tokens of a grounded report for the text metrics: tags and boxes removed."""
    return tokenize(strip_grounding(answer), lang, g), tokenize(strip_grounding(reference), lang, g)


def _context_terms(row: dict[str, Any], g: Glossary) -> set[str]:
    """Glossary terms that are the row's own body-region word (``colon`` for an endoscopy image):
    templates and models name them as context, so they are not counted as predictions."""
    br = row.get("meta", {}).get("body_region")
    out: set[str] = set()
    if br:
        for cand in {str(br), str(br).replace("_", " ")}:
            tid = g.resolve(cand)
            if tid:
                out.add(tid)
    return out


def _gt_boxes(row: dict[str, Any]) -> dict[str, list[list[int]]]:
    by: dict[str, list[list[int]]] = defaultdict(list)
    for r in row.get("meta", {}).get("regions", []):
        by[r["term"]].append([int(v) for v in r["box"]])
    return dict(by)


def _pred_boxes(answer: str, gt: dict[str, list[list[int]]], g: Glossary) -> dict[str, list[tuple[int, ...]]]:
    """Predicted boxes per term id.  A box list whose term the answer does not name (or names in a way
    the glossary does not know) goes to the ground-truth term it overlaps most (the only one, for a
    single-target question); with no ground truth it is kept under ``"?"``."""
    by: dict[str, list[tuple[int, ...]]] = defaultdict(list)
    for ref in parse_grounded(answer):
        if not ref.boxes:
            continue
        tid = resolve_ref(ref.term_text, g)
        for b in ref.boxes:
            t = tid
            if t is None:
                if len(gt) == 1:
                    t = next(iter(gt))
                elif any(gt.values()):
                    best = max(
                        ((box_iou(gb, b), term) for term, gbs in sorted(gt.items()) for gb in gbs),
                        key=lambda x: x[0],
                    )
                    t = best[1]
                else:
                    t = "?"
            by[t].append(tuple(b))
    return dict(by)


def score_row(row: dict[str, Any], answer: str | None, glossary: Glossary | None = None) -> SampleScore:
    """Score one answer (``None`` = missing prediction, scored as an empty answer) against its row."""
    g = glossary or load_glossary()
    m = row.get("meta", {})
    task = m.get("task", "")
    s = SampleScore(
        id=row["id"], task=task, lang=m.get("lang", ""), subtask=m.get("subtask"), missing=answer is None
    )
    answer = answer or ""
    gt = _gt_boxes(row)
    s.gt_terms = sorted(gt)
    context = _context_terms(row, g) - set(gt)

    if task in ("text_to_region", "grounded_report"):
        s.negative = task == "text_to_region" and is_negative(row)
        if s.negative:
            # a box the answer does not name is credited to the requested (absent) term
            pred = _pred_boxes(answer, {t: [] for t in _asked_terms(row, g)[:1]}, g)
        else:
            pred = _pred_boxes(answer, gt, g)
        for term in sorted(set(gt) | set(pred)):
            s.boxes[term] = match_boxes(gt.get(term, []), pred.get(term, []))
        if s.negative:
            has_box = any(pred.values())
            s.absent_correct = (not has_box) and says_absent(answer)
            s.gt_terms = []
            s.pred_terms = sorted(pred)
        else:
            named = [t for t in spot_terms(answer, g) if t not in context]
            s.pred_terms = sorted(set(named) | {t for t in pred if t != "?"})
        if task == "grounded_report":
            s.text_f1 = text_f1(strip_grounding(answer), strip_grounding(reference_answer(row)), s.lang, g)
            s.text_source = str(m.get("text_source") or "template")
            s.tokens = report_tokens(answer, reference_answer(row), s.lang, g)
    elif task == "region_to_text":
        said: set[str] = set(spot_terms(answer, g))
        for ref in parse_grounded(answer):
            tid = resolve_ref(ref.term_text, g)
            if tid:
                said.add(tid)
        s.pred_terms = sorted(said - context)
        s.lenient_hits = sum(1 for t in s.gt_terms if any(g.related(t, p) for p in s.pred_terms if p in g))
    else:
        raise ValueError(f"row {row['id']}: unknown task {task!r}")
    return s


# ----------------------------------------------------------------------------------------- aggregation


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _f1(p: float | None, r: float | None) -> float | None:
    if p is None or r is None:
        return None
    return 2 * p * r / (p + r) if (p + r) > 0 else 0.0


def _prf(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    """Precision / recall / F1; a ratio with nothing to count is ``None``, but F1 is 0 as soon as there
    was something to find or something predicted and nothing was right."""
    p = _ratio(tp, tp + fp)
    r = _ratio(tp, tp + fn)
    f1 = _f1(p, r)
    if f1 is None and tp == 0 and (fp + fn) > 0:
        f1 = 0.0
    return {"precision": p, "recall": r, "f1": f1}


def aggregate(scores: Sequence[SampleScore]) -> dict[str, Any]:
    """Metrics of a group of samples of one task (see the module docstring)."""
    out: dict[str, Any] = {"samples": len(scores), "missing": sum(s.missing for s in scores)}
    if not scores:
        return out
    task = scores[0].task
    if task in ("text_to_region", "grounded_report"):
        n_gt = n_pred = 0
        iou_sum = 0.0
        hits: Counter = Counter()
        per_term: dict[str, Counter] = defaultdict(Counter)
        for s in scores:
            for term, b in s.boxes.items():
                n_gt += b.n_gt
                n_pred += b.n_pred
                iou_sum += sum(b.ious)
                for t, h in b.hits.items():
                    hits[t] += h
                tp = b.hits.get(PRF_IOU, 0)
                per_term[term]["tp"] += tp
                per_term[term]["fp"] += b.n_pred - tp
                per_term[term]["fn"] += b.n_gt - tp
                per_term[term]["gt"] += b.n_gt
        tp = hits[PRF_IOU]
        out["boxes_gt"] = n_gt
        out["boxes_pred"] = n_pred
        out["mean_iou"] = _ratio(iou_sum, n_gt)
        for t in IOU_THRESHOLDS:
            out[f"acc@{t:g}"] = _ratio(hits[t], n_gt)
        out["box"] = _prf(tp, n_pred - tp, n_gt - tp)
        terms = {}
        for term, c in sorted(per_term.items()):
            counts = {"gt_boxes": c["gt"], "tp": c["tp"], "fp": c["fp"], "fn": c["fn"]}
            terms[term] = {**_prf(c["tp"], c["fp"], c["fn"]), **counts}
        macro = ("precision", "recall", "f1")
        out["object"] = {k: _mean([float(x) for v in terms.values() if (x := v[k]) is not None]) for k in macro}
        out["per_term"] = terms
        if task == "text_to_region":
            negs = [s for s in scores if s.negative]
            out["negatives"] = len(negs)
            out["absent_acc"] = _ratio(sum(bool(s.absent_correct) for s in negs), len(negs))
    if task in ("region_to_text", "grounded_report"):
        pos = [s for s in scores if not s.negative]
        n_gt_terms = sum(len(s.gt_terms) for s in pos)
        hit = sum(len(set(s.gt_terms) & set(s.pred_terms)) for s in pos)
        n_pred_terms = sum(len(s.pred_terms) for s in pos)
        key = "accuracy" if task == "region_to_text" else "term_recall"
        out[key] = _ratio(hit, n_gt_terms)
        out["term_precision"] = _ratio(hit, n_pred_terms)
        out["term_f1"] = _f1(out[key], out["term_precision"])
        if task == "region_to_text":
            out["accuracy_lenient"] = _ratio(sum(s.lenient_hits for s in pos), n_gt_terms)
            out["exact_match"] = _ratio(sum(set(s.gt_terms) == set(s.pred_terms) for s in pos), len(pos))
        per: dict[str, Counter] = defaultdict(Counter)
        for s in pos:
            for term in s.gt_terms:
                per[term]["n"] += 1
                per[term]["hit"] += term in s.pred_terms
        out["per_term_" + key] = {t: {"n": c["n"], key: c["hit"] / c["n"]} for t, c in sorted(per.items())}
    if task == "grounded_report":
        out["text_f1"] = _mean([s.text_f1 for s in scores if s.text_f1 is not None])
    return out


def _mean(xs: Sequence[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None
