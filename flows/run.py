"""The in-process build: the same driver as the Prefect flow, with a plain executor (no Prefect import).

::

    from flows.run import build
    release = build("examples/demo.yaml", "out/demo")          # worker processes from runner.max_workers
    release = build(cfg, "out/x", executor=SerialExecutor())   # one process (debugging, notebooks)
"""

from __future__ import annotations

from pathlib import Path

from flows.samples import resolve_samples_root
from pipeline.release.driver import BuildResult, Progress
from pipeline.release.driver import build as drive
from pipeline.release.executors import Executor, make_executor
from pipeline.release.plan import default_workers
from schemas.config import ReleaseConfig, load_config
from sources.plan import make_plan


def executor_for(cfg: ReleaseConfig) -> Executor:
    """The config's executor for an in-process build (``dask`` needs the Prefect flow)."""
    if cfg.runner.kind == "dask":
        raise ValueError("runner.kind dask runs through the Prefect flow: `medreg build CONFIG` (without --no-prefect)")
    return make_executor(cfg.runner.kind, cfg.runner.max_workers or default_workers())


def run_build(config: str | Path | ReleaseConfig, out: str | Path, *, samples_root: Path | None = None,
              executor: Executor | None = None, progress: Progress | None = None, wait_seconds: float = 0.0,
              ) -> BuildResult:
    """Plan, build, validate and write a release in this process (workers per the config)."""
    cfg = config if isinstance(config, ReleaseConfig) else load_config(config)
    root = samples_root if samples_root is not None else resolve_samples_root(cfg)
    plan = make_plan(cfg, root, out)
    return drive(plan, out, executor or executor_for(cfg), progress, wait_seconds)


def build(config: str | Path | ReleaseConfig, out: str | Path, *, samples_root: Path | None = None,
          executor: Executor | None = None, progress: Progress | None = None) -> Path:
    """:func:`run_build`, returning the release folder."""
    return run_build(config, out, samples_root=samples_root, executor=executor, progress=progress).release
