"""How the build uses pipeline.validate: per-case rules, then release-level validators, then policy.

* Case level (inside each case's task, on the in-memory slice): validators that need only one sample
  (``rules``).  Rows whose policy is ``drop`` never leave the case; the reason codes are counted.
* Release level (its own stage between the case parts and the writer): validators that need the whole
  release (``stats``: fitted on the compact per-region tables every case wrote, read with polars) or a
  model (``clip``, ``grounding``).  The stage streams the parts' rows in batches (memory: one batch and
  one part, never the release) and writes each part's verdicts to a sidecar file keyed by the validation
  config and the fit, so a rerun recomputes only what changed; model verdicts also have their own cache.
  The writer applies the keep/flag/drop policy while it merges parts into shards.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from inspect import signature
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from PIL import Image

from pipeline.core.atomic import write_bytes_atomic
from pipeline.core.ids import stable_id
from pipeline.validate import (
    ValidationItem,
    VerdictCache,
    apply_policy,
    build_validators,
    run_validators,
    validation_meta,
)
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
class ReleaseVerdicts:
    """Where the release-level verdicts are: ``vkey`` names each part's sidecar (None: no validators)."""

    vkey: str | None = None
    computed: int = 0
    cached: int = 0
    parts_validated: int = 0
    parts_reused: int = 0


def release_validation(
    store: Any,
    part_keys: list[str],
    cfg: dict[str, Any] | ValidationConfig | None,
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    executor: Any = None,
) -> ReleaseVerdicts:
    """Run the release-level validators over every row of the given parts (in order), batch by batch,
    writing ``verdicts-<vkey>.jsonl`` beside each part (one line per row: id + validation entries)."""
    vc = validation_config(cfg)
    validators = release_validators_for(vc)
    if not validators:
        return ReleaseVerdicts()
    for v in validators:
        if getattr(v, "needs_fit", False) and hasattr(v, "fit_tables"):
            spill = {"spill_dir": store.root / "tmp"} if "spill_dir" in signature(v.fit_tables).parameters else {}
            v.fit_tables([store.features_path(k) for k in part_keys], **spill)
    vkey = stable_id(vc.config_hash(), *(f"{v.name}:{v.version}:{getattr(v, 'config_hash', '')}" for v in validators))
    out = ReleaseVerdicts(vkey=vkey)
    cache_root = vc.cache_dir or cache_dir
    cache = VerdictCache(cache_root) if cache_root else None
    todo = []
    for k in part_keys:
        if store.verdicts_path(k, vkey).is_file():
            out.parts_reused += 1
        else:
            todo.append(k)
    out.parts_validated = len(todo)
    workers = getattr(executor, "workers", 1) if executor is not None else 1
    if workers > 1 and len(todo) > 1 and not any(getattr(v, "needs_model", False) for v in validators):
        # CPU validators (rules, stats, plugins without a model) run part by part in the worker processes
        chunks = [todo[i :: 2 * workers] for i in range(min(len(todo), 2 * workers))]
        for _chunk, res in executor.map_unordered(validate_parts, chunks, store, validators, cache_root, vkey,
                                                   batch_size):
            if isinstance(res, BaseException):
                raise res
            out.computed += res[0]
            out.cached += res[1]
            if progress:
                progress(res[2])
        return out
    _stream_validate(store, todo, validators, cache, vkey, batch_size, progress)
    if cache is not None:
        out.computed, out.cached = int(cache.computed), int(cache.cached)
    return out


def validate_parts(keys: list[str], store: Any, validators: list[Any], cache_root: str | Path | None, vkey: str,
                   batch_size: int) -> tuple[int, int, int]:
    """One executor task of the release-level stage: the sidecars of these parts.  Returns (verdicts
    computed, verdicts from the cache, rows validated)."""
    cache = VerdictCache(cache_root) if cache_root else None
    rows = _stream_validate(store, keys, validators, cache, vkey, batch_size, None)
    return (int(cache.computed), int(cache.cached), rows) if cache is not None else (0, 0, rows)


def _load_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _run_release_validators(items: list[ValidationItem], validators: list[Any], cache: Any) -> list[list[Any]]:
    """``run_validators``, with the verdict cache for the validators that call a model only. A verdict of
    a CPU validator (``stats``: a few arithmetic operations on the fit) costs less to recompute than its
    cache file costs to write (one atomic file per row: ~0.5 ms, half of a CT release's validation stage
    and tens of thousands of files for a 2-D build); a rerun with nothing changed reuses each part's
    sidecar anyway. Model verdicts (a GPU or a server per row) are still cached row by row."""
    if cache is None or all(getattr(v, "needs_model", False) for v in validators):
        return run_validators(items, validators, cache=cache)
    cached = [j for j, v in enumerate(validators) if getattr(v, "needs_model", False)]
    plain = [j for j in range(len(validators)) if j not in cached]
    out: list[list[Any]] = [[None] * len(validators) for _ in items]
    for group, group_cache in ((plain, None), (cached, cache)):
        if not group:
            continue
        res = run_validators(items, [validators[j] for j in group], cache=group_cache)
        for row_out, row_res in zip(out, res, strict=True):
            for j, r in zip(group, row_res, strict=True):
                row_out[j] = r
    return out


def _stream_validate(store: Any, keys: list[str], validators: list[Any], cache: Any, vkey: str, batch_size: int,
                     progress: Callable[[int], None] | None) -> int:
    """Whole parts are gathered until a batch has ``batch_size`` rows, validated together (one model batch
    across cases), and each part's sidecar is written; memory: one batch, never the release."""
    parts: list[tuple[str, list[ValidationItem]]] = []

    def flush() -> None:
        items = [it for _, its in parts for it in its]
        results = _run_release_validators(items, validators, cache) if items else []
        pos = 0
        for key, its in parts:
            chunk = results[pos : pos + len(its)]
            lines = [{"id": it.row_id, "validation": validation_meta(r)} for it, r in zip(its, chunk, strict=True)]
            pos += len(its)
            write_bytes_atomic(store.verdicts_path(key, vkey), b"".join(orjson.dumps(x) + b"\n" for x in lines))
        if progress and items:
            progress(len(items))
        parts.clear()

    size = total = 0
    for key in keys:
        memo: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        items = []
        for row in store.iter_rows(key):
            rel = row["image"]
            if rel not in memo:
                memo[rel] = (_load_image(store.images.path(rel)), {})
            image, grey = memo[rel]
            items.append(ValidationItem(row=row, image=image, image_sha=Path(rel).stem, grey_cache=grey))
        parts.append((key, items))
        size += len(items)
        total += len(items)
        if size >= batch_size:
            flush()
            size = 0
    flush()
    return total


def row_decision(row: dict[str, Any], extra: list[dict[str, Any]] | None, vc: ValidationConfig) -> Any:
    """The keep/flag/drop decision of one row from all its verdicts (case-level ones already in the row,
    release-level ones from the sidecar, appended to the row here)."""
    from pipeline.validate.base import result_from_meta

    if extra:
        row["meta"]["validation"] = list(row["meta"]["validation"]) + extra
    return apply_policy([result_from_meta(v) for v in row["meta"]["validation"]], vc.policy)


def review_entry(row: dict[str, Any], decision: Any) -> dict[str, Any]:
    m = row["meta"]
    return {"id": row["id"], "image": row["image"], "source": m["source"], "case_id": m["case_id"],
            "task": m["task"], "lang": m["lang"], "reasons": decision.reasons, "codes": decision.codes}


def verdict_tally(row: dict[str, Any], summary: Counter[str], by_source: dict[str, dict[str, dict[str, int]]]) -> None:
    per_source = by_source.setdefault(row["meta"]["source"], {})
    for v in row["meta"]["validation"]:
        summary[f"{v['validator']}:{v['verdict']}"] += 1
        per = per_source.setdefault(v["validator"], {"pass": 0, "flag": 0, "fail": 0})
        per[v["verdict"]] += 1
