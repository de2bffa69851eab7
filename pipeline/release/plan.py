"""What a build will do, decided before any case runs: sources, cases, and each case's part key.

A :class:`Plan` is built by ``sources.plan.make_plan`` (cards, adapters, discovery) and handed to the
driver (:mod:`pipeline.release.driver`); nothing here imports ``sources`` or Prefect.

Part keys
---------
A case's rows are cached in a *part* of the store under a key that changes whenever anything that can
change the case's output changes (and only then):

* the content of every input file of the case (sha256, memoised by path/size/mtime/inode in the store's
  fingerprint cache, so a rerun does not re-read terabytes);
* the card (canonical JSON), the source's overrides in the release config and the case reference;
* the parts of the release config that shape a case (seed, slicing, tasks, splits, validation, PNG level);
* the code: a digest of the package's Python sources and language data (``code_fingerprint``).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.ids import file_sha256, stable_id
from pipeline.core.types import CaseRef
from schemas.card import SourceCard
from schemas.config import ReleaseConfig, SourceUse
from schemas.records import ErrorRecord, ExcludedSource

PART_FORMAT = "part-v1"
_PACKAGES = ("pipeline", "sources", "schemas")
_CODE_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".txt", ".tsv")


@dataclass
class SourcePlan:
    """One source of the release: its card, adapter and cases (or the error that stopped discovery)."""

    use: SourceUse
    name: str
    card: SourceCard | None = None
    adapter: Any = None
    refs: list[CaseRef] = field(default_factory=list)
    error: ErrorRecord | None = None


@dataclass
class CaseJob:
    """Everything a worker needs to build one case (picklable: card, adapter, ref, config, paths)."""

    card: SourceCard
    adapter: Any
    use: SourceUse
    ref: CaseRef
    key: str
    input_bytes: int = 0

    @property
    def order(self) -> tuple[str, str]:
        return (self.ref.source, self.ref.case_id)


@dataclass
class Plan:
    cfg: ReleaseConfig
    sources: list[SourcePlan]
    jobs: list[CaseJob]
    samples_root: Path | None = None
    excluded: list[ExcludedSource] = field(default_factory=list)  # sources left out by the licence filter

    def source(self, name: str) -> SourcePlan | None:
        return next((s for s in self.sources if s.name == name), None)


def case_config(cfg: ReleaseConfig) -> dict[str, Any]:
    """The part of the release config that changes a case's output (name/version/output never do,
    except the PNG compression level)."""
    part = cfg.model_dump(mode="json", include={"seed", "slicing", "tasks", "splits", "validation"})
    part["png_compress_level"] = cfg.output.png_compress_level
    return part


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 over the package's source and data files (path + content), computed once per process."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256(PART_FORMAT.encode())
    for pkg in _PACKAGES:
        base = root / pkg
        for p in sorted(base.rglob("*")):
            if p.is_file() and p.suffix in _CODE_SUFFIXES and "__pycache__" not in p.parts:
                h.update(p.relative_to(root).as_posix().encode() + b"\0")
                h.update(p.read_bytes())
    return h.hexdigest()


def part_key(card: SourceCard, use: SourceUse, ref: CaseRef, files_sha: str, cfg: ReleaseConfig) -> str:
    """The store key of one case's part (see the module docstring for what enters it)."""
    blob = orjson.dumps(
        {
            "format": PART_FORMAT,
            "code": code_fingerprint(),
            "card": card.model_dump(mode="json"),
            "use": use.model_dump(mode="json"),
            "ref": {"source": ref.source, "case_id": ref.case_id, "patient_id": ref.patient_id,
                    "official_split": ref.official_split, "paths": ref.paths, "extra": ref.extra},
            "files": files_sha,
            "config": case_config(cfg),
        },
        option=orjson.OPT_SORT_KEYS,
        default=str,
    )
    return hashlib.sha256(blob).hexdigest()


class FingerprintCache:
    """sha256 of input files memoised by (path, size, mtime_ns, inode) in a small SQLite file."""

    def __init__(self, path: str | Path | None) -> None:
        """``path`` None: an in-memory memo (nothing persists)."""
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path) if self.path is not None else ":memory:", timeout=60)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS fp (path TEXT PRIMARY KEY, size INT, mtime INT, ino INT, sha TEXT)"
        )
        self.hashed = 0
        self.reused = 0

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = os.path.abspath(path)  # not resolve(): a realpath per file costs more than the memo saves
        row = self._db.execute("SELECT size, mtime, ino, sha FROM fp WHERE path = ?", (key,)).fetchone()
        if row is not None and tuple(row[:3]) == (st.st_size, st.st_mtime_ns, st.st_ino):
            self.reused += 1
            return str(row[3])
        sha = file_sha256(path)
        self._db.execute(
            "INSERT OR REPLACE INTO fp VALUES (?, ?, ?, ?, ?)", (key, st.st_size, st.st_mtime_ns, st.st_ino, sha)
        )
        self.hashed += 1
        return sha

    def prefetch(self, files: Iterable[Path], workers: int) -> None:
        """Hash, on ``workers`` threads (hashlib releases the GIL), every file the memo does not know yet."""
        todo: list[tuple[Path, os.stat_result]] = []
        seen: set[str] = set()
        for p in files:
            key = os.path.abspath(p)
            if key in seen:
                continue
            seen.add(key)
            try:
                st = p.stat()
            except OSError:
                continue
            row = self._db.execute("SELECT size, mtime, ino FROM fp WHERE path = ?", (key,)).fetchone()
            if row is None or tuple(row) != (st.st_size, st.st_mtime_ns, st.st_ino):
                todo.append((p, st))
        if not todo:
            return
        with ThreadPoolExecutor(max(1, workers)) as pool:
            shas = list(pool.map(lambda t: file_sha256(t[0]), todo))
        for (p, st), sha in zip(todo, shas, strict=True):
            self._db.execute("INSERT OR REPLACE INTO fp VALUES (?, ?, ?, ?, ?)",
                             (os.path.abspath(p), st.st_size, st.st_mtime_ns, st.st_ino, sha))
            self.hashed += 1

    def files_digest(self, files: Iterable[Path]) -> tuple[str, int]:
        """(digest over name + content hash of every file, total bytes)."""
        parts: list[str] = []
        total = 0
        for p in files:
            try:
                size = p.stat().st_size
            except OSError:
                continue
            parts.append(f"{p.name}:{self.sha256(p)}")
            total += size
        return stable_id(*parts, length=64), total

    def close(self) -> None:
        self._db.commit()
        self._db.close()


def make_jobs(cfg: ReleaseConfig, sources: list[SourcePlan], cache: FingerprintCache) -> list[CaseJob]:
    """A job per discovered case, with its part key, in (source, case id) order."""
    workers = cfg.runner.max_workers or default_workers()
    cases = [(sp, ref, ref.fingerprint_paths()) for sp in sources if sp.card is not None for ref in sp.refs]
    cache.prefetch((p for _sp, _ref, files in cases for p in files), workers)
    jobs: list[CaseJob] = []
    for sp, ref, files in cases:
        assert sp.card is not None
        files_sha, size = cache.files_digest(files)
        jobs.append(CaseJob(sp.card, sp.adapter, sp.use, ref, part_key(sp.card, sp.use, ref, files_sha, cfg), size))
    jobs.sort(key=lambda j: j.order)
    return jobs


SMALL_BUILD_BYTES = 32_000_000  # below this much input (and <= max_cases cases) one batch: a pool costs more


def batches(jobs: list[CaseJob], max_cases: int, max_bytes: int, workers: int = 1) -> list[list[CaseJob]]:
    """Group jobs into batches (one executor task each): small cases together, large ones alone, and
    enough batches (about four per worker) to keep every worker busy.  A small build is one batch."""
    total = sum(j.input_bytes for j in jobs)
    if len(jobs) <= max_cases and total <= SMALL_BUILD_BYTES:
        return [jobs] if jobs else []
    per = max(1, min(max_cases, -(-len(jobs) // (4 * max(1, workers)))))
    out: list[list[CaseJob]] = []
    cur: list[CaseJob] = []
    size = 0
    for job in jobs:
        if cur and (len(cur) >= per or size + job.input_bytes > max_bytes):
            out.append(cur)
            cur, size = [], 0
        cur.append(job)
        size += job.input_bytes
    if cur:
        out.append(cur)
    return out


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
