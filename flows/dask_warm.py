"""Dask worker preload for Prefect builds: the pipeline warmed (pipeline.release.warm) and Prefect's task
engine imported before the first task arrives, so no case task pays for those imports."""

from __future__ import annotations

import prefect.task_engine

import flows.build
import pipeline.release.warm

assert callable(prefect.task_engine.run_task_sync) and callable(flows.build.build_cases)
assert callable(pipeline.release.warm.warm)
