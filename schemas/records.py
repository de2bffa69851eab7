"""Contracts for what the release contains: rows (InternVL chat + meta), error records, manifest."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TaskName = Literal["region_to_text", "text_to_region", "grounded_report"]
Lang = Literal["en", "zh"]
Verdict = Literal["pass", "flag", "fail"]


class RegionMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    term: str  # canonical term id (glossary key), e.g. "kidney_right"
    box: list[int] = Field(min_length=4, max_length=4)  # normalised 0..999
    box_px: list[int] = Field(min_length=4, max_length=4)  # inclusive pixel indices
    area: int | None = None
    label_id: int | None = None

    @field_validator("box")
    @classmethod
    def _norm_range(cls, v: list[int]) -> list[int]:
        if not all(0 <= x <= 999 for x in v) or not (v[0] < v[2] and v[1] < v[3]):
            raise ValueError(f"normalised box {v} must satisfy 0<=x1<x2<=999, 0<=y1<y2<=999")
        return v


class ValidationResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    validator: str
    version: str
    verdict: Verdict
    score: float | None = None
    reason: str = ""


class SampleMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    task: TaskName
    subtask: str | None = None
    lang: Lang
    source: str
    licence: str
    case_id: str
    patient_id: str  # hashed
    split: str
    modality: str
    body_region: str | None = None
    axis: str
    slice_index: int
    position_mm: float | None = None
    template_id: str
    regions: list[RegionMeta]
    transform: dict[str, Any] = Field(default_factory=dict)
    validation: list[ValidationResult] = Field(default_factory=list)


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: Literal["human", "gpt", "system"] = Field(alias="from")
    value: str


class Row(BaseModel):
    """One InternVL chat row."""

    model_config = ConfigDict(extra="forbid")

    id: str
    image: str  # relative path inside the release, images/ab/<sha256>.png
    width: int
    height: int
    conversations: list[Turn]
    meta: SampleMeta


class ErrorRecord(BaseModel):
    """A case that could not be read or converted. Never fatal to the run."""

    model_config = ConfigDict(extra="forbid")

    source: str
    case_id: str
    stage: str  # discover / load / convert / samples / validate / write
    file: str | None = None
    error: str  # what was wrong
    hint: str = ""  # what to do about it

    def one_line(self) -> str:
        where = f" [{self.file}]" if self.file else ""
        hint = f" -> {self.hint}" if self.hint else ""
        return f"{self.source}/{self.case_id} ({self.stage}){where}: {self.error}{hint}"


class ShardEntry(BaseModel):
    path: str
    split: str
    task: str
    lang: str
    lines: int
    sha256: str
    bytes: int


class ImageEntry(BaseModel):
    path: str
    sha256: str
    bytes: int


class SourceEntry(BaseModel):
    name: str
    title: str
    licence: str
    modality: str
    cases: int
    errors: int


class Manifest(BaseModel):
    name: str
    version: str
    config: dict[str, Any]
    config_sha256: str
    code_version: str
    sources: list[SourceEntry]
    counts: dict[str, Any]
    shards: list[ShardEntry]
    images: list[ImageEntry]
    files: dict[str, str] = Field(default_factory=dict)  # other files (README.md, report) -> sha256
    errors: list[ErrorRecord] = Field(default_factory=list)
    dropped: dict[str, int] = Field(default_factory=dict)  # reason -> count
