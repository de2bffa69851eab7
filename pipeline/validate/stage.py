"""How the build uses pipeline.validate: per-case rules, then release-level validators, then policy.

* Case level (inside each case's task, on the in-memory slice): validators that need only one sample
  (``rules``).  Rows whose policy is ``drop`` never leave the case; the reason codes are counted.
* Release level (its own stage, between sample generation and writing): validators that need the whole
  release (``stats``) or a model (``clip``, ``grounding``), with a verdict cache so a rerun recomputes
  only what is missing.  Flagged rows are kept and listed in ``review.jsonl``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.release.images import ImageStore
from pipeline.validate.base import result_from_meta
from pipeline.validate import ValidationItem, VerdictCache, apply_policy, build_validators, run_validators, validation_meta
from pipeline.validate import registry
from schemas.validation import ValidationConfig


def validation_config(cfg: dict[str, Any] | ValidationConfig | None) -> ValidationConfig:
    if isinstance(cfg, ValidationConfig):
        return cfg
    if not cfg:
        return ValidationConfig(validators=["rules"])
    return ValidationConfig.model_validate(cfg)


def case_validators_for(cfg: dict[str, Any] | ValidationConfig | None) -> list[Any]:
    return build_validators(validation_config(cfg), level="case")  # each validator declares its level


def release_validators_for(cfg: dict[str, Any] | ValidationConfig | None) -> list[Any]:
    return build_validators(validation_config(cfg), level="release")


def uses_model(cfg: dict[str, Any] | ValidationConfig | None) -> bool:
    return registry.uses_model(validation_config(cfg))  # each validator declares needs_model


def apply_rows_policy(
    items: list[ValidationItem], validators: list[Any], cfg: dict[str, Any] | ValidationConfig | None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Run case-level validators on one slice's rows; return kept rows and dropped-reason counts."""
    vc = validation_config(cfg)
    results = run_validators(items, validators)
    kept: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    for item, res in zip(items, results, strict=True):
        item.row["meta"]["validation"] = validation_meta(res)
        decision = apply_policy(res, vc.policy)
        if decision.action == "drop":
            dropped.update(decision.codes or ["dropped"])
        else:
            kept.append(item.row)
    return kept, dict(dropped)


@dataclass
class Validated:
    rows: list[dict[str, Any]]
    review: list[dict[str, Any]] | None
    dropped: dict[str, int] = field(default_factory=dict)
    summary: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # source -> validator -> verdict -> n
    computed: int = 0
    cached: int = 0


def _load(store: ImageStore, rel: str, memo: dict[str, np.ndarray]) -> np.ndarray:
    if rel not in memo:
        with Image.open(store.path(rel)) as im:
            memo[rel] = np.asarray(im)
    return memo[rel]


def release_validation(
    results: list[Any],
    cfg: dict[str, Any] | ValidationConfig | None,
    store: ImageStore,
    cache_dir: str | Path | None = None,
) -> Validated:
    """Release-level validators over every row, then the keep/flag/drop policy over all verdicts."""
    vc = validation_config(cfg)
    rows = [r for res in results for r in res.rows]
    validators = release_validators_for(vc)
    cache = None
    computed = cached = 0
    if validators and rows:
        cache_root = vc.cache_dir or cache_dir
        cache = VerdictCache(cache_root) if cache_root else None
        memo: dict[str, np.ndarray] = {}
        items = [
            ValidationItem(row=r, image=_load(store, r["image"], memo), image_sha=Path(r["image"]).stem) for r in rows
        ]
        before = _cache_counts(cache)
        out = run_validators(items, validators, cache=cache)
        after = _cache_counts(cache)
        computed, cached = after[0] - before[0], after[1] - before[1]
        for r, res in zip(rows, out, strict=True):
            r["meta"]["validation"] = list(r["meta"].get("validation") or []) + validation_meta(res)
    kept: list[dict[str, Any]] = []
    review: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    summary: Counter[str] = Counter()
    by_source: dict[str, dict[str, dict[str, int]]] = {}
    for r in rows:
        res = [result_from_meta(v) for v in r["meta"].get("validation") or []]
        for v in res:
            summary[f"{v.validator}:{v.verdict}"] += 1
            per = by_source.setdefault(r["meta"]["source"], {}).setdefault(v.validator, {"pass": 0, "flag": 0, "fail": 0})
            per[v.verdict] += 1
        decision = apply_policy(res, vc.policy)
        if decision.action == "drop":
            dropped.update(decision.codes or ["dropped"])
            continue
        if decision.action == "flag":
            m = r["meta"]
            review.append(
                {"id": r["id"], "image": r["image"], "source": m["source"], "case_id": m["case_id"], "task": m["task"],
                 "lang": m["lang"], "reasons": decision.reasons, "codes": decision.codes}
            )
        kept.append(r)
    review.sort(key=lambda x: x["id"])
    return Validated(
        rows=kept,
        review=review,
        dropped=dict(dropped),
        summary=dict(sorted(summary.items())),
        by_source={k: by_source[k] for k in sorted(by_source)},
        computed=computed,
        cached=cached,
    )


def _cache_counts(cache: Any) -> tuple[int, int]:
    if cache is None:
        return (0, 0)
    return (int(cache.computed), int(cache.cached))
