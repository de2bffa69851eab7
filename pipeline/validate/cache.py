"""Verdict cache for the validation stage: one small JSON file per (validator, row, image) verdict
(a :class:`pipeline.core.jsoncache.JsonDirCache`).

Key = sha256 of (validator name, validator version, validator config hash, row id, row digest, image
sha).  The row digest covers the row's conversations and regions (not ``meta.validation``), so a row
whose text or boxes changed under the same id is judged again.  Files live in
``<dir>/<key[:2]>/<key>.json`` and are written atomically (temp file + rename), so an interrupted run
never leaves a half-written verdict; deleting any subset of files makes the next run recompute
exactly that subset (``computed`` / ``cached`` count what happened).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.core.jsoncache import JsonDirCache, cache_key
from schemas.records import ValidationResult


def row_digest(row: dict[str, Any]) -> str:
    meta = row.get("meta", {})
    payload = {
        "conversations": row.get("conversations"),
        "width": row.get("width"),
        "height": row.get("height"),
        "regions": meta.get("regions"),
        "modality": meta.get("modality"),
        "axis": meta.get("axis"),
        "task": meta.get("task"),
        "lang": meta.get("lang"),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class VerdictCache:
    """On-disk cache of ValidationResults; use with :func:`pipeline.validate.run_validators`."""

    def __init__(self, directory: str | Path) -> None:
        self._store = JsonDirCache(directory)
        self.dir = self._store.dir
        self.computed = 0  # verdicts stored because they were missing
        self.cached = 0  # verdicts served from disk

    def key(self, validator: Any, item: Any) -> str:
        return cache_key(str(validator.name), str(validator.version), str(getattr(validator, "config_hash", "")),
                         item.row_id, row_digest(item.row), item.image_digest())

    def get(self, key: str) -> ValidationResult | None:
        data = self._store.get(key)
        if data is None:
            return None
        try:
            res = ValidationResult.model_validate(data)
        except ValueError:  # corrupt entry: recompute
            return None
        self.cached += 1
        return res

    def put(self, key: str, res: ValidationResult) -> None:
        self._store.put(key, res.model_dump(mode="json"))
        self.computed += 1

    def entries(self) -> list[Path]:
        return self._store.entries()

    def reset_counts(self) -> None:
        self.computed = 0
        self.cached = 0
