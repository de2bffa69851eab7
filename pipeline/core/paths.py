"""How messages name files, and which files a case may read.

A release's errors.jsonl, notes.txt, manifest and report are published.  They must not carry the build
machine's layout (``/home/alice/...``) nor the names of files outside the dataset's data folder, so:

* readers and adapters name files with :func:`shown`: the path relative to the data folder of the case
  being read (set by :func:`data_root` around each discover/load), the file name when no data folder
  is known, and a fixed phrase for a file outside the data folder;
* :func:`scrub_paths` is the safety net for text that did not follow that rule (exception messages of
  third-party libraries): paths under the data folder become relative, other absolute paths are replaced;
* :func:`escaping_link` finds a symbolic link that leads out of the data folder (a case whose image is a
  link to ``/etc/...`` is refused, not published).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

OUTSIDE = "<a file outside the data folder>"

_DATA_ROOT: ContextVar[Path | None] = ContextVar("medreg_data_root", default=None)

# an absolute POSIX path of at least two components, not glued to a preceding word ("W400/L40", "and/or")
_ABS_PATH = re.compile(r"(?<![\w.~\-/])/(?:[^\s/'\"()\[\]{}<>:,;|]+/)+[^\s/'\"()\[\]{}<>:,;|]*")


@contextmanager
def data_root(root: str | Path | None) -> Iterator[None]:
    """Within this block, :func:`shown` names files relative to ``root`` (a source's data folder)."""
    token = _DATA_ROOT.set(Path(root) if root is not None else None)
    try:
        yield
    finally:
        _DATA_ROOT.reset(token)


def current_root() -> Path | None:
    return _DATA_ROOT.get()


def relative_to_root(path: str | Path, root: str | Path) -> str | None:
    """``path`` relative to ``root`` as POSIX text (lexically, then with symlinks resolved), or None."""
    p, r = Path(path), Path(root)
    for a, b in ((p, r), (p.resolve(), r.resolve())):
        try:
            return a.relative_to(b).as_posix() or "."
        except ValueError:
            continue
    return None


def shown(path: str | Path | None, root: str | Path | None = None) -> str:
    """How a message names ``path``: relative to ``root`` (default: the current data folder), its file
    name when no data folder is known, :data:`OUTSIDE` when it lies outside the data folder."""
    if path is None or str(path) == "":
        return "?"
    base = Path(root) if root is not None else _DATA_ROOT.get()
    if base is None:
        return Path(path).name or str(path)
    rel = relative_to_root(path, base)
    return rel if rel is not None else OUTSIDE


def scrub_paths(text: str, root: str | Path | None = None) -> str:
    """Replace absolute paths in ``text``: those under ``root`` (default: the current data folder) by
    their relative path, any other by :data:`OUTSIDE`."""
    base = Path(root) if root is not None else _DATA_ROOT.get()
    if base is not None:
        for prefix in {str(base), str(base.resolve())}:
            text = text.replace(prefix.rstrip("/") + "/", "")
    return _ABS_PATH.sub(OUTSIDE, text)


def escaping_link(path: str | Path, root: str | Path) -> Path | None:
    """The first symbolic link on the way from ``root`` to ``path`` whose target lies outside ``root``
    (the link itself, inside the data folder), or None.  A path that is not under ``root`` at all (a
    folder the card names explicitly) is not a link question: None."""
    p, r = Path(path), Path(root)
    try:
        rel = p.relative_to(r)
    except ValueError:
        return None
    real_root = r.resolve()
    cur = r
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink() and not cur.resolve().is_relative_to(real_root):
            return cur
    return None
