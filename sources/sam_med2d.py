"""SA-Med2D-20M release layout: slice PNGs, one PNG per structure instance, JSON indexes.

Layout options (:class:`SamMed2DLayout`): ``index_files`` ({split: json file}; a train file maps image ->
[masks], a test file maps mask -> image), ``path_prefix`` (stripped from JSON paths, default ``data_demo/``),
``patient_regex``, ``case_rules``.  Mask files are ``<image-stem>_<structure>_<NNN>.png`` where ``NNN`` is the instance
index and the structure name may contain underscores: it is split from the right.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path

from pydantic import Field

from pipeline.core.types import CaseRef, LabelLayer, Study
from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.image2d import read_image, read_mask
from sources.base import SourceAdapter, check_mask_shape, check_not_all_empty
from sources.layouts import LayoutBase

_INSTANCE = re.compile(r"^(?P<structure>.+)_(?P<instance>\d{3,})$")


def structure_of(mask_name: str, image_stem: str) -> tuple[str, int]:
    """``s0619_32_hip_left_001.png`` with stem ``s0619_32`` -> (``hip_left``, 1)."""
    stem = Path(mask_name).stem
    if not stem.startswith(image_stem + "_"):
        raise ValueError(f"mask {mask_name} does not start with its image stem {image_stem}_")
    m = _INSTANCE.match(stem[len(image_stem) + 1 :])
    if not m:
        raise ValueError(f"mask {mask_name}: expected <image-stem>_<structure>_<NNN>.png")
    return m.group("structure"), int(m.group("instance"))


class SamMed2DLayout(LayoutBase):
    """SA-Med2D-20M: slice PNGs, one PNG per structure instance, JSON indexes."""

    index_files: dict[str, str] = Field(
        default_factory=lambda: {"train": "image2label_train.json", "test": "label2image_test.json"},
        description="{split: json}: a train file maps image -> [masks], a test file maps mask -> image",
    )
    path_prefix: str = Field("data_demo/", description="stripped from the paths in the JSON files")


class SamMed2DAdapter(SourceAdapter):
    name = "sam_med2d"
    formats = ("png",)
    description = "SA-Med2D-20M layout: slice PNG + one PNG per structure instance + JSON index"
    layout_model = SamMed2DLayout

    def _strip(self, p: str) -> str:
        """An index path as a path under the data folder (string work: millions of entries at full size)."""
        prefix = self.layout.path_prefix
        return self._root_text + (p[len(prefix) :] if prefix and p.startswith(prefix) else p)

    def discover(self) -> list[CaseRef]:
        index_files: dict[str, str] = self.layout.index_files
        self._root_text = str(self.root).rstrip("/") + "/"
        masks_of: dict[str, list[str]] = defaultdict(list)
        split_of: dict[str, str] = {}
        for split, fname in index_files.items():
            path = self.root / fname
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_bytes().decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ReadError(f"cannot parse the SA-Med2D index {fname}: {type(exc).__name__}", file=str(path),
                                hint="the index JSON is truncated or not UTF-8 JSON; re-download it") from exc
            for key, val in data.items():
                if isinstance(val, list):  # image -> [masks]
                    img = self._strip(key)
                    masks_of[img].extend(self._strip(v) for v in val)
                else:  # mask -> image
                    img = self._strip(val)
                    masks_of[img].append(self._strip(key))
                split_of.setdefault(img, split)
        if not masks_of:
            raise FileNotFoundError(f"no SA-Med2D index JSON ({', '.join(index_files.values())}) in the data folder "
                                    f"{self.root.name}")
        refs = []
        for img, masks in masks_of.items():
            cid = os.path.splitext(os.path.basename(img))[0]
            refs.append(
                CaseRef(
                    source=self.card.name,
                    case_id=cid,
                    patient_id=self.patient_of(cid, img),
                    paths={"image": img},
                    official_split=split_of.get(img),
                    extra={"files": sorted(set(masks))},
                )
            )
        return sorted(refs, key=lambda r: r.case_id)

    def load(self, ref: CaseRef) -> Study:
        image = read_image(ref.paths["image"])
        stem = Path(ref.paths["image"]).stem
        layers: list[LabelLayer] = []
        notes: list[str] = []
        for mpath in ref.extra["files"]:
            try:
                structure, _inst = structure_of(Path(mpath).name, stem)
            except ValueError as exc:
                raise ReadError(str(exc), file=mpath,
                                hint="rename the mask to <image-stem>_<structure>_<NNN>.png") from exc
            term = self.term_for(structure)
            if term is None:
                notes.append(f"structure {structure!r} ({Path(mpath).name}) has no glossary term; skipped")
                continue
            mask = read_mask(mpath)
            check_mask_shape(mask, image, mpath, ref.paths["image"])
            layers.append(LabelLayer(mask[None], {1: term}, instance=True, origin=mpath))
        check_not_all_empty(layers, ref.paths["image"], notes)
        return self.study_2d(ref, image, layers, notes)
