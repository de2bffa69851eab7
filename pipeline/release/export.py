"""Exports of a release to the formats trainers read: LLaVA (ShareGPT) rows and InternVL meta files.

* :func:`to_llava` turns one release row (InternVL chat row + ``meta``) into a LLaVA / ShareGPT row
  ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}``.  LLaVA's data loader
  (``LazySupervisedDataset`` in ``llava/train/train.py``) reads a JSON list of such rows, joins ``image``
  to ``--image_folder`` and expects the image token ``<image>`` exactly once, in the first human turn
  (it moves it to the front followed by a newline).  Its conversation roles are ``human``/``gpt`` only,
  so a ``system`` turn is folded into the first human turn (or dropped, ``system="drop"``).
  :func:`pipeline.release.shards.write_release` calls :func:`to_llava` when ``output.formats`` has ``llava``.
* :func:`internvl_meta` writes the *meta file* that InternVL's fine-tuning script takes as
  ``--meta_path``: a JSON object ``{dataset_name: {"root", "annotation", "data_augment", "repeat_time",
  "length"[, "max_dynamic_patch"]}}``.  InternVL opens each ``annotation`` as one ``.jsonl`` file and
  joins every row's ``image`` to ``root``; ``repeat_time`` below 1 keeps that fraction of the rows,
  above 1 must be an integer.  So there is one entry per shard file (a (split, task, lang) group with
  several shards gives several entries).

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
    "internvl_meta",
    "iter_release_rows",
    "read_manifest",
    "to_llava",
    "write_llava",
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
        raise FileNotFoundError(f"{path} not found: {release_dir} is not a release folder (build one with `medreg build`)")
    return orjson.loads(path.read_bytes())


def _shards(manifest: dict[str, Any], splits: Iterable[str] | None) -> list[dict[str, Any]]:
    want = set(splits) if splits is not None else None
    return [s for s in manifest.get("shards", []) if want is None or s["split"] in want]


def iter_release_rows(release_dir: str | Path, splits: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every row of the release's shards (manifest order), optionally only some splits."""
    release_dir = Path(release_dir)
    for s in _shards(read_manifest(release_dir), splits):
        with open(release_dir / s["path"], "rb") as fh:
            for line in fh:
                if line.strip():
                    yield orjson.loads(line)


def write_llava(
    release_dir: str | Path,
    out: str | Path,
    splits: Sequence[str] | None = ("train",),
    *,
    system: Literal["fold", "drop"] = "fold",
) -> tuple[Path, int]:
    """Write the release as LLaVA data and return ``(path, rows)``.

    ``out`` ending in ``.json``: one JSON list (what LLaVA's ``train.py`` loads with ``json.load``);
    ending in ``.jsonl``: one row per line; otherwise a folder mirroring ``data/<split>/*.jsonl``.
    """
    from pipeline.core.atomic import write_bytes_atomic

    release_dir = Path(release_dir)
    out = Path(out)
    manifest = read_manifest(release_dir)
    shards = _shards(manifest, splits)
    if not shards:
        raise ValueError(f"{release_dir}: no shards in splits {list(splits or [])}")
    n = 0
    if out.suffix in (".json", ".jsonl"):
        rows = [to_llava(r, system=system) for r in iter_release_rows(release_dir, splits)]
        n = len(rows)
        if out.suffix == ".json":
            data = orjson.dumps(rows) + b"\n"
        else:
            data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out, data)
        return out, n
    for s in shards:
        lines = (release_dir / s["path"]).read_bytes().splitlines()
        data = b"".join(orjson.dumps(to_llava(orjson.loads(x), system=system)) + b"\n" for x in lines if x.strip())
        n += sum(1 for x in lines if x.strip())
        rel = Path(s["path"]).relative_to("data") if s["path"].startswith("data/") else Path(s["path"])
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, data)
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
    """InternVL's training meta file for a release (one entry per shard file).

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
        if max_dynamic_patch is not None:
            entry["max_dynamic_patch"] = int(max_dynamic_patch)
        meta[name] = entry
    return meta
