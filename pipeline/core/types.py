"""In-memory types that flow between pipeline stages (plain dataclasses holding numpy arrays).

The serialisable contracts (cards, configs, rows, manifests) live in ``schemas/``; these types carry
arrays and never leave a process except through the writer.

Array conventions
-----------------
* A 3-D study is stored **display-canonical**: ``array[k, r, c]`` with axis 0 running inferior→superior,
  axis 1 anterior→posterior and axis 2 patient-right→patient-left (orientation codes ``("S","P","L")``
  for increasing index).  An axial display image is then simply ``array[k]`` (row 0 = anterior,
  column 0 = patient right: the radiological convention).  Loaders bring any file orientation to this
  layout with :func:`pipeline.ingest.geometry.to_canonical`.
* A 2-D study is a volume with one slice: ``array[0]`` is the image as the file shows it
  (grey ``(1, H, W)`` or colour ``(1, H, W, 3)``).
* Label layers share the image grid.  One layer holds non-overlapping integer labels; overlapping
  structures (DICOM-SEG segments, per-instance mask files) are separate layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CaseRef:
    """A case found by an adapter's ``discover()``: cheap to create, holds only paths and ids."""

    source: str  # source card name
    case_id: str  # unique within the source, stable, filesystem-safe
    patient_id: str  # raw patient id (hashed before it reaches any output)
    paths: dict[str, str]  # role -> path (image, labels, masks dir, ...)
    official_split: str | None = None  # "train" / "validation" / "test" when the dataset defines one
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint_paths(self) -> list[Path]:
        """Every file whose content determines this case's output (for caching)."""
        out: list[Path] = []
        for p in self.paths.values():
            path = Path(p)
            if path.is_dir():
                out.extend(sorted(q for q in path.rglob("*") if q.is_file()))
            else:
                out.append(path)
        for p in self.extra.get("files", []):
            out.append(Path(p))
        return out


@dataclass
class LabelLayer:
    """Integer label array on the study grid with its id -> canonical term map.

    ``instance`` marks a layer that is one annotated instance (e.g. one SA-Med2D mask file): with the
    ``label`` box policy it always yields exactly one box.
    """

    array: np.ndarray  # (K, R, C) integer; 0 = background
    names: dict[int, str]
    instance: bool = False
    origin: str = ""  # file the layer came from (for error messages)


@dataclass
class PixelBoxAnnotation:
    """A detection box given by the dataset in pixel coordinates of slice ``slice_index``."""

    term: str
    box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max (inclusive pixel indices)
    slice_index: int = 0


@dataclass
class RegionSentence:
    """A report sentence about one region (report-grounded sources: MS-CXR, Chest ImaGenome, RadGenome-ChestCT,
    the generic report CSV).

    ``text`` holds the sentence per language: the report's own language (``lang``) and, once a reviewed
    translation was accepted, the other.  ``negated``: the sentence states the absence of a finding ("No focal
    consolidation."); it stays with its (anatomical) region and never makes a finding region.
    """

    term: str  # canonical term of the region the sentence describes
    text: dict[str, str]  # lang -> sentence
    lang: str  # the language the report was written in
    negated: bool = False
    label: str = ""  # the dataset's own region name (bbox_name, Anatomy, category, label column)


@dataclass
class Study:
    """A loaded case: image + annotations + geometry, ready for display conversion."""

    ref: CaseRef
    modality: str  # CT, MR, PET, XR, US, endoscopy, fundus, dermoscopy, ...
    image: np.ndarray  # (K, R, C) or (K, R, C, 3); display-canonical for 3-D
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mm along (K, R, C)
    is_3d: bool = False
    layers: list[LabelLayer] = field(default_factory=list)
    boxes: list[PixelBoxAnnotation] = field(default_factory=list)
    # mm position of voxel (0, 0, 0) along each canonical axis (k, r, c)
    origin_mm: tuple[float, float, float] | None = None
    intensity_preset: str | None = None  # CT window name (abdomen, lung, ...) from the card
    rescaled: bool = True  # image values are physical (HU for CT)
    notes: list[str] = field(default_factory=list)  # non-fatal warnings (gaps, spacing, ...)
    transform: dict[str, Any] = field(default_factory=dict)  # provenance of what was done on load
    report: list[RegionSentence] = field(default_factory=list)  # report sentences tied to regions (by term)


@dataclass
class Region:
    """One box of one term on one display slice."""

    term: str
    box_px: tuple[int, int, int, int]  # inclusive pixel indices on the written image
    box: tuple[int, int, int, int]  # normalised 0..999
    area: int  # foreground pixels (box area for detection boxes)
    component: int = 0  # index of the connected component within this term on this slice
    label_id: int | None = None


@dataclass
class DisplaySlice:
    """A 2-D image ready to write (uint8), with its regions and provenance."""

    case_id: str
    axis: str  # axial, coronal, sagittal, or "2d"
    index: int  # slice index along the axis in the canonical volume
    position_mm: float | None
    image: np.ndarray  # (H, W) or (H, W, 3) uint8
    regions: list[Region]
    window: str  # e.g. "CT abdomen W400/L40", "percentile 0.5-99.5", "none"
    label_slices: list[np.ndarray] = field(default_factory=list)  # display-space labels (for QA)
    report: list[RegionSentence] = field(default_factory=list)  # the study's sentences whose term is on this slice
