"""The release config (YAML), validated by pydantic.  ``examples/demo.yaml`` is the reference example."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.card import BoxPolicy
from schemas.yamlio import load_yaml, validation_lines


class SourceUse(BaseModel):
    """One source in a release: a shipped card name or a path to a card YAML, with overrides."""

    model_config = ConfigDict(extra="forbid")

    card: str
    root: str | None = None  # override the card's data folder
    max_cases: int | None = Field(None, ge=1)
    box_policy: BoxPolicy | None = None  # override the card's box policy
    tasks: dict[str, float] | None = None  # override the release task mix for this source
    langs: list[Literal["en", "zh"]] | None = None
    # report-grounded sources: the accepted-translations file to use instead of the card's report.translations
    # (relative to where the build runs, or absolute)
    translations: str | None = None


class SlicingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    axes: list[Literal["axial", "coronal", "sagittal"]] = ["axial"]
    min_spacing_mm: float = Field(10.0, ge=0.0, description="minimum distance between emitted slices")
    max_slices_per_case: int = Field(8, ge=1)
    min_label_pixels: int = Field(20, ge=1, description="a slice is a candidate if a label has this many px")
    min_image_px: int = Field(
        64, ge=1, description="an axis whose display images would be smaller than this (either side) is skipped"
    )


class TaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # samples per slice per language for each task; a fractional part is a probability
    mix: dict[Literal["region_to_text", "text_to_region", "grounded_report"], float] = {
        "region_to_text": 1.0,
        "text_to_region": 1.0,
        "grounded_report": 1.0,
    }
    langs: list[Literal["en", "zh"]] = ["en", "zh"]
    negative_ratio: float = Field(0.05, ge=0.0, le=1.0)
    max_regions_per_sample: int = Field(8, ge=1)
    # where the task prompt goes (docs/language.md, "System prompt"):
    # none (default): rows are human/gpt turns only, "<image>\n" first in the first human turn -- what InternVL's
    #   and MedRegA's training loaders take; the prompt travels in the InternVL meta file as base_prompt
    # inline: the prompt inside the first human turn, "<image>\n" + prompt + " " + question
    # turn: a first {"from": "system"} turn -- only for chat templates that accept a system role
    system_prompt: Literal["none", "inline", "turn"] = "none"
    # region -> text answer for one region: name (the display name alone, as MedRegA's references) or
    # sentence (a sentence naming it, under its own system prompt: needs system_prompt inline or turn)
    region_to_text_answer: Literal["name", "sentence"] = "name"
    # grounded reports of report-grounded sources (slices carrying report sentences): report = the lines are the
    # report's own sentences (meta.text_source "report"); template = the template sentences as for any source;
    # both = one of each (to compare the two, e.g. with `medreg eval`)
    grounded_text: Literal["report", "template", "both"] = "report"

    @model_validator(mode="after")
    def _answer_style_needs_its_prompt(self) -> TaskConfig:
        if self.region_to_text_answer == "sentence" and self.system_prompt == "none":
            raise ValueError(
                "tasks.region_to_text_answer: sentence needs its prompt in the rows: set tasks.system_prompt to "
                "inline or turn (with none the meta file's base_prompt asks for the name alone)"
            )
        return self


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ratios: dict[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}
    keep_official: bool = True

    @field_validator("ratios")
    @classmethod
    def _sum_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or abs(sum(v.values()) - 1.0) > 1e-6 or any(x < 0 for x in v.values()):
            raise ValueError(f"split ratios must be non-negative and sum to 1, got {v}")
        return v


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows_per_shard: int = Field(1000, ge=1)
    png_compress_level: int = Field(1, ge=0, le=9)
    formats: list[Literal["internvl", "llava"]] = ["internvl"]
    report: bool = True
    gallery_size: int = Field(24, ge=0)
    allow_shrink: bool = Field(
        False, description="publish even when a source has no cases or the release lost rows (see max_row_loss)"
    )
    max_row_loss: float = Field(
        0.2, ge=0.0, le=1.0, description="refuse to replace a release that has more than this fraction more rows"
    )


class RunnerConfig(BaseModel):
    """How case tasks run.  ``local``: worker processes on this machine (in-process builds use a process
    pool, Prefect builds a local Dask cluster); ``dask``: an existing Dask cluster at ``address`` (Prefect
    builds only); ``serial``: one process, one case after the other."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "dask", "serial"] = "local"
    max_workers: int | None = Field(None, ge=1, description="worker processes (default: this machine's cores)")
    address: str | None = Field(None, description="dask: the scheduler, e.g. tcp://10.0.0.5:8786")
    cache: bool = Field(True, description="reuse case parts whose key is unchanged (resume, reruns)")
    retries: int = Field(0, ge=0, description="Prefect task retries of a case batch")
    batch_cases: int = Field(64, ge=1, description="at most this many cases per task")
    batch_mb: float = Field(64.0, gt=0, description="... and at most this many MB of input per task")
    validation_batch: int = Field(256, ge=1, description="rows per batch of the release-level validators")

    @model_validator(mode="after")
    def _address_for_dask(self) -> RunnerConfig:
        if self.kind == "dask" and not self.address:
            raise ValueError(
                "runner.kind dask needs runner.address (tcp://HOST:8786); use kind: local for this machine"
            )
        return self


class LicenceFilter(BaseModel):
    """Which sources a release may hold, by their card's licence (pipeline.versions.licences).  Patterns are
    shell globs matched case-insensitively against the licence id (the licence text up to the first space
    or parenthesis, e.g. ``CC0-1.0``) and against the whole licence text.  ``deny`` wins over ``allow``;
    an empty ``allow`` allows everything not denied.  Excluded sources are listed in the manifest and card."""

    model_config = ConfigDict(extra="forbid")

    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)


class DuplicateConfig(BaseModel):
    """Images of different patients that are the same picture (docs/versions.md).  ``same_split``: keep every
    copy, all in one split; ``keep_one``: keep one copy (its rows), drop the others' rows, and still put the
    patients in one split; ``report``: only list them."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["same_split", "keep_one", "report"] = "same_split"
    near_threshold: int = Field(
        4, ge=-1, le=16,
        description="near duplicates: perceptual hashes (imagehash.phash, 64 bits) at most this many bits apart; "
        "-1 = exact duplicates only")


class ReleaseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    seed: int = 0
    samples_root: str | None = None  # default: MEDREG_SAMPLES, ../shared/data, or the download cache
    sources: list[SourceUse] = Field(min_length=1)
    slicing: SlicingConfig = Field(default_factory=SlicingConfig)
    tasks: TaskConfig = Field(default_factory=TaskConfig)
    splits: SplitConfig = Field(default_factory=SplitConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    validation: dict[str, Any] = Field(default_factory=dict)  # schemas.validation.ValidationConfig
    # the release this one follows: a release folder, absolute or relative to the build's output folder
    # (where releases live as OUT/<name>-<version>); see docs/versions.md
    previous: str | None = None
    licences: LicenceFilter = Field(default_factory=LicenceFilter)
    duplicates: DuplicateConfig = Field(default_factory=DuplicateConfig)
    # extra glossary files (same format as pipeline/language/data/glossary/*.yaml), relative to this file
    glossary: list[str] = Field(default_factory=list)
    config_path: str | None = Field(default=None, exclude=True)  # the YAML it was read from (load_config)

    @model_validator(mode="after")
    def _check_validation(self) -> ReleaseConfig:
        if self.validation:
            from schemas.validation import ValidationConfig

            ValidationConfig.model_validate(self.validation)
        return self

    def release_dump(self) -> dict[str, Any]:
        """The config as the release records it: everything but ``runner`` (how a build runs - serial,
        local processes or a cluster - never changes what it builds)."""
        return self.model_dump(mode="json", exclude={"runner"})

    def glossary_paths(self) -> list[Path]:
        """The ``glossary`` files as paths: relative ones are relative to the config file (else the cwd)."""
        base = Path(self.config_path).parent if self.config_path else Path(".")
        return [p if p.is_absolute() else base / p for p in (Path(g).expanduser() for g in self.glossary)]

    def canonical_json(self) -> bytes:
        """Stable serialisation (sorted keys) used for the config hash and the manifest."""
        return orjson.dumps(self.release_dump(), option=orjson.OPT_SORT_KEYS)

    def config_hash(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()


def load_config(path: str | Path) -> ReleaseConfig:
    """Read and validate a release config; errors name the file and the offending key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"release config {path} not found; see examples/demo.yaml for a template")
    data = load_yaml(path, what="release config", name=str(path))
    try:
        cfg = ReleaseConfig.model_validate(data)
        cfg.config_path = str(path)
        return cfg
    except ValidationError as exc:
        lines = [f"{path}: invalid release config:"] + [f"  {line}" for line in validation_lines(exc)]
        raise ValueError("\n".join(lines)) from None
