"""Run a function in a fresh process started by multiprocessing (``spawn``), as a build's worker process is:
the settings that differ there (read and kernel threads, the buffer pool) are checked on the real thing."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any


def _call(q: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    q.put(fn(*args))


def in_child_process(fn: Callable[..., Any], *args: Any, timeout: float = 120) -> Any:
    """``fn(*args)`` in a spawned child process (``fn``: a module-level function); returns its result."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_call, args=(q, fn, args))
    p.start()
    try:
        return q.get(timeout=timeout)
    finally:
        p.join(timeout=timeout)
