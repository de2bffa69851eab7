"""The writer: merges case parts into the release's shards, streaming, with memory bounded by one part.

Parts are visited in (source, case id) order and each part's rows are already ordered by (axis, slice,
id), so every shard's rows come out ordered by (source, case, axis, slice, id) without a global sort.
Each (split, task, language) group has one open shard file at a time; a shard is closed when it holds
``rows_per_shard`` rows and renamed to its final ``NNNNN-of-MMMMM`` name once the group's count is known.
The release-level verdicts (sidecars) are applied on the way: drop, flag (``review.jsonl``) or keep.
Every row is validated against the row contract and written in its canonical key order.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from pipeline.core.atomic import fsync_dir
from pipeline.release.store import Store, iter_lines
from schemas.records import CaseSummary, Row, ShardEntry
from schemas.validation import ValidationConfig

REVIEW_IN_REPORT = 200  # review entries kept in memory for the QA report (review.jsonl has them all)


def canonical_row(row: dict[str, Any]) -> bytes:
    """The row validated against the contract, as one JSON line in the model's key order."""
    try:
        model = Row.model_validate(row)
    except ValidationError as exc:
        m = row.get("meta", {})
        first = exc.errors()[0]
        raise ValueError(
            f"row {row.get('id')} of {m.get('source')}/{m.get('case_id')} breaks the row contract "
            f"(schemas/records.py Row): {'.'.join(str(x) for x in first['loc'])}: {first['msg']}"
        ) from None
    return orjson.dumps(model.model_dump(mode="json", by_alias=True)) + b"\n"


@dataclass
class _Shard:
    tmp: Path
    lines: int = 0
    size: int = 0
    sha: Any = field(default_factory=hashlib.sha256)


class GroupWriter:
    """The shards of one (split, task, lang) group: one open temp file at a time."""

    def __init__(self, staging: Path, split: str, task: str, lang: str, rows_per_shard: int) -> None:
        self.staging, self.split, self.task, self.lang = staging, split, task, lang
        self.rows_per_shard = rows_per_shard
        self.done: list[_Shard] = []
        self.cur: _Shard | None = None
        self.fh: Any = None

    def add(self, line: bytes) -> None:
        if self.cur is None:
            tmp = self.staging / "data" / self.split / f".{self.task}.{self.lang}.{len(self.done):05d}.tmp"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            self.cur, self.fh = _Shard(tmp), open_for_write(tmp)
        self.fh.write(line)
        self.cur.sha.update(line)
        self.cur.lines += 1
        self.cur.size += len(line)
        if self.cur.lines >= self.rows_per_shard:
            self._close()

    def _close(self) -> None:
        if self.cur is not None:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            self.done.append(self.cur)
            self.cur, self.fh = None, None

    def finish(self) -> list[ShardEntry]:
        self._close()
        n = len(self.done)
        out = []
        for i, sh in enumerate(self.done):
            rel = f"data/{self.split}/{self.task}.{self.lang}.{i:05d}-of-{n:05d}.jsonl"
            os.replace(sh.tmp, self.staging / rel)
            out.append(ShardEntry(path=rel, split=self.split, task=self.task, lang=self.lang, lines=sh.lines,
                                  sha256=sh.sha.hexdigest(), bytes=sh.size))
        return out

    def abort(self) -> None:
        if self.fh is not None:
            self.fh.close()


class ReportSampler:
    """A bounded, deterministic sample of rows for the QA report: per source, every row of the
    ``per_source`` images with the smallest names among images that have a grounded report; plus the rows
    behind the first review entries.  Memory: O(gallery), never O(release)."""

    def __init__(self, per_source: int) -> None:
        self.per_source = per_source
        self.images: dict[str, list[tuple[str, str]]] = defaultdict(list)  # source -> max-heap (negated)
        self.rows: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (source, image) -> rows
        self.review_rows: dict[str, dict[str, Any]] = {}

    def offer_part(self, source: str, rows: list[dict[str, Any]]) -> None:
        by_image: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            by_image[r["image"]].append(r)
        for rel, rs in sorted(by_image.items()):
            if self.per_source <= 0 or not any(r["meta"]["task"] == "grounded_report" for r in rs):
                continue
            heap = self.images[source]
            key = _neg(rel)
            if len(heap) < self.per_source:
                heapq.heappush(heap, (key, rel))
            elif key > heap[0][0]:
                _, evicted = heapq.heapreplace(heap, (key, rel))
                self.rows.pop((source, evicted), None)
            else:
                continue
            self.rows[(source, rel)] = rs

    def offer_review(self, row: dict[str, Any]) -> None:
        self.review_rows[row["id"]] = row

    def sample(self) -> list[dict[str, Any]]:
        out = [r for k in sorted(self.rows) for r in self.rows[k]]
        seen = {r["id"] for r in out}
        out += [r for i, r in sorted(self.review_rows.items()) if i not in seen]
        return out


def _neg(text: str) -> str:
    """A key that orders strings in reverse (for a max-heap on heapq's min-heap)."""
    return "".join(chr(0x10FFFF - ord(c)) for c in text)


@dataclass
class MergeResult:
    shards: list[ShardEntry]
    counts: Counter[str]
    by: dict[str, Counter[str]]
    terms: Counter[str]
    dropped: Counter[str]
    review_total: int
    review: list[dict[str, Any]]
    report_rows: list[dict[str, Any]]
    validation_summary: Counter[str]
    validation_by_source: dict[str, dict[str, dict[str, int]]]


@dataclass
class _MergeState:
    groups: dict[tuple[str, str, str], GroupWriter] = field(default_factory=dict)
    by: dict[str, Counter[str]] = field(
        default_factory=lambda: {k: Counter() for k in ("source", "task", "lang", "split", "modality", "subtask")}
    )
    terms: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    review: list[dict[str, Any]] = field(default_factory=list)
    review_total: int = 0
    vsummary: Counter[str] = field(default_factory=Counter)
    vby_source: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)


class Merger:
    """Streams every part into the staging folder's shards and images."""

    def __init__(self, store: Store, staging: Path, vc: ValidationConfig, vkey: str | None, rows_per_shard: int,
                 split_overrides: dict[str, str] | None = None, gallery_per_source: int = 4,
                 drop_images: set[tuple[str, str, str]] | None = None) -> None:
        self.store, self.staging, self.vc, self.vkey = store, staging, vc, vkey
        self.rows_per_shard = rows_per_shard
        self.split_overrides = split_overrides or {}
        self.drop_images = drop_images or set()  # (source, case id, image): copies left out (duplicates)
        self.sampler = ReportSampler(gallery_per_source)
        self.state = _MergeState()
        self.review_fh: Any = None

    def run(self, summaries: Sequence[CaseSummary]) -> MergeResult:
        review_tmp = self.staging / ".review.jsonl.tmp"
        self.review_fh = open_for_write(review_tmp)
        try:
            for s in summaries:
                if s.rows:
                    self._part(s)
            shards = [e for key in sorted(self.state.groups) for e in self.state.groups[key].finish()]
        except BaseException:
            for g in self.state.groups.values():
                g.abort()
            raise
        finally:
            self.review_fh.close()
        os.replace(review_tmp, self.staging / "review.jsonl")
        st = self.state
        return MergeResult(shards, st.counts, st.by, st.terms, st.dropped, st.review_total, st.review,
                           self.sampler.sample(), st.vsummary, st.vby_source)

    def _rows_with_verdicts(self, key: str) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
        if self.vkey is None:
            for row in self.store.iter_rows(key):
                yield row, None
            return
        try:
            for row, ver in zip(self.store.iter_rows(key), iter_lines(self.store.verdicts_path(key, self.vkey)),
                                strict=True):
                if ver["id"] != row["id"]:
                    raise ValueError("ids differ")
                yield row, ver
        except ValueError as exc:
            raise RuntimeError(
                f"verdicts of part {key[:12]} are out of step with its rows ({exc}); "
                f"delete {self.store.part_dir(key)} and rerun"
            ) from None

    def _part(self, s: CaseSummary) -> None:
        from pipeline.validate.stage import review_entry, row_decision, verdict_tally

        kept: list[dict[str, Any]] = []
        for row, ver in self._rows_with_verdicts(s.key):
            if self.drop_images and (s.source, s.case_id, row["image"]) in self.drop_images:
                self.state.dropped["row:duplicate_image"] += 1
                continue
            decision = row_decision(row, ver["validation"] if ver else None, self.vc)
            verdict_tally(row, self.state.vsummary, self.state.vby_source)
            if decision.action == "drop":
                self.state.dropped.update(f"row:{c}" for c in (decision.codes or ["dropped"]))
                continue
            if decision.action == "flag":
                self._review(row, decision, review_entry)
            self._emit(row)
            kept.append(row)
        self.sampler.offer_part(s.source, kept)

    def _review(self, row: dict[str, Any], decision: Any, review_entry: Any) -> None:
        entry = review_entry(row, decision)
        self.review_fh.write(orjson.dumps(entry, option=orjson.OPT_SORT_KEYS) + b"\n")
        self.state.review_total += 1
        if len(self.state.review) < REVIEW_IN_REPORT:
            self.state.review.append(entry)
            self.sampler.offer_review(row)

    def _emit(self, row: dict[str, Any]) -> None:
        m = row["meta"]
        m["split"] = self.split_overrides.get(m["patient_id"], m["split"])
        line = canonical_row(row)
        gkey = (m["split"], m["task"], m["lang"])
        g = self.state.groups.get(gkey)
        if g is None:
            g = self.state.groups[gkey] = GroupWriter(self.staging, *gkey, self.rows_per_shard)
        g.add(line)
        self._link_image(row["image"])
        st = self.state
        st.counts["rows"] += 1
        for k, c in st.by.items():
            c[str(m[k])] += 1
        st.terms.update(r["term"] for r in m["regions"])

    def _link_image(self, rel: str) -> None:
        dst = self.staging / rel
        if dst.exists():
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        src = self.store.images.path(rel)
        _readable(src)
        try:
            os.link(src, dst)
        except FileExistsError:
            return
        except OSError:
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)


def _readable(path: Path) -> None:
    """Images stored by older builds may be 0600 (mkstemp); a hard link shares the mode, so widen it to
    0644 minus the umask before publishing."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o044 != 0o044:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, mode | (0o644 & ~umask))


def open_for_write(path: Path) -> Any:
    """A new file opened for binary writing with mode 0666 & ~umask (like open(), never mkstemp's 0600)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), "wb")


def image_entries(staging: Path) -> list[dict[str, Any]]:
    """Every image of the staging folder (sorted), with its sha256 (its name) and size."""
    out: list[dict[str, Any]] = []
    base = staging / "images"
    if not base.is_dir():
        return out
    for sub in sorted(p for p in base.iterdir() if p.is_dir()):
        for p in sorted(sub.iterdir()):
            if p.suffix == ".png":
                out.append({"path": p.relative_to(staging).as_posix(), "sha256": p.stem, "bytes": p.stat().st_size})
    fsync_dir(base)
    return out
