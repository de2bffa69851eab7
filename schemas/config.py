"""The release config (YAML), validated by pydantic.  ``examples/demo.yaml`` is the reference example."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.card import BoxPolicy


class SourceUse(BaseModel):
    """One source in a release: a shipped card name or a path to a card YAML, with overrides."""

    model_config = ConfigDict(extra="forbid")

    card: str
    root: str | None = None  # override the card's data folder
    max_cases: int | None = Field(None, ge=1)
    box_policy: BoxPolicy | None = None  # override the card's box policy
    tasks: dict[str, float] | None = None  # override the release task mix for this source
    langs: list[Literal["en", "zh"]] | None = None


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
    # turn: a first {"from": "system"} turn (InternVL 2.5+); inline: MedRegA's layout, the system prompt in
    # the human turn before <image>; none: no system prompt (older InternVL chat templates)
    system_prompt: Literal["turn", "inline", "none"] = "turn"


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
    batch_cases: int = Field(32, ge=1, description="at most this many cases per task")
    batch_mb: float = Field(64.0, gt=0, description="... and at most this many MB of input per task")
    validation_batch: int = Field(256, ge=1, description="rows per batch of the release-level validators")

    @model_validator(mode="after")
    def _address_for_dask(self) -> RunnerConfig:
        if self.kind == "dask" and not self.address:
            raise ValueError("runner.kind dask needs runner.address (tcp://HOST:8786); use kind: local for this machine")
        return self


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
    # extra glossary files (same format as pipeline/language/data/glossary/*.yaml), relative to this file
    glossary: list[str] = Field(default_factory=list)
    config_path: str | None = Field(default=None, exclude=True)  # the YAML it was read from (load_config)

    @model_validator(mode="after")
    def _check_validation(self) -> ReleaseConfig:
        if self.validation:
            from schemas.validation import ValidationConfig

            ValidationConfig.model_validate(self.validation)
        return self

    def glossary_paths(self) -> list[Path]:
        """The ``glossary`` files as paths: relative ones are relative to the config file (else the cwd)."""
        base = Path(self.config_path).parent if self.config_path else Path(".")
        return [p if p.is_absolute() else base / p for p in (Path(g).expanduser() for g in self.glossary)]

    def canonical_json(self) -> bytes:
        """Stable serialisation (sorted keys) used for the config hash and the manifest."""
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)

    def config_hash(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()


def load_config(path: str | Path) -> ReleaseConfig:
    """Read and validate a release config; errors name the file and the offending key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"release config {path} not found; see examples/demo.yaml for a template")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    try:
        cfg = ReleaseConfig.model_validate(data)
        cfg.config_path = str(path)
        return cfg
    except ValidationError as exc:
        lines = [f"{path}: invalid release config:"]
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise ValueError("\n".join(lines)) from None
