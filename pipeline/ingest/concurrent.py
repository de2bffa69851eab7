"""Reading one case's files at once on a few threads.

A case in TotalSegmentator's own layout is one CT volume and 117 mask files. Their inflaters release the
GIL (ISA-L's and zlib's inflate, the numba sparse inflater of :mod:`pipeline.ingest.readers._inflate`) and
so does the packing kernel, so the image, the masks and the packing of masks already read can proceed
on different cores. Threads help only where cores are free: in a build's worker processes (one per core
by default) every case reads on one thread; in the main process (a serial build, a notebook, one case)
on two. ``MEDREG_READ_THREADS`` overrides both.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from itertools import islice
from typing import Any, TypeVar

from pipeline.core.cores import threads_setting

T = TypeVar("T")
R = TypeVar("R")


def read_threads() -> int:
    """Threads a case may read its files on: ``MEDREG_READ_THREADS``, else 1 in a worker process (the
    build's processes already use the cores) and 2 otherwise (when the machine has two cores)."""
    return threads_setting("MEDREG_READ_THREADS", 2)


class InlineExecutor(Executor):
    """``submit`` runs the call at once on this thread (one read thread: the order of a plain loop)."""

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        fut: Future[R] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:  # handed to whoever asks for the result, as a pool would
            fut.set_exception(exc)
        return fut


class ContextThreadPool(ThreadPoolExecutor):
    """A thread pool whose calls run in a copy of the submitting thread's context: context variables (the
    data folder that messages name files relative to, the decode limit) hold on the reader threads too."""

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


@contextmanager
def case_reader(threads: int | None = None) -> Iterator[Executor]:
    """An executor for one case's reads: a thread pool, or :class:`InlineExecutor` for one thread."""
    n = read_threads() if threads is None else max(1, threads)
    if n == 1:
        yield InlineExecutor()
        return
    with ContextThreadPool(n, thread_name_prefix="medreg-read") as pool:
        yield pool


def prefetch(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int = 16) -> Iterator[Future[R]]:
    """``fn(item)`` for each item, ``window`` items ahead: the first ``window`` are submitted at once (before
    this returns), the next one as each future is handed out. The futures come in item order, so the caller
    uses results in order while later ones are being read, with bounded memory."""
    it = iter(items)
    pending = [pool.submit(fn, item) for item in islice(it, max(1, window))]
    return _in_order(pool, fn, it, pending)


def _in_order(pool: Executor, fn: Callable[[T], R], it: Iterator[T], pending: list[Future[R]]) -> Iterator[Future[R]]:
    done = object()
    while pending:
        head = pending.pop(0)
        nxt = next(it, done)
        if nxt is not done:
            pending.append(pool.submit(fn, nxt))  # type: ignore[arg-type]
        yield head
