"""Failures of the build environment (disk full, I/O error, read-only output): never a case error.

A case that cannot be read is bad input (an error record, the run goes on); a disk that cannot take the
output is the machine's problem: the build stops, the previous release stays, and the message names the
folder and the space needed.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT})


class EnvironmentFailure(RuntimeError):
    """The build cannot go on because of the machine (disk full, I/O error, read-only output)."""


def is_environment_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


def free_bytes(path: str | Path) -> int | None:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human_bytes(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def environment_failure(exc: OSError, folder: str | Path, needed: int | None = None) -> EnvironmentFailure:
    """An EnvironmentFailure naming the folder, the free space and (when known) the space needed."""
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
            errno.EIO: "an I/O error occurred", errno.EROFS: "the file system is read-only"}.get(
        exc.errno or 0, str(exc))
    need = f", about {human_bytes(needed)} needed" if needed else ""
    fix = "free space there or build with --out on a larger disk" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (
        "check the disk and the mount (is it read-only?), then rerun")
    return EnvironmentFailure(
        f"build stopped: {what} under {folder} (free: {human_bytes(free_bytes(folder))}{need}); "
        f"the previous release is untouched -> {fix}"
    )
