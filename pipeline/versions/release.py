"""What a build does for versions, called by the driver and the release writer:

1. :func:`open_previous` (before any case runs): the release named by ``previous:`` (a folder, absolute or
   relative to the output folder), its manifest hash and its patients' splits.  A missing or unreadable
   previous release stops the build.
2. :func:`prepare` (after the cases, before writing): the split and duplicate decisions
   (:mod:`pipeline.versions.splits`) and the licence summary.
3. :func:`annotate` (while writing, before the card): licence, duplicate and previous-release facts into
   the manifest, ``duplicates.jsonl`` (every group) and ``changes.json`` (the full diff against the
   previous release) into the release.
"""

from __future__ import annotations

from collections.abc import Sequence
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from pipeline.release.plan import Plan
from pipeline.versions.diff import diff_releases, load_manifest, summarise
from pipeline.versions.frame import read_keys
from pipeline.versions.licences import licence_summary
from pipeline.versions.splits import SplitContext, SplitDecisions, decide
from schemas.config import ReleaseConfig
from schemas.records import CaseSummary, LicenceSummary, Manifest, PreviousRelease


class PreviousReleaseError(ValueError):
    """``previous:`` names no usable release."""


@dataclass
class Previous:
    path: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    splits: dict[str, str]  # patient -> split (patients that were in exactly one split)


@dataclass
class VersionInfo:
    previous: Previous | None
    decisions: SplitDecisions
    licences: LicenceSummary


def previous_path(cfg: ReleaseConfig, out_dir: Path) -> Path | None:
    if not cfg.previous:
        return None
    p = Path(cfg.previous).expanduser()
    return p if p.is_absolute() else Path(out_dir) / p


def open_previous(cfg: ReleaseConfig, out_dir: str | Path) -> Previous | None:
    """The previous release of ``cfg`` (None when the config names none)."""
    path = previous_path(cfg, Path(out_dir))
    if path is None:
        return None
    if path.resolve() == (Path(out_dir) / f"{cfg.name}-{cfg.version}").resolve():
        raise PreviousReleaseError(
            f"previous: {cfg.previous} is the release being built ({cfg.name}-{cfg.version}); name the release "
            f"this version follows, or give this version a new `version:`")
    try:
        manifest, sha = load_manifest(path)
        keys = read_keys(path, [s["path"] for s in manifest["shards"]])
    except (FileNotFoundError, ValueError, KeyError, orjson.JSONDecodeError) as exc:
        raise PreviousReleaseError(
            f"previous: {cfg.previous} (resolved against the output folder when relative): {exc}") from None
    per = keys.group_by("patient_id").agg(pl.col("split").unique())
    splits = {p: s[0] for p, s in zip(per["patient_id"], per["split"], strict=True) if len(s) == 1}
    return Previous(path, manifest, sha, splits)


def prepare(plan: Plan, summaries: Sequence[CaseSummary], previous: Previous | None) -> VersionInfo:
    cfg = plan.cfg
    order = {sp.name: i for i, sp in enumerate(plan.sources)}
    official = {(j.source, j.case_id) for j in plan.jobs if j.official_split and cfg.splits.keep_official}
    ctx = SplitContext(order, official, previous.splits if previous else None)
    decisions = decide(summaries, ctx, cfg.duplicates)
    included = [(sp.name, sp.card.licence) for sp in plan.sources if sp.card is not None]
    return VersionInfo(previous, decisions, licence_summary(included, cfg.licences, plan.excluded))


def card_sha256(card: Any) -> str:
    return hashlib.sha256(orjson.dumps(card.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)).hexdigest()


def annotate(info: VersionInfo, plan: Plan, manifest: Manifest, staging: Path, files: dict[str, bytes]) -> None:
    """Fill the manifest's version facts and add ``duplicates.jsonl`` / ``changes.json`` to ``files``."""
    for entry in manifest.sources:
        sp = plan.source(entry.name)
        if sp is not None and sp.card is not None:
            entry.card_sha256 = card_sha256(sp.card)
    manifest.licences = info.licences
    d = info.decisions
    if d.summary is not None:
        manifest.duplicates = d.summary.model_copy(
            update={"rows_dropped": manifest.dropped.get("row:duplicate_image", 0)})
        files["duplicates.jsonl"] = b"".join(orjson.dumps(g.model_dump(mode="json")) + b"\n" for g in d.groups)
    prev = info.previous
    if prev is None:
        return
    diff = diff_releases(prev.path, staging, prev.manifest, manifest.model_dump(mode="json"))
    diff["old"]["folder"] = prev.path.name
    diff["new"]["folder"] = f"{manifest.name}-{manifest.version}"
    manifest.previous = PreviousRelease(name=prev.manifest["name"], version=prev.manifest["version"],
                                        manifest_sha256=prev.manifest_sha256, patients_pinned=d.pinned,
                                        changes=summarise(diff))
    files["changes.json"] = orjson.dumps(diff, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
