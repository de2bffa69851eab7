"""Contracts for what the release contains: rows (InternVL chat + meta), error records, manifest."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TaskName = Literal["region_to_text", "text_to_region", "grounded_report"]
Lang = Literal["en", "zh"]
Verdict = Literal["pass", "flag", "fail"]
TextSource = Literal["template", "report"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RegionMeta(_Strict):
    """One box a row refers to."""

    term: str  # canonical term id (glossary key), e.g. "kidney_right"
    box: list[int] = Field(min_length=4, max_length=4)  # normalised 0..999
    box_px: list[int] = Field(min_length=4, max_length=4)  # inclusive pixel indices on the written image
    area: int = Field(ge=0)  # foreground pixels of the region (box area for detection boxes)
    label_id: int = Field(ge=0)  # the dataset's label id; 0 = the region did not come from a label map

    @field_validator("box")
    @classmethod
    def _norm_range(cls, v: list[int]) -> list[int]:
        if not all(0 <= x <= 999 for x in v) or not (v[0] < v[2] and v[1] < v[3]):
            raise ValueError(f"normalised box {v} must satisfy 0<=x1<x2<=999, 0<=y1<y2<=999")
        return v


class ValidationResult(BaseModel):
    """A validator's verdict on one row, as validators return it (in memory; extras allowed)."""

    model_config = ConfigDict(extra="allow")

    validator: str
    version: str
    verdict: Verdict
    score: float | None = None
    reason: str = ""


class ValidationMeta(_Strict):
    """A verdict as stored in a row (``meta.validation[]``): fixed keys, no nulls."""

    validator: str
    version: str
    verdict: Verdict
    score: float  # the validator's own score; 0.0 when it has none (the reason says why)
    reason: str
    codes: str  # comma-separated stable short codes ("" when none)


class SampleMeta(_Strict):
    """Provenance of one row.  Every key is present in every row of every source, never null: values
    that do not apply are neutral and documented (``body_region`` "unknown", ``slice_index`` 0 and
    ``axis`` "2d" for 2-D images, ``label_id`` 0, ``text_source`` "template"); per-source facts go in
    ``transform`` as JSON text."""

    task: TaskName
    subtask: str
    lang: Lang
    source: str
    licence: str
    case_id: str
    patient_id: str  # hashed
    split: str
    modality: str
    body_region: str
    axis: str
    slice_index: int
    template_id: str
    # where the answer's sentences come from: "template" (the language layer's banks; every row but report rows)
    # or "report" (a grounded report whose lines are a radiology report's own sentences, or their reviewed
    # translation)
    text_source: TextSource = "template"
    regions: list[RegionMeta]
    window: str  # display window, e.g. "CT abdomen W400/L40"
    transform: str  # JSON object (sorted keys): reader, orientation, spacing, position_mm, display fix, ...
    validation: list[ValidationMeta]


class Turn(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    from_: Literal["human", "gpt", "system"] = Field(alias="from")
    value: str


class Row(_Strict):
    """One InternVL chat row: the release's row contract (``schema.json`` in every release)."""

    id: str
    image: str  # relative path inside the release, images/ab/<sha256>.png
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    conversations: list[Turn] = Field(min_length=2)
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


class ImageInfo(BaseModel):
    """An image a case wrote to the store (content-addressed PNG)."""

    model_config = ConfigDict(extra="forbid")

    rel: str  # images/ab/<sha256>.png
    width: int
    height: int
    axis: str
    slice_index: int
    # duplicate detection (pipeline.versions.duplicates): sha256 of the display pixels (grey when the channels
    # are equal; not the PNG bytes) and the 64-bit perceptual hash (imagehash.phash) as 16 hex digits
    pixel_sha256: str = ""
    phash: str = ""


class CaseSummary(BaseModel):
    """What a case task hands back to the driver, stored beside the case's part (small: no rows).

    ``dropped`` counts every region or row of the case that does not reach its part, by reason
    (``region:<reason>`` / ``row:<reason>``); ``groups`` counts the part's rows by ``split/task/lang``.
    """

    model_config = ConfigDict(extra="forbid")

    source: str
    case_id: str
    key: str
    patient: str
    split: str
    rows: int = 0
    slices: int = 0
    groups: dict[str, int] = Field(default_factory=dict)
    images: list[ImageInfo] = Field(default_factory=list)
    errors: list[ErrorRecord] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    dropped: dict[str, int] = Field(default_factory=dict)
    seconds: float = 0.0
    # input files the worker hashed ([path, size, mtime_ns, inode, sha256]), for the driver's memo
    fingerprints: list[list[Any]] = Field(default_factory=list, exclude=True)
    reused: bool = Field(False, exclude=True)  # the worker found the part already in the store


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
    card_sha256: str = ""  # sha256 of the card's canonical JSON (``medreg diff`` names changed cards)


class ExcludedSource(BaseModel):
    """A source of the release config left out at plan time by ``licences: {allow, deny}``."""

    name: str
    licence: str
    reason: str


class LicenceSummary(BaseModel):
    """The release's licence position (pipeline.versions.licences): the most restrictive source decides."""

    overall: str  # the most restrictive licence(s) of the included sources, " + "-joined on a tie
    category: str  # its class: public-domain, permissive, attribution, share-alike, non-commercial, ...
    decided_by: list[str] = Field(default_factory=list)  # the sources holding that licence
    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)
    excluded: list[ExcludedSource] = Field(default_factory=list)


class DuplicateMember(BaseModel):
    source: str
    case_id: str
    patient_id: str
    image: str
    axis: str
    slice_index: int
    split: str  # the split its rows are written to
    moved_from: str = ""  # the split it would have had without the duplicate rule ("" = not moved)
    kept: bool = True  # false: its rows were dropped (policy keep_one)


class DuplicateGroup(BaseModel):
    """Images of different patients that are the same picture: ``exact`` (equal display pixels) or ``near``
    (perceptual hashes within the threshold; ``distance`` is the largest Hamming distance of a linking pair)."""

    kind: Literal["exact", "near"]
    distance: int
    members: list[DuplicateMember]


class DuplicateSummary(BaseModel):
    policy: str
    near_threshold: int
    groups: int = 0
    exact_groups: int = 0
    near_groups: int = 0
    images: int = 0  # images in some group
    patients_moved: int = 0  # patients whose split the rule changed
    rows_dropped: int = 0  # rows dropped by keep_one (also in dropped["row:duplicate_image"])
    conflicts: list[str] = Field(default_factory=list)  # groups whose copies stay in different splits, and why
    examples: list[DuplicateGroup] = Field(default_factory=list)  # the first groups (duplicates.jsonl has all)


class PreviousRelease(BaseModel):
    """The release this one follows (``previous:`` in the config) and what changed since (``medreg diff``)."""

    name: str
    version: str
    manifest_sha256: str
    patients_pinned: int = 0  # patients kept in their previous split although their own split differs now
    changes: dict[str, Any] = Field(default_factory=dict)  # compact diff (pipeline.versions.diff.summarise)


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
    # sha256 of manifest.json as written with this field empty (pipeline.release.verify checks it)
    manifest_sha256: str = ""
    licences: LicenceSummary | None = None
    duplicates: DuplicateSummary | None = None
    previous: PreviousRelease | None = None
