"""Executors: how the driver runs case batches.  The driver is the same whatever runs them.

An executor maps a picklable top-level function over batches and yields ``(batch, result)`` pairs as they
finish, in any order (the writer orders rows itself).  An exception raised by a batch is yielded as the
result, never raised, so the driver decides what it means.

* :class:`SerialExecutor` - in this process, one batch after the other (tests, debugging, notebooks).
* :class:`ProcessExecutor` - ``workers`` processes on this machine (real CPU parallelism; the case work is
  GIL-bound Python between numpy calls, so threads do not help).
* The Prefect executor (``flows/build.py``) submits each batch as a Prefect task to a Dask task runner: a
  local cluster of worker processes, or an existing cluster at ``runner.address``.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Executor(Protocol):
    workers: int

    def map_unordered(self, fn: Callable[..., Any], items: Iterable[T], *args: Any) -> Iterator[tuple[T, Any]]:
        """``fn(item, *args)`` for every item; yields (item, result or the exception it raised)."""
        ...


class SerialExecutor:
    workers = 1

    def map_unordered(self, fn: Callable[..., Any], items: Iterable[T], *args: Any) -> Iterator[tuple[T, Any]]:
        for item in items:
            try:
                yield item, fn(item, *args)
            except Exception as exc:  # reported to the driver, which decides
                yield item, exc


WARM_MODULE = "pipeline.release.warm"


def _worker_context() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([WARM_MODULE])
    return ctx


def start_worker_server() -> None:
    """Launch the process pool's fork server now: it imports the pipeline (~1 s) on another core while this
    process imports, reads the config and plans, so the workers fork warm the moment the cases start.
    Called first thing by the entry points of an in-process build with worker processes (the CLI, B5)
    before their own imports; harmless when no pool is made after all (the server then imports for
    nothing on an idle core and exits with this process)."""
    _worker_context()
    from multiprocessing import forkserver

    forkserver.ensure_running()


def wants_worker_pool(config: str | Path) -> bool:
    """Whether the release config at ``config`` asks for an in-process build on more than one worker
    process: read from the YAML alone (the full config validation imports the schemas, which is what
    :func:`start_worker_server` is meant to overlap); any doubt answers False."""
    import yaml

    from pipeline.core.cores import available_cores

    try:
        data = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
        runner = data.get("runner") or {}
        workers = runner.get("max_workers") or available_cores()
        return runner.get("kind", "local") == "local" and int(workers) > 1
    except Exception:  # a hint only: load_config reports what is wrong with the file
        return False


class ProcessExecutor:
    """A pool of worker processes (``forkserver`` start method: no threads of the parent are copied; the
    fork server has :mod:`pipeline.release.warm` imported, so workers start warm).  The pool starts on the
    first call with more than one item and is kept for the following calls (cases, then validation) until
    :meth:`close`."""

    def __init__(self, workers: int, max_pending: int | None = None) -> None:
        self.workers = max(1, int(workers))
        self.max_pending = max_pending or 4 * self.workers
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=_worker_context())
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map_unordered(self, fn: Callable[..., Any], items: Iterable[T], *args: Any) -> Iterator[tuple[T, Any]]:
        items = list(items)
        if len(items) <= 1 and self._pool is None:  # one task: starting a pool would only cost time
            yield from SerialExecutor().map_unordered(fn, items, *args)
            return
        pool = self._get_pool()
        pending: dict[Future[Any], T] = {}
        it = iter(items)
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.max_pending:  # bounded: memory flat in cases
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending[pool.submit(fn, item, *args)] = item
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                item = pending.pop(fut)
                exc = fut.exception()
                yield item, (exc if exc is not None else fut.result())


def make_executor(kind: str, workers: int) -> Executor:
    """``serial`` or ``local`` (processes) - the in-process choices; Prefect/Dask live in flows/."""
    if kind == "serial" or workers <= 1:
        return SerialExecutor()
    return ProcessExecutor(workers)
