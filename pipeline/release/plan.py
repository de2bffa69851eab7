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

import copy
import hashlib
import os
import pickle
import sqlite3
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.cores import available_cores
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
    """One source of the release: its card, adapter and cases (or the error that stopped discovery).

    ``refs`` holds the discovered cases until :func:`make_jobs` turns them into jobs; ``cases`` counts them
    from then on (the jobs keep each reference, compressed)."""

    use: SourceUse
    name: str
    card: SourceCard | None = None
    adapter: Any = None
    refs: list[CaseRef] = field(default_factory=list)
    error: ErrorRecord | None = None
    cases: int = 0


class CaseJob:
    """Everything a worker needs to build one case (picklable: card, adapter, ref, config, paths).

    The case reference is kept as compressed pickle bytes and unpacked where it is used (the worker,
    hashing): a plan of an SA-Med2D case lists ~30 mask paths, ~4 KB as Python objects and ~0.4 KB packed,
    so the driver's plan of 10,000 cases holds ~5 MB instead of ~40 MB.  ``source``, ``case_id`` and
    ``official_split`` stay plain: the driver reads them for every case."""

    __slots__ = ("_packed", "adapter", "card", "case_id", "input_bytes", "key", "official_split", "source", "use")

    def __init__(self, card: SourceCard, adapter: Any, use: SourceUse, ref: CaseRef, key: str | None,
                 input_bytes: int = 0) -> None:
        self.card, self.adapter, self.use = card, adapter, use
        self.key = key  # None: an input file is new or changed; the worker hashes it and computes the key
        self.input_bytes = input_bytes
        self.source, self.case_id, self.official_split = ref.source, ref.case_id, ref.official_split
        self._packed = zlib.compress(pickle.dumps(ref, protocol=pickle.HIGHEST_PROTOCOL), 1)

    @property
    def ref(self) -> CaseRef:
        ref: CaseRef = pickle.loads(zlib.decompress(self._packed))  # bytes this process packed itself
        return ref

    @property
    def order(self) -> tuple[str, str]:
        return (self.source, self.case_id)

    def with_key(self, key: str) -> CaseJob:
        job = copy.copy(self)
        job.key = key
        return job

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def __repr__(self) -> str:
        return f"CaseJob({self.source}/{self.case_id}, key={(self.key or '-')[:12]})"


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

    def known_digest(self, files: list[Path]) -> tuple[str | None, int]:
        """(digest, total bytes) from the memo alone, or (None, bytes) when a file is new or changed (the
        worker hashes it then: hashing is parallel with the cases, not a serial step of planning)."""
        shas: list[str] = []
        total = 0
        known = True
        for p in files:
            try:
                st = p.stat()
            except OSError:
                continue
            total += st.st_size
            if not known:
                continue
            row = self._db.execute("SELECT size, mtime, ino, sha FROM fp WHERE path = ?",
                                   (os.path.abspath(p),)).fetchone()
            if row is None or tuple(row[:3]) != (st.st_size, st.st_mtime_ns, st.st_ino):
                known = False
            else:
                shas.append(f"{p.name}:{row[3]}")
        return (stable_id(*shas, length=64) if known else None), total

    def remember(self, entries: list[list[Any]]) -> None:
        """Record hashes computed elsewhere (a worker): ``[path, size, mtime_ns, inode, sha]`` each."""
        self._db.executemany("INSERT OR REPLACE INTO fp VALUES (?, ?, ?, ?, ?)", [tuple(e) for e in entries])

    def close(self) -> None:
        self._db.commit()
        self._db.close()


def make_jobs(cfg: ReleaseConfig, sources: list[SourcePlan], cache: FingerprintCache) -> list[CaseJob]:
    """A job per discovered case, in (source, case id) order, with its part key when every input file is in
    the fingerprint memo (unchanged since it was hashed); otherwise the worker computes the key."""
    jobs: list[CaseJob] = []
    for sp in sources:
        if sp.card is None:
            continue
        for ref in sp.refs:
            files_sha, size = cache.known_digest(ref.fingerprint_paths())
            key = part_key(sp.card, sp.use, ref, files_sha, cfg) if files_sha is not None else None
            jobs.append(CaseJob(sp.card, sp.adapter, sp.use, ref, key, size))
        sp.cases, sp.refs = len(sp.refs), []  # the jobs hold the references now (packed)
    jobs.sort(key=lambda j: j.order)
    return jobs


def hash_inputs(job: CaseJob, cfg: ReleaseConfig) -> tuple[str, list[list[Any]]]:
    """In a worker: the case's part key from its input files' content, and the fingerprints to remember."""
    entries: list[list[Any]] = []
    shas: list[str] = []
    for p in job.ref.fingerprint_paths():
        try:
            st = p.stat()
        except OSError:
            continue
        sha = file_sha256(p)
        entries.append([os.path.abspath(p), st.st_size, st.st_mtime_ns, st.st_ino, sha])
        shas.append(f"{p.name}:{sha}")
    return part_key(job.card, job.use, job.ref, stable_id(*shas, length=64), cfg), entries


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
    return available_cores()
