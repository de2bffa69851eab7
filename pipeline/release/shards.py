"""The release folder: parts merged into shards (:mod:`pipeline.release.writer`), then errors, notes,
manifest, dataset card and QA report, all in a staging folder swapped into place at the end
(:mod:`pipeline.release.publish`): a killed run never leaves a half-written shard or a partial release.
"""

from __future__ import annotations

from collections.abc import Sequence
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.atomic import write_bytes_atomic
from pipeline.core.ids import file_sha256, sha256_hex
from pipeline.release.plan import Plan
from pipeline.release.publish import check_shrink, staging_dir, swap_in
from pipeline.release.store import Store
from pipeline.release.writer import Merger, MergeResult, image_entries
from pipeline.validate.stage import ReleaseVerdicts
from pipeline.versions.release import VersionInfo, annotate
from schemas.records import CaseSummary, ErrorRecord, ImageEntry, Manifest, ShardEntry, SourceEntry


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


def counts_of(merge: MergeResult, images: int, summaries: Sequence[CaseSummary], errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": merge.counts["rows"], "images": images}
    for k, c in merge.by.items():
        out[f"by_{k}"] = dict(sorted(c.items()))
    out["regions_by_term"] = dict(sorted(merge.terms.items()))
    out["cases"] = len(summaries)
    out["errors"] = errors
    return out


def _dropped(summaries: Sequence[CaseSummary], merge: MergeResult) -> dict[str, int]:
    dropped: Counter[str] = Counter()
    for s in summaries:
        dropped.update(s.dropped)
    dropped.update(merge.dropped)
    return dict(sorted(dropped.items()))


def _errors(plan: Plan, summaries: Sequence[CaseSummary]) -> list[ErrorRecord]:
    errors = [e for s in summaries for e in s.errors] + [sp.error for sp in plan.sources if sp.error is not None]
    errors.sort(key=lambda e: (e.source, e.case_id, e.stage))
    return errors


def _source_entries(plan: Plan, summaries: Sequence[CaseSummary], errors: list[ErrorRecord]) -> list[SourceEntry]:
    cases = Counter(s.source for s in summaries)
    errs = Counter(e.source for e in errors)
    out = []
    for sp in plan.sources:
        c = sp.card
        out.append(SourceEntry(name=sp.name, title=c.title if c else "(failed to load)",
                               licence=c.licence if c else "unknown", modality=c.modality if c else "unknown",
                               cases=cases.get(sp.name, 0), errors=errs.get(sp.name, 0)))
    return out


def _llava_copies(staging: Path, shards: list[ShardEntry]) -> dict[str, str]:
    """data_llava/<split>.json: one JSON list per split, what LLaVA's train.py json.loads (issue 8 item 4)."""
    from pipeline.release.export import write_llava_splits

    return write_llava_splits(staging, [(e.path, e.split) for e in shards])


def write_release(plan: Plan, summaries: Sequence[CaseSummary], verdicts: ReleaseVerdicts, store: Store,
                  out_dir: str | Path, split_overrides: dict[str, str] | None = None,
                  versions: VersionInfo | None = None) -> tuple[Path, Manifest]:
    """Merge the parts into a staging folder, write manifest/card/report, check the guards and swap the
    release into place.  Returns the release folder and its manifest."""
    from pipeline.validate.stage import validation_config

    cfg = plan.cfg
    out_dir = Path(out_dir)
    name = f"{cfg.name}-{cfg.version}"
    staging = staging_dir(out_dir, name)
    try:
        n_src = max(1, sum(1 for sp in plan.sources if sp.card is not None))
        merger = Merger(store, staging, validation_config(cfg.validation), verdicts.vkey, cfg.output.rows_per_shard,
                        split_overrides, gallery_per_source=max(1, cfg.output.gallery_size // n_src)
                        if cfg.output.gallery_size else 0,
                        drop_images=versions.decisions.drop_images if versions is not None else None)
        merge = merger.run(summaries)
        manifest = _finish(plan, summaries, merge, staging, versions)
        check_shrink(out_dir / name, manifest.counts["rows"], cfg.output.allow_shrink, cfg.output.max_row_loss,
                     "the release config")
        swap_in(staging, out_dir / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir / name, manifest


def _finish(plan: Plan, summaries: Sequence[CaseSummary], merge: MergeResult, staging: Path,
            versions: VersionInfo | None = None) -> Manifest:
    from pipeline.release.card import release_files
    from pipeline.release.report import render_report

    cfg = plan.cfg
    images = [ImageEntry.model_validate(e) for e in image_entries(staging)]
    errors = _errors(plan, summaries)
    counts = counts_of(merge, len(images), summaries, len(errors))
    dropped = _dropped(summaries, merge)
    counts["dropped"] = sum(dropped.values())
    counts["flagged"] = merge.review_total
    counts["validation"] = dict(sorted(merge.validation_summary.items()))
    counts["validation_by_source"] = {k: merge.validation_by_source[k] for k in sorted(merge.validation_by_source)}
    files: dict[str, bytes] = {"errors.jsonl": b"".join(orjson.dumps(e.model_dump()) + b"\n" for e in errors)}
    notes = sorted({f"{s.source}/{s.case_id}: {n}" for s in summaries for n in s.notes})
    files["notes.txt"] = ("\n".join(notes) + "\n").encode() if notes else b""
    extra = _llava_copies(staging, merge.shards) if "llava" in cfg.output.formats else {}
    manifest = Manifest(
        name=cfg.name, version=cfg.version, config=cfg.release_dump(), config_sha256=cfg.config_hash(),
        code_version=code_version(), sources=_source_entries(plan, summaries, errors), counts=counts,
        shards=merge.shards, images=images, errors=errors, dropped=dropped,
    )
    if versions is not None:  # licences, duplicates, previous release + changes (docs/versions.md)
        annotate(versions, plan, manifest, staging, files)
    files.update(release_files(manifest, plan.sources))  # README.md card, LICENSE.md, schema.json
    if cfg.output.report:
        report_in = ReportInputs(review=merge.review, review_total=merge.review_total)
        files["report.html"] = render_report(manifest, merge.report_rows, report_in, cfg).encode("utf-8")
    for rel, data in files.items():
        write_bytes_atomic(staging / rel, data)
    manifest.files = {rel: sha256_hex(data) for rel, data in sorted(files.items())}
    manifest.files["review.jsonl"] = file_sha256(staging / "review.jsonl")
    manifest.files.update(extra)
    manifest.files = dict(sorted(manifest.files.items()))
    manifest.manifest_sha256 = ""
    manifest.manifest_sha256 = sha256_hex(manifest_bytes(manifest.model_dump(mode="json")))
    write_bytes_atomic(staging / "manifest.json", manifest_bytes(manifest.model_dump(mode="json")))
    return manifest


def manifest_bytes(data: dict[str, Any]) -> bytes:
    """manifest.json as written (sorted keys, two-space indent, final newline)."""
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


@dataclass
class ReportInputs:
    """What the QA report needs besides the manifest: the first review entries and how many there are."""

    review: list[dict[str, Any]]
    review_total: int
