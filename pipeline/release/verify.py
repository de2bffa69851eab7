"""``medreg verify``: is this release exactly what its build published?

Checks, each reported as one line naming the file:

* the manifest's own hash (``manifest_sha256``: manifest.json written with that field empty), so an edited
  licence, count or file list is caught;
* every listed path is confined to the release (relative, no ``..``), a regular file (never a symlink),
  present, and its sha256 (and, for shards, line count) matches;
* nothing else is there: no unlisted file, no symlink, no folder that holds no listed file;
* counts re-derived from the shards equal the manifest's (rows by source/task/language/split/modality/
  subtask, regions by term, images), every shard's rows match its split/task/language, every row's
  licence is its source's licence in the manifest, and every row's image is a listed image;
* the dataset card's ``data_files`` name exactly the listed shards.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

import orjson

from pipeline.core.ids import file_sha256

BY_KEYS = ("source", "task", "lang", "split", "modality", "subtask")


def _safe(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel and p.as_posix() == rel


def manifest_self_hash(raw: dict[str, Any]) -> str:
    from pipeline.release.shards import manifest_bytes

    return hashlib.sha256(manifest_bytes({**raw, "manifest_sha256": ""})).hexdigest()


def _check_file(release: Path, rel: str, sha: str, problems: list[str], lines: int | None = None) -> None:
    if not _safe(rel):
        problems.append(f"{rel}: listed path leaves the release (absolute or '..'); the manifest was edited")
        return
    p = release / rel
    if p.is_symlink():
        problems.append(f"{rel}: is a symlink; a release holds regular files only")
        return
    if not p.is_file():
        problems.append(f"{rel}: missing")
        return
    got = file_sha256(p)
    if got != sha:
        problems.append(f"{rel}: sha256 {got[:16]}... != manifest {sha[:16]}...")
    elif lines is not None:
        n = p.read_bytes().count(b"\n")
        if n != lines:
            problems.append(f"{rel}: {n} lines != manifest {lines}")


def _walk(release: Path, listed: set[str], problems: list[str]) -> None:
    needed_dirs = {str(PurePosixPath(r).parent) for r in listed}
    needed_dirs |= {str(q) for r in listed for q in PurePosixPath(r).parents}
    for p in sorted(release.rglob("*")):
        rel = p.relative_to(release).as_posix()
        if p.is_symlink():
            problems.append(f"{rel}: a symlink; a release holds regular files only")
        elif p.is_dir():
            if rel not in needed_dirs:
                problems.append(f"{rel}/: a folder that holds no listed file")
        elif rel not in listed:
            problems.append(f"{rel}: not listed in the manifest")


def _derive(release: Path, manifest: dict[str, Any], problems: list[str]) -> None:
    """Re-derive the counts from the shards and compare."""
    by: dict[str, Counter[str]] = {k: Counter() for k in BY_KEYS}
    terms: Counter[str] = Counter()
    images: set[str] = set()
    rows = 0
    licence = {s["name"]: s["licence"] for s in manifest.get("sources", [])}
    listed_images = {i["path"] for i in manifest.get("images", [])}
    for s in manifest.get("shards", []):
        p = release / s["path"]
        if not _safe(s["path"]) or p.is_symlink() or not p.is_file():
            continue
        with open(p, "rb") as fh:
            for n, line in enumerate(fh, 1):
                rows += _tally(orjson.loads(line), s, n, by, terms, images, licence, listed_images, problems)
    c = manifest.get("counts", {})
    if rows != c.get("rows"):
        problems.append(f"manifest.json: counts.rows {c.get('rows')} but the shards hold {rows} rows")
    for k in BY_KEYS:
        if dict(sorted(by[k].items())) != c.get(f"by_{k}"):
            problems.append(f"manifest.json: counts.by_{k} differs from the shards")
    if dict(sorted(terms.items())) != c.get("regions_by_term"):
        problems.append("manifest.json: counts.regions_by_term differs from the shards")
    if images != listed_images:
        problems.append(f"manifest.json: {len(listed_images)} images listed, the rows use {len(images)}")


def _tally(row: dict[str, Any], shard: dict[str, Any], n: int, by: dict[str, Counter[str]], terms: Counter[str],
           images: set[str], licence: dict[str, str], listed_images: set[str], problems: list[str]) -> int:
    m = row.get("meta", {})
    where = f"{shard['path']}:{n}"
    if (m.get("split"), m.get("task"), m.get("lang")) != (shard["split"], shard["task"], shard["lang"]):
        problems.append(f"{where}: row {row.get('id')} is not a {shard['split']}/{shard['task']}/{shard['lang']} row")
    if licence.get(m.get("source")) != m.get("licence"):
        problems.append(f"{where}: row licence {m.get('licence')!r} != the manifest's licence of {m.get('source')}")
    if row.get("image") not in listed_images:
        problems.append(f"{where}: image {row.get('image')} is not a listed image")
    for k in BY_KEYS:
        by[k][str(m.get(k))] += 1
    terms.update(r["term"] for r in m.get("regions", []))
    images.add(str(row.get("image")))
    return 1


def _card(release: Path, manifest: dict[str, Any], problems: list[str]) -> None:
    import yaml

    card = release / "README.md"
    if not card.is_file():
        return
    text = card.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        problems.append("README.md: no YAML header")
        return
    header = yaml.safe_load(text.split("---\n", 2)[1]) or {}
    named = {p for cfg in header.get("configs", []) for df in cfg.get("data_files", [])
             for p in ([df["path"]] if isinstance(df.get("path"), str) else df.get("path", []))}
    named = {p for p in named if "*" not in p}
    shards = {s["path"] for s in manifest.get("shards", [])}
    if named and named != shards:
        problems.append(f"README.md: data_files name {len(named)} shards, the manifest lists {len(shards)}")


def verify_release(release: str | Path) -> list[str]:
    """Every problem found (empty: the release is exactly what was published)."""
    release = Path(release)
    mpath = release / "manifest.json"
    if mpath.is_symlink() or not mpath.is_file():
        return [f"{mpath}: missing (is this a release folder?)"]
    try:
        raw = orjson.loads(mpath.read_bytes())
    except orjson.JSONDecodeError as exc:
        return [f"{mpath}: unreadable manifest: {exc}"]
    problems: list[str] = []
    if raw.get("manifest_sha256") != manifest_self_hash(raw):
        problems.append("manifest.json: its own hash does not match (the manifest was edited after the build)")
    listed = {"manifest.json"}
    for s in raw.get("shards", []):
        _check_file(release, s["path"], s["sha256"], problems, s["lines"])
        listed.add(s["path"])
    for im in raw.get("images", []):
        _check_file(release, im["path"], im["sha256"], problems)
        listed.add(im["path"])
    for rel, sha in raw.get("files", {}).items():
        _check_file(release, rel, sha, problems)
        listed.add(rel)
    _walk(release, listed, problems)
    _derive(release, raw, problems)
    _card(release, raw, problems)
    return problems
