"""Configuration of the validation stage (which validators run, their thresholds, the keep/flag/drop
policy) and the per-row decision it produces.  docs/validation.md explains every field."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

Action = Literal["keep", "flag", "drop"]
VerdictName = Literal["pass", "flag", "fail"]


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Fields that never change a verdict (speed, placement, transport); left out of config_hash().
    _runtime_fields: ClassVar[frozenset[str]] = frozenset()

    def config_hash(self) -> str:
        """sha256 of the fields that can change a verdict (runtime-only fields excluded)."""
        data = self.model_dump(mode="json", exclude=set(self._runtime_fields))
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RulesConfig(_Cfg):
    """Cheap CPU checks run on every sample."""

    min_side_px: int = Field(3, ge=1, description="a box narrower or shorter than this (pixels) is too small")
    min_area_px: int = Field(9, ge=0, description="a box with fewer pixels than this is too small")
    too_small_verdict: Literal["flag", "fail"] = "fail"
    blank_std: float = Field(1.0, ge=0, description="std of the uint8 pixels inside the box below this = blank")
    box_tolerance: int = Field(
        2, ge=0, description="max difference (0..999 units) between meta box and normalise_box(box_px)"
    )
    check_text_boxes: bool = Field(True, description="boxes written in the conversation must be meta boxes")
    missing_text_box_verdict: Literal["pass", "flag"] = Field(
        "flag", description="verdict when a region box of the row is not written in its conversation"
    )
    laterality_pair_axes: list[str] = Field(
        default_factory=lambda: ["axial", "coronal", "2d"],
        description="axes on which a *_right structure must lie image-left of its *_left partner",
    )
    laterality_centre_modalities: list[str] = Field(default_factory=lambda: ["CT", "MR", "PET"])
    laterality_centre_axes: list[str] = Field(default_factory=lambda: ["axial", "coronal"])
    centre_margin: float = Field(
        0.05, ge=0, le=0.5, description="fraction of the width a *_right centre may lie right of the image centre"
    )
    centre_verdict: Literal["flag", "fail"] = "flag"
    text_laterality_axes: list[str] = Field(
        default_factory=lambda: ["2d", "axial", "coronal"],
        description="axes on which a report sentence's side word is checked against its boxes (patient right is "
        "image left)",
    )
    text_laterality_modalities: list[str] = Field(default_factory=lambda: ["XR", "CT", "MR", "PET"])
    text_laterality_margin: float = Field(
        0.05, ge=0, le=0.5, description="a box centre within this fraction of the width of the midline is not checked"
    )
    orientation: bool = Field(
        True, description="check the anterior/posterior and superior/inferior order of known structures"
    )
    orientation_facts: str | None = Field(
        None, description="order facts file (default: pipeline/language/data/anatomy/orientation.yaml)"
    )
    orientation_margin: float = Field(
        0.02, ge=0, le=0.5, description="a pair is inverted when its centres are out of order by more than this x size"
    )
    orientation_fail_fraction: float = Field(
        0.5, gt=0, le=1, description="fail when at least this share of compared pairs is inverted (fewer: flag)"
    )
    orientation_2d_axis: Literal["axial", "coronal", "sagittal", "none"] = Field(
        "axial", description="2-D CT/MR/PET images (axis '2d') are checked as this view; 'none' skips them"
    )


GroupKey = Literal["modality", "axis", "term", "source", "body_region"]
_STATS_GROUP_BY: tuple[GroupKey, ...] = ("modality", "axis", "body_region", "term")
StatsFeature = Literal["log_area", "log_aspect", "cx", "cy", "intensity"]
_STATS_FEATURES: tuple[StatsFeature, ...] = ("log_area", "log_aspect", "cx", "cy", "intensity")


class StatsConfig(_Cfg):
    """Robust (median/MAD) z-scores of box features per group, fitted on the release's own rows."""

    min_samples: int = Field(5, ge=2, description="fewer distinct regions in a group -> pass ('too few')")
    z_flag: float = Field(4.0, gt=0, description="max robust z above this -> flag")
    z_fail: float | None = Field(None, description="max robust z above this -> fail (None: never fail)")
    group_by: list[GroupKey] = Field(
        default_factory=lambda: list(_STATS_GROUP_BY),
        description="regions are compared within these groups; body_region keeps a neck-level spinal cord "
        "out of the abdominal slices' statistics",
    )
    features: list[StatsFeature] = Field(default_factory=lambda: list(_STATS_FEATURES))


class ClipConfig(_Cfg):
    """Embedding judge: crop of each box vs text prompts of the true term and its alternatives."""

    _runtime_fields: ClassVar[frozenset[str]] = frozenset({"batch_size", "device", "preprocess_workers"})

    model_path: str | None = Field(None, description="local directory of a transformers CLIP-style checkpoint")
    prompt: str = "a {modality} image of the {name}"
    lang: Literal["en", "zh"] = "en"
    top_k: int = Field(1, ge=1, description="pass if the true term ranks within the top k")
    crop_margin: float = Field(0.1, ge=0, description="crop margin as a fraction of the box size")
    margin_px_min: int = 2
    max_alternatives: int = Field(16, ge=1)
    alternatives: Literal["glossary", "batch", "glossary+batch"] = "glossary+batch"
    fail_below: float | None = Field(None, description="softmax prob of the true term below this -> fail")
    batch_size: int = Field(64, ge=1)
    preprocess_workers: int = Field(4, ge=1, description="threads preparing crop batches ahead of the model")
    device: Literal["auto", "cuda", "cpu"] = "auto"
    fast_preprocess: bool = Field(
        True,
        description="resize/normalise crops in torch on the judge's device (checked against the image "
        "processor at load, within one grey level); false: the image processor itself (reference path)",
    )


GroundingTask = Literal["text_to_region", "region_to_text"]
_GROUNDING_TASKS: tuple[GroundingTask, ...] = ("text_to_region", "region_to_text")


class GroundingConfig(_Cfg):
    """Grounding judge: ask a VLM the text->region and region->text questions."""

    _runtime_fields: ClassVar[frozenset[str]] = frozenset(
        {"base_url", "api_key", "api_key_env", "concurrency", "timeout_s", "max_retries", "backoff_s",
         "backoff_max_s", "cache_dir", "batch_size", "device"}
    )

    backend: Literal["openai", "transformers"] = "openai"
    # openai-compatible server (vLLM, SGLang, LMDeploy, TGI, a hosted API)
    base_url: str | None = Field(None, description="e.g. http://gpu-host:8000/v1; env OPENAI_BASE_URL if unset")
    model: str = Field("medrega", description="served model name (vllm serve ... --served-model-name)")
    api_key: SecretStr | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    # local transformers model
    model_path: str | None = None
    trust_remote_code: bool = False
    batch_size: int = Field(8, ge=1)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    # what to ask and how to score
    tasks: list[GroundingTask] = Field(default_factory=lambda: list(_GROUNDING_TASKS))
    lang: Literal["en", "zh"] = "en"
    t2r_prompt: str = "Please output the bounding box of the <ref>{name}</ref> in this {modality} image."
    r2t_prompt: str = (
        "What is the anatomical structure in the region <box>{boxes}</box> of this {modality} image? "
        "Answer with its name only."
    )
    max_terms_per_row: int = Field(2, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = 0.0
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="extra request fields for the openai backend, e.g. {'skip_special_tokens': false} on vLLM",
    )
    iou_pass: float = Field(0.5, ge=0, le=1)
    iou_fail: float | None = Field(None, description="IoU score below this -> fail (None: flag only)")
    cache_dir: str | None = Field(None, description="answer cache directory (a rerun asks nothing twice)")


_DEFAULT_ACTIONS: dict[VerdictName, Action] = {"pass": "keep", "flag": "flag", "fail": "drop"}


class PolicyConfig(_Cfg):
    """Verdict -> action.  The most severe action over all validators wins (drop > flag > keep)."""

    default: dict[VerdictName, Action] = Field(default_factory=lambda: dict(_DEFAULT_ACTIONS))
    per_validator: dict[str, dict[VerdictName, Action]] = Field(
        default_factory=dict, description="overrides, e.g. {'clip': {'fail': 'flag'}}"
    )

    def action(self, validator: str, verdict: VerdictName) -> Action:
        over = self.per_validator.get(validator, {})
        return over.get(verdict, self.default.get(verdict, "keep"))


class ValidationConfig(_Cfg):
    """The validation stage of a release config.

    ``validators`` names registered validators (pipeline.validate.registry: the built-ins rules, stats, clip,
    grounding and any installed through the ``medreg.validators`` entry point group).  The built-ins'
    sections are typed fields here; a plugin's section is an extra key named like the validator
    (``my_check: {...}``), validated by the plugin's own config model when the build starts.
    """

    model_config = ConfigDict(extra="allow")

    validators: list[str] = Field(default_factory=lambda: ["rules", "stats"])
    rules: RulesConfig = Field(default_factory=RulesConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    grounding: GroundingConfig = Field(default_factory=GroundingConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    cache_dir: str | None = Field(None, description="verdict cache directory (None: no cache)")

    @field_validator("validators")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"validator name {name!r} must be snake_case")
        dupes = sorted({n for n in v if v.count(n) > 1})
        if dupes:
            raise ValueError(f"validators listed twice: {dupes}")
        return v

    @model_validator(mode="after")
    def _plugin_sections(self) -> ValidationConfig:
        known = [*type(self).model_fields, *self.validators]
        for key, value in (self.model_extra or {}).items():
            if key not in self.validators:
                guess = difflib.get_close_matches(key, known, n=1)
                raise ValueError(
                    f"validation.{key} is neither a built-in section nor a validator named in validation.validators"
                    + (f" (did you mean {guess[0]!r}?)" if guess else "")
                )
            if not isinstance(value, dict):
                raise ValueError(f"validation.{key} must be a mapping (the {key} validator's settings)")
        return self


class Decision(BaseModel):
    """What happens to one row: keep, keep-but-flag, or drop; with the reasons (``validator: reason``)."""

    action: Action
    reasons: list[str] = Field(default_factory=list)
    codes: list[str] = Field(default_factory=list)  # "validator:code" (stable, countable: manifest.dropped)
