"""One case, from its files to a part in the store: load -> convert -> regions -> samples -> case rules.

:func:`process_case` does the work in memory and never raises for bad input (every failure of a stage is
an :class:`~schemas.records.ErrorRecord`); :func:`run_job` writes its rows to the case's part in the
store (:mod:`pipeline.release.store`) and returns only the small :class:`~schemas.records.CaseSummary`;
:func:`run_batch` is one executor task.  The driver (:mod:`pipeline.release.driver`) calls them.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.environment import environment_failure, is_environment_error
from pipeline.core.ids import derived_rng, hash_patient, stable_id, unit_interval
from pipeline.core.paths import relative_to_root, scrub_paths
from pipeline.core.types import CaseRef, DisplaySlice
from pipeline.ingest.convert import convert
from pipeline.ingest.guard import load_study
from pipeline.ingest.readers import ReadError
from pipeline.language.report_text import slice_report
from pipeline.language.tasks import SliceContext, TaskMix, generate
from pipeline.release.images import ImageStore, encode_png
from pipeline.release.plan import CaseJob, hash_inputs
from pipeline.release.store import Store
from pipeline.versions.duplicates import image_fingerprint
from schemas.card import SourceCard
from schemas.config import ReleaseConfig, SourceUse
from schemas.records import CaseSummary, ErrorRecord, ImageInfo


@dataclass
class CaseResult:
    """What one case contributes: rows (InternVL dicts), their images (in the store), errors, counts."""

    source: str
    case_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    images: list[ImageInfo] = field(default_factory=list)  # images of the kept rows, in the image store
    errors: list[ErrorRecord] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    features: list[dict[str, Any]] = field(default_factory=list)  # compact region records (stats)
    patient: str = ""
    split: str = ""
    slices: int = 0
    seconds: float = 0.0

    def count_drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


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
    mix: dict[str, float] = {str(k): v for k, v in cfg.tasks.mix.items()}
    if use is not None and use.tasks is not None:
        mix = dict(use.tasks)
    langs: list[str] = [str(x) for x in (use.langs if use is not None and use.langs else cfg.tasks.langs)]
    return TaskMix(
        tasks=mix,
        langs=langs,
        negative_ratio=cfg.tasks.negative_ratio,
        max_regions_per_sample=cfg.tasks.max_regions_per_sample,
        system_prompt=cfg.tasks.system_prompt,
        region_to_text_answer=cfg.tasks.region_to_text_answer,
        grounded_text=cfg.tasks.grounded_text,
    )




def _relative(path: str | None, root: Path | None) -> str | None:
    """A path as the user knows it: relative to the source's data folder, else the file name only (absolute
    build-machine paths and folders outside the data never reach an output)."""
    if not path:
        return path
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    if root is not None:
        rel = relative_to_root(p, root)  # lexically first: a symlink is named where it lies, not by its target
        if rel is not None:
            return rel
    return p.name


def _scrub(text: str, root: Path | None) -> str:
    """A message without absolute paths: those in the data folder become relative, any other is replaced
    (pipeline.core.paths.scrub_paths)."""
    if root is not None:
        for prefix in {str(Path(root)), str(Path(root).resolve())}:
            text = text.replace(prefix.rstrip("/") + "/", "")
    return scrub_paths(text, root)


def case_error(ref: CaseRef, stage: str, exc: BaseException, root: Path | None = None) -> ErrorRecord:
    """The error record of a failed case stage (environment failures are re-raised, never recorded)."""
    if is_environment_error(exc):
        raise exc
    if isinstance(exc, ReadError):
        return ErrorRecord(source=ref.source, case_id=ref.case_id, stage=stage, file=_relative(exc.file, root),
                           error=_scrub(str(exc), root), hint=_scrub(exc.hint, root))
    first_file = next(iter(ref.paths.values()), None)
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return ErrorRecord(
        source=ref.source,
        case_id=ref.case_id,
        stage=stage,
        file=_relative(first_file, root),
        error=_scrub(f"{type(exc).__name__}: {exc}{where}", root),
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
    dropped: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    h, w = sl.image.shape[:2]
    present = {r.term for r in sl.regions}
    if body_region == "auto":  # where the bulk of the labelled mass lies (issue 12 A5), not a vote of names
        from pipeline.language.body_region import body_region_by_mass

        body_region = body_region_by_mass((r.term, r.area) for r in sl.regions)
    ctx = SliceContext(
        modality=modality,
        body_region=body_region,
        axis=sl.axis,
        width=w,
        height=h,
        regions=sl.regions,
        candidate_absent_terms=[t for t in vocabulary if t not in present],
        exhaustive_findings=card.exhaustive_findings,
        report=slice_report(sl.report),
    )
    rng = derived_rng(cfg.seed, "samples", ref.source, ref.case_id, sl.axis, sl.index)
    transform_json = orjson.dumps({**transform, "position_mm": sl.position_mm}, option=orjson.OPT_SORT_KEYS).decode()
    rows = []
    for g in generate(ctx, mix, rng, dropped=dropped):
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
                    "text_source": g.text_source,
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


def _load_and_convert(card: SourceCard, adapter: Any, ref: CaseRef, cfg: ReleaseConfig, use: SourceUse | None,
                      res: CaseResult) -> tuple[Any, Any] | None:
    root = getattr(adapter, "root", None)
    try:
        study = load_study(adapter, ref)  # symlinks out of the data folder refused; messages without abs paths
    except Exception as exc:  # every failure of bad input becomes an error record
        res.errors.append(case_error(ref, "load", exc, root))
        return None
    res.notes.extend(_scrub(n, root) for n in study.notes)
    policy = use.box_policy if use is not None and use.box_policy is not None else card.box_policy
    try:
        conv = convert(study, card, policy, cfg.slicing)
    except Exception as exc:
        res.errors.append(case_error(ref, "convert", exc, root))
        return None
    res.notes.extend(_scrub(n, root) for n in conv.notes)
    for reason, n in sorted(conv.dropped.items()):
        res.count_drop(reason, n)
    if not conv.slices:
        res.errors.append(
            ErrorRecord(
                source=ref.source,
                case_id=ref.case_id,
                stage="convert",
                file=_relative(next(iter(ref.paths.values()), None), root),
                error="no slice with a labelled region of a known term (after the dust threshold)",
                hint="check the card's labels and box_policy.min_pixels, and slicing.min_label_pixels",
            )
        )
    return study, conv


def process_case(
    card: SourceCard,
    adapter: Any,
    ref: CaseRef,
    cfg: ReleaseConfig,
    store: ImageStore,
    use: SourceUse | None = None,
    case_validators: list[Any] | None = None,
    features: bool = False,
) -> CaseResult:
    """Load, convert, box, sample and rule-check one case.  Never raises for bad input; raises
    :class:`pipeline.core.environment.EnvironmentFailure`-worthy ``OSError`` (disk full, I/O) unchanged.
    ``features``: also compute the compact per-region records the release-level stats validator fits on."""
    t0 = time.perf_counter()
    res = CaseResult(source=ref.source, case_id=ref.case_id)
    res.patient = hash_patient(ref.source, ref.patient_id)
    res.split = assign_split(ref.official_split, res.patient, cfg)
    loaded = _load_and_convert(card, adapter, ref, cfg, use, res)
    if loaded is None:
        res.seconds = time.perf_counter() - t0
        return res
    study, conv = loaded
    mix = task_mix(cfg, use)
    vocab = adapter.vocabulary()  # terms this source can emit (absent-target negatives)
    body_region = study.transform.get("body_region") or card.body_region
    transform = {k: v for k, v in study.transform.items() if k != "body_region"}
    rules = _region_rules(case_validators, cfg)
    for raw in conv.slices:
        sl = _screen(raw, rules, study.modality, res)
        if sl is None:
            continue
        try:
            png = encode_png(sl.image, cfg.output.png_compress_level)
            sha, rel = store.put(png)
            rows = rows_for_slice(
                sl, ref=ref, card=card, cfg=cfg, mix=mix, modality=study.modality, body_region=body_region,
                image_rel=rel, split=res.split, patient=res.patient, vocabulary=vocab, transform=transform,
                dropped=res.dropped,
            )
        except Exception as exc:
            res.errors.append(case_error(ref, "samples", exc, getattr(adapter, "root", None)))
            continue
        rows = _case_validation(rows, sl, sha, case_validators, cfg, res)
        _count_unused(sl, rows, mix.max_regions_per_sample, res)
        if rows:
            res.slices += 1
            h, w = sl.image.shape[:2]
            pixel_sha, phash = image_fingerprint(sl.image)  # duplicate detection (pipeline.versions.duplicates)
            res.images.append(ImageInfo(rel=rel, width=int(w), height=int(h), axis=sl.axis, slice_index=int(sl.index),
                                        pixel_sha256=pixel_sha, phash=phash))
            res.rows.extend(rows)
            if features:
                res.features.extend(_region_records(rows, sl, sha))
    res.seconds = time.perf_counter() - t0
    return res


def _region_rules(validators: list[Any] | None, cfg: ReleaseConfig) -> Any:
    """The rules validator, when the policy drops what it fails (then failing regions are removed before
    any sentence is written, instead of dropping whole rows)."""
    from pipeline.validate.stage import validation_config

    rules = next((v for v in validators or [] if hasattr(v, "check_regions")), None)
    if rules is None or validation_config(cfg.validation).policy.action(rules.name, "fail") != "drop":
        return None
    return rules


def _screen(sl: DisplaySlice, rules: Any, modality: str, res: CaseResult) -> DisplaySlice | None:
    """The slice without its failing regions (each counted by its first failing rule), or None when the
    whole image fails (orientation) or no region is left."""
    if rules is None or not sl.regions:
        return sl
    per, image_level = rules.check_regions(sl.image, _slice_regions(sl), axis=sl.axis, modality=modality)
    bad = [f for f in image_level if f.verdict == "fail"]
    if bad:
        for f in bad:
            res.count_drop(f"slice:rules:{f.code}")
        res.count_drop("region:slice_failed", len(sl.regions))
        res.notes.append(f"{sl.axis} slice {sl.index} not written: " + "; ".join(f"{f.code}: {f.text}" for f in bad))
        return None
    keep = []
    for region, findings in zip(sl.regions, per, strict=True):
        fails = [f for f in findings if f.verdict == "fail"]
        if fails:
            res.count_drop(f"region:rules:{fails[0].code}")
        else:
            keep.append(region)
    if not keep:
        res.count_drop("slice:no_region_left")
        return None
    return sl if len(keep) == len(sl.regions) else replace(sl, regions=keep)


def _count_unused(sl: DisplaySlice, rows: list[dict[str, Any]], cap: int, res: CaseResult) -> None:
    """Regions of a written slice that no kept row mentions, by reason: ``over_cap`` (the term has more
    boxes than tasks.max_regions_per_sample, so detection and report rows cannot hold it) or ``unused``
    (the task mix drew no row for it)."""
    used = {(r["term"], tuple(r["box"])) for row in rows for r in row["meta"]["regions"]}
    per_term = Counter(r.term for r in sl.regions)
    for r in sl.regions:
        if (r.term, tuple(int(v) for v in r.box)) not in used:
            res.count_drop("region:over_cap" if per_term[r.term] > cap else "region:unused")


def _case_validation(rows: list[dict[str, Any]], sl: DisplaySlice, sha: str, validators: list[Any] | None,
                     cfg: ReleaseConfig, res: CaseResult) -> list[dict[str, Any]]:
    if not validators or not rows:
        return rows
    from pipeline.validate.base import ValidationItem
    from pipeline.validate.stage import apply_rows_policy

    every = _slice_regions(sl)  # image-level rules see the whole slice, not only what the rows sampled
    items = [
        ValidationItem(row=r, image=sl.image, label_slices=sl.label_slices, image_sha=sha, slice_regions=every)
        for r in rows
    ]
    kept, dropped = apply_rows_policy(items, validators, cfg.validation)
    for reason, n in dropped.items():
        res.count_drop(f"row:{reason}", n)
    return kept


def _slice_regions(sl: DisplaySlice) -> list[dict[str, Any]]:
    """Every region of a display slice, as meta-region dicts."""
    return [
        {"term": r.term, "box": [int(v) for v in r.box], "box_px": [int(v) for v in r.box_px], "area": int(r.area),
         "label_id": int(r.label_id or 0)}
        for r in sl.regions
    ]  # fmt: skip


def _region_records(rows: list[dict[str, Any]], sl: DisplaySlice, sha: str) -> list[dict[str, Any]]:
    """Stats feature records of every region of one slice with rows (one grey conversion): the population
    the stats validator compares rows with does not depend on which regions the rows happen to sample."""
    from pipeline.validate.base import ValidationItem
    from pipeline.validate.stats import region_features

    regions = _slice_regions(sl)
    if not regions:
        return []
    probe = {**rows[0], "meta": {**rows[0]["meta"], "regions": regions}}
    return region_features(ValidationItem(row=probe, image=sl.image, image_sha=sha))


# ----------------------------------------------------------------------------------------------- jobs
@lru_cache(maxsize=8)
def _validators_for(validation_json: str) -> list[Any]:
    from pipeline.validate.stage import case_validators_for

    return case_validators_for(orjson.loads(validation_json))


def _uses_stats(cfg: ReleaseConfig) -> bool:
    from pipeline.validate.stage import validation_config

    return "stats" in validation_config(cfg.validation).validators


def run_job(job: CaseJob, cfg: ReleaseConfig, store_root: str) -> CaseSummary:
    """Build one case into its part in the store and return the part's summary (no rows).
    A full disk or an I/O error raises :class:`EnvironmentFailure`: that is never a case error."""
    store = Store(store_root)
    fingerprints: list[list[Any]] = []
    if job.key is None:  # a new or changed input file: hash here, in parallel with the other cases
        key, fingerprints = hash_inputs(job, cfg)
        job = job.with_key(key)
        if cfg.runner.cache and store.has_part(key):
            found = store.read_summary(key)
            if store.images_present(found):
                return found.model_copy(update={"fingerprints": fingerprints, "reused": True})
    assert job.key is not None
    validators = _validators_for(orjson.dumps(cfg.validation, option=orjson.OPT_SORT_KEYS).decode())
    try:
        res = process_case(job.card, job.adapter, job.ref, cfg, store.images, job.use, validators,
                           features=_uses_stats(cfg))
        res.rows.sort(key=lambda r: (r["meta"]["axis"], r["meta"]["slice_index"], r["id"]))
        groups: Counter[str] = Counter(f"{m['split']}/{m['task']}/{m['lang']}" for m in (r["meta"] for r in res.rows))
        summary = CaseSummary(
            source=res.source, case_id=res.case_id, key=job.key, patient=res.patient, split=res.split,
            rows=len(res.rows), slices=res.slices, groups=dict(sorted(groups.items())), images=res.images,
            errors=res.errors, notes=res.notes, dropped=dict(sorted(res.dropped.items())),
            seconds=round(res.seconds, 4),
        )
        store.write_part(summary, res.rows, res.features)
        summary.fingerprints = fingerprints
    except OSError as exc:
        if is_environment_error(exc):
            raise environment_failure(exc, store_root) from exc
        raise
    return summary


def run_batch(batch: list[CaseJob], cfg: ReleaseConfig, store_root: str) -> list[CaseSummary]:
    """One executor task: several small cases (or one large one), built one after the other."""
    return [run_job(job, cfg, store_root) for job in batch]
