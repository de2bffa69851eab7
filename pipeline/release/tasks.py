"""The driver's executor task, importable without the case machinery.

The driver hands :func:`run_batch` to an executor, which pickles it by reference. Importing it from
:mod:`pipeline.release.case` would load everything a case needs (nibabel, numba kernels, the converters:
~0.45 s) into a process that only plans, collects summaries and writes: the main process of a build with
worker processes. The workers have it imported already (the fork server preloads
:mod:`pipeline.release.warm`); a serial build imports it with its first case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.release.plan import CaseJob
    from schemas.config import ReleaseConfig
    from schemas.records import CaseSummary


def run_batch(batch: list[CaseJob], cfg: ReleaseConfig, store_root: str) -> list[CaseSummary]:
    """:func:`pipeline.release.case.run_batch`: one executor task, several small cases or one large one."""
    from pipeline.release.case import run_batch as build_batch

    return build_batch(batch, cfg, store_root)
