"""The build plan: load every card of a release config, instantiate its adapter, discover its cases and
compute each case's part key.  The driver (pipeline.release.driver) takes the plan from here."""

from __future__ import annotations

from pathlib import Path

from pipeline.ingest.guard import discover_cases
from pipeline.ingest.readers import ReadError
from pipeline.release.plan import FingerprintCache, Plan, SourcePlan, make_jobs
from pipeline.release.store import Store
from pipeline.validate.registry import check_config
from pipeline.versions.licences import exclusion_reason
from schemas.config import LicenceFilter, ReleaseConfig, SourceUse
from schemas.language import TermSpec
from schemas.records import ErrorRecord, ExcludedSource
from sources.base import get_adapter, load_card
from sources.terms import load_release_terms


def _source(use: SourceUse, samples_root: Path | None, licences: LicenceFilter,
            release_terms: dict[str, TermSpec]) -> SourcePlan | ExcludedSource:
    try:
        card = load_card(use.card, release_terms=release_terms)
    except Exception as exc:  # a broken card is this source's error, reported by the driver
        name = Path(use.card).name  # a path: its file name only (no build-machine folders)
        return SourcePlan(use, name, error=_error(name, exc))
    reason = exclusion_reason(card.licence, licences)
    if reason is not None:  # left out before discovery, and listed in the manifest and card
        return ExcludedSource(name=card.name, licence=card.licence, reason=reason)
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
    ``out_dir`` (a rerun re-reads only files whose size, mtime or inode changed).  Sources whose licence the
    config's ``licences`` filter refuses are not discovered; they are listed in ``Plan.excluded``.  Unknown
    validators and broken glossary files (the config's ``glossary:``) stop the plan before any case."""
    check_config(cfg.validation)
    release_terms = load_release_terms(cfg)
    planned = [_source(use, samples_root, cfg.licences, release_terms) for use in cfg.sources]
    sources = [p for p in planned if isinstance(p, SourcePlan)]
    excluded = [p for p in planned if isinstance(p, ExcludedSource)]
    cache = FingerprintCache(Store.for_output(out_dir).fingerprints if out_dir is not None else None)
    try:
        jobs = make_jobs(cfg, sources, cache)
    finally:
        cache.close()
    return Plan(cfg=cfg, sources=sources, jobs=jobs, samples_root=samples_root, excluded=excluded)
