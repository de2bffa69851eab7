"""The build driver: plan -> cases -> validate -> write.  One driver for every way a build runs.

:func:`build` takes a :class:`~pipeline.release.plan.Plan` (made by ``sources.plan.make_plan``) and an
executor (:mod:`pipeline.release.executors`: serial, a local process pool, or the Prefect/Dask executor of
``flows/build.py``).  Memory is bounded by one case and one part, never by the release:

1. **cases** - every case whose part key is not in the store is built by the executor, in batches; each
   task writes its rows to a part file and returns a small summary.  Cached parts are not recomputed.
2. **validate** - release-level validators read the compact per-region tables (stats fit, polars) and
   stream the parts in batches (:func:`pipeline.validate.stage.release_validation`).
3. **write** - parts are merged into shards in a deterministic order (:mod:`pipeline.release.writer`),
   then manifest, card and report; the release is swapped into place (:mod:`pipeline.release.publish`).

A kill at any point loses at most the cases in flight; the rerun's release is byte-identical to an
uninterrupted build.  A full disk or an I/O error stops the build (the previous release stays); so does a
source without cases or a release that shrank, unless the config allows it.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.atomic import atomic_writer, write_bytes_atomic
from pipeline.core.environment import EnvironmentFailure, environment_failure, is_environment_error
from pipeline.ingest.buffers import reuse_buffers
from pipeline.release.tasks import run_batch
from pipeline.release.executors import Executor, SerialExecutor
from pipeline.release.plan import CaseJob, FingerprintCache, Plan, batches
from pipeline.release.publish import BuildRefused, output_lock, recover
from pipeline.release.shards import write_release
from pipeline.release.store import Store
from pipeline.release.summaries import SummaryLog
from pipeline.validate.stage import ReleaseVerdicts, release_validation
from pipeline.versions.release import PreviousReleaseError, open_previous, prepare
from schemas.records import CaseSummary, ErrorRecord, Manifest

#: progress(event, payload): "planned" (payload: number of cases), "cached"/"built" (the CaseSummary),
#: "validated" (None)
Progress = Callable[[str, Any], None]


class BuildFailure(RuntimeError):
    """A case task crashed (not bad input: a bug or a dead worker).  Finished parts are kept: rerun."""


@dataclass
class BuildResult:
    release: Path
    manifest: Manifest
    summaries: Sequence[CaseSummary]  # a SummaryLog: read from the store, one at a time
    built: int = 0
    cached: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    recovered: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[ErrorRecord]:
        return list(self.manifest.errors)


def check_sources(plan: Plan) -> None:
    """A source that failed discovery or found no case stops the build unless output.allow_shrink."""
    if not plan.sources and plan.excluded:
        names = ", ".join(f"{e.name} ({e.licence})" for e in plan.excluded)
        raise BuildRefused(f"every source was excluded by the config's `licences` filter: {names}")
    if plan.cfg.output.allow_shrink:
        return
    for sp in plan.sources:
        if sp.error is not None:
            raise BuildRefused(f"source {sp.name}: {sp.error.error} -> {sp.error.hint or 'fix the card or data'} "
                               f"(or set output.allow_shrink: true to build without it)")
        if not sp.cases:
            raise BuildRefused(
                f"source {sp.name} found no case under its data folder: check the card's root/layout and the "
                f"data (or set output.allow_shrink: true to build without it)"
            )


def _cached_parts(plan: Plan, store: Store, log: SummaryLog, progress: Progress | None) -> list[CaseJob]:
    """Record the summaries of the cases already in the store; returns the jobs left to build."""
    todo: list[CaseJob] = []
    for i, job in enumerate(plan.jobs):
        if plan.cfg.runner.cache and job.key is not None and store.has_part(job.key):
            s = store.read_summary(job.key)
            if store.images_present(s):
                _put(log, i, s, store)
                if progress:
                    progress("cached", s)
                continue
        todo.append(job)
    return todo


def all_built(plan: Plan, out_dir: str | Path) -> bool:
    """Every case of the plan already has its part in the store (with the cache on): nothing to build, so
    no worker processes are needed (the Prefect flow's callers decide with this)."""
    if not plan.cfg.runner.cache or not plan.jobs:
        return False
    store = Store.for_output(out_dir)
    return all(j.key is not None and store.has_part(j.key) for j in plan.jobs)


def _put(log: SummaryLog, i: int, s: CaseSummary, store: Store) -> None:
    try:
        log.put(i, s)
    except OSError as exc:
        if is_environment_error(exc):
            raise environment_failure(exc, store.root) from exc
        raise


def run_cases(plan: Plan, store: Store, executor: Executor,
              progress: Progress | None = None) -> tuple[SummaryLog, int]:
    """Build every case not in the store; returns the summaries in plan order (spilled to the store, see
    :mod:`pipeline.release.summaries`) and how many were built."""
    log = SummaryLog(len(plan.jobs), store.root / "tmp")
    todo = _cached_parts(plan, store, log, progress)
    r = plan.cfg.runner
    work = batches(todo, r.batch_cases, int(r.batch_mb * 1e6), executor.workers)
    position = {j.order: i for i, j in enumerate(plan.jobs)}
    memo = FingerprintCache(store.fingerprints)
    try:
        with reuse_buffers():  # cases built in this process reuse the previous case's volume buffers
            reused = _collect(plan, store, executor, work, log, position, memo, progress)
    finally:
        memo.close()
    return log, len(todo) - reused


def _collect(plan: Plan, store: Store, executor: Executor, work: list[list[CaseJob]], log: SummaryLog,
             position: dict[tuple[str, str], int], memo: FingerprintCache, progress: Progress | None) -> int:
    reused = 0
    for batch, result in executor.map_unordered(run_batch, work, plan.cfg, str(store.root)):
        if isinstance(result, EnvironmentFailure):
            raise result
        if isinstance(result, OSError) and is_environment_error(result):
            raise environment_failure(result, store.root) from result
        if isinstance(result, BaseException):
            cases = ", ".join(f"{j.source}/{j.case_id}" for j in batch[:3])
            raise BuildFailure(
                f"a case task crashed ({type(result).__name__}: {result}) on {cases}"
                f"{' ...' if len(batch) > 3 else ''}; finished cases are kept in {store.root} - rerun to resume, "
                f"and report the error if it repeats"
            ) from result
        for s in result:
            if s.fingerprints:
                memo.remember(s.fingerprints)
            _put(log, position[(s.source, s.case_id)], s, store)
            reused += int(s.reused)
            if progress:
                progress("cached" if s.reused else "built", s)
    return reused


#: validate(store, part keys, progress) -> verdicts; the Prefect flow supplies one that runs as a task
Validate = Callable[..., ReleaseVerdicts]


def build(plan: Plan, out_dir: str | Path, executor: Executor | None = None, progress: Progress | None = None,
          wait_seconds: float = 0.0, split_overrides: dict[str, str] | None = None,
          validate: Validate | None = None) -> BuildResult:
    """Build the release of ``plan`` into ``out_dir`` (see the module docstring)."""
    out_dir = Path(out_dir)
    cfg = plan.cfg
    name = f"{cfg.name}-{cfg.version}"
    executor = executor or SerialExecutor()
    store = Store.for_output(out_dir)
    t: dict[str, float] = {}
    with output_lock(out_dir, wait_seconds), contextlib.closing(_Closer(executor)):
        recovered = recover(out_dir, name)
        check_sources(plan)
        try:
            previous = open_previous(cfg, out_dir)
        except PreviousReleaseError as exc:
            raise BuildRefused(str(exc)) from None
        if progress:
            progress("planned", len(plan.jobs))
        t0 = time.perf_counter()
        summaries, built = run_cases(plan, store, executor, progress)
        t["cases"] = time.perf_counter() - t0
        keys = [s.key for s in summaries if s.rows]
        verdicts = (validate or partial(_validate, plan, executor=executor))(store, keys, progress)
        t["validate"] = time.perf_counter() - t0 - t["cases"]
        versions = prepare(plan, summaries, previous)  # split stability and duplicates, from the summaries
        overrides = {**versions.decisions.split_overrides, **(split_overrides or {})}
        bkey = build_key(plan, summaries, verdicts, overrides, versions)
        unchanged = published_unchanged(store, out_dir, name, bkey)
        if unchanged is not None:
            release, manifest = out_dir / name, unchanged
        else:
            try:
                release, manifest = write_release(plan, summaries, verdicts, store, out_dir, overrides, versions)
            except OSError as exc:
                if is_environment_error(exc):
                    raise environment_failure(exc, out_dir) from exc
                raise
            record_published(store, name, bkey, manifest)
        t["write"] = time.perf_counter() - t0 - t["cases"] - t["validate"]
        result = BuildResult(release, manifest, summaries, built=built, cached=len(summaries) - built, seconds=t,
                             recovered=recovered)
        write_run_log(store, name, cfg.config_hash(), result, verdicts)
    return result


def build_key(plan: Plan, summaries: Sequence[CaseSummary], verdicts: ReleaseVerdicts, overrides: dict[str, str],
              versions: Any) -> str:
    """Everything the release's bytes depend on: config, code, every part (in order), the release-level
    verdicts, split overrides and version decisions.  Equal keys give byte-identical releases."""
    from pipeline.release.plan import code_fingerprint
    from pipeline.release.shards import code_version

    blob = orjson.dumps(
        {"config": plan.cfg.config_hash(), "code": code_fingerprint(), "code_version": code_version(),
         "parts": _parts_digest(summaries), "verdicts": verdicts.vkey, "overrides": overrides,
         "versions": versions, "excluded": [str(x) for x in getattr(plan, "excluded", [])]},
        option=orjson.OPT_SORT_KEYS, default=repr,
    )
    return hashlib.sha256(blob).hexdigest()


def _parts_digest(summaries: Sequence[CaseSummary]) -> str:
    """sha256 of every part key in plan order (streamed: no list of keys)."""
    h = hashlib.sha256()
    for s in summaries:
        h.update(s.key.encode() + b"\n")
    return h.hexdigest()


def published_unchanged(store: Store, out_dir: Path, name: str, bkey: str) -> Manifest | None:
    """The published release's manifest when it was written from the same build key and is still as
    written (its manifest's own hash): then nothing needs rewriting (a rerun with nothing changed)."""
    rec = store.root / "releases" / f"{name}.json"
    try:
        recorded = orjson.loads(rec.read_bytes())
        raw = orjson.loads((out_dir / name / "manifest.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if recorded.get("build_key") != bkey or raw.get("manifest_sha256") != recorded.get("manifest_sha256"):
        return None
    from pipeline.release.verify import manifest_self_hash

    if manifest_self_hash(raw) != raw.get("manifest_sha256") or not _sizes_match(out_dir / name, raw):
        return None
    return Manifest.model_validate(raw)


def _sizes_match(release: Path, raw: dict[str, Any]) -> bool:
    """Every listed shard and image is there with its recorded size (a cheap stat; `medreg verify` re-hashes)."""
    for entry in [*raw.get("shards", []), *raw.get("images", [])]:
        try:
            if (release / entry["path"]).stat().st_size != entry["bytes"]:
                return False
        except OSError:
            return False
    return all((release / rel).is_file() for rel in raw.get("files", {}))


def record_published(store: Store, name: str, bkey: str, manifest: Manifest) -> None:
    write_bytes_atomic(store.root / "releases" / f"{name}.json",
                       orjson.dumps({"build_key": bkey, "manifest_sha256": manifest.manifest_sha256}))


class _Closer:
    """Closes an executor that holds resources (a process pool) when the build ends, however it ends."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor

    def close(self) -> None:
        close = getattr(self.executor, "close", None)
        if close is not None:
            close()


def _validate(plan: Plan, store: Store, keys: list[str], progress: Progress | None = None,
              executor: Executor | None = None) -> ReleaseVerdicts:
    try:
        return release_validation(store, keys, plan.cfg.validation, store.verdict_cache,
                                  batch_size=plan.cfg.runner.validation_batch,
                                  progress=(lambda n: progress("validated", None)) if progress else None,
                                  executor=executor)
    except OSError as exc:
        if is_environment_error(exc):
            raise environment_failure(exc, store.root) from exc
        raise


def write_run_log(store: Store, name: str, config_sha: str, result: BuildResult, verdicts: ReleaseVerdicts) -> Path:
    """Per-run observability beside the release (not inside it: timings differ between runs, the release
    does not): per-case seconds, rows, errors, notes and drops; cases built vs cached; verdicts.

    Written case by case (one JSON object a line inside the ``cases`` list): memory does not grow with the
    number of cases."""
    head: dict[str, Any] = {
        "release": name,
        "config_sha256": config_sha,
        "cases_built": result.built,
        "cases_cached": result.cached,
        "stage_seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "recovered": result.recovered,
        "verdicts": {"computed": verdicts.computed, "cached": verdicts.cached,
                     "parts_validated": verdicts.parts_validated, "parts_reused": verdicts.parts_reused},
        "totals": {"cases": len(result.summaries), "rows": result.manifest.counts.get("rows", 0),
                   "errors": len(result.manifest.errors), "dropped": result.manifest.dropped},
    }
    path = store.run_log(name)
    with atomic_writer(path) as fh:
        fh.write(orjson.dumps(head)[:-1] + b',\n"cases": [')
        for i, s in enumerate(result.summaries):
            case = {"source": s.source, "case_id": s.case_id, "seconds": s.seconds, "rows": s.rows,
                    "slices": s.slices, "errors": [e.one_line() for e in s.errors], "notes": s.notes,
                    "dropped": s.dropped}
            fh.write((b",\n" if i else b"\n") + orjson.dumps(case))
        fh.write(b"\n]}\n")
    return path
