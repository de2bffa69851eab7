"""Writer: content-addressed images, sharded JSONL, manifest, dataset card, QA report; and verify.

Everything is written into a staging folder beside the release, each file atomically, and the folder is
renamed into place at the end: a killed run never leaves a half-written shard or a partial release.
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.atomic import clean_stale, replace_dir, write_bytes_atomic
from pipeline.core.ids import file_sha256, sha256_hex
from pipeline.release.images import ImageStore
from schemas.config import ReleaseConfig
from schemas.records import ImageEntry, Manifest, ShardEntry, SourceEntry

TASK_ORDER = ("region_to_text", "text_to_region", "grounded_report")


def code_version() -> str:
    from importlib import metadata

    try:
        ver = metadata.version("medreginstruct")
    except metadata.PackageNotFoundError:
        ver = "0+unknown"
    head = _git_head()
    return f"{ver}+g{head[:12]}" if head else ver


def _git_head() -> str | None:
    root = Path(__file__).resolve().parents[2]
    git = root / ".git"
    try:
        if git.is_file():  # worktree: "gitdir: ..."
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref:"):
            ref = head.split(" ", 1)[1]
            p = git / ref
            if p.is_file():
                return p.read_text().strip()
            packed = git / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split(" ", 1)[0]
            return None
        return head
    except OSError:
        return None


def dumps_row(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row) + b"\n"


def check_rows(rows: list[dict[str, Any]]) -> None:
    """Validate every row against the row contract (schemas.records.Row) once, before anything is written."""
    from pydantic import ValidationError

    from schemas.records import Row

    for r in rows:
        try:
            Row.model_validate(r)
        except ValidationError as exc:
            m = r.get("meta", {})
            raise ValueError(
                f"row {r.get('id')} of {m.get('source')}/{m.get('case_id')} breaks the row contract "
                f"(schemas/records.py Row): {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
            ) from None


def _row_order(row: dict[str, Any]) -> tuple:
    m = row["meta"]
    return (m["source"], m["case_id"], m["axis"], m["slice_index"], row["id"])


def shard_rows(rows: list[dict[str, Any]], rows_per_shard: int) -> dict[tuple[str, str, str], list[list[dict]]]:
    """Group rows by (split, task, lang), order them deterministically, cut them into shards."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in rows:
        m = r["meta"]
        groups[(m["split"], m["task"], m["lang"])].append(r)
    out = {}
    for key in sorted(groups):
        g = sorted(groups[key], key=_row_order)
        n = max(1, math.ceil(len(g) / rows_per_shard))
        out[key] = [g[i * rows_per_shard : (i + 1) * rows_per_shard] for i in range(n)]
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def counts_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[str, Counter] = {k: Counter() for k in ("source", "task", "lang", "split", "modality", "subtask")}
    terms: Counter = Counter()
    for r in rows:
        m = r["meta"]
        for k in by:
            by[k][str(m.get(k))] += 1
        for reg in m["regions"]:
            terms[reg["term"]] += 1
    out: dict[str, Any] = {"rows": len(rows), "images": len({r["image"] for r in rows})}
    for k, c in by.items():
        out[f"by_{k}"] = dict(sorted(c.items()))
    out["regions_by_term"] = dict(sorted(terms.items()))
    return out


def write_release(
    cfg: ReleaseConfig,
    prepared: list[Any],
    results: list[Any],
    validated: Any,
    store: ImageStore,
    out_dir: str | Path,
) -> Path:
    """Write the release folder atomically and return its path."""
    from pipeline.release.card import release_files
    from pipeline.release.export import write_llava_splits
    from pipeline.release.report import render_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{cfg.name}-{cfg.version}"
    clean_stale(out_dir, name)
    final = out_dir / name
    staging = out_dir / f".{name}.staging-{os.getpid()}"
    staging.mkdir(parents=True)
    try:
        rows: list[dict] = validated.rows
        check_rows(rows)
        # images: only those referenced by kept rows, hard-linked from the store
        images = sorted({r["image"] for r in rows})
        image_entries = []
        for rel in images:
            src = store.path(rel)
            _link_or_copy(src, staging / rel)
            image_entries.append(ImageEntry(path=rel, sha256=Path(rel).stem, bytes=src.stat().st_size))

        shard_entries = []
        for (split, task, lang), shards in shard_rows(rows, cfg.output.rows_per_shard).items():
            n = len(shards)
            for i, chunk in enumerate(shards):
                rel = f"data/{split}/{task}.{lang}.{i:05d}-of-{n:05d}.jsonl"
                data = b"".join(dumps_row(r) for r in chunk)
                write_bytes_atomic(staging / rel, data)
                shard_entries.append(
                    ShardEntry(path=rel, split=split, task=task, lang=lang, lines=len(chunk), sha256=sha256_hex(data), bytes=len(data))
                )

        errors = [e for r in results for e in r.errors] + [p.error for p in prepared if p.error is not None]
        errors.sort(key=lambda e: (e.source, e.case_id, e.stage))
        dropped: Counter = Counter()
        for r in results:
            dropped.update(r.dropped)
        dropped.update(validated.dropped)

        files: dict[str, bytes] = {}
        files["errors.jsonl"] = b"".join(orjson.dumps(e.model_dump()) + b"\n" for e in errors)
        if validated.review is not None:
            files["review.jsonl"] = b"".join(orjson.dumps(x, option=orjson.OPT_SORT_KEYS) + b"\n" for x in validated.review)
        notes = sorted({f"{r.source}/{r.case_id}: {n}" for r in results for n in r.notes})
        files["notes.txt"] = ("\n".join(notes) + "\n").encode() if notes else b""

        per_source_cases = Counter(r.source for r in results)
        per_source_errors = Counter(e.source for e in errors)
        sources = [
            SourceEntry(
                name=p.card.name if p.card else p.use.card,
                title=p.card.title if p.card else "(failed to load)",
                licence=p.card.licence if p.card else "unknown",
                modality=p.card.modality if p.card else "unknown",
                cases=per_source_cases.get(p.card.name if p.card else p.use.card, 0),
                errors=per_source_errors.get(p.card.name if p.card else p.use.card, 0),
            )
            for p in prepared
        ]
        counts = counts_of(rows)
        counts["cases"] = len(results)
        counts["errors"] = len(errors)
        counts["dropped"] = sum(dropped.values())
        counts["flagged"] = len(validated.review or [])
        counts["validation"] = validated.summary
        counts["validation_by_source"] = validated.by_source

        extra_exports = {}
        if "llava" in cfg.output.formats:  # data_llava/<split>.json: one JSON list per split (LLaVA's train.py)
            extra_exports = write_llava_splits(staging, [(e.path, e.split) for e in shard_entries])

        manifest_wo_files = Manifest(
            name=cfg.name,
            version=cfg.version,
            config=cfg.model_dump(mode="json"),
            config_sha256=cfg.config_hash(),
            code_version=code_version(),
            sources=sources,
            counts=counts,
            shards=shard_entries,
            images=image_entries,
            errors=errors,
            dropped=dict(sorted(dropped.items())),
        )
        files.update(release_files(manifest_wo_files, prepared))  # README.md card, LICENSE.md, schema.json
        if cfg.output.report:
            files["report.html"] = render_report(manifest_wo_files, rows, validated, cfg).encode("utf-8")
        for rel, data in files.items():
            write_bytes_atomic(staging / rel, data)
        manifest_wo_files.files = {rel: sha256_hex(data) for rel, data in sorted(files.items())}
        manifest_wo_files.files.update(extra_exports)
        manifest_bytes = orjson.dumps(manifest_wo_files.model_dump(mode="json"), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        write_bytes_atomic(staging / "manifest.json", manifest_bytes + b"\n")
        replace_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def verify_release(release: str | Path) -> list[str]:
    """Re-hash every shard, image and file against manifest.json.  Returns the problems (empty = OK)."""
    release = Path(release)
    mpath = release / "manifest.json"
    if not mpath.is_file():
        return [f"{mpath}: missing (is this a release folder?)"]
    try:
        manifest = Manifest.model_validate(orjson.loads(mpath.read_bytes()))
    except Exception as exc:  # noqa: BLE001
        return [f"{mpath}: unreadable manifest: {exc}"]
    problems: list[str] = []

    def check(rel: str, sha: str, lines: int | None = None) -> None:
        p = release / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
            return
        got = file_sha256(p)
        if got != sha:
            problems.append(f"{rel}: sha256 {got[:16]}… != manifest {sha[:16]}…")
        elif lines is not None:
            n = p.read_bytes().count(b"\n")
            if n != lines:
                problems.append(f"{rel}: {n} lines != manifest {lines}")

    for s in manifest.shards:
        check(s.path, s.sha256, s.lines)
    for im in manifest.images:
        check(im.path, im.sha256)
    for rel, sha in manifest.files.items():
        check(rel, sha)
    listed = {s.path for s in manifest.shards} | {i.path for i in manifest.images} | set(manifest.files) | {"manifest.json"}
    for p in sorted(release.rglob("*")):
        if p.is_file():
            rel = p.relative_to(release).as_posix()
            if rel not in listed:
                problems.append(f"{rel}: not listed in the manifest")
    return problems
