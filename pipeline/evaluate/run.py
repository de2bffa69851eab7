"""Score a model's predictions against a release: ``medreg eval`` as a plain function.

Two protocols: ``default`` (:mod:`pipeline.evaluate.scoring`: glossary-aware terms, per-box Hungarian
matching, IoU >= t) and ``medrega`` (:mod:`pipeline.evaluate.medrega`: MedRegA's published definitions,
bugs fixed).  Predictions come from :mod:`pipeline.evaluate.predictions` (our JSONL or MedRegA's native
files) or a ``{id: answer}`` dict.  docs/evaluation.md describes both protocols and every difference.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.evaluate.medrega import MedregaSample, aggregate_medrega, score_row_medrega
from pipeline.evaluate.predictions import Predictions, load_predictions, resolve_by_reference
from pipeline.evaluate.report_metrics import text_scores
from pipeline.evaluate.scoring import SampleScore, aggregate, score_row
from pipeline.language.glossary import Glossary, load_glossary

__all__ = ["PROTOCOLS", "EvalReport", "evaluate", "evaluate_rows", "write_details"]

PROTOCOLS = ("default", "medrega")
_TASK_RANK = {"region_to_text": 0, "text_to_region": 1, "grounded_report": 2}


@dataclass
class EvalReport:
    """Everything :func:`evaluate` found; :meth:`to_json` is the JSON report."""

    release: str
    splits: list[str]
    groups: dict[str, dict[str, Any]]  # "<group>/<lang>" and "<group>/all" -> metrics
    counts: dict[str, Any]
    protocol: str = "default"
    samples: list[Any] = field(default_factory=list, repr=False)  # SampleScore or MedregaSample

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "protocol": self.protocol, "splits": self.splits, "counts": self.counts,
                "groups": self.groups}


def _as_predictions(predictions: str | Path | dict[str, str] | Predictions) -> Predictions:
    if isinstance(predictions, Predictions):
        return predictions
    if isinstance(predictions, dict):
        return Predictions(answers={str(k): str(v) for k, v in predictions.items()})
    return load_predictions(predictions)


def _no_match_error(preds: Predictions, release: str) -> ValueError:
    ids = list(preds.answers)
    msg = f"none of the {len(ids)} predicted ids is a row of release {release}"
    if ids:
        msg += f" (first: {', '.join(repr(i) for i in ids[:3])}); are these predictions for another release?"
    if preds.invalid:
        msg += f" {preds.source or 'the predictions'} also has unusable entries: " + "; ".join(preds.invalid[:3])
    return ValueError(msg)


def _group_key(sample: Any, protocol: str) -> str:
    return sample.group if protocol == "medrega" else sample.task


def _group_order(key: tuple[str, str]) -> tuple[Any, ...]:
    group, lang = key
    return (_TASK_RANK.get(group.split(".")[0], 9), group, lang == "all", lang)


def _groups(samples: Sequence[Any], protocol: str) -> dict[str, dict[str, Any]]:
    """Metrics per group and language.  Grounded reports also get MedRegA's text metrics (BLEU-1..4, ROUGE-L,
    METEOR) and two more groups, ``grounded_report.report`` / ``grounded_report.template`` (``meta.text_source``),
    so report-grounded and template rows can be compared."""
    agg: Callable[[Any], dict[str, Any]] = aggregate_medrega if protocol == "medrega" else aggregate
    by_group: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for s in samples:
        keys = [_group_key(s, protocol)]
        if s.task == "grounded_report":
            keys.append(f"grounded_report.{s.text_source}")
        for key in keys:
            by_group[(key, s.lang)].append(s)
            by_group[(key, "all")].append(s)
    out = {}
    for g, lang in sorted(by_group, key=_group_order):
        group = by_group[(g, lang)]
        out[f"{g}/{lang}"] = agg(group)
        if lang != "all" and group[0].task == "grounded_report":  # text metrics within one language only
            out[f"{g}/{lang}"].update(text_scores([s.tokens for s in group if s.tokens is not None]))
    return out


def evaluate_rows(
    rows: Sequence[dict[str, Any]],
    predictions: str | Path | dict[str, str] | Predictions,
    *,
    protocol: str = "default",
    splits: Sequence[str] | None = None,
    ignore_missing: bool = False,
    glossary: Glossary | None = None,
    release: str = "rows",
) -> EvalReport:
    """Score predictions against rows (see :func:`evaluate`)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    g = glossary or load_glossary()
    preds = _as_predictions(predictions)
    resolve_by_reference(preds, rows)
    by_id = {r["id"]: r for r in rows}
    known = [i for i in preds.answers if i in by_id]
    unknown = [i for i in preds.answers if i not in by_id]
    if splits is None:
        splits = sorted({by_id[i]["meta"]["split"] for i in known})
        if not splits:
            raise _no_match_error(preds, release)
    want = set(splits)
    score: Callable[[dict[str, Any], str | None, Glossary], SampleScore | MedregaSample]
    score = score_row_medrega if protocol == "medrega" else score_row
    samples: list[Any] = []
    missing_ids: list[str] = []
    for r in rows:
        if r["meta"]["split"] not in want:
            continue
        ans = preds.answers.get(r["id"])
        if ans is None:
            missing_ids.append(r["id"])
            if ignore_missing:
                continue
        samples.append(score(r, ans, g))
    counts = {
        "release_rows": len(rows), "evaluated": len(samples), "predictions": len(preds.answers),
        "prediction_lines": preds.lines, "missing": len(missing_ids), "missing_ids": missing_ids[:50],
        "missing_ignored": bool(ignore_missing), "unknown_ids": len(unknown), "unknown_id_examples": unknown[:10],
        "outside_splits": sum(1 for i in known if by_id[i]["meta"]["split"] not in want),
        "duplicates": preds.duplicates, "invalid_lines": preds.invalid[:50], "invalid": len(preds.invalid),
    }
    return EvalReport(release=release, splits=list(splits), groups=_groups(samples, protocol), counts=counts,
                      protocol=protocol, samples=samples)


def evaluate(
    release_dir: str | Path,
    predictions: str | Path | dict[str, str] | Predictions,
    *,
    protocol: str = "default",
    splits: Sequence[str] | None = None,
    ignore_missing: bool = False,
    glossary: Glossary | None = None,
) -> EvalReport:
    """Score predictions against a release.

    ``predictions``: a file (JSONL or a JSON list, our layout or MedRegA's) or ``{id: answer}``.
    ``protocol``: ``default`` or ``medrega``.  ``splits``: the release splits to evaluate; by default the
    splits that hold at least one predicted id.  Rows of those splits without a prediction are *missing*:
    scored as empty answers (so they count as wrong) unless ``ignore_missing``.  Raises ``ValueError``
    when no predicted id is in the release and :class:`~pipeline.evaluate.predictions.PredictionFileError`
    (a ``ValueError``) when the file has no usable entry, naming the lines.
    """
    from pipeline.release.export import iter_release_rows, read_manifest

    release_dir = Path(release_dir)
    manifest = read_manifest(release_dir)
    rows = list(iter_release_rows(release_dir))
    return evaluate_rows(
        rows, predictions, protocol=protocol, splits=splits, ignore_missing=ignore_missing, glossary=glossary,
        release=f"{manifest.get('name')}-{manifest.get('version')}",
    )


def write_details(report: EvalReport, path: str | Path) -> None:
    """Per-sample scores as JSONL (what each answer was credited with)."""
    from pipeline.core.atomic import write_bytes_atomic

    write_bytes_atomic(path, b"".join(orjson.dumps(s.to_json()) + b"\n" for s in report.samples))
