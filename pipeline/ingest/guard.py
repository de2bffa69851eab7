"""The boundary between the build and an adapter: every case is read through :func:`load_study`.

It holds for every adapter, shipped or plugged in through the ``medreg.sources`` entry point:

* a case whose files (image, masks, annotation, series files, mask folders) lie behind a symbolic link
  that leaves the source's data folder is refused with a per-case :class:`ReadError`: nothing outside the
  data folder is read or published by accident;
* while the adapter runs, :func:`pipeline.core.paths.shown` names files relative to the data folder;
* what comes back is scrubbed: ReadError messages and hints, and the study's notes, carry no absolute
  path (a message that slipped one through gets it replaced); an ``OSError`` (missing file, permission)
  becomes a ReadError naming the file relative to the data folder - except a disk/I-O failure
  (:func:`pipeline.core.environment.is_environment_error`), which stops the build.

:func:`discover_cases` does the same for ``discover()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.environment import is_environment_error
from pipeline.core.errors import ReadError
from pipeline.core.paths import data_root, escaping_link, scrub_paths, shown
from pipeline.core.types import CaseRef, Study


def _case_paths(ref: CaseRef) -> list[Path]:
    out = [Path(p) for p in ref.paths.values()]
    out += [Path(p) for p in ref.extra.get("files", []) or []]
    out += [Path(ref.extra[k]) for k in ("annotation_file", "series_dir") if isinstance(ref.extra.get(k), str)]
    for p in list(out):
        if p.is_dir() and not p.is_symlink():
            out.extend(sorted(p.iterdir()))
    return out


def check_confined(ref: CaseRef, root: str | Path) -> None:
    """Raise a ReadError when a file of ``ref`` is (or lies in) a symbolic link leading out of ``root``."""
    for p in _case_paths(ref):
        link = escaping_link(p, root)
        if link is not None:
            raise ReadError(
                f"{shown(link, root)} is a symbolic link to {'a folder' if link.is_dir() else 'a file'} outside "
                f"the data folder; case {ref.case_id} refused",
                file=str(link),
                hint="copy the file into the data folder (or point the card's root at the folder that holds it); "
                "links that leave the data folder are never followed",
            )


def _scrubbed(exc: ReadError, root: Path) -> ReadError:
    out = ReadError(scrub_paths(str(exc), root), file=exc.file, hint=scrub_paths(exc.hint or "", root))
    out.__cause__ = exc.__cause__
    return out


def _from_os_error(exc: OSError, root: Path) -> ReadError:
    name = shown(exc.filename, root) if exc.filename else "a file"
    return ReadError(
        f"cannot read {name}: {exc.strerror or type(exc).__name__}",
        file=str(exc.filename) if exc.filename else None,
        hint="check that the file exists and is readable (the card's layout names it)",
    )


def load_study(adapter: Any, ref: CaseRef) -> Study:
    """``adapter.load(ref)`` inside the data-folder rules above."""
    root = Path(adapter.root)
    with data_root(root):
        check_confined(ref, root)
        try:
            study = adapter.load(ref)
        except ReadError as exc:
            raise _scrubbed(exc, root) from exc.__cause__
        except OSError as exc:
            if is_environment_error(exc):  # disk/I-O failure: the driver stops the build, not a case error
                raise
            raise _from_os_error(exc, root) from exc
    study.notes = [scrub_paths(n, root) for n in study.notes]
    for layer in study.layers:  # origins reach notes ("label ids ... in <origin> have no term")
        if layer.origin and Path(layer.origin).is_absolute():
            layer.origin = shown(layer.origin, root)
    return study


def discover_cases(adapter: Any) -> list[CaseRef]:
    """``adapter.discover()`` with file names shown relative to the data folder in its errors."""
    root = Path(adapter.root)
    with data_root(root):
        try:
            return list(adapter.discover())
        except ReadError as exc:
            raise _scrubbed(exc, root) from exc.__cause__
        except OSError as exc:
            if is_environment_error(exc):
                raise
            raise _from_os_error(exc, root) from exc
