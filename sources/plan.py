"""The build plan: load every card of a release config, instantiate its adapter, discover its cases and
compute each case's part key.  The driver (pipeline.release.driver) takes the plan from here."""

from __future__ import annotations

from pathlib import Path

from pipeline.ingest.guard import discover_cases
from pipeline.ingest.readers import ReadError
from pipeline.release.plan import FingerprintCache, Plan, SourcePlan, make_jobs
from pipeline.release.store import Store
from schemas.config import ReleaseConfig, SourceUse
from schemas.records import ErrorRecord
from sources.base import get_adapter, load_card


def _source(use: SourceUse, samples_root: Path | None) -> SourcePlan:
    try:
        card = load_card(use.card)
    except Exception as exc:  # a broken card is this source's error, reported by the driver
        name = Path(use.card).name  # a path: its file name only (no build-machine folders)
        return SourcePlan(use, name, error=_error(name, exc))
    if use.translations is not None:  # the release config points the source at other accepted translations
        if card.report is None:
            return SourcePlan(use, card.name, error=_error(card.name, ValueError(
                f"`translations` is set for source {card.name}, whose card has no `report:` section")))
        path = str(Path(use.translations).expanduser().resolve())
        card = card.model_copy(update={"report": card.report.model_copy(update={"translations": path})})
    sp = SourcePlan(use, card.name, card=card)
    try:
        root = Path(use.root).expanduser() if use.root else card.resolve_root(samples_root)
        if not root.exists():
            raise ReadError(
                f"data folder {root.name} of source {card.name} does not exist",
                file=str(root),
                hint="set `root:` for this source in the release config, or MEDREG_SAMPLES",
            )
        sp.adapter = get_adapter(card, root)
        refs = discover_cases(sp.adapter)  # messages name files relative to the data folder
        sp.refs = refs[: use.max_cases] if use.max_cases else refs
    except Exception as exc:
        sp.error = _error(card.name, exc)
    return sp


def _error(name: str, exc: BaseException) -> ErrorRecord:
    return ErrorRecord(
        source=name,
        case_id="*",
        stage="discover",
        file=Path(str(getattr(exc, "file", "") or "")).name or None,
        error=f"{type(exc).__name__}: {exc}",
        hint=getattr(exc, "hint", "") or "check the card and the data folder",
    )


def make_plan(cfg: ReleaseConfig, samples_root: Path | None, out_dir: str | Path | None = None) -> Plan:
    """Sources, cases and part keys of a release config.  Input-file hashes are memoised in the store of
    ``out_dir`` (a rerun re-reads only files whose size, mtime or inode changed)."""
    sources = [_source(use, samples_root) for use in cfg.sources]
    cache = FingerprintCache(Store.for_output(out_dir).fingerprints if out_dir is not None else None)
    try:
        jobs = make_jobs(cfg, sources, cache)
    finally:
        cache.close()
    return Plan(cfg=cfg, sources=sources, jobs=jobs, samples_root=samples_root)
