"""Source adapter interface, registry (built-ins + the ``medreg.sources`` entry point group) and cards.

An adapter reads one format family.  A card (YAML, schemas.card.SourceCard) says which adapter reads a
dataset and how (layout globs, labels, licence...).  Adding a dataset in a known layout is a card only;
a new format is one adapter class, registered here or through an entry point::

    [project.entry-points."medreg.sources"]
    my_format = "my_package.adapter:MyAdapter"
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Mapping
from fnmatch import fnmatchcase
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipeline.core.errors import ReadError
from pipeline.core.paths import shown
from pipeline.core.types import CaseRef, PixelBoxAnnotation, Study
from schemas.card import SourceCard
from schemas.language import TermSpec
from sources.layouts import LayoutBase, parse_layout
from sources.terms import (
    card_where,
    install_card_terms,
    label_problems,
    label_table,
    prepare_card_terms,
    resolve_label,
)

CARDS_DIR = Path(__file__).resolve().parent / "cards"


class SourceAdapter(ABC):
    """Reads one format family.  Subclasses set ``name``, ``formats``, ``layout_model`` (a pydantic model
    of the card's ``layout``, subclassing :class:`sources.layouts.LayoutBase`) and implement two methods."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    layout_model: ClassVar[type[LayoutBase]] = LayoutBase

    def __init__(self, card: SourceCard, root: Path) -> None:
        self.card = card
        self.root = Path(root)
        self.layout: Any = self.parse_layout(card)
        install_card_terms(card)  # a case task in another process gets the card, not the release

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled in a worker process (the case job carries the adapter): the card's terms join that
        process's glossary too."""
        self.__dict__.update(state)
        install_card_terms(self.card)

    @classmethod
    def parse_layout(cls, card: SourceCard) -> Any:
        """The card's ``layout`` as this adapter's typed model (ValueError naming the card and the key)."""
        return parse_layout(cls.layout_model, card.layout, card_where(card), cls.name)

    def vocabulary(self) -> list[str]:
        """Terms this source can emit (for absent-target negatives), sorted."""
        return sorted(set(label_table(self.card).values()))

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
        pattern = self.layout.patient_regex
        if pattern:
            for text in (case_id, path):
                m = re.search(pattern, text)
                if m:
                    return m.group(1) if m.groups() else m.group(0)
        return case_id

    def case_attrs(self, case_id: str) -> dict[str, str]:
        """Per-case modality/body region/display fix from ``layout.case_rules`` (first match wins);
        defaults from the card."""
        attrs = {"modality": self.card.modality, "body_region": self.card.body_region or "", "display": "none"}
        for rule in self.layout.case_rules:
            if re.search(rule.regex, case_id):
                attrs.update({k: v for k, v in rule.model_dump().items() if k != "regex" and v is not None})
                break
        return attrs

    def study_2d(self, ref: CaseRef, image: np.ndarray, layers: list, notes: list[str],
                 boxes: list[PixelBoxAnnotation] | None = None, **transform: Any) -> Study:
        """A 2-D study from an image and its mask layers (or detection boxes), with the card's per-case
        modality, body region and display fix (``case_rules``) applied to image, masks and boxes alike."""
        attrs = self.case_attrs(ref.case_id)
        boxes = list(boxes or [])
        if attrs["display"] != "none":
            h, w = image.shape[:2]
            image = np.ascontiguousarray(apply_display(image, attrs["display"]))
            for layer in layers:
                layer.array = np.ascontiguousarray(apply_display(layer.array[0], attrs["display"]))[None]
            boxes = [PixelBoxAnnotation(b.term, display_box(b.box, attrs["display"], w, h), b.slice_index)
                     for b in boxes]
        return Study(
            ref=ref,
            modality=attrs["modality"],
            image=image[None],
            is_3d=False,
            layers=layers,
            boxes=boxes,
            rescaled=False,
            notes=notes,
            transform={"body_region": attrs["body_region"], "display": attrs["display"], **transform},
        )

    def glob(self, pattern: str) -> list[Path]:
        return sorted(p for p in self.root.glob(pattern) if p.is_file())

    def term_for(self, label: str) -> str | None:
        """Map a dataset label (id or name) to a canonical term, or None when it is not emitted."""
        return resolve_label(self.card, label)

    @classmethod
    def layout_labels(cls, layout: Any) -> list[str]:
        """Dataset labels the layout itself names (e.g. ``label`` of binary masks): each must map to a term
        when the card loads."""
        return []


_MAGIC = re.compile(r"[*?[]")


class FolderIndex:
    """``SourceAdapter.glob`` for many patterns over the same folders: each folder is listed once and kept
    as sorted file names, so a pattern whose folder part is literal (``masks/{stem}_*.png``) costs a bisect
    on its literal name prefix plus ``fnmatchcase`` over the names sharing it. ``Path.glob`` per image
    rescans the folder every time: N images with N masks in one folder was N^2 directory entries read.
    Same matches and order as ``SourceAdapter.glob`` (case-sensitive, ``*`` matches dot files, files only,
    symlinks followed); patterns with a wildcard folder part or ``**`` fall back to ``Path.glob``. Hold one
    only for one discovery: it does not see files created after a folder was listed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._names: dict[Path, list[str]] = {}

    def _listing(self, folder: Path) -> list[str]:
        names = self._names.get(folder)
        if names is None:
            try:
                with os.scandir(folder) as it:
                    names = sorted(e.name for e in it if e.is_file())
            except (FileNotFoundError, NotADirectoryError):
                names = []
            self._names[folder] = names
        return names

    def glob(self, pattern: str) -> list[Path]:
        parent, _, name = pattern.rpartition("/")
        if not name or "**" in pattern or _MAGIC.search(parent):
            return sorted(p for p in self.root.glob(pattern) if p.is_file())
        folder = self.root / parent if parent else self.root
        names = self._listing(folder)
        magic = _MAGIC.search(name)
        prefix = name[: magic.start()] if magic else name
        out = []
        for i in range(bisect_left(names, prefix), len(names)):
            if not names[i].startswith(prefix):
                break
            if fnmatchcase(names[i], name):
                out.append(folder / names[i])
        return out


def apply_display(arr: np.ndarray, op: str) -> np.ndarray:
    """Fix a 2-D export stored off the radiological convention; ``arr`` is ``(H, W)`` or ``(H, W, 3)``."""
    if op == "rot180":
        return arr[::-1, ::-1]
    if op == "flip_lr":
        return arr[:, ::-1]
    if op == "flip_ud":
        return arr[::-1]
    return arr


def display_box(box: tuple[float, float, float, float], op: str, width: int, height: int
                ) -> tuple[float, float, float, float]:
    """An inclusive pixel box ``(x0, y0, x1, y1)`` under :func:`apply_display` of a ``width x height`` image."""
    x0, y0, x1, y1 = box
    if op in ("rot180", "flip_lr"):
        x0, x1 = width - 1 - x1, width - 1 - x0
    if op in ("rot180", "flip_ud"):
        y0, y1 = height - 1 - y1, height - 1 - y0
    return (x0, y0, x1, y1)


def check_mask_shape(mask: np.ndarray, image: np.ndarray, mask_path: str, image_path: str) -> None:
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


def _plugin_entries() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group="medreg.sources"))


def _load_plugin(ep: metadata.EntryPoint) -> type[SourceAdapter] | None:
    try:
        return ep.load()
    except Exception as exc:  # a broken plugin must not break the tool
        import warnings

        warnings.warn(f"entry point medreg.sources:{ep.name} failed to load: {exc}", stacklevel=3)
        return None


class _Registry:
    """``adapters()``: every adapter, built-ins plus those registered by installed packages (entry points;
    one of a built-in's name replaces it). ``adapters.one(name)`` imports only the adapter a card names:
    planning a NIfTI build need not import the DICOM readers (pydicom, highdicom: ~0.3 s).
    ``adapters.cache_clear()`` forgets both."""

    def __init__(self) -> None:
        self._table: dict[str, type[SourceAdapter]] | None = None
        self._one: dict[str, type[SourceAdapter] | None] = {}

    def __call__(self) -> dict[str, type[SourceAdapter]]:
        if self._table is None:
            out: dict[str, type[SourceAdapter]] = {}
            for name, target in _BUILTIN.items():
                out[name] = _load_target(target)
            for ep in _plugin_entries():
                cls = _load_plugin(ep)
                if cls is not None:
                    out[ep.name] = cls
            self._table = out
        return self._table

    def one(self, name: str) -> type[SourceAdapter] | None:
        if self._table is not None:
            return self._table.get(name)
        if name not in self._one:
            found = None
            for ep in _plugin_entries():
                if ep.name == name:
                    found = _load_plugin(ep) or found
            if found is None and name in _BUILTIN:
                found = _load_target(_BUILTIN[name])
            self._one[name] = found
        return self._one[name]

    def cache_clear(self) -> None:
        self._table = None
        self._one.clear()


adapters = _Registry()


def get_adapter(card: SourceCard, root: Path) -> SourceAdapter:
    return adapter_class(card)(card, root)


def builtin_cards() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CARDS_DIR.glob("*.yaml"))}


def load_card(ref: str, *, release_terms: Mapping[str, TermSpec] | None = None) -> SourceCard:
    """A shipped card by name, or a card YAML by path, checked: its adapter is registered, its ``layout``
    fits the adapter's model, its ``terms`` fit the glossary and every label maps to a term that exists
    (``release_terms``: the terms of the release config's glossary files).  Errors name the card file."""
    cards = builtin_cards()
    path = cards[ref] if ref in cards else Path(ref).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"source card {ref!r} is neither a shipped card ({', '.join(cards)}) nor a YAML file path"
        )
    return check_card(SourceCard.from_yaml(path), release_terms)


def check_card(card: SourceCard, release_terms: Mapping[str, TermSpec] | None = None) -> SourceCard:
    """What :func:`load_card` checks, for a card made in code; returns the card to use (with the release
    terms it needs copied in)."""
    cls = adapter_class(card)
    layout = cls.parse_layout(card)
    card = prepare_card_terms(card, release_terms)
    unmapped = [label for label in cls.layout_labels(layout) if resolve_label(card, label) is None]
    if unmapped:
        raise ValueError(f"{card_where(card)}: layout names label(s) {unmapped} that map to no term; add them to "
                         "`labels` (label: term), or set resolve_labels_with_glossary when they are glossary names")
    return card


def card_problems(ref: str, release_terms: Mapping[str, TermSpec] | None = None) -> list[str]:
    """What is wrong with a card, as sentences (``medreg inspect --card``): what :func:`load_card` would
    raise, with every label whose term does not exist listed on its own."""
    try:
        card = load_card(ref, release_terms=release_terms)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        problems = [str(text)]
        try:  # name the unknown terms even when something else failed first
            card = SourceCard.from_yaml(builtin_cards().get(ref, Path(ref).expanduser()))
            problems += [f"{card_where(card)}: {p}" for p in label_problems(card, release_terms)
                         if p not in str(text)]
        except (ValueError, OSError):
            pass
        return problems
    return [f"{card_where(card)}: {p}" for p in label_problems(card, release_terms)]


def adapter_class(card: SourceCard) -> type[SourceAdapter]:
    cls = adapters.one(card.adapter)
    if cls is not None:
        return cls
    table = adapters()
    if card.adapter not in table:
        import difflib

        guess = difflib.get_close_matches(card.adapter, list(table), n=1)
        raise KeyError(
            f"{card_where(card)} names adapter {card.adapter!r}, which is not registered"
            + (f" (did you mean {guess[0]!r}?)" if guess else "")
            + f"; known adapters: {', '.join(sorted(table))} (run `medreg sources`)"
        )
    return table[card.adapter]
