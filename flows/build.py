"""Prefect flow ``build_release``: thin wiring of ``sources`` + ``pipeline`` (no logic of its own).

* one task per case (never per slice); per-case failures are error records, the run completes;
* case tasks are cached across runs with ``INPUTS + TASK_SOURCE``: their inputs are strings only —
  the card's YAML text, the case reference, the sha256 of every input file and the part of the config
  that changes a case's output — so a rerun after a crash recomputes only the missing cases;
* the validation stage is its own task between sample generation and writing; model validators run
  under the ``medreg-gpu`` global concurrency limit (= number of GPUs);
* a table artifact shows the counts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import orjson  # noqa: E402
import yaml  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE  # noqa: E402
from prefect.filesystems import LocalFileSystem  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from pipeline.core.ids import file_sha256, stable_id  # noqa: E402
from pipeline.release.images import ImageStore  # noqa: E402
from pipeline.release.case import (  # noqa: E402
    STORE_DIRNAME,
    CaseResult,
    prepare_sources,
    process_case,
    resolve_samples_root,
    write_run_log,
)
from pipeline.release.shards import write_release  # noqa: E402
from pipeline.core.types import CaseRef  # noqa: E402
from pipeline.validate.stage import case_validators_for, release_validation, uses_model  # noqa: E402
from schemas.card import SourceCard  # noqa: E402
from schemas.config import ReleaseConfig, SourceUse, load_config  # noqa: E402
from schemas.records import ErrorRecord  # noqa: E402

GPU_LIMIT = "medreg-gpu"


def case_config_json(cfg: ReleaseConfig) -> str:
    """The part of the release config that changes one case's output (cache key input)."""
    part = cfg.model_dump(mode="json", include={"seed", "slicing", "tasks", "splits", "validation"})
    part["png_compress_level"] = cfg.output.png_compress_level
    return orjson.dumps(part, option=orjson.OPT_SORT_KEYS).decode()


def config_for_case(cfg_json: str, use: SourceUse) -> ReleaseConfig:
    """Rebuild a config from :func:`case_config_json` (name/version are placeholders: a case's output
    never depends on them, so they are not part of the cache key)."""
    part = orjson.loads(cfg_json)
    level = part.pop("png_compress_level")
    return ReleaseConfig.model_validate(
        {"name": "case", "version": "0", "sources": [use.model_dump()], **part, "output": {"png_compress_level": level}}
    )


def fingerprint(ref: CaseRef) -> str:
    """sha256 over the content of every file the case reads (the cache key never sees arrays)."""
    return stable_id(*(f"{p.name}:{file_sha256(p)}" for p in ref.fingerprint_paths() if p.is_file()), length=64)


@task(name="case", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def case_task(card_yaml: str, root: str, use_json: str, ref_json: str, files_sha: str, cfg_json: str, store_dir: str) -> CaseResult:
    from sources.base import get_adapter

    card = SourceCard.model_validate(yaml.safe_load(card_yaml))
    ref_d = orjson.loads(ref_json)
    ref = CaseRef(**ref_d)
    use = SourceUse.model_validate(orjson.loads(use_json))
    full = config_for_case(cfg_json, use)
    adapter = get_adapter(card, Path(root))
    return process_case(card, adapter, ref, full, ImageStore(store_dir), use, case_validators_for(full.validation))


@task(name="validate", cache_policy=NO_CACHE)
def validate_task(results: list[CaseResult], validation: dict[str, Any], store_dir: str) -> Any:
    store = ImageStore(store_dir)
    cache_dir = Path(store_dir) / "verdicts"
    if uses_model(validation):
        from prefect.concurrency.sync import concurrency

        with concurrency(GPU_LIMIT, occupy=1, strict=False):
            return release_validation(results, validation, store, cache_dir)
    return release_validation(results, validation, store, cache_dir)


@task(name="write", cache_policy=NO_CACHE)
def write_task(cfg: ReleaseConfig, prepared: list[Any], results: list[CaseResult], validated: Any, store_dir: str, out: str) -> str:
    release = write_release(cfg, prepared, results, validated, ImageStore(store_dir), out)
    log = write_run_log(out, cfg, results, validated)
    get_run_logger().info("run log (per-case timings, verdicts computed/cached): %s", log)
    return str(release)


def _ensure_gpu_limit() -> None:
    """Create the GPU concurrency limit (= visible GPUs, at least 1) if the server has none."""
    try:
        import torch

        n = max(1, torch.cuda.device_count())
    except Exception:  # noqa: BLE001
        n = 1
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        except Exception:  # noqa: BLE001 - not found
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=n))


@flow(name="build_release", log_prints=False)
def build_release(config_path: str, out: str = "out", on_case: Any = None) -> dict[str, Any]:
    """Build a release from a YAML config; returns {release, counts, errors}."""
    logger = get_run_logger()
    cfg = load_config(config_path)
    samples_root = resolve_samples_root(cfg)
    out_dir = Path(out)
    store_dir = out_dir / STORE_DIRNAME
    store = ImageStore(store_dir)
    prepared = prepare_sources(cfg, samples_root)
    cfg_json = case_config_json(cfg)
    results_dir = str((store_dir / "prefect-results").resolve())
    block_name = "medreg-results-" + stable_id(results_dir, length=12)
    LocalFileSystem(basepath=results_dir).save(block_name, overwrite=True)  # result storage lives server-side
    storage = f"local-file-system/{block_name}"
    runner_task = case_task.with_options(
        result_storage=storage,
        cache_policy=(INPUTS + TASK_SOURCE).configure(key_storage=str((store_dir / "prefect-keys").resolve())),
        retries=cfg.runner.retries,
        refresh_cache=not cfg.runner.cache,
    )
    futures = []
    for ps in prepared:
        if ps.error is not None:
            logger.error(ps.error.one_line())
            continue
        card_yaml = yaml.safe_dump(ps.card.model_dump(mode="json"), sort_keys=True, allow_unicode=True)
        use_json = orjson.dumps(ps.use.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS).decode()
        for ref in ps.refs:
            ref_json = orjson.dumps(ref.__dict__, option=orjson.OPT_SORT_KEYS).decode()
            fut = runner_task.submit(card_yaml, str(ps.adapter.root), use_json, ref_json, fingerprint(ref), cfg_json, str(store_dir))
            futures.append((ref, fut))
    results: list[CaseResult] = []
    for ref, fut in futures:
        try:
            res = fut.result()
            missing = [rel for rel in res.images if not store.has(rel)]
            if missing:  # a cached result whose images were cleaned away: recompute this case
                res = None
        except Exception as exc:  # noqa: BLE001 - a crashed task is a case error, not a crashed run
            res = CaseResult(source=ref.source, case_id=ref.case_id)
            res.errors.append(ErrorRecord(source=ref.source, case_id=ref.case_id, stage="task", error=f"{type(exc).__name__}: {exc}", hint="see the Prefect task log"))
        if res is None:
            res = _recompute(runner_task, prepared, ref, cfg_json, str(store_dir))
        for e in res.errors:
            logger.warning(e.one_line())
        results.append(res)
        if on_case is not None:
            on_case(res)
    if uses_model(cfg.validation):
        _ensure_gpu_limit()
    validated = validate_task(results, cfg.validation, str(store_dir))
    release = write_task(cfg, prepared, results, validated, str(store_dir), str(out_dir))
    counts = orjson.loads((Path(release) / "manifest.json").read_bytes())["counts"]
    table = [{"source": s, "rows": n} for s, n in counts.get("by_source", {}).items()]
    table += [{"source": f"task={t}", "rows": n} for t, n in counts.get("by_task", {}).items()]
    table.append({"source": "case errors", "rows": counts.get("errors", 0)})
    create_table_artifact(key="release-counts", table=table, description=f"{cfg.name}-{cfg.version}: rows per source and task")
    vtable = [
        {"source": src, "validator": v, **verdicts}
        for src, per in (counts.get("validation_by_source") or {}).items()
        for v, verdicts in per.items()
    ]
    if vtable:
        create_table_artifact(key="release-validation", table=vtable, description="pass / flag / fail per source and validator")
    logger.info("release written to %s (%s rows)", release, counts.get("rows"))
    return {"release": release, "counts": counts, "errors": [e.one_line() for r in results for e in r.errors]}


def _recompute(task_fn: Any, prepared: list[Any], ref: CaseRef, cfg_json: str, store_dir: str) -> CaseResult:
    for ps in prepared:
        if ps.card is not None and ps.card.name == ref.source:
            card_yaml = yaml.safe_dump(ps.card.model_dump(mode="json"), sort_keys=True, allow_unicode=True)
            use_json = orjson.dumps(ps.use.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS).decode()
            ref_json = orjson.dumps(ref.__dict__, option=orjson.OPT_SORT_KEYS).decode()
            return task_fn.with_options(refresh_cache=True).submit(
                card_yaml, str(ps.adapter.root), use_json, ref_json, fingerprint(ref), cfg_json, store_dir
            ).result()
    raise KeyError(ref.source)


def run_build(config_path: str, out: str = "out", on_case: Any = None) -> dict[str, Any]:
    """Run the flow with the config's task runner (max_workers bounded)."""
    cfg = load_config(config_path)
    if cfg.runner.kind == "thread":
        runner = ThreadPoolTaskRunner(max_workers=cfg.runner.max_workers)
    elif cfg.runner.kind == "dask":  # pragma: no cover - optional dependency prefect-dask
        from prefect_dask import DaskTaskRunner

        runner = DaskTaskRunner()
    else:  # pragma: no cover - optional dependency prefect-ray
        from prefect_ray import RayTaskRunner

        runner = RayTaskRunner()
    return build_release.with_options(task_runner=runner)(config_path, out, on_case)
