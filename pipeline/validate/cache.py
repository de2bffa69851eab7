"""Verdict cache for the validation stage: one small JSON file per (validator, row, image) verdict.

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
import os
import tempfile
from pathlib import Path
from typing import Any

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
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.computed = 0  # verdicts stored because they were missing
        self.cached = 0  # verdicts served from disk

    def key(self, validator: Any, item: Any) -> str:
        parts = [
            str(validator.name),
            str(validator.version),
            str(getattr(validator, "config_hash", "")),
            item.row_id,
            row_digest(item.row),
            item.image_digest(),
        ]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> ValidationResult | None:
        p = self._path(key)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            res = ValidationResult.model_validate(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # corrupt entry: recompute
            return None
        self.cached += 1
        return res

    def put(self, key: str, res: ValidationResult) -> None:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        data = res.model_dump(mode="json")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, ensure_ascii=False, sort_keys=True)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.computed += 1

    def entries(self) -> list[Path]:
        return sorted(self.dir.glob("*/*.json"))

    def reset_counts(self) -> None:
        self.computed = 0
        self.cached = 0
