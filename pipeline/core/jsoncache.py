"""One on-disk JSON cache for every cache of the project (model verdicts, judge answers, LLM replies).

One small JSON file per key under ``<dir>/<key[:2]>/<key>.json``, written atomically
(:func:`pipeline.core.atomic.write_bytes_atomic`), so an interrupted run never leaves a half-written entry;
an unreadable entry is a miss (it is recomputed and rewritten).  Deleting any subset of the files makes the
next run recompute exactly that subset.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.atomic import write_bytes_atomic


def cache_key(*parts: Any) -> str:
    """sha256 of the parts as canonical JSON (sorted keys)."""
    return hashlib.sha256(orjson.dumps(list(parts), option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()


class JsonDirCache:
    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            value = orjson.loads(self.path(key).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            self.misses += 1
            return None
        if not isinstance(value, dict):
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        write_bytes_atomic(self.path(key), orjson.dumps(value, option=orjson.OPT_SORT_KEYS))

    def entries(self) -> list[Path]:
        return sorted(self.dir.glob("*/*.json"))
