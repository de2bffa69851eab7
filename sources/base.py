"""Source adapter interface, registry (built-ins + the ``medreg.sources`` entry point group) and cards.

An adapter reads one format family.  A card (YAML, schemas.card.SourceCard) says which adapter reads a
dataset and how (layout globs, labels, licence...).  Adding a dataset in a known layout is a card only;
a new format is one adapter class, registered here or through an entry point::

    [project.entry-points."medreg.sources"]
    my_format = "my_package.adapter:MyAdapter"
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import ClassVar

from pipeline.core.errors import ReadError
from pipeline.core.paths import shown
from pipeline.core.types import CaseRef, Study
from schemas.card import SourceCard

CARDS_DIR = Path(__file__).resolve().parent / "cards"


class SourceAdapter(ABC):
    """Reads one format family.  Subclasses set ``name``, ``formats`` and implement two methods."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def __init__(self, card: SourceCard, root: Path) -> None:
        self.card = card
        self.root = Path(root)

    @abstractmethod
    def discover(self) -> list[CaseRef]:
        """List the cases under ``self.root`` (cheap: paths and ids only), sorted by case id."""

    @abstractmethod
    def load(self, ref: CaseRef) -> Study:
        """Read one case.  Raise pipeline.ingest.readers.ReadError (file + hint) on bad input."""

    # helpers shared by adapters -------------------------------------------------------------
    def official_split(self, ref_path: str, case_id: str) -> str | None:
        spec = self.card.split
        if spec.mode == "map":
            return spec.cases.get(case_id)
        if spec.mode == "path_regex":
            for split, pattern in spec.patterns.items():
                if re.search(pattern, ref_path):
                    return split
        return None

    def patient_of(self, case_id: str, path: str = "") -> str:
        """Patient id from ``layout.patient_regex`` (first group, tested on the case id then path)."""
        pattern = self.card.layout.get("patient_regex")
        if pattern:
            for text in (case_id, path):
                m = re.search(pattern, text)
                if m:
                    return m.group(1) if m.groups() else m.group(0)
        return case_id

    def case_attrs(self, case_id: str) -> dict[str, str]:
        """Per-case modality/body region from ``layout.case_rules`` ([{regex, modality, body_region}]),
        first match wins; defaults from the card."""
        attrs = {"modality": self.card.modality, "body_region": self.card.body_region or "", "display": "none"}
        for rule in self.card.layout.get("case_rules", []):
            if re.search(rule["regex"], case_id):
                attrs.update({k: v for k, v in rule.items() if k in ("modality", "body_region", "display")})
                break
        if attrs["display"] not in DISPLAY_OPS:
            raise ValueError(f"card {self.card.name}: case_rules display must be one of {sorted(DISPLAY_OPS)}")
        return attrs

    def study_2d(self, ref: CaseRef, image, layers: list, notes: list[str], boxes: list | None = None,  # noqa: ANN001
                 **transform: str) -> Study:
        """A 2-D study from an image and its mask layers (or detection boxes), with the card's per-case
        modality, body region and display fix (``case_rules``) applied to image and masks alike."""
        import numpy as np

        from pipeline.core.types import Study

        attrs = self.case_attrs(ref.case_id)
        if attrs["display"] != "none":
            image = np.ascontiguousarray(apply_display(image, attrs["display"]))
            for layer in layers:
                layer.array = np.ascontiguousarray(apply_display(layer.array[0], attrs["display"]))[None]
            if boxes:
                raise ValueError(f"card {self.card.name}: display fixes are not supported for detection boxes")
        return Study(
            ref=ref,
            modality=attrs["modality"],
            image=image[None],
            is_3d=False,
            layers=layers,
            boxes=list(boxes or []),
            rescaled=False,
            notes=notes,
            transform={"body_region": attrs["body_region"], "display": attrs["display"], **transform},
        )

    def glob(self, pattern: str) -> list[Path]:
        return sorted(p for p in self.root.glob(pattern) if p.is_file())

    def term_for(self, label: str) -> str | None:
        """Map a dataset label (id or name) to a canonical term, or None when it is not emitted."""
        table = _label_table(self.card)
        if label in table:
            return table[label]
        if label in self.card.ignore_labels:
            return None
        if self.card.resolve_labels_with_glossary:
            from pipeline.language.glossary import load_glossary

            gl = load_glossary()
            for text in (label, label.replace("+", " "), label.replace("+", " ").replace("_", " ")):
                term = gl.resolve(text)
                if term is not None:
                    return term
        return None


DISPLAY_OPS = {"none", "rot180", "flip_lr", "flip_ud"}


def apply_display(arr, op: str):  # noqa: ANN001, ANN201 - numpy array in, view out
    """Fix a 2-D export stored off the radiological convention; ``arr`` is ``(H, W)`` or ``(H, W, 3)``."""
    if op == "rot180":
        return arr[::-1, ::-1]
    if op == "flip_lr":
        return arr[:, ::-1]
    if op == "flip_ud":
        return arr[::-1]
    return arr


def check_mask_shape(mask, image, mask_path: str, image_path: str) -> None:  # noqa: ANN001
    """Raise a ReadError naming both files when a mask does not have its image's size."""
    if mask.shape[:2] != image.shape[:2]:
        raise ReadError(
            f"mask {shown(mask_path)} is {mask.shape[1]}x{mask.shape[0]} but image {shown(image_path)} "
            f"is {image.shape[1]}x{image.shape[0]}",
            file=mask_path,
            hint="mask and image must have the same size (was one of them resized?)",
        )


def check_not_all_empty(layers: list, image_path: str, notes: list[str]) -> None:
    """Note every empty mask layer; raise a ReadError naming them when all are empty (without this the
    case would fail later with a misleading "no region above min_pixels")."""
    empty = [layer for layer in layers if not layer.array.any()]
    for layer in empty:
        notes.append(f"mask {shown(layer.origin)} is empty (no foreground pixel)")
    if layers and len(empty) == len(layers):
        raise ReadError(
            f"every mask of image {shown(image_path)} is empty: " + ", ".join(shown(x.origin) for x in empty[:5]),
            file=empty[0].origin or image_path,
            hint="the masks hold no foreground: check the files (all black?) and the card's layout.threshold",
        )


def _label_table(card: SourceCard) -> dict[str, str]:
    key = id(card)
    cached = _TABLES.get(key)
    if cached is None or cached[0] is not card:
        cached = (card, card.label_table())
        _TABLES[key] = cached
    return cached[1]


_TABLES: dict[int, tuple[SourceCard, dict[str, str]]] = {}


# registry ----------------------------------------------------------------------------------------
_BUILTIN: dict[str, str] = {
    "nifti_labelmap": "sources.nifti:NiftiLabelmapAdapter",
    "sam_med2d": "sources.sam_med2d:SamMed2DAdapter",
    "mask_folder_2d": "sources.mask_folder:MaskFolderAdapter",
    "dicom_seg": "sources.dicom:DicomSegAdapter",
    "dicom_rtstruct": "sources.dicom:DicomRtstructAdapter",
    "dicom_nifti_labels": "sources.dicom:DicomNiftiLabelsAdapter",
    "cxr14_csv": "sources.detection:Cxr14CsvAdapter",
    "coco_json": "sources.detection:CocoJsonAdapter",
    "report_table": "sources.reports:ReportTableAdapter",
    "mscxr_csv": "sources.mscxr:MsCxrAdapter",
    "imagenome_scene_graph": "sources.imagenome:ImaGenomeAdapter",
    "radgenome_ct": "sources.radgenome:RadGenomeAdapter",
}


def register_builtin(name: str, target: str) -> None:
    _BUILTIN[name] = target
    adapters.cache_clear()


def _load_target(target: str) -> type[SourceAdapter]:
    module, _, attr = target.partition(":")
    mod = __import__(module, fromlist=[attr])
    cls = getattr(mod, attr)
    if not (isinstance(cls, type) and issubclass(cls, SourceAdapter)):
        raise TypeError(f"{target} is not a SourceAdapter subclass")
    return cls


@lru_cache(maxsize=1)
def adapters() -> dict[str, type[SourceAdapter]]:
    """Every adapter: built-ins plus those registered by installed packages (entry points)."""
    out: dict[str, type[SourceAdapter]] = {}
    for name, target in _BUILTIN.items():
        out[name] = _load_target(target)
    for ep in metadata.entry_points(group="medreg.sources"):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not break the tool
            import warnings

            warnings.warn(f"entry point medreg.sources:{ep.name} failed to load: {exc}", stacklevel=2)
            continue
        out[ep.name] = cls
    return out


def get_adapter(card: SourceCard, root: Path) -> SourceAdapter:
    table = adapters()
    if card.adapter not in table:
        raise KeyError(
            f"source card {card.name!r} names adapter {card.adapter!r}, which is not registered; "
            f"known adapters: {', '.join(sorted(table))} (run `medreg sources`)"
        )
    return table[card.adapter](card, root)


def builtin_cards() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CARDS_DIR.glob("*.yaml"))}


def load_card(ref: str) -> SourceCard:
    """A shipped card by name, or a card YAML by path."""
    cards = builtin_cards()
    if ref in cards:
        return SourceCard.from_yaml(cards[ref])
    path = Path(ref).expanduser()
    if path.is_file():
        return SourceCard.from_yaml(path)
    raise FileNotFoundError(
        f"source card {ref!r} is neither a shipped card ({', '.join(cards)}) nor a YAML file path"
    )
