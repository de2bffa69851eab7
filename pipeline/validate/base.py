"""Validator interface, composition and the keep/flag/drop policy.

A validator sees a list of :class:`ValidationItem` (a row + its image) and returns one
:class:`schemas.records.ValidationResult` per item, in order.  A row may hold several regions; a
validator judges each region and reports the worst one: verdict ``fail`` > ``flag`` > ``pass``,
``reason`` joins the per-region reasons (``"code: text; code: text"``) and ``codes`` lists the stable
short codes (for counting in the manifest).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from schemas.records import ValidationResult
from schemas.validation import Action, Decision, PolicyConfig, ValidationConfig

log = logging.getLogger(__name__)

_SEVERITY = {"pass": 0, "flag": 1, "fail": 2}
_ACTION_SEVERITY = {"keep": 0, "flag": 1, "drop": 2}


@dataclass
class ValidationItem:
    """One row to validate with its pixels.

    ``image`` is the written uint8 image, ``(H, W)`` or ``(H, W, 3)``; ``label_slices`` the display-space
    label arrays when the caller still has them (optional, for validators that want masks).
    """

    row: dict[str, Any]
    image: np.ndarray
    label_slices: list[np.ndarray] = field(default_factory=list)
    image_sha: str | None = None
    # every region of the image (meta-region dicts), when the caller knows them (the case stage does):
    # image-level checks then do not depend on which regions the sampled rows happen to mention
    slice_regions: list[dict[str, Any]] | None = None
    # the float32 grey image, shared by the items of one image (computed once, on first use)
    grey_cache: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.image.ndim not in (2, 3):
            raise ValueError(f"image must be (H,W) or (H,W,3), got shape {self.image.shape}")

    @property
    def meta(self) -> dict[str, Any]:
        return self.row.get("meta", {})

    @property
    def regions(self) -> list[dict[str, Any]]:
        return list(self.meta.get("regions", []))

    @property
    def row_id(self) -> str:
        return str(self.row.get("id", ""))

    def image_digest(self) -> str:
        """sha256 of the pixels (shape + dtype + bytes); computed once."""
        if self.image_sha is None:
            h = hashlib.sha256()
            h.update(f"{self.image.shape}|{self.image.dtype}|".encode())
            h.update(np.ascontiguousarray(self.image).tobytes())
            self.image_sha = h.hexdigest()
        return self.image_sha

    def grey(self) -> np.ndarray:
        """The image as float32 grey (mean over colour channels); computed once per image when the items of
        one image share a ``grey_cache``."""
        cache = self.grey_cache
        if cache is not None and "grey" in cache:
            return cache["grey"]
        img = self.image.astype(np.float32)
        grey = img.mean(axis=2) if img.ndim == 3 else img
        if cache is not None:
            cache["grey"] = grey
        return grey

    @classmethod
    def from_row(cls, row: dict[str, Any], root: str | Path) -> ValidationItem:
        """Load the row's image (``root / row['image']``) with Pillow."""
        from PIL import Image

        with Image.open(Path(root) / row["image"]) as src:
            im: Image.Image = src
            if src.mode not in ("L", "RGB"):
                im = src.convert("RGB" if "A" in src.mode or src.mode in ("P", "CMYK") else "L")
            arr = np.asarray(im, dtype=np.uint8)
        return cls(row=row, image=arr)


@runtime_checkable
class Validator(Protocol):
    """What every validator provides.  ``config_hash`` (optional attribute) enters verdict cache keys."""

    name: str
    version: str

    def validate(self, items: list[ValidationItem]) -> list[ValidationResult]: ...


def result(
    validator: Any,
    verdict: str,
    score: float | None = None,
    reason: str = "",
    codes: Sequence[str] = (),
    **extra: Any,
) -> ValidationResult:
    """Build a ValidationResult for ``validator`` (its name and version)."""
    return ValidationResult(
        validator=validator.name,
        version=validator.version,
        verdict=verdict,
        score=None if score is None else float(score),
        reason=reason,
        codes=list(codes),
        **extra,
    )


def worst(verdicts: Sequence[str]) -> str:
    """The most severe verdict (``fail`` > ``flag`` > ``pass``); ``pass`` for none."""
    return max(verdicts, key=lambda v: _SEVERITY[v], default="pass")


@dataclass
class RegionFinding:
    """One problem found with one region (validators collect these, then :func:`summarise`).
    ``terms``: the structures the finding is about (empty: the row or the whole image)."""

    verdict: str
    code: str
    text: str
    terms: tuple[str, ...] = ()


def summarise(
    validator: Any,
    findings: Sequence[RegionFinding],
    score: float | None,
    ok_reason: str = "",
    **extra: Any,
) -> ValidationResult:
    """Fold per-region findings into one row result: worst verdict, reasons joined, codes listed."""
    bad = [f for f in findings if f.verdict != "pass"]
    if not bad:
        notes = [f"{f.code}: {f.text}" if f.text else f.code for f in findings]
        codes = _unique(f.code for f in findings)
        return result(validator, "pass", score, "; ".join(notes) or ok_reason, codes, **extra)
    bad.sort(key=lambda f: -_SEVERITY[f.verdict])  # stable: fails first, then flags, in region order
    reason = "; ".join(f"{f.code}: {f.text}" for f in bad)
    return result(validator, worst([f.verdict for f in bad]), score, reason, _unique(f.code for f in bad), **extra)


def _unique(codes: Any) -> list[str]:
    out: list[str] = []
    for c in codes:
        if c not in out:
            out.append(c)
    return out


def run_validators(
    items: list[ValidationItem],
    validators: Sequence[Validator],
    cache: Any | None = None,
) -> list[list[ValidationResult]]:
    """Run every validator on every item: ``out[i][j]`` is validator ``j``'s result for item ``i``.

    With a :class:`pipeline.validate.cache.VerdictCache`, cached verdicts are reused and only the missing
    ones are computed (and stored).  A validator with ``needs_fit`` true (stats, not yet fitted) is first
    fitted on all ``items``, so its verdicts do not depend on which ones were cached.  A validator that
    raises does not stop the run: its items get a ``flag`` with reason ``validator_error: ...`` (never
    cached).
    """
    out: list[list[ValidationResult]] = [[None] * len(validators) for _ in items]  # type: ignore[list-item]
    for j, v in enumerate(validators):
        if getattr(v, "needs_fit", False):  # e.g. stats: fit on ALL items before any cache lookup
            v.fit(items)  # type: ignore[attr-defined]
        todo = list(range(len(items)))
        keys: list[str | None] = [None] * len(items)
        if cache is not None:
            todo = []
            for i, it in enumerate(items):
                keys[i] = cache.key(v, it)
                hit = cache.get(keys[i])
                if hit is None:
                    todo.append(i)
                else:
                    out[i][j] = hit
        if not todo:
            continue
        sub = [items[i] for i in todo]
        try:
            res = v.validate(sub)
            if len(res) != len(sub):
                raise RuntimeError(f"returned {len(res)} results for {len(sub)} items")
        except Exception as exc:  # failure of a validator is per stage, not fatal
            log.exception("validator %s failed on %d items", getattr(v, "name", v), len(sub))
            for i in todo:
                reason = f"validator_error: {type(exc).__name__}: {exc}"
                out[i][j] = result(v, "flag", None, reason, ["validator_error"])
            continue
        for i, r in zip(todo, res, strict=True):
            out[i][j] = r
            if cache is not None and keys[i] is not None and not getattr(r, "transient", False):
                cache.put(keys[i], r)  # transient results (e.g. a model server error) are recomputed next run
    return out


def apply_policy(results: Sequence[ValidationResult], policy: PolicyConfig | ValidationConfig) -> Decision:
    """One row's results -> keep / flag / drop.  The most severe action wins; reasons and codes come
    from every result whose action is not ``keep``."""
    if isinstance(policy, ValidationConfig):
        policy = policy.policy
    action: Action = "keep"
    reasons: list[str] = []
    codes: list[str] = []
    for r in results:
        a = policy.action(r.validator, r.verdict)
        if _ACTION_SEVERITY[a] > _ACTION_SEVERITY[action]:
            action = a
        if a != "keep":
            reasons.append(f"{r.validator}: {r.reason}" if r.reason else r.validator)
            rc = getattr(r, "codes", None) or [r.verdict]
            codes.extend(f"{r.validator}:{c}" for c in rc)
    return Decision(action=action, reasons=reasons, codes=codes)


def build_validators(
    config: ValidationConfig, *, glossary: Any | None = None, level: Literal["case", "release"] | None = None
) -> list[Validator]:
    """The validators named in ``config.validators``, in that order, each configured from its own section
    (``level``: only the ``case`` or ``release`` ones).  See :mod:`pipeline.validate.registry`.

    Model-backed validators are constructed lazily (the model loads on first ``validate``), so building
    is cheap; a missing model path raises here (a config error, not a per-row problem).
    """
    from pipeline.validate.registry import build_validators as build

    return build(config, glossary=glossary, level=level)


def validation_meta(results: Sequence[ValidationResult]) -> list[dict[str, Any]]:
    """Results as ``row['meta']['validation']`` entries (schemas.records.ValidationMeta: fixed keys, no nulls)."""
    return [
        {
            "validator": r.validator,
            "version": r.version,
            "verdict": r.verdict,
            "score": 0.0 if r.score is None else float(r.score),
            "reason": r.reason,
            "codes": ",".join(getattr(r, "codes", None) or []),
        }
        for r in results
    ]


def result_from_meta(entry: dict[str, Any]) -> ValidationResult:
    """Inverse of :func:`validation_meta` for one stored entry (codes back to a list)."""
    d = dict(entry)
    codes = d.pop("codes", "")
    if isinstance(codes, str):
        codes = [c for c in codes.split(",") if c]
    return ValidationResult.model_validate({**d, "codes": codes})
