"""Any 2-D image + mask folder (PNG, JPEG, GIF, TIFF, BMP; grey, RGB, RGBA, palette masks).

Layout options (card ``layout``, :class:`MaskFolderLayout`):

* ``images``: glob of images relative to the root, e.g. ``images/*.jpg``.
* ``masks``: glob template for an image's masks, with ``{stem}`` and the named groups of ``image_regex``,
  e.g. ``masks/{stem}.jpg``, ``demo_mask/{stem}_*.png`` or ``1st_manual/{id}_manual1.gif``.
* ``image_regex``: a regex searched in each image's path (relative to the root); its named groups fill
  the ``masks`` and ``roi_masks`` templates when image and mask names differ (DRIVE: images
  ``21_training.tif``, vessels ``21_manual1.gif``: ``(?P<id>\\d+)_training``).  An image it does not
  match is an error, not a silent skip.
* ``roi_masks``: glob template of an image's field-of-view / region-of-interest mask (same placeholders).
  It is never emitted as an object, even when ``masks`` matches it too; its box is recorded in the
  rows' ``transform`` as ``roi_box_px``.
* ``mask_kind``: ``binary`` (one mask = one label, fixed by ``label``), ``per_label`` (one file per
  label; the label is the first group of ``label_regex`` applied to the mask file name, ``{stem}``
  substituted), ``instance`` (as per_label, but each file is one instance), or ``values`` (a label-value
  map; ids mapped by the card's ``labels``).
* ``threshold``: binarisation threshold for binary masks (default 127; robust to JPEG noise).
* ``case_rules``, ``patient_regex`` (every adapter).

Pairing is never a silent pick: when ``masks`` matches more than one file for a ``binary``/``values``
image, two files give one label, an image has several ROI masks, or one mask file is matched by several
images, that case fails with an error naming the files and the fix.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.core.paths import shown
from pipeline.core.types import CaseRef, LabelLayer, Study
from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.image2d import read_image, read_mask
from sources.base import FolderIndex, SourceAdapter, check_mask_shape, check_not_all_empty, display_box
from sources.layouts import LayoutBase


class MaskFolderLayout(LayoutBase):
    """2-D images with mask files (binary, one file per label, instance files, or label-value maps)."""

    images: str = Field(description="glob of the images, relative to the root (`images/*.png`)")
    masks: str = Field(
        description="glob template of an image's masks: `{stem}` and the named groups of `image_regex` "
        "(`masks/{stem}.png`, `1st_manual/{id}_manual1.gif`)"
    )
    image_regex: str | None = Field(
        None, description="regex searched in each image's relative path; its named groups fill `masks` and "
        "`roi_masks` (`(?P<id>\\d+)_training`); an image it does not match is an error"
    )
    roi_masks: str | None = Field(
        None, description="glob template of an image's field-of-view / ROI mask: never emitted as an object "
        "(its box goes to `transform.roi_box_px`)"
    )
    mask_kind: Literal["binary", "per_label", "instance", "values"] = Field(
        "binary", description="binary: one label per file (`label`); per_label / instance: label from the file "
        "name (`label_regex`); values: a label-value map (ids through `labels`)"
    )
    label: str | None = Field(None, description="binary: the dataset label of every mask (mapped by `labels`)")
    label_regex: str = Field(
        r"^{stem}_(.+)\.[^.]+$", description="per_label / instance: first group of this regex on the mask file "
        "name is its label (`{stem}` substituted)"
    )
    threshold: int = Field(127, ge=0, le=255, description="binary masks: foreground is > threshold")

    @model_validator(mode="after")
    def _consistent(self) -> MaskFolderLayout:
        groups: set[str] = set()
        if self.image_regex is not None:
            try:
                groups = set(re.compile(self.image_regex).groupindex)
            except re.error as exc:
                raise ValueError(f"image_regex {self.image_regex!r} is not a valid regex ({exc})") from None
        for key in ("masks", "roi_masks"):
            template = getattr(self, key)
            if template is None:
                continue
            missing = sorted(placeholders(template) - groups - {"stem"})
            if missing:
                raise ValueError(
                    f"{key} {template!r} uses {', '.join('{' + m + '}' for m in missing)}, which is neither "
                    f"{{stem}} nor a named group of image_regex (groups: {', '.join(sorted(groups)) or 'none'}); "
                    "add (?P<name>...) to image_regex"
                )
        if self.mask_kind == "binary" and not self.label:
            raise ValueError("mask_kind binary needs `label`: the dataset label of every mask (mapped by `labels`)")
        return self


def placeholders(template: str) -> set[str]:
    """Field names of a ``str.format`` template (``{stem[0]}`` -> ``stem``)."""
    out = set()
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None:
            out.add(re.split(r"[.\[]", field, maxsplit=1)[0])
    return out


class MaskFolderAdapter(SourceAdapter):
    name = "mask_folder_2d"
    formats = ("png", "jpeg", "gif", "tiff", "bmp")
    description = "2-D images with mask files (binary, one file per label, instance files, or label-value maps)"
    layout_model = MaskFolderLayout

    @classmethod
    def layout_labels(cls, layout: MaskFolderLayout) -> list[str]:
        return [layout.label] if layout.mask_kind == "binary" and layout.label else []

    def _fields(self, img: Path) -> dict[str, str] | None:
        """Template fields of an image: ``stem`` and the named groups of ``image_regex`` (None: no match)."""
        fields = {"stem": glob_escape(img.stem)}
        if self.layout.image_regex is None:
            return fields
        m = re.search(self.layout.image_regex, img.relative_to(self.root).as_posix())
        if m is None:
            return None
        fields.update({k: glob_escape(v) for k, v in m.groupdict().items() if v is not None})
        return fields

    def _label_rx(self, stem: str) -> re.Pattern[str]:
        return re.compile(self.layout.label_regex.format(stem=re.escape(stem)))

    def discover(self) -> list[CaseRef]:
        lay = self.layout
        found: list[tuple[Path, list[Path], list[Path]]] = []
        unmatched: list[str] = []
        index = FolderIndex(self.root)  # one listing per mask folder, not one per image
        for img in self.glob(lay.images):
            fields = self._fields(img)
            if fields is None:
                unmatched.append(img.relative_to(self.root).as_posix())
                continue
            masks = index.glob(lay.masks.format(**fields))
            rois = index.glob(lay.roi_masks.format(**fields)) if lay.roi_masks else []
            found.append((img, masks, rois))
        if unmatched:
            raise ValueError(
                f"card {self.card.name}: {len(unmatched)} image(s) under {self.root} do not match layout.image_regex "
                f"{lay.image_regex!r}, e.g. {', '.join(unmatched[:3])}; widen the regex or narrow layout.images"
            )
        all_rois = {r for _, _, rois in found for r in rois}
        claims: dict[Path, list[str]] = {}
        refs = []
        for img, masks, rois in found:
            masks = [m for m in masks if m not in all_rois]  # a field of view is never an object
            if lay.mask_kind in ("per_label", "instance"):
                rx = self._label_rx(img.stem)
                masks = [m for m in masks if rx.match(m.name)]
            for m in masks:
                claims.setdefault(m, []).append(img.stem)
            refs.append((img, masks, rois))
        return sorted((self._ref(img, masks, rois, claims) for img, masks, rois in refs), key=lambda r: r.case_id)

    def _ref(self, img: Path, masks: list[Path], rois: list[Path], claims: dict[Path, list[str]]) -> CaseRef:
        stem = img.stem
        shared = {self._rel(m): sorted(o for o in claims[m] if o != stem) for m in masks if len(claims[m]) > 1}
        paths = {"image": str(img)}
        if len(rois) == 1:
            paths["roi"] = str(rois[0])
        return CaseRef(
            source=self.card.name,
            case_id=stem,
            patient_id=self.patient_of(stem, img.as_posix()),
            paths=paths,
            official_split=self.official_split(img.as_posix(), stem),
            extra={"files": [str(m) for m in masks], "rois": [str(r) for r in rois], "shared": shared},
        )

    def _rel(self, p: str | Path) -> str:
        try:
            return Path(p).relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    def _check_pairing(self, ref: CaseRef) -> None:
        """Raise a ReadError naming the files when this image's pairing is ambiguous or empty."""
        lay = self.layout
        img_name = Path(ref.paths["image"]).name
        files = ref.extra["files"]
        if not files:
            raise ReadError(f"no mask found for image {shown(ref.paths['image'])} (pattern {lay.masks})",
                            file=ref.paths["image"],
                            hint="check layout.masks (and layout.image_regex) in the card")
        if ref.extra.get("shared"):
            mask, others = next(iter(sorted(ref.extra["shared"].items())))
            raise ReadError(
                f"mask {mask} is matched by image {img_name} and by {', '.join(others)} (pattern {lay.masks})",
                file=str(self.root / mask),
                hint="make layout.masks name exactly one image's masks, e.g. with a named group of layout.image_regex "
                "and a fixed suffix ({id}_manual1.gif rather than {id}*.gif)")
        if len(ref.extra.get("rois", [])) > 1:
            raise ReadError(
                f"{len(ref.extra['rois'])} ROI masks match image {img_name}: "
                + ", ".join(self._rel(r) for r in ref.extra["rois"]),
                file=ref.extra["rois"][0], hint="make layout.roi_masks match one file per image")
        if lay.mask_kind in ("binary", "values") and len(files) > 1:
            raise ReadError(
                f"{len(files)} masks match image {img_name} (pattern {lay.masks}): "
                + ", ".join(self._rel(f) for f in files),
                file=files[0],
                hint=f"mask_kind {lay.mask_kind} takes one mask per image: make layout.masks match one file (a named "
                "group of layout.image_regex, a fixed suffix), and name a field-of-view folder as layout.roi_masks")

    def _label_of(self, mpath: str, stem: str) -> str:
        if self.layout.mask_kind == "binary":
            return str(self.layout.label)
        m = self._label_rx(stem).match(Path(mpath).name)
        return m.group(1) if m else Path(mpath).stem  # discover() kept only matching names

    def load(self, ref: CaseRef) -> Study:
        self._check_pairing(ref)
        image = read_image(ref.paths["image"])
        stem = Path(ref.paths["image"]).stem
        notes: list[str] = []
        transform: dict[str, Any] = {}
        if "roi" in ref.paths:
            box = self._roi_box(ref.paths["roi"], image, ref.paths["image"], notes)
            display = self.case_attrs(ref.case_id)["display"]
            h, w = image.shape[:2]
            transform["roi_box_px"] = [int(v) for v in display_box(box, display, w, h)]
        elif self.layout.roi_masks:
            notes.append(f"no ROI mask for image {Path(ref.paths['image']).name} (pattern {self.layout.roi_masks})")
        if self.layout.mask_kind == "values":
            found = [self._values_layer(f, image, ref.paths["image"], notes) for f in ref.extra["files"]]
            layers = [layer for layer in found if layer is not None]
        else:
            layers = self._label_layers(ref, stem, image, notes)
        check_not_all_empty(layers, ref.paths["image"], notes)
        return self.study_2d(ref, image, layers, notes, **transform)

    def _label_layers(self, ref: CaseRef, stem: str, image: np.ndarray, notes: list[str]) -> list[LabelLayer]:
        lay = self.layout
        by_label: dict[str, list[str]] = {}
        for mpath in ref.extra["files"]:
            by_label.setdefault(self._label_of(mpath, stem), []).append(mpath)
        if lay.mask_kind == "per_label":
            for label, paths in sorted(by_label.items()):
                if len(paths) > 1:
                    raise ReadError(
                        f"label {label!r} of image {Path(ref.paths['image']).name} has {len(paths)} mask files: "
                        + ", ".join(self._rel(p) for p in paths), file=paths[0],
                        hint="per_label takes one file per label: fix layout.masks / label_regex, or use "
                        "mask_kind: instance when each file is one instance")
        layers = []
        for mpath in ref.extra["files"]:
            label = self._label_of(mpath, stem)
            term = self.term_for(label)
            if term is None:
                notes.append(f"label {label!r} ({Path(mpath).name}) has no term in card {self.card.name}; skipped")
                continue
            arr = read_mask(mpath, threshold=lay.threshold)
            check_mask_shape(arr, image, mpath, ref.paths["image"])
            layers.append(LabelLayer(arr[None], {1: term}, instance=(lay.mask_kind == "instance"), origin=mpath))
        return layers

    def _values_layer(self, mpath: str, image: np.ndarray, image_path: str, notes: list[str]) -> LabelLayer | None:
        arr = read_mask(mpath, mode="values")
        check_mask_shape(arr, image, mpath, image_path)
        names = {}
        for v in np.unique(arr).tolist():
            if v == 0:
                continue
            term = self.term_for(str(v))
            if term:
                names[int(v)] = term
            else:
                notes.append(f"label value {v} in {Path(mpath).name} has no term; skipped")
        return LabelLayer(arr[None], names, origin=mpath) if names else None

    def _roi_box(self, path: str, image: np.ndarray, image_path: str, notes: list[str]) -> tuple[int, int, int, int]:
        roi = read_mask(path, threshold=self.layout.threshold)
        check_mask_shape(roi, image, path, image_path)
        rows, cols = np.nonzero(roi)
        if rows.size == 0:
            notes.append(f"ROI mask {Path(path).name} is empty")
            return (0, 0, image.shape[1] - 1, image.shape[0] - 1)
        return (int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()))


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)
