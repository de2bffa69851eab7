"""Exports of a release to the formats trainers read: LLaVA (ShareGPT) JSON lists and InternVL meta files.

* :func:`to_llava` turns one release row (InternVL chat row + ``meta``) into a LLaVA / ShareGPT row
  ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}``.  LLaVA's data loader
  (``LazySupervisedDataset`` in ``llava/train/train.py``) ``json.load``s **one JSON list** of such rows
  (JSONL fails with ``JSONDecodeError: Extra data``), joins ``image`` to ``--image_folder`` and expects the
  image token ``<image>`` exactly once, in the first human turn.  Its roles are ``human``/``gpt`` only, so
  a ``system`` turn is folded into the first human turn (or dropped, ``system="drop"``).
  :func:`write_llava_splits` writes ``data_llava/<split>.json`` (one JSON list per split, streamed row by
  row) into a release built with ``output.formats: [..., llava]``; :func:`write_llava` exports any release.
* :func:`internvl_meta` writes the *meta file* that InternVL's fine-tuning script takes as
  ``--meta_path``: a JSON object ``{dataset_name: {"root", "annotation", "data_augment", "repeat_time",
  "length", "base_prompt"[, "max_dynamic_patch"]}}``.  InternVL (and MedRegA's fork) open each
  ``annotation`` as one ``.jsonl`` file (``readlines`` + ``json.loads`` per line) and join every row's
  ``image`` to ``root``; ``repeat_time`` below 1 keeps that fraction of the rows, above 1 must be an
  integer.  MedRegA's ``build_datasets`` also reads ``base_prompt`` from every entry and rebuilds the first
  turn as ``"<image>\n" + base_prompt + " " + question``; upstream InternVL ignores the key.  So there is
  one entry per task x language (per shard file when a group has several shards), each with its own
  ``base_prompt``: the first system prompt of that task's template bank in that language.

Both are pure functions of the release folder; nothing here imports Prefect.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson

__all__ = [
    "IMAGE_TOKEN",
    "base_prompt",
    "internvl_meta",
    "iter_release_rows",
    "read_manifest",
    "to_llava",
    "write_json_list",
    "write_llava",
    "write_llava_splits",
]

#: The image placeholder both LLaVA and InternVL expect in the first human turn.
IMAGE_TOKEN = "<image>"
_IMAGE_TOKEN_RE = re.compile(r"\s*<image>\s*")


def to_llava(row: dict[str, Any], *, system: Literal["fold", "drop"] = "fold") -> dict[str, Any]:
    """One release row -> one LLaVA / ShareGPT row.

    * ``image`` stays the path relative to the release folder (pass the release folder as LLaVA's
      ``--image_folder``).
    * The image token appears exactly once: ``"<image>\\n"`` at the start of the first human turn;
      any other occurrence is removed.
    * ``system`` turns: ``"fold"`` puts their text in front of the first human question (after the
      image token), ``"drop"`` leaves them out.  LLaVA has no system role in its data format.
    * Turns must alternate human/gpt starting with human (LLaVA skips a leading gpt turn and would
      mis-train on two human turns in a row): anything else raises ``ValueError``.
    """
    convs = row.get("conversations") or []
    system_texts: list[str] = []
    turns: list[dict[str, str]] = []
    for t in convs:
        role = t.get("from")
        value = str(t.get("value", ""))
        if role == "system":
            if value.strip():
                system_texts.append(value.strip())
            continue
        if role not in ("human", "gpt"):
            raise ValueError(f"row {row.get('id')}: unknown conversation role {role!r}")
        turns.append({"from": role, "value": value})
    if not turns or turns[0]["from"] != "human":
        raise ValueError(f"row {row.get('id')}: a LLaVA conversation must start with a human turn")
    for i, t in enumerate(turns):
        want = "human" if i % 2 == 0 else "gpt"
        if t["from"] != want:
            raise ValueError(f"row {row.get('id')}: turn {i} is {t['from']!r}, LLaVA needs human/gpt alternating")
    out_turns = []
    for i, t in enumerate(turns):
        value = t["value"]
        if IMAGE_TOKEN in value:
            value = _IMAGE_TOKEN_RE.sub(" ", value).strip() if i else _IMAGE_TOKEN_RE.sub("\n", value).strip()
        if i == 0:
            if system == "fold" and system_texts:
                value = "\n".join(system_texts) + "\n" + value
            value = f"{IMAGE_TOKEN}\n{value}"
        out_turns.append({"from": t["from"], "value": value})
    return {"id": row["id"], "image": row["image"], "conversations": out_turns}


# ----------------------------------------------------------------------------------------- release IO


def read_manifest(release_dir: str | Path) -> dict[str, Any]:
    """``manifest.json`` of a release folder, as a dict (clear error if it is not a release)."""
    path = Path(release_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {release_dir} is not a release folder (build one with `medreg build`)"
        )
    return orjson.loads(path.read_bytes())


def _shards(manifest: dict[str, Any], splits: Iterable[str] | None) -> list[dict[str, Any]]:
    want = set(splits) if splits is not None else None
    return [s for s in manifest.get("shards", []) if want is None or s["split"] in want]


def iter_release_rows(release_dir: str | Path, splits: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every row of the release's shards (manifest order), optionally only some splits."""
    release_dir = Path(release_dir)
    yield from _rows_of(release_dir, [s["path"] for s in _shards(read_manifest(release_dir), splits)])


def write_json_list(path: str | Path, rows: Iterable[dict[str, Any]]) -> tuple[int, str]:
    """Stream ``rows`` into ``path`` as one JSON list (one row per line, atomically); returns
    ``(rows, sha256)`` of the file."""
    import hashlib

    from pipeline.core.atomic import atomic_writer

    digest = hashlib.sha256()
    n = 0
    with atomic_writer(path) as fh:
        for row in rows:
            chunk = (b"[\n" if n == 0 else b",\n") + orjson.dumps(row)
            fh.write(chunk)
            digest.update(chunk)
            n += 1
        tail = b"\n]\n" if n else b"[]\n"
        fh.write(tail)
        digest.update(tail)
    return n, digest.hexdigest()


def _rows_of(root: Path, paths: Iterable[str]) -> Iterator[dict[str, Any]]:
    for rel in paths:
        with open(root / rel, "rb") as fh:
            for line in fh:
                if line.strip():
                    yield orjson.loads(line)


def write_llava_splits(
    release_dir: str | Path, shards: Sequence[tuple[str, str]], *, system: Literal["fold", "drop"] = "fold"
) -> dict[str, str]:
    """``data_llava/<split>.json`` for every split of ``shards`` (``(path, split)`` pairs, in order) inside
    ``release_dir``: one JSON list per split, streamed.  Returns ``{relative path: sha256}``."""
    release_dir = Path(release_dir)
    by_split: dict[str, list[str]] = {}
    for path, split in shards:
        by_split.setdefault(split, []).append(path)
    out = {}
    for split, paths in sorted(by_split.items()):
        rel = f"data_llava/{split}.json"
        _, sha = write_json_list(release_dir / rel, (to_llava(r, system=system) for r in _rows_of(release_dir, paths)))
        out[rel] = sha
    return out


def write_llava(
    release_dir: str | Path,
    out: str | Path,
    splits: Sequence[str] | None = ("train",),
    *,
    system: Literal["fold", "drop"] = "fold",
) -> tuple[Path, int]:
    """Write the release as LLaVA data and return ``(path, rows)``.

    ``out`` ending in ``.json``: one JSON list of the chosen splits (what LLaVA's ``train.py`` loads with
    ``json.load``); ending in ``.jsonl``: one row per line (for other readers: **not** for ``train.py``);
    otherwise a folder with one ``<split>.json`` list per split.
    """
    from pipeline.core.atomic import write_bytes_atomic

    release_dir = Path(release_dir)
    out = Path(out)
    shards = _shards(read_manifest(release_dir), splits)
    if not shards:
        raise ValueError(f"{release_dir}: no shards in splits {list(splits or [])}")
    rows = (to_llava(r, system=system) for r in _rows_of(release_dir, [s["path"] for s in shards]))
    if out.suffix == ".json":
        n, _ = write_json_list(out, rows)
        return out, n
    if out.suffix == ".jsonl":
        data = [orjson.dumps(r) + b"\n" for r in rows]
        write_bytes_atomic(out, b"".join(data))
        return out, len(data)
    n = 0
    for split in sorted({s["split"] for s in shards}):
        paths = [s["path"] for s in shards if s["split"] == split]
        llava_rows = (to_llava(r, system=system) for r in _rows_of(release_dir, paths))
        n += write_json_list(out / f"{split}.json", llava_rows)[0]
    return out, n


# ----------------------------------------------------------------------------------------- InternVL


def _check_repeat(repeat_time: float) -> float | int:
    if repeat_time <= 0:
        raise ValueError(f"repeat_time must be > 0, got {repeat_time}")
    if repeat_time > 1:
        if float(repeat_time) != int(repeat_time):
            raise ValueError(f"InternVL needs an integer repeat_time above 1, got {repeat_time}")
        return int(repeat_time)
    return float(repeat_time) if repeat_time != 1 else 1


def internvl_meta(
    release_dir: str | Path,
    root_prefix: str | None = None,
    *,
    splits: Sequence[str] | None = ("train",),
    repeat_time: float | dict[str, float] = 1,
    data_augment: bool = False,
    max_dynamic_patch: int | None = None,
) -> dict[str, dict[str, Any]]:
    """InternVL's / MedRegA's training meta file for a release (one entry per task x language and shard
    file, each with that task and language's ``base_prompt``).

    ``root_prefix`` is where the release folder will live on the training machine (the meta file holds
    paths the trainer opens: ``root`` = ``root_prefix``, ``annotation`` = ``root_prefix/data/...``).
    Without it, the release folder's absolute path here is used.  ``splits=None`` takes every split
    (default: ``train`` only).  ``repeat_time`` is one number or ``{task: number}``.  Entry names are
    ``<name>-<version>_<split>_<task>_<lang>`` (plus ``_<NNNNN>`` when a group spans several shards),
    in manifest order.
    """
    release_dir = Path(release_dir)
    manifest = read_manifest(release_dir)
    root = root_prefix.rstrip("/") if root_prefix else release_dir.resolve().as_posix()
    if not root:
        root = "/"
    shards = _shards(manifest, splits)
    if not shards:
        have = sorted({s["split"] for s in manifest.get("shards", [])})
        raise ValueError(f"{release_dir}: no shards in splits {list(splits or [])}; the release has {have}")
    groups: dict[tuple[str, str, str], int] = {}
    for s in shards:
        k = (s["split"], s["task"], s["lang"])
        groups[k] = groups.get(k, 0) + 1
    base = f"{manifest['name']}-{manifest['version']}"
    meta: dict[str, dict[str, Any]] = {}
    seen: dict[tuple[str, str, str], int] = {}
    for s in shards:
        k = (s["split"], s["task"], s["lang"])
        i = seen.get(k, 0)
        seen[k] = i + 1
        name = f"{base}_{s['split']}_{s['task']}_{s['lang']}"
        if groups[k] > 1:
            name += f"_{i:05d}"
        rt = repeat_time.get(s["task"], 1) if isinstance(repeat_time, dict) else repeat_time
        entry: dict[str, Any] = {
            "root": root + "/" if not root.endswith("/") else root,
            "annotation": posixpath.join(root, s["path"]),
            "data_augment": bool(data_augment),
            "repeat_time": _check_repeat(rt),
            "length": int(s["lines"]),
        }
        entry["base_prompt"] = base_prompt(s["task"], s["lang"])
        if max_dynamic_patch is not None:
            entry["max_dynamic_patch"] = int(max_dynamic_patch)
        meta[name] = entry
    return meta


def base_prompt(task: str, lang: str) -> str:
    """The system prompt MedRegA's loader puts before every question of an entry: the first system prompt
    of the task's template bank in that language."""
    from pipeline.language.templates import load_templates

    return load_templates().bank(task, lang).system[0][1]
