"""Publishing a release safely: an exclusive lock on the output folder, staging folders, a swap that a
kill cannot lose, and guards against replacing a good release with a worse one.

* **Lock.** A build holds ``OUT/.medreg.lock`` (``flock``) from start to end: a second build into the same
  output folder waits (``wait_seconds``) or fails with a message naming the holder.
* **Staging.** A release is written into ``OUT/.<release>.staging-<pid>``; leftovers of dead builds are
  removed when the lock is taken, and only when their owner process is provably gone.
* **Swap.** ``final -> .<release>.old-<pid>``, ``staging -> final``, then the old copy is deleted.  A
  kill between the two renames leaves no ``final`` but an ``.old-*`` folder: the next build (or
  ``recover``) renames it back before doing anything else, so a release never disappears.
* **Guards.** A source with zero cases, or a release that lost more than ``output.max_row_loss`` of the
  rows of the release it replaces, stops the build unless ``output.allow_shrink`` is set.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from pipeline.core.atomic import fsync_dir

LOCK_NAME = ".medreg.lock"


class BuildRefused(RuntimeError):
    """The build must not publish (a guard or the lock); the message says why and what to do."""


@contextlib.contextmanager
def output_lock(out_dir: Path, wait_seconds: float = 0.0) -> Iterator[None]:
    """Exclusive lock on ``out_dir`` for the duration of a build."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _holder(path)
                    raise BuildRefused(
                        f"another build{holder} is writing into {out_dir}: wait for it to finish, "
                        f"use --wait SECONDS, or build into another --out folder"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(p: Path) -> int | None:
    tail = p.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def recover(out_dir: Path, name: str) -> list[str]:
    """Call with the lock held: restore a release lost between the two renames of a swap, and remove
    staging/old folders of dead builds.  Returns what was done (for the run log)."""
    done: list[str] = []
    final = out_dir / name
    olds = sorted(out_dir.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not final.exists() and olds:
        os.replace(olds[0], final)
        fsync_dir(out_dir)
        done.append(f"restored {final.name} from an interrupted swap")
        olds = olds[1:]
    for p in olds + sorted(out_dir.glob(f".{name}.staging-*")):
        pid = _owner(p)
        if pid is not None and _pid_alive(pid) and pid != os.getpid():
            done.append(f"kept {p.name}: its build (pid {pid}) is still running")
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        done.append(f"removed {p.name} left by a killed build")
    return done


def staging_dir(out_dir: Path, name: str) -> Path:
    st = out_dir / f".{name}.staging-{os.getpid()}"
    if st.exists():
        shutil.rmtree(st)
    st.mkdir(parents=True)
    return st


def swap_in(staging: Path, final: Path) -> None:
    """Replace ``final`` by ``staging`` (see the module docstring for why a kill cannot lose it)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(staging, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def previous_rows(final: Path) -> int | None:
    """Row count of the release currently published at ``final`` (None when there is none)."""
    m = final / "manifest.json"
    try:
        return int(orjson.loads(m.read_bytes())["counts"]["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_shrink(final: Path, new_rows: int, allow_shrink: bool, max_loss: float, config_name: str) -> None:
    prev = previous_rows(final)
    if allow_shrink or not prev:
        return
    if new_rows < prev * (1.0 - max_loss):
        raise BuildRefused(
            f"the new {final.name} has {new_rows} rows, the published one {prev} (a loss of "
            f"{1 - new_rows / prev:.0%} > output.max_row_loss {max_loss:.0%}); the published release is kept -> "
            f"check the case errors above, or set output.allow_shrink: true in {config_name} if the loss is intended"
        )
