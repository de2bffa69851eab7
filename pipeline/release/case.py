"""The build, as plain functions: one case -> rows + images; all cases -> a release folder.

``flows/build.py`` wires these into Prefect (one task per case, caching, concurrency, artifacts);
:func:`build` runs the same stages in-process for notebooks, tests and other orchestrators.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.ingest.convert import convert
from pipeline.core.ids import derived_rng, hash_patient, stable_id, unit_interval
from pipeline.release.images import ImageStore, encode_png
from pipeline.language.tasks import SliceContext, TaskMix, generate
from pipeline.ingest.readers import ReadError
from pipeline.core.types import CaseRef, DisplaySlice
from schemas.card import SourceCard
from schemas.config import ReleaseConfig, SourceUse
from schemas.records import ErrorRecord

STORE_DIRNAME = ".medreg-cache"


@dataclass
class CaseResult:
    """What one case contributes: rows (InternVL dicts), their images (in the store), errors, counts."""

    source: str
    case_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # relative paths in the image store
    errors: list[ErrorRecord] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    slices: int = 0
    seconds: float = 0.0


def assign_split(official: str | None, patient_hash: str, cfg: ReleaseConfig) -> str:
    """Official split when the dataset has one (and the config keeps it), else by patient hash."""
    if official and cfg.splits.keep_official:
        return official
    u = unit_interval("split", cfg.seed, patient_hash)
    acc = 0.0
    # sorted, not the YAML's order: configs with the same (sorted-key) hash must give the same splits
    names = sorted(cfg.splits.ratios)
    for name in names:
        acc += cfg.splits.ratios[name]
        if u < acc:
            return name
    return names[-1]


def task_mix(cfg: ReleaseConfig, use: SourceUse | None) -> TaskMix:
    mix = dict(cfg.tasks.mix)
    if use is not None and use.tasks is not None:
        mix = dict(use.tasks)
    langs = list(use.langs) if use is not None and use.langs else list(cfg.tasks.langs)
    return TaskMix(
        tasks=mix,
        langs=langs,
        negative_ratio=cfg.tasks.negative_ratio,
        max_regions_per_sample=cfg.tasks.max_regions_per_sample,
        system_prompt=cfg.tasks.system_prompt,
    )


_SECONDARY_REGIONS = {"spine", "limb", "whole_body"}


def infer_body_region(terms: Iterable[str]) -> str | None:
    """Body region of a slice from its structures (card ``body_region: auto``): each term votes for its
    glossary body regions; spine/limb/whole-body only count when nothing else does; ties -> name order."""
    from pipeline.language.glossary import load_glossary

    gl = load_glossary()
    votes: Counter[str] = Counter()
    fallback: Counter[str] = Counter()
    for t in terms:
        if t not in gl:
            continue
        regions = gl.term(t).body_regions
        main = [r for r in regions if r not in _SECONDARY_REGIONS]
        for r in main:
            votes[r] += 1.0 / len(main)
        for r in regions:
            fallback[r] += 1.0 / len(regions)
    pick = votes or fallback
    if not pick:
        return None
    best = max(pick.values())
    return sorted(r for r, v in pick.items() if v == best)[0]


def _error(ref: CaseRef, stage: str, exc: BaseException) -> ErrorRecord:
    if isinstance(exc, ReadError):
        return ErrorRecord(source=ref.source, case_id=ref.case_id, stage=stage, file=exc.file, error=str(exc), hint=exc.hint)
    first_file = next(iter(ref.paths.values()), None)
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return ErrorRecord(
        source=ref.source,
        case_id=ref.case_id,
        stage=stage,
        file=first_file,
        error=f"{type(exc).__name__}: {exc}{where}",
        hint="unexpected failure while converting this case; check the file, then report it with this message",
    )


def rows_for_slice(
    sl: DisplaySlice,
    *,
    ref: CaseRef,
    card: SourceCard,
    cfg: ReleaseConfig,
    mix: TaskMix,
    modality: str,
    body_region: str | None,
    image_rel: str,
    split: str,
    patient: str,
    vocabulary: list[str],
    transform: dict[str, Any],
) -> list[dict[str, Any]]:
    h, w = sl.image.shape[:2]
    present = {r.term for r in sl.regions}
    if body_region == "auto":
        body_region = infer_body_region(sorted(present))
    ctx = SliceContext(
        modality=modality,
        body_region=body_region,
        axis=sl.axis,
        width=w,
        height=h,
        regions=sl.regions,
        candidate_absent_terms=[t for t in vocabulary if t not in present],
    )
    rng = derived_rng(cfg.seed, "samples", ref.source, ref.case_id, sl.axis, sl.index)
    transform_json = orjson.dumps({**transform, "position_mm": sl.position_mm}, option=orjson.OPT_SORT_KEYS).decode()
    rows = []
    for g in generate(ctx, mix, rng):
        rid = stable_id(ref.source, ref.case_id, sl.axis, sl.index, g.task, g.lang, g.template_id, g.key)
        rows.append(
            {
                "id": rid,
                "image": image_rel,
                "width": w,
                "height": h,
                "conversations": g.conversations,
                "meta": {
                    "task": g.task,
                    "subtask": g.subtask or "",
                    "lang": g.lang,
                    "source": ref.source,
                    "licence": card.licence,
                    "case_id": ref.case_id,
                    "patient_id": patient,
                    "split": split,
                    "modality": modality,
                    "body_region": body_region or "unknown",
                    "axis": sl.axis,
                    "slice_index": int(sl.index),
                    "template_id": g.template_id,
                    "regions": [
                        {
                            "term": r.term,
                            "box": [int(v) for v in r.box],
                            "box_px": [int(v) for v in r.box_px],
                            "area": int(r.area),
                            "label_id": int(r.label_id or 0),
                        }
                        for r in g.regions
                    ],
                    "window": sl.window,
                    "transform": transform_json,
                    "validation": [],
                },
            }
        )
    return rows


def process_case(
    card: SourceCard,
    adapter: Any,
    ref: CaseRef,
    cfg: ReleaseConfig,
    store: ImageStore,
    use: SourceUse | None = None,
    case_validators: list[Any] | None = None,
) -> CaseResult:
    """Load, convert, box, sample and rule-check one case.  Never raises for bad input."""
    t0 = time.perf_counter()
    res = CaseResult(source=ref.source, case_id=ref.case_id)
    try:
        study = adapter.load(ref)
    except Exception as exc:  # noqa: BLE001 - every failure becomes an error record
        res.errors.append(_error(ref, "load", exc))
        res.seconds = time.perf_counter() - t0
        return res
    res.notes.extend(study.notes)
    policy = use.box_policy if use is not None and use.box_policy is not None else card.box_policy
    try:
        conv = convert(study, card, policy, cfg.slicing)
    except Exception as exc:  # noqa: BLE001
        res.errors.append(_error(ref, "convert", exc))
        res.seconds = time.perf_counter() - t0
        return res
    res.notes.extend(conv.notes)
    if not conv.slices:
        res.errors.append(
            ErrorRecord(
                source=ref.source,
                case_id=ref.case_id,
                stage="convert",
                file=next(iter(ref.paths.values()), None),
                error="no slice with a labelled region of a known term (after the dust threshold)",
                hint="check the card's labels and box_policy.min_pixels, and slicing.min_label_pixels",
            )
        )
    patient = hash_patient(ref.source, ref.patient_id)
    split = assign_split(ref.official_split, patient, cfg)
    mix = task_mix(cfg, use)
    vocab = adapter.vocabulary()  # terms this source can emit (absent-target negatives)
    body_region = study.transform.get("body_region") or card.body_region
    transform = {k: v for k, v in study.transform.items() if k != "body_region"}
    from pipeline.validate.base import ValidationItem  # local: keeps import cheap for adapters

    for sl in conv.slices:
        try:
            png = encode_png(sl.image, cfg.output.png_compress_level)
            _sha, rel = store.put(png)
            rows = rows_for_slice(
                sl,
                ref=ref,
                card=card,
                cfg=cfg,
                mix=mix,
                modality=study.modality,
                body_region=body_region,
                image_rel=rel,
                split=split,
                patient=patient,
                vocabulary=vocab,
                transform=transform,
            )
        except Exception as exc:  # noqa: BLE001
            res.errors.append(_error(ref, "samples", exc))
            continue
        if case_validators and rows:
            from pipeline.validate.stage import apply_rows_policy

            items = [ValidationItem(row=r, image=sl.image, label_slices=sl.label_slices, image_sha=_sha) for r in rows]
            rows, dropped = apply_rows_policy(items, case_validators, cfg.validation)
            for reason, n in dropped.items():
                res.dropped[reason] = res.dropped.get(reason, 0) + n
        if rows:
            res.slices += 1
            res.images.append(rel)
            res.rows.extend(rows)
    res.seconds = time.perf_counter() - t0
    return res


# ---------------------------------------------------------------------------------------------
@dataclass
class PreparedSource:
    use: SourceUse
    card: SourceCard
    adapter: Any
    refs: list[CaseRef]
    error: ErrorRecord | None = None


def resolve_samples_root(cfg: ReleaseConfig, required: list[str] | None = None) -> Path:
    if cfg.samples_root:
        return Path(cfg.samples_root).expanduser()
    from flows.samples import find_samples_root

    return find_samples_root(required)


def prepare_sources(cfg: ReleaseConfig, samples_root: Path | None = None) -> list[PreparedSource]:
    """Load cards, instantiate adapters and discover cases; a broken source becomes an error record."""
    from sources.base import get_adapter, load_card
    from sources.terms import load_release_terms

    from pipeline.validate.registry import check_config

    check_config(cfg.validation)  # unknown validators / bad sections stop the build before any case
    release_terms = load_release_terms(cfg)  # the config's glossary files: a bad one stops the build
    out: list[PreparedSource] = []
    for use in cfg.sources:
        try:
            card = load_card(use.card, release_terms=release_terms)
            root = Path(use.root).expanduser() if use.root else card.resolve_root(samples_root)
            if not root.exists():
                raise ReadError(
                    f"data folder {root} of source {card.name} does not exist",
                    file=str(root),
                    hint="set `root:` for this source in the release config, or MEDREG_SAMPLES",
                )
            adapter = get_adapter(card, root)
            refs = adapter.discover()
            if use.max_cases:
                refs = refs[: use.max_cases]
            out.append(PreparedSource(use, card, adapter, refs))
        except Exception as exc:  # noqa: BLE001
            name = use.card
            err = ErrorRecord(
                source=name,
                case_id="*",
                stage="discover",
                file=getattr(exc, "file", None),
                error=f"{type(exc).__name__}: {exc}",
                hint=getattr(exc, "hint", "") or "check the card and the data folder",
            )
            out.append(PreparedSource(use, None, None, [], err))  # type: ignore[arg-type]
    return out


def build(
    cfg: ReleaseConfig,
    out_dir: str | Path,
    *,
    samples_root: Path | None = None,
    progress: Callable[[CaseResult], None] | None = None,
) -> Path:
    """Build a release in-process (no Prefect).  Returns the release folder."""
    from pipeline.release.shards import write_release
    from pipeline.validate.stage import case_validators_for, release_validation

    out_dir = Path(out_dir)
    if samples_root is None:
        samples_root = resolve_samples_root(cfg)
    store = ImageStore(out_dir / STORE_DIRNAME)
    prepared = prepare_sources(cfg, samples_root)
    validators = case_validators_for(cfg.validation)
    results: list[CaseResult] = []
    for ps in prepared:
        for ref in ps.refs:
            r = process_case(ps.card, ps.adapter, ref, cfg, store, ps.use, validators)
            results.append(r)
            if progress:
                progress(r)
    validated = release_validation(results, cfg.validation, store, out_dir / STORE_DIRNAME / "verdicts")
    release = write_release(cfg, prepared, results, validated, store, out_dir)
    write_run_log(out_dir, cfg, results, validated)
    return release


def write_run_log(out_dir: str | Path, cfg: ReleaseConfig, results: list[CaseResult], validated: Any) -> Path:
    """Per-run observability beside the release (not inside it: timings differ between runs, the
    release does not): per-case seconds, rows, errors and notes; verdicts computed vs cached."""
    import orjson

    from pipeline.core.atomic import write_bytes_atomic

    log = {
        "release": f"{cfg.name}-{cfg.version}",
        "config_sha256": cfg.config_hash(),
        "cases": [
            {"source": r.source, "case_id": r.case_id, "seconds": round(r.seconds, 4), "rows": len(r.rows),
             "slices": r.slices, "errors": [e.one_line() for e in r.errors], "notes": r.notes, "dropped": r.dropped}
            for r in results
        ],
        "verdicts": {"computed": getattr(validated, "computed", 0), "cached": getattr(validated, "cached", 0)},
        "totals": summarise(results),
    }
    path = Path(out_dir) / STORE_DIRNAME / "runs" / f"{cfg.name}-{cfg.version}.last-run.json"
    write_bytes_atomic(path, orjson.dumps(log, option=orjson.OPT_INDENT_2))
    return path


def summarise(results: Iterable[CaseResult]) -> dict[str, Any]:
    c: Counter[str] = Counter()
    for r in results:
        c["cases"] += 1
        c["rows"] += len(r.rows)
        c["errors"] += len(r.errors)
        c["slices"] += r.slices
    return dict(c)
