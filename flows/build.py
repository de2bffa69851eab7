"""Prefect flow ``build_release``: the same driver as the in-process build, with Prefect as the executor.

* Case batches are Prefect tasks (named after their cases) on a Dask task runner: a local cluster of
  worker processes (``runner.kind: local``, ``runner.max_workers``, default: this machine's cores) or an
  existing cluster (``runner.kind: dask``, ``runner.address``).  Small cases share a task; large ones have
  their own.  Tasks return only small summaries: rows go to part files in the store (shared storage when
  the cluster spans machines).  The part store is the cache (a task whose part exists is not submitted),
  so Prefect's result persistence is off: no per-task result traffic.
* The release-level validation is its own task; model validators run under the ``medreg-gpu`` global
  concurrency limit (= visible GPUs) and, on a Dask cluster, on a worker with a ``GPU`` resource.
* Artifacts: release counts, and pass/flag/fail per source and validator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows import progress_hub
from flows.samples import resolve_samples_root
from flows.server import TemporaryServer, temporary_server
from pipeline.release.tasks import run_batch
from pipeline.release.driver import BuildResult, Progress, all_built
from pipeline.release.driver import build as drive
from pipeline.release.plan import CaseJob, Plan, default_workers
from pipeline.validate.stage import ReleaseVerdicts, release_validation, uses_model
from schemas.config import ReleaseConfig, load_config
from sources.plan import make_plan

GPU_LIMIT = "medreg-gpu"


def batch_name(batch: list[CaseJob]) -> str:
    first = f"{batch[0].source}/{batch[0].case_id}"
    if len(batch) == 1:
        return first
    return f"{first} .. {batch[-1].case_id} ({len(batch)} cases)"


def build_cases(batch: list[CaseJob], cfg: ReleaseConfig, store_root: str) -> list[Any]:
    """One batch of cases (a plain function: Dask pickles it by reference on the workers)."""
    return run_batch(batch, cfg, store_root)


cases_task = task(name="cases", cache_policy=NO_CACHE, persist_result=False)(build_cases)


def run_stage(fn: Callable[..., Any], item: Any, *args: Any) -> Any:
    """One unit of another stage's work (``fn`` is a top-level pipeline function, pickled by reference)."""
    return fn(item, *args)


stage_task = task(name="stage", cache_policy=NO_CACHE, persist_result=False)(run_stage)


@task(name="validate", cache_policy=NO_CACHE, persist_result=False)
def validate_task(store: Any, keys: list[str], cfg: ReleaseConfig) -> ReleaseVerdicts:
    def run() -> ReleaseVerdicts:
        return release_validation(
            store, keys, cfg.validation, store.verdict_cache, batch_size=cfg.runner.validation_batch
        )

    if uses_model(cfg.validation):
        from prefect.concurrency.sync import concurrency

        with concurrency(GPU_LIMIT, occupy=1, strict=False):
            return run()
    return run()


class PrefectExecutor:
    """Each batch is a Prefect task on the flow's task runner; results are yielded as they complete."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def map_unordered(self, fn: Callable[..., Any], items: Iterable[Any], *args: Any) -> Iterator[tuple[Any, Any]]:
        futures = {}
        for batch in items:
            if fn is run_batch:
                fut = cases_task.with_options(task_run_name=batch_name(batch)).submit(batch, *args)
            else:  # another stage's work (e.g. release validation of a group of parts)
                fut = stage_task.with_options(task_run_name=f"{fn.__name__} ({len(batch)})").submit(fn, batch, *args)
            futures[fut] = batch
        for fut in as_completed(list(futures)):
            try:
                yield futures[fut], fut.result()
            except Exception as exc:  # the driver decides (environment failure / crash)
                yield futures[fut], exc


def _ensure_gpu_limit() -> None:
    """Create the GPU concurrency limit (= visible GPUs, at least 1) if the server has none."""
    try:
        import torch

        n = max(1, torch.cuda.device_count())
    except Exception:  # torch missing or broken: one slot
        n = 1
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        except Exception:  # not found
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=n))


@flow(name="build_release", log_prints=False)
def build_release(config_path: str, out: str = "out", wait_seconds: float = 0.0) -> dict[str, Any]:
    """Build a release from a YAML config; returns {release, counts, errors}."""
    logger = get_run_logger()
    made = progress_hub.plan
    if made is not None and made[:2] == (config_path, out):
        plan = made[2]  # planned by run_build while the temporary server started
        cfg = plan.cfg
    else:
        cfg = load_config(config_path)
        plan = make_plan(cfg, resolve_samples_root(cfg), out)
    for sp in plan.sources:
        if sp.error is not None:
            logger.error(sp.error.one_line())
    if uses_model(cfg.validation):
        _ensure_gpu_limit()

    workers = cfg.runner.max_workers or default_workers()
    executor = PrefectExecutor(workers)

    def validate(store: Any, keys: list[str], progress: Any = None) -> ReleaseVerdicts:
        if uses_model(cfg.validation):  # one task, under the GPU concurrency limit
            return validate_task(store, keys, cfg)
        # CPU validators: parts validated as tasks on the workers
        return release_validation(
            store, keys, cfg.validation, store.verdict_cache, batch_size=cfg.runner.validation_batch, executor=executor
        )

    result = drive(plan, out, executor, progress_hub.current, wait_seconds, validate=validate)
    _artifacts(cfg, result)
    for e in result.errors:
        logger.warning(e.one_line())
    logger.info("release written to %s (%s rows)", result.release, result.manifest.counts.get("rows"))
    return build_summary(result, orchestrated=True)


def build_summary(result: BuildResult, orchestrated: bool) -> dict[str, Any]:
    """What a build returns to its caller: release, counts, errors, cases built/cached, and whether the
    flow ran (False: an all-cached rerun checked in process, see :func:`check_without_server`)."""
    return {
        "release": str(result.release),
        "counts": result.manifest.counts,
        "errors": [e.one_line() for e in result.errors],
        "built": result.built,
        "cached": result.cached,
        "orchestrated": orchestrated,
    }


def _artifacts(cfg: ReleaseConfig, result: BuildResult) -> None:
    counts = result.manifest.counts
    table = [{"source": s, "rows": n} for s, n in counts.get("by_source", {}).items()]
    table += [{"source": f"task={t}", "rows": n} for t, n in counts.get("by_task", {}).items()]
    table.append({"source": "case errors", "rows": counts.get("errors", 0)})
    create_table_artifact(
        key="release-counts", table=table, description=f"{cfg.name}-{cfg.version}: rows per source and task"
    )
    vtable = [
        {"source": src, "validator": v, **verdicts}
        for src, per in (counts.get("validation_by_source") or {}).items()
        for v, verdicts in per.items()
    ]
    if vtable:
        create_table_artifact(
            key="release-validation", table=vtable, description="pass / flag / fail per source and validator"
        )


def task_runner_for(cfg: ReleaseConfig, cluster: Any = None) -> Any:
    """Dask task runner: a local cluster of worker processes, or the cluster at runner.address.  ``cluster``:
    a local cluster already started for this build (:func:`local_cluster`), which the runner connects to."""
    if cfg.runner.kind == "serial" or (
        cfg.runner.kind == "local" and (cfg.runner.max_workers or default_workers()) == 1
    ):
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if cfg.runner.kind == "dask":
        return DaskTaskRunner(address=cfg.runner.address)
    if cluster is not None:
        return DaskTaskRunner(address=cluster.scheduler_address)
    _worker_environment()
    return DaskTaskRunner(cluster_kwargs=_cluster_kwargs(cfg))


def _cluster_kwargs(cfg: ReleaseConfig) -> dict[str, Any]:
    return {
        "n_workers": cfg.runner.max_workers or default_workers(),
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
        "preload": ["flows.dask_warm"],
    }


@contextmanager
def local_cluster(cfg: ReleaseConfig, start: bool = True) -> Iterator[Callable[[], Any]]:
    """Start this build's local Dask cluster now, on a thread, while the temporary server finishes starting
    (each takes seconds: ~8 s for two warm workers here); yields a function that waits for it (None when
    the config runs no local cluster, or not ``start``).  The cluster is closed on exit."""
    if not start or cfg.runner.kind != "local" or (cfg.runner.max_workers or default_workers()) == 1:
        yield lambda: None
        return
    from concurrent.futures import ThreadPoolExecutor

    from dask.distributed import LocalCluster

    _worker_environment()
    with ThreadPoolExecutor(1, thread_name_prefix="medreg-cluster") as pool:
        started = pool.submit(lambda: LocalCluster(**_cluster_kwargs(cfg)))
        try:
            yield started.result
        finally:
            with suppress(Exception):  # a cluster that failed to start raised from the wait already
                started.result().close()


def _worker_environment() -> None:
    """Dask starts its workers with MALLOC_TRIM_THRESHOLD_=65536: glibc then hands freed memory back at once
    and every case pays the page faults again (measured: 36% more time per small case than a process
    pool), and with a 10 ms sampling profiler.  Our local cluster's workers keep glibc's default and no
    profiler; docs/scaling.md says how to start a cluster's workers the same way."""
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    # the workers' statistical profiler samples every 10 ms and takes the GIL from the case (7% measured)
    dask.config.set({"distributed.nanny.pre-spawn-environ": env, "distributed.worker.profile.enabled": False})


def run_build(
    config_path: str | Path,
    out: str | Path = "out",
    progress: Progress | None = None,
    wait_seconds: float = 0.0,
    say: Callable[[str], None] | None = None,
    early: TemporaryServer | None = None,
) -> dict[str, Any]:
    """Run the flow with the config's task runner, on PREFECT_API_URL or a temporary server that dies with
    this process.  The plan is made here while the temporary server starts (and handed to the flow); a rerun
    with every case already built is checked without the server (:func:`check_without_server`).  ``early``:
    a temporary server the caller launched before importing Prefect (the CLI does)."""
    cfg = load_config(config_path)
    with temporary_server(say=say, wait=False, early=early) as server:
        plan = make_plan(cfg, resolve_samples_root(cfg), out)
        checked = check_without_server(plan, out, progress, wait_seconds, say)
        if checked is not None:
            return checked
        # nothing to build (a rerun recorded on a configured server): no worker processes to start
        idle = cfg.runner.kind == "local" and all_built(plan, out)
        with local_cluster(cfg, start=not idle) as cluster:  # starts while the server finishes starting
            server.ready()
            progress_hub.current = progress
            progress_hub.plan = (str(config_path), str(out), plan)
            try:
                runner: Any = ThreadPoolTaskRunner(max_workers=1) if idle else task_runner_for(cfg, cluster())
                return build_release.with_options(task_runner=runner)(str(config_path), str(out), wait_seconds)
            finally:
                progress_hub.current = progress_hub.plan = None


def check_without_server(plan: Plan, out: str | Path, progress: Progress | None = None,
                         wait_seconds: float = 0.0, say: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """A rerun with nothing to orchestrate, done without a temporary Prefect server.

    With no ``PREFECT_API_URL`` a flow run needs a temporary server (7-13 s to start), more than the whole
    rerun of a 1,000-case build whose cases are all in the store (issue 10: a rerun must cost <= 10% of
    the first build).  So when no server is configured and every case of the plan already has its part,
    the same driver checks the release in this process (validation sidecars, split decisions, the build
    key; a missing or changed release is rewritten) and the flow is not run.  Returns None - run the
    flow - when a server is configured (the run is then recorded there), when any case has to be built,
    when the cache is off, for ``runner.kind: dask`` and when a model validator is configured (its stage
    belongs under the flow's GPU concurrency limit)."""
    from flows.run import executor_for
    from flows.server import api_url_configured

    cfg = plan.cfg
    if api_url_configured() or cfg.runner.kind == "dask" or uses_model(cfg.validation) or not all_built(plan, out):
        return None
    result = drive(plan, out, executor_for(cfg), progress, wait_seconds)
    if say is not None:
        say(f"all {len(plan.jobs)} cases were already built: the release was checked in this process and no "
            f"temporary Prefect server was used (set PREFECT_API_URL to record every run on a server)")
    return build_summary(result, orchestrated=False)
