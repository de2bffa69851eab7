"""The evaluation kit: score model answers against a release's ground truth.

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

Missing predictions are scored as empty answers (or left out with ``ignore_missing``) and counted;
predictions whose id is not in the release, duplicates and unreadable lines are counted too.
"""

from __future__ import annotations

import logging
import math
import re
import weakref
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from scipy.optimize import linear_sum_assignment

from pipeline.evaluate.answers import normalise_text, parse_grounded, strip_grounding
from pipeline.regions.coords import box_iou
from pipeline.language.glossary import Glossary, load_glossary, normalise_name

__all__ = [
    "IOU_THRESHOLDS",
    "EvalReport",
    "SampleScore",
    "aggregate",
    "evaluate",
    "load_predictions",
    "match_boxes",
    "render_tables",
    "says_absent",
    "score_row",
    "spot_terms",
    "text_f1",
    "tokenize",
]

IOU_THRESHOLDS: tuple[float, ...] = (0.25, 0.5, 0.75)
PRF_IOU = 0.5  # IoU at which box / object precision-recall is counted
_ANSWER_KEYS = ("answer", "prediction", "response", "output", "text")


# ----------------------------------------------------------------------------------------- tokenising


@lru_cache(maxsize=4)
def _tokenizer(glossary_origin: str) -> Any:
    """A private jieba tokenizer that knows every Chinese glossary name (so ``右肾上腺`` stays whole)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    tk = jieba.Tokenizer()
    g = load_glossary(glossary_origin or None)
    for t in g.terms.values():
        for name in (*t.names.values(), *(s for syn in t.synonyms.values() for s in syn), *t.aliases):
            if re.search(r"[\u3400-\u9fff]", name):
                tk.add_word(normalise_text(name).replace(" ", ""), freq=200000)
    tk.initialize()
    return tk


def _jieba(glossary: Glossary) -> Any:
    return _tokenizer(glossary.origin)


_WORDISH = re.compile(r"[0-9A-Za-z\u3400-\u9fff]")
_EN_WORD = re.compile(r"[0-9a-z]+(?:'[a-z]+)?")


def tokenize(text: str, lang: str, glossary: Glossary | None = None) -> list[str]:
    """Tokens for text-overlap metrics: jieba words for Chinese (never whitespace), lower-cased words
    for English; punctuation dropped.  Latin runs inside Chinese text are split into words too."""
    text = normalise_text(text or "")
    if lang == "zh" or re.search(r"[\u3400-\u9fff]", text):
        g = glossary or load_glossary()
        out: list[str] = []
        for tok in _jieba(g).lcut(text, HMM=True):
            tok = tok.strip()
            if not tok or not _WORDISH.search(tok):
                continue
            if re.search(r"[\u3400-\u9fff]", tok):
                out.append(tok)
            else:
                out.extend(_EN_WORD.findall(tok.lower()))
        return out
    return _EN_WORD.findall(text.lower())


def text_f1(pred: str, ref: str, lang: str, glossary: Glossary | None = None) -> float:
    """Token-level F1 (bag of tokens, SQuAD style) between two texts; 1.0 when both are empty."""
    p = Counter(tokenize(pred, lang, glossary))
    r = Counter(tokenize(ref, lang, glossary))
    if not p and not r:
        return 1.0
    common = sum((p & r).values())
    if common == 0:
        return 0.0
    prec = common / sum(p.values())
    rec = common / sum(r.values())
    return 2 * prec * rec / (prec + rec)


# ----------------------------------------------------------------------------------------- terms

#: Single words that are synonyms of a term but too generic to count when met inside running text
#: (``vertebral body``, ``whole body``).  A whole answer that is just the word still resolves.
_GENERIC_IN_TEXT = frozenset({"body"})
_MAX_NGRAM = 8


def _word_tokens(text: str, glossary: Glossary) -> list[str]:
    toks = _jieba(glossary).lcut(normalise_text(text), HMM=False)
    out = []
    for tok in toks:
        tok = tok.strip()
        if tok and _WORDISH.search(tok):
            out.append(tok)
    return out


def spot_terms(text: str, glossary: Glossary | None = None) -> list[str]:
    """Glossary term ids named in free text, in order of appearance, de-duplicated.

    The text is tokenised (jieba, which also splits English on spaces and punctuation, with every Chinese
    glossary name registered) and scanned left to right for the longest run of up to 8 tokens that the
    glossary resolves (display names, synonyms, aliases, any language, English word order free).  Boxes
    and grounding tags are removed first.
    """
    g = glossary or load_glossary()
    cache = _SPOT_CACHE.setdefault(g, {})
    hit = cache.get(text)
    if hit is None:
        if len(cache) > 100_000:
            cache.clear()
        hit = cache[text] = tuple(_spot(text, g))
    return list(hit)


_SPOT_CACHE: weakref.WeakKeyDictionary[Glossary, dict[str, tuple[str, ...]]] = weakref.WeakKeyDictionary()


def _spot(text: str, g: Glossary) -> list[str]:
    plain = strip_grounding(text or "")
    if not plain:
        return []
    whole = g.resolve(plain)
    if whole is not None:
        return [whole]
    words = _word_tokens(plain, g)
    found: list[str] = []
    i = 0
    while i < len(words):
        hit = None
        for n in range(min(_MAX_NGRAM, len(words) - i), 0, -1):
            cand = " ".join(words[i : i + n])
            if n == 1 and normalise_name(cand) in _GENERIC_IN_TEXT:
                continue
            tid = g.resolve(cand)
            if tid is not None:
                hit = (tid, n)
                break
        if hit is None:
            i += 1
            continue
        if hit[0] not in found:
            found.append(hit[0])
        i += hit[1]
    return found


def _resolve_ref(term_text: str | None, g: Glossary) -> str | None:
    """Term id of a parsed ref's text: a direct glossary match, else the last term named in it
    (``The requested objects are located at liver`` -> ``liver``)."""
    if not term_text:
        return None
    tid = g.resolve(term_text)
    if tid is not None:
        return tid
    spotted = spot_terms(term_text, g)
    return spotted[-1] if spotted else None


# ----------------------------------------------------------------------------------------- absent targets

_ABSENT_EN = re.compile(
    r"\bnot\s+(?:be\s+)?(?:present|visible|seen|found|shown|detected|identified|depicted|located|observed|"
    r"appear\w*|include\w*|contain\w*|there|in\s+(?:this|the)\s+image)\b"
    r"|\b(?:absent|missing|none)\b"
    r"|\bno\b"
    r"|\b(?:cannot|can't|can\s+not|could\s+not|couldn't|unable\s+to)\s+(?:be\s+)?"
    r"(?:find|found|see|seen|locate|located|detect|detected|identify|identified|observe|observed)\b"
    r"|\b(?:does|do|did|is|are)\s*(?:n't|not)\s+(?:show|appear|contain|include|exist|depict|present|visible|seen)\w*",
    re.IGNORECASE,
)
_ABSENT_ZH = re.compile(
    r"没有|未见|未发现|未显示|未出现|未找到|未能|找不到|看不到|见不到|不存在|不包含|不在|不可见|并无|"
    r"无法(?:找到|定位|识别|看到|检出|发现)|未检出|缺如|不显示"
)


def says_absent(text: str) -> bool:
    """True when an answer states that the requested target is not in the image (English or Chinese)."""
    t = normalise_text(strip_grounding(text or ""))
    return bool(_ABSENT_EN.search(t) or _ABSENT_ZH.search(t))


def _is_negative(row: dict[str, Any]) -> bool:
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
                tid = _resolve_ref(ref.term_text, g)
                if tid and tid not in out:
                    out.append(tid)
    return out


# ----------------------------------------------------------------------------------------- boxes


def _iou_matrix(gt: Sequence[Sequence[float]], pred: Sequence[Sequence[float]]) -> np.ndarray:
    m = np.zeros((len(gt), len(pred)), dtype=np.float64)
    for i, a in enumerate(gt):
        for j, b in enumerate(pred):
            m[i, j] = box_iou(a, b)
    return m


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
    m = _iou_matrix(gt, pred)
    rows, cols = linear_sum_assignment(-m)
    for r, c in zip(rows, cols):
        ious[r] = float(m[r, c])
    for t in thresholds:
        ok = (m >= t - 1e-12).astype(np.float64)
        if not ok.any():
            continue
        rr, cc = linear_sum_assignment(-(ok + 1e-6 * m))
        hits[t] = int(sum(ok[r, c] for r, c in zip(rr, cc)))
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
                t: {"gt": b.n_gt, "pred": b.n_pred, "ious": [round(x, 4) for x in b.ious], "hits": {str(k): v for k, v in b.hits.items()}}
                for t, b in sorted(self.boxes.items())
            }
        out["gt_terms"] = self.gt_terms
        out["pred_terms"] = self.pred_terms
        if self.text_f1 is not None:
            out["text_f1"] = round(self.text_f1, 4)
        return out


def _reference_answer(row: dict[str, Any]) -> str:
    for t in reversed(row.get("conversations", [])):
        if t.get("from") == "gpt":
            return str(t.get("value", ""))
    return ""


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
        tid = _resolve_ref(ref.term_text, g)
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
        s.negative = task == "text_to_region" and _is_negative(row)
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
            s.text_f1 = text_f1(strip_grounding(answer), strip_grounding(_reference_answer(row)), s.lang, g)
    elif task == "region_to_text":
        named = set()
        for ref in parse_grounded(answer):
            tid = _resolve_ref(ref.term_text, g)
            if tid:
                named.add(tid)
        named |= set(spot_terms(answer, g))
        s.pred_terms = sorted(named - context)
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
            terms[term] = {**_prf(c["tp"], c["fp"], c["fn"]), "gt_boxes": c["gt"], "tp": c["tp"], "fp": c["fp"], "fn": c["fn"]}
        out["object"] = {
            k: _mean([v[k] for v in terms.values() if v[k] is not None]) for k in ("precision", "recall", "f1")
        }
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
            for t in s.gt_terms:
                per[t]["n"] += 1
                per[t]["hit"] += t in s.pred_terms
        out["per_term_" + key] = {t: {"n": c["n"], key: c["hit"] / c["n"]} for t, c in sorted(per.items())}
    if task == "grounded_report":
        out["text_f1"] = _mean([s.text_f1 for s in scores if s.text_f1 is not None])
    return out


def _mean(xs: Sequence[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


# ----------------------------------------------------------------------------------------- IO + run


@dataclass
class Predictions:
    answers: dict[str, str]
    duplicates: int = 0
    invalid_lines: list[int] = field(default_factory=list)
    lines: int = 0


def load_predictions(path: str | Path) -> Predictions:
    """Read ``{"id", "answer"}`` JSONL (``prediction``/``response``/``output``/``text`` are accepted
    for ``answer``).  A later line for the same id wins (counted as a duplicate); unreadable lines and
    lines without an id or answer are listed by line number, not fatal."""
    preds = Predictions(answers={})
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            preds.lines += 1
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                preds.invalid_lines.append(n)
                continue
            if not isinstance(obj, dict) or "id" not in obj:
                preds.invalid_lines.append(n)
                continue
            ans = next((obj[k] for k in _ANSWER_KEYS if k in obj), None)
            if ans is None:
                preds.invalid_lines.append(n)
                continue
            rid = str(obj["id"])
            if rid in preds.answers:
                preds.duplicates += 1
            preds.answers[rid] = "" if ans is None else str(ans)
    return preds


@dataclass
class EvalReport:
    """Everything :func:`evaluate` found; :meth:`to_json` is the JSON report."""

    release: str
    splits: list[str]
    groups: dict[str, dict[str, Any]]  # "task/lang" and "task/all" -> metrics
    counts: dict[str, Any]
    samples: list[SampleScore] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "splits": self.splits, "counts": self.counts, "groups": self.groups}


def evaluate(
    release_dir: str | Path,
    predictions: str | Path | dict[str, str],
    *,
    splits: Sequence[str] | None = None,
    ignore_missing: bool = False,
    glossary: Glossary | None = None,
) -> EvalReport:
    """Score predictions against a release.

    ``splits``: the release splits to evaluate; by default the splits that hold at least one predicted id.
    Rows of those splits without a prediction are *missing*: scored as empty answers (so they count as
    wrong) unless ``ignore_missing``.  Raises ``ValueError`` when no predicted id is in the release.
    """
    from pipeline.release.export import iter_release_rows, read_manifest

    g = glossary or load_glossary()
    release_dir = Path(release_dir)
    manifest = read_manifest(release_dir)
    preds = predictions if isinstance(predictions, Predictions) else None
    if preds is None:
        preds = load_predictions(predictions) if not isinstance(predictions, dict) else Predictions(answers=dict(predictions))
    rows = list(iter_release_rows(release_dir))
    by_id = {r["id"]: r for r in rows}
    known = [i for i in preds.answers if i in by_id]
    unknown = [i for i in preds.answers if i not in by_id]
    if splits is None:
        splits = sorted({by_id[i]["meta"]["split"] for i in known})
        if not splits:
            raise ValueError(
                f"none of the {len(preds.answers)} predicted ids is a sample of {release_dir} "
                f"(release {manifest.get('name')}-{manifest.get('version')}); are these predictions for another release?"
            )
    want = set(splits)
    scores: list[SampleScore] = []
    for r in rows:
        if r["meta"]["split"] not in want:
            continue
        ans = preds.answers.get(r["id"])
        if ans is None and ignore_missing:
            continue
        scores.append(score_row(r, ans, g))
    missing_ids = [r["id"] for r in rows if r["meta"]["split"] in want and r["id"] not in preds.answers]
    groups: dict[str, dict[str, Any]] = {}
    by_group: dict[tuple[str, str], list[SampleScore]] = defaultdict(list)
    for s in scores:
        by_group[(s.task, s.lang)].append(s)
        by_group[(s.task, "all")].append(s)
    task_rank = {"region_to_text": 0, "text_to_region": 1, "grounded_report": 2}
    for task, lang in sorted(by_group, key=lambda k: (task_rank.get(k[0], 9), k[0], k[1] == "all", k[1])):
        groups[f"{task}/{lang}"] = aggregate(by_group[(task, lang)])
    counts = {
        "release_rows": len(rows),
        "evaluated": len(scores),
        "predictions": len(preds.answers),
        "prediction_lines": preds.lines,
        "missing": len(missing_ids),
        "missing_ids": missing_ids[:50],
        "missing_ignored": bool(ignore_missing),
        "unknown_ids": len(unknown),
        "unknown_id_examples": unknown[:10],
        "outside_splits": sum(1 for i in known if by_id[i]["meta"]["split"] not in want),
        "duplicates": preds.duplicates,
        "invalid_lines": preds.invalid_lines[:50],
    }
    return EvalReport(
        release=f"{manifest.get('name')}-{manifest.get('version')}",
        splits=list(splits),
        groups=groups,
        counts=counts,
        samples=scores,
    )


# ----------------------------------------------------------------------------------------- report


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


_CAPTIONS = {
    "region_to_text": "acc~ = lenient: a parent/child term counts",
    "text_to_region": "@t = share of GT boxes matched at IoU >= t; absent = absent-target negatives answered right",
    "grounded_report": "termR/termP = terms named anywhere in the report; textF1 = token F1 vs the reference",
}


def render_tables(report: EvalReport) -> list[Any]:
    """Rich tables: one per task, one line per language (and ``all``)."""
    from rich.table import Table

    tables = []
    cols: dict[str, list[tuple[tuple[str, ...], str]]] = {
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
        ],
    }
    tasks = []
    for key in report.groups:
        t = key.split("/")[0]
        if t not in tasks:
            tasks.append(t)
    for task in tasks:
        tb = Table(
            title=f"{task} ({report.release}, splits: {', '.join(report.splits)})",
            caption=_CAPTIONS.get(task),
        )
        tb.add_column("lang", no_wrap=True)
        tb.add_column("n", justify="right", no_wrap=True)
        tb.add_column("miss", justify="right", no_wrap=True)
        for _k, label in cols.get(task, []):
            tb.add_column(label, justify="right", no_wrap=True, min_width=5)
        for key, metrics in report.groups.items():
            if key.split("/")[0] != task:
                continue
            vals = []
            for path, _label in cols.get(task, []):
                v: Any = metrics
                for part in path:
                    v = v.get(part) if isinstance(v, dict) else None
                vals.append(_fmt(v))
            tb.add_row(key.split("/")[1], str(metrics["samples"]), str(metrics["missing"]), *vals)
        tables.append(tb)
    return tables


def write_details(report: EvalReport, path: str | Path) -> None:
    """Per-sample scores as JSONL (what each answer was credited with)."""
    from pipeline.core.atomic import write_bytes_atomic

    data = b"".join(orjson.dumps(s.to_json()) + b"\n" for s in report.samples)
    write_bytes_atomic(path, data)
