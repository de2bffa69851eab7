"""The build plan: load every card of a release config, instantiate its adapter, discover its cases and
compute each case's part key.  The driver (pipeline.release.driver) takes the plan from here."""

from __future__ import annotations

from pathlib import Path

from pipeline.ingest.readers import ReadError
from pipeline.release.plan import FingerprintCache, Plan, SourcePlan, make_jobs
from pipeline.release.store import Store
from schemas.config import ReleaseConfig, SourceUse
from schemas.records import ErrorRecord
from pipeline.validate.registry import check_config
from schemas.language import TermSpec
from sources.base import get_adapter, load_card
from sources.terms import load_release_terms


def _source(use: SourceUse, samples_root: Path | None, release_terms: dict[str, TermSpec]) -> SourcePlan:
    try:
        card = load_card(use.card, release_terms=release_terms)
    except Exception as exc:  # a broken card is this source's error, reported by the driver
        return SourcePlan(use, use.card, error=_error(use.card, exc))
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
        refs = sp.adapter.discover()
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
    check_config(cfg.validation)  # unknown validators / bad sections stop the build before any case
    release_terms = load_release_terms(cfg)  # the config's glossary files: a bad one stops the build
    sources = [_source(use, samples_root, release_terms) for use in cfg.sources]
    cache = FingerprintCache(Store.for_output(out_dir).fingerprints if out_dir is not None else None)
    try:
        jobs = make_jobs(cfg, sources, cache)
    finally:
        cache.close()
    return Plan(cfg=cfg, sources=sources, jobs=jobs, samples_root=samples_root)
