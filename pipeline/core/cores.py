"""How many cores this process may use, and whether it is one of a build's worker processes.

A build runs one worker process per core (``runner.max_workers``, default: the cores). Inside those
workers every case runs on one thread: the image and masks read one after the other, the 3-D box pass
without numba's thread pool. A second thread per worker only competes with the other workers (two
processes each launching two box-pass threads on two cores measured ~0.9 s slower on 18 CT cases, B5).
The main process (a serial build, a notebook, one case) uses the cores it has.
"""

from __future__ import annotations

import multiprocessing
import os


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under ``taskset`` or a container's
    cpuset), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def in_worker_process() -> bool:
    """True in a process started by :mod:`multiprocessing` (the build's process pool, Dask's workers)."""
    return multiprocessing.parent_process() is not None


def threads_setting(env: str, main_default: int) -> int:
    """Threads for one kind of work: the environment variable ``env`` if set, else 1 in a worker process
    and ``main_default`` (capped by the available cores) in any other process."""
    raw = os.environ.get(env)
    if raw:
        try:
            n = int(raw)
        except ValueError:
            raise ValueError(f"{env}={raw!r}: give a whole number of threads, e.g. 2") from None
        return max(1, n)
    if in_worker_process():
        return 1
    return max(1, min(main_default, available_cores()))
