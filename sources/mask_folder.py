"""Any 2-D image + mask folder (PNG, JPEG, GIF, TIFF, BMP; grey, RGB, RGBA, palette masks).

Layout options (card ``layout``):

* ``images``: glob of images relative to the root, e.g. ``images/*.jpg``.
* ``masks``: glob template for an image's masks, with ``{stem}``, e.g. ``masks/{stem}.jpg`` or
  ``demo_mask/{stem}_*.png``.
* ``mask_kind``: ``binary`` (one mask = one label, fixed by ``label``), ``per_label`` (one file per
  label; the label is the first group of ``label_regex`` applied to the mask file name, ``{stem}``
  substituted), ``instance`` (as per_label, but each file is one instance), or ``values`` (a label-value
  map; ids mapped by the card's ``labels``).
* ``threshold``: binarisation threshold for binary masks (default 127; robust to JPEG noise).
* ``case_rules``: [{regex, modality, body_region}] per case; ``patient_regex``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipeline.core.paths import shown
from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.image2d import read_image, read_mask
from pipeline.core.types import CaseRef, LabelLayer, Study
from sources.base import SourceAdapter, check_mask_shape, check_not_all_empty


class MaskFolderAdapter(SourceAdapter):
    name = "mask_folder_2d"
    formats = ("png", "jpeg", "gif", "tiff", "bmp")
    description = "2-D images with mask files (binary, one file per label, instance files, or label-value maps)"

    def discover(self) -> list[CaseRef]:
        lay = self.card.layout
        if "images" not in lay or "masks" not in lay:
            raise ValueError(f"card {self.card.name}: layout needs `images` and `masks` globs")
        refs = []
        for img in self.glob(lay["images"]):
            stem = img.stem
            masks = self.glob(lay["masks"].format(stem=glob_escape(stem)))
            if lay.get("mask_kind", "binary") in ("per_label", "instance"):
                rx = re.compile(lay.get("label_regex", r"^{stem}_(.+)\.[^.]+$").format(stem=re.escape(stem)))
                masks = [m for m in masks if rx.match(m.name)]
            refs.append(
                CaseRef(
                    source=self.card.name,
                    case_id=stem,
                    patient_id=self.patient_of(stem, img.as_posix()),
                    paths={"image": str(img)},
                    official_split=self.official_split(img.as_posix(), stem),
                    extra={"files": [str(m) for m in masks]},
                )
            )
        return sorted(refs, key=lambda r: r.case_id)

    def load(self, ref: CaseRef) -> Study:
        lay = self.card.layout
        kind = lay.get("mask_kind", "binary")
        image = read_image(ref.paths["image"])
        stem = Path(ref.paths["image"]).stem
        if not ref.extra["files"]:
            raise ReadError(
                f"no mask found for image {shown(ref.paths['image'])} (pattern {lay['masks']})",
                file=ref.paths["image"],
                hint="check layout.masks in the card",
            )
        layers: list[LabelLayer] = []
        notes: list[str] = []
        for mpath in ref.extra["files"]:
            if kind == "values":
                arr = read_mask(mpath, mode="values")
                names = {}
                for v in np.unique(arr).tolist():
                    if v == 0:
                        continue
                    term = self.term_for(str(v))
                    if term:
                        names[int(v)] = term
                    else:
                        notes.append(f"label value {v} in {Path(mpath).name} has no term; skipped")
            else:
                if kind == "binary":
                    label = str(lay.get("label", ""))
                else:
                    rx = re.compile(lay.get("label_regex", r"^{stem}_(.+)\.[^.]+$").format(stem=re.escape(stem)))
                    label = rx.match(Path(mpath).name).group(1)  # discover() kept only matching names
                term = self.term_for(label)
                if term is None:
                    notes.append(f"label {label!r} ({Path(mpath).name}) has no term in card {self.card.name}; skipped")
                    continue
                arr = read_mask(mpath, threshold=int(lay.get("threshold", 127)))
                names = {1: term}
            check_mask_shape(arr, image, mpath, ref.paths["image"])
            if names:
                layers.append(LabelLayer(arr[None], names, instance=(kind == "instance"), origin=mpath))
        check_not_all_empty(layers, ref.paths["image"], notes)
        return self.study_2d(ref, image, layers, notes)


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)
