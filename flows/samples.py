"""Where the public sample data lives, and how to fetch it when it is not there.

The demo and the tests read small real cases from public datasets (``shared/data`` beside the
repository in the project's workspace).  On any other machine :func:`find_samples_root` downloads the
pinned files listed in ``sources/samples_manifest.yaml`` (folder, path, upstream URL, sha256, bytes)
into a user cache, verifying every checksum.

Environment variables:

* ``MEDREG_SAMPLES`` -- use this folder as the sample root (no download).
* ``MEDREG_CACHE`` -- cache root (default ``~/.cache/medreginstruct``); samples go to ``<cache>/samples``.
* ``MEDREG_SAMPLES_MIRROR`` -- fetch ``<mirror>/<folder>/<path>`` instead of the upstream URLs
  (an ``http(s)://`` or ``file://`` base holding the same layout).

Every file is written to a temporary name beside its target, checked (size and sha256), fsynced and
renamed, so an interrupted or corrupt download never leaves a file under its final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.config import ReleaseConfig

__all__ = [
    "ChecksumMismatchError",
    "DownloadReport",
    "SampleFile",
    "SamplesUnavailableError",
    "default_cache_dir",
    "download_samples",
    "find_samples_root",
    "load_manifest",
    "manifest_path",
    "shared_samples_dir",
]

_CHUNK = 1 << 16
_USER_AGENT = "medreginstruct-samples/1"


class ChecksumMismatchError(RuntimeError):
    """A downloaded file does not have the pinned sha256 (or size); nothing was kept."""

    def __init__(self, name: str, expected: str, actual: str, source: str):
        self.name, self.expected, self.actual, self.source = name, expected, actual, source
        super().__init__(
            f"checksum mismatch for {name}: expected sha256 {expected}, got {actual} "
            f"(downloaded from {source}); the file was not kept. The source may have changed or the "
            "transfer was corrupted: retry, or use another mirror (MEDREG_SAMPLES_MIRROR)."
        )


class SamplesUnavailableError(RuntimeError):
    """Some sample files could not be obtained (no pinned URL, network failure, ...)."""


@dataclass(frozen=True)
class SampleFile:
    """One pinned file of the sample set."""

    folder: str
    path: str  # relative to the folder, '/'-separated
    url: str | None
    sha256: str
    bytes: int
    note: str | None = None
    derive: dict[str, Any] | None = None  # how to rebuild it from an upstream file when url is null

    @property
    def name(self) -> str:
        return f"{self.folder}/{self.path}"


@dataclass
class DownloadReport:
    """What :func:`download_samples` did."""

    downloaded: list[str] = field(default_factory=list)  # "folder/path" fetched now
    present: list[str] = field(default_factory=list)  # already there with the right hash

    def __len__(self) -> int:
        return len(self.downloaded) + len(self.present)


# ----------------------------------------------------------------------------------------------------
# locations
# ----------------------------------------------------------------------------------------------------


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def shared_samples_dir() -> Path:
    """``<repo>/../shared/data`` (the project workspace's read-only copy); may not exist."""
    return _repo_root().parent / "shared" / "data"


def default_cache_dir() -> Path:
    """``$MEDREG_CACHE/samples``, default ``~/.cache/medreginstruct/samples``."""
    base = os.environ.get("MEDREG_CACHE") or "~/.cache/medreginstruct"
    return Path(base).expanduser() / "samples"


def manifest_path() -> Path:
    """``sources/samples_manifest.yaml`` (next to the repository or inside the installed package)."""
    here = _repo_root() / "sources" / "samples_manifest.yaml"
    if here.is_file():
        return here
    from importlib.resources import files  # installed without the source tree layout

    return Path(str(files("sources").joinpath("samples_manifest.yaml")))


def load_manifest(path: Path | str | None = None) -> list[SampleFile]:
    """Read the manifest (default :func:`manifest_path`) into :class:`SampleFile` entries."""
    from schemas.yamlio import load_yaml

    p = Path(path) if path is not None else manifest_path()
    doc = load_yaml(p, what="samples manifest")
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise ValueError(f"{p}: expected a mapping with a 'files' list")
    out: list[SampleFile] = []
    for i, e in enumerate(doc["files"]):
        try:
            if not isinstance(e.get("sha256"), str):  # an unquoted all-digit hash reads as a number
                raise ValueError("sha256 must be a quoted string")
            sf = SampleFile(
                folder=str(e["folder"]),
                path=str(e["path"]),
                url=e.get("url"),
                sha256=str(e["sha256"]).lower(),
                bytes=int(e["bytes"]),
                note=e.get("note"),
                derive=e.get("derive"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{p}: files[{i}] is malformed ({exc!r}): {e!r}") from exc
        if len(sf.sha256) != 64 or any(ch not in "0123456789abcdef" for ch in sf.sha256):
            raise ValueError(f"{p}: files[{i}] ({sf.name}) has an invalid sha256 {sf.sha256!r}")
        if sf.path.startswith("/") or ".." in sf.path.split("/") or "/" in sf.folder:
            raise ValueError(f"{p}: files[{i}] has an unsafe folder/path: {sf.name!r}")
        out.append(sf)
    return out


def _missing_folders(root: Path, required: Iterable[str] | None) -> list[str]:
    return [f for f in (required or []) if not (root / f).is_dir()]


def find_samples_root(required: list[str] | None = None, *, progress: bool = True) -> Path:
    """The folder holding the sample data, downloading it when needed.

    1. ``MEDREG_SAMPLES`` if set (it must exist and hold the ``required`` folders; no download);
    2. else ``<repo>/../shared/data`` if it holds the ``required`` folders;
    3. else the user cache (:func:`default_cache_dir`), after downloading the ``required`` folders
       (all folders when ``required`` is None) with :func:`download_samples`.
    """
    env = os.environ.get("MEDREG_SAMPLES")
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"MEDREG_SAMPLES={env} is not a folder")
        missing = _missing_folders(root, required)
        if missing:
            raise FileNotFoundError(f"MEDREG_SAMPLES={env} lacks the sample folder(s) {missing}")
        return root
    shared = shared_samples_dir()
    if shared.is_dir() and not _missing_folders(shared, required):
        return shared
    cache = default_cache_dir()
    download_samples(cache, required, progress=progress)
    return cache


# ----------------------------------------------------------------------------------------------------
# download
# ----------------------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _mirror_url(mirror: str, sf: SampleFile) -> str:
    rel = urllib.parse.quote(f"{sf.folder}/{sf.path}", safe="/")
    return f"{mirror.rstrip('/')}/{rel}"


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    return isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError, OSError))


def _fetch_bytes(url: str, timeout: float, retries: int, on_chunk=None) -> bytes:
    """GET ``url`` with retries on transient errors; returns the body."""
    last: BaseException | None = None
    for attempt in range(retries + 1):
        try:
            req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                parts = []
                while chunk := resp.read(_CHUNK):
                    parts.append(chunk)
                    if on_chunk is not None:
                        on_chunk(len(chunk))
                return b"".join(parts)
        except Exception as exc:  # classified below
            last = exc
            if attempt >= retries or not _is_retryable(exc):
                break
            time.sleep(min(0.5 * 2**attempt, 8.0))
    raise SamplesUnavailableError(f"could not fetch {url}: {last}") from last


def _derive(sf: SampleFile, timeout: float, retries: int) -> bytes:
    """Rebuild a file that is a verbatim excerpt of an upstream file (see the manifest's notes)."""
    d = sf.derive or {}
    kind = d.get("kind")
    if kind == "json_subset":
        full = json.loads(_fetch_bytes(str(d["from_url"]), timeout, retries))
        missing = [k for k in d["keys"] if k not in full]
        if missing:
            raise SamplesUnavailableError(f"{sf.name}: upstream {d['from_url']} lacks keys {missing}")
        subset = {k: full[k] for k in d["keys"]}
        text = json.dumps(subset, indent=int(d.get("indent", 2)), ensure_ascii=False)
        return (text + str(d.get("trailer", "\n"))).encode("utf-8")
    raise SamplesUnavailableError(f"{sf.name}: unknown derive kind {kind!r}")


def _temp_name(target: Path) -> Path:
    """A hidden sibling of ``target`` unique to this call (same folder, so the rename is atomic)."""
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.part")


def _install(sf: SampleFile, data: bytes, target: Path, source: str) -> None:
    """Verify ``data`` and move it to ``target`` atomically (temp name, fsync, rename)."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sf.sha256 or len(data) != sf.bytes:
        raise ChecksumMismatchError(sf.name, sf.sha256, actual, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(target.parent)


def _download_one(
    sf: SampleFile, target: Path, mirror: str | None, timeout: float, retries: int, advance
) -> None:
    """Fetch one file to ``target`` through a temp file; streaming hash; nothing left on failure."""
    if mirror:
        url: str | None = _mirror_url(mirror, sf)
    else:
        url = sf.url
    if url is None:
        if sf.derive:
            data = _derive(sf, timeout, retries)
            advance(len(data))
            _install(sf, data, target, f"derived from {sf.derive.get('from_url')}")
            return
        raise SamplesUnavailableError(
            f"{sf.name} has no pinned download URL" + (f": {sf.note}" if sf.note else "")
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    last: BaseException | None = None
    try:
        for attempt in range(retries + 1):
            h = hashlib.sha256()
            n = 0
            try:
                req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
                with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as f:
                    while chunk := resp.read(_CHUNK):
                        h.update(chunk)
                        f.write(chunk)
                        n += len(chunk)
                        advance(len(chunk))
                    f.flush()
                    os.fsync(f.fileno())
            except Exception as exc:  # classified below
                last = exc
                advance(-n)
                if attempt >= retries or not _is_retryable(exc):
                    raise SamplesUnavailableError(f"could not fetch {sf.name} from {url}: {exc}") from exc
                time.sleep(min(0.5 * 2**attempt, 8.0))
                continue
            actual = h.hexdigest()
            if actual != sf.sha256 or n != sf.bytes:
                raise ChecksumMismatchError(sf.name, sf.sha256, actual, url)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
            return
        raise SamplesUnavailableError(f"could not fetch {sf.name} from {url}: {last}")  # pragma: no cover
    finally:
        if tmp.exists():
            tmp.unlink()


class _Progress:
    """rich progress bar over bytes when available and wanted; a no-op otherwise."""

    def __init__(self, enabled: bool, total: int, n_files: int):
        self._p = None
        self._task = None
        if not enabled or n_files == 0:
            return
        try:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
        except ImportError:  # pragma: no cover - rich is a dependency
            return
        self._p = Progress(
            TextColumn("[bold]samples[/] {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._p.add_task(f"0/{n_files} files", total=total)
        self._n_files = n_files
        self._done = 0

    def __enter__(self) -> _Progress:
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()

    def advance(self, n: int) -> None:
        if self._p is not None and self._task is not None:
            self._p.advance(self._task, n)

    def file_done(self, name: str) -> None:
        if self._p is not None and self._task is not None:
            self._done += 1
            self._p.update(self._task, description=f"{self._done}/{self._n_files} files ({name})")


def download_samples(
    dest: Path | str,
    folders: Sequence[str] | None = None,
    mirror: str | None = None,
    progress: bool = True,
    *,
    manifest: Path | str | Sequence[SampleFile] | None = None,
    timeout: float = 60.0,
    retries: int = 3,
) -> DownloadReport:
    """Fetch the pinned sample files of ``folders`` (all when None) into ``dest/<folder>/<path>``.

    * Files already present with the pinned sha256 are not fetched again.
    * The source is the manifest's upstream URL, or ``<mirror>/<folder>/<path>`` when ``mirror``
      (or env ``MEDREG_SAMPLES_MIRROR``) is given.
    * A checksum mismatch raises :class:`ChecksumMismatchError` naming the file and both hashes; the
      temporary file is removed and no file is left under the final name.
    * Files that cannot be obtained (no pinned URL, unreachable host) are collected and reported in
      one :class:`SamplesUnavailableError` after every other file was fetched.
    """
    dest = Path(dest).expanduser()
    entries = load_manifest(manifest) if manifest is None or isinstance(manifest, Path | str) else list(manifest)
    known = sorted({e.folder for e in entries})
    if folders is not None:
        unknown = sorted(set(folders) - set(known))
        if unknown:
            raise ValueError(f"unknown sample folder(s) {unknown}; the manifest has {known}")
        entries = [e for e in entries if e.folder in set(folders)]
    mirror = mirror or os.environ.get("MEDREG_SAMPLES_MIRROR") or None

    report = DownloadReport()
    todo: list[tuple[SampleFile, Path]] = []
    for sf in entries:
        target = dest / sf.folder / Path(*sf.path.split("/"))
        if target.is_file() and target.stat().st_size == sf.bytes and _sha256_file(target) == sf.sha256:
            report.present.append(sf.name)
        else:
            todo.append((sf, target))

    failures: list[str] = []
    with _Progress(progress, sum(sf.bytes for sf, _ in todo), len(todo)) as bar:
        for sf, target in todo:
            try:
                _download_one(sf, target, mirror, timeout, retries, bar.advance)
            except SamplesUnavailableError as exc:
                failures.append(str(exc))
                continue
            report.downloaded.append(sf.name)
            bar.file_done(sf.name)
    if failures:
        raise SamplesUnavailableError(
            f"{len(failures)} sample file(s) could not be obtained into {dest}:\n  "
            + "\n  ".join(failures)
            + "\nSet MEDREG_SAMPLES to a folder that has them, or MEDREG_SAMPLES_MIRROR to a mirror."
        )
    return report


def resolve_samples_root(cfg: ReleaseConfig, required: list[str] | None = None) -> Path:
    """The config's ``samples_root`` if set, else :func:`find_samples_root`."""
    if cfg.samples_root:
        return Path(cfg.samples_root).expanduser()
    return find_samples_root(required)
