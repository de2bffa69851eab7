"""The build store beside a release (``OUT/.medreg-cache``): images, case parts, verdicts, run logs.

::

    .medreg-cache/
      images/ab/<sha256>.png            content-addressed PNGs (written once, hard-linked into releases)
      parts/ab/<key>/rows.jsonl         one case's rows (sorted by axis, slice, id)
      parts/ab/<key>/features.jsonl     compact per-region records for release-level validators (stats)
      parts/ab/<key>/verdicts-<v>.jsonl release-level verdicts for those rows under validation key <v>
      parts/ab/<key>/summary.json       the CaseSummary; written last: a part without it does not exist
      fingerprints.sqlite               input-file sha256 memo (path, size, mtime, inode)
      verdicts/                         model-judge verdict cache (per row and image)
      runs/<name>-<version>.last-run.json
      tmp/                              a build's spill files (case summaries, the stats fit), unlinked at creation

Every file is written atomically, so a killed run leaves whole parts or none.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.atomic import write_bytes_atomic
from pipeline.release.images import ImageStore
from schemas.records import CaseSummary

STORE_DIRNAME = ".medreg-cache"


def dump_lines(items: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(x) + b"\n" for x in items)


def iter_lines(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)


class Store:
    """Parts, images and caches of builds into one output folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.images = ImageStore(self.root)

    @classmethod
    def for_output(cls, out_dir: str | Path) -> Store:
        return cls(Path(out_dir) / STORE_DIRNAME)

    # parts -------------------------------------------------------------------------------------
    def part_dir(self, key: str) -> Path:
        return self.root / "parts" / key[:2] / key

    def has_part(self, key: str) -> bool:
        d = self.part_dir(key)
        return (d / "summary.json").is_file() and (d / "rows.jsonl").is_file()

    def write_part(self, summary: CaseSummary, rows: list[dict[str, Any]], features: list[dict[str, Any]]) -> None:
        d = self.part_dir(summary.key)
        (d / "summary.json").unlink(missing_ok=True)  # an older copy must not vouch for new rows
        write_bytes_atomic(d / "rows.jsonl", dump_lines(rows))
        write_bytes_atomic(d / "features.jsonl", dump_lines(features))
        write_bytes_atomic(d / "summary.json", orjson.dumps(summary.model_dump(mode="json")))

    def read_summary(self, key: str) -> CaseSummary:
        return CaseSummary.model_validate(orjson.loads((self.part_dir(key) / "summary.json").read_bytes()))

    def iter_rows(self, key: str) -> Iterator[dict[str, Any]]:
        return iter_lines(self.part_dir(key) / "rows.jsonl")

    def features_path(self, key: str) -> Path:
        return self.part_dir(key) / "features.jsonl"

    def verdicts_path(self, key: str, vkey: str) -> Path:
        return self.part_dir(key) / f"verdicts-{vkey}.jsonl"

    def images_present(self, summary: CaseSummary) -> bool:
        return all(self.images.has(im.rel) for im in summary.images)

    # other locations ---------------------------------------------------------------------------
    @property
    def fingerprints(self) -> Path:
        return self.root / "fingerprints.sqlite"

    @property
    def verdict_cache(self) -> Path:
        return self.root / "verdicts"

    def run_log(self, release_name: str) -> Path:
        return self.root / "runs" / f"{release_name}.last-run.json"
