"""2-D images with detection boxes: ChestX-ray14 box CSV (``cxr14_csv``) and COCO JSON (``coco_json``).

One case per image; its CaseRef carries the image path and, in ``extra``, the image's own rows
(label, x, y, w, h, where) and row errors, so the case's cache key changes exactly when its rows do.
The Study is the image ``(1, H, W)`` (grey) or ``(1, H, W, 3)`` with
``boxes=[PixelBoxAnnotation(term, (x_min, y_min, x_max, y_max))]`` (inclusive pixel indices, floats;
see pipeline/ingest/readers/detection.py for the ``x, y, w, h`` convention) and no label layers.

Layout options (card ``layout``: :class:`Cxr14Layout`, :class:`CocoLayout`)
--------------------------------------------------------------------------
``cxr14_csv``
  * ``csv``: the box CSV, relative to the root (``BBox_List_2017.csv``).
  * ``images``: folder of the images, relative to the root (or absolute).  Files are found by name,
    flat or nested (the NIH tarballs extract to ``images/``; Kaggle's mirror to
    ``images_001/images/...``).
  * ``image_size``: ``[W, H]`` of the frame the boxes are given in (ChestX-ray14: 1024 x 1024).  An
    image of another size (a resized copy) gets its boxes scaled, with a note.
  * ``split_lists``: ``{split: file}`` lists of image names (``train_val_list.txt``, ``test_list.txt``)
    relative to the root; used when present (else the card's ``split``).
  * ``patient_regex``: first group of the image stem = patient id (``^(\\d{8})_``).
  * ``encoding``: the CSV's text encoding (default: a byte-order mark, else UTF-8); a line that does
    not decode fails only its image's case, with its line number.
  * ``missing_images``: ``error`` (default: an image named in the CSV but absent fails its case) or
    ``skip`` (the images present are the cases, e.g. a partial download; every case carries a note
    counting the images and boxes left out; no image present at all fails discovery).

``coco_json``
  * ``annotations``: a COCO JSON relative to the root, or ``{split: json}`` (the key is the official
    split).
  * ``images``: image folder (``file_name`` is relative to it), default ``images``; or
    ``{split: folder}``.
  * ``patient_regex``; ``case_rules`` (per-case modality/body region/display fix; boxes follow the fix).

A row/annotation with an invalid box (e.g. negative width) fails its own case with a ReadError naming
the file and line; the other cases load.  A missing image fails its case with a hint.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from pipeline.core.paths import shown
from pipeline.core.types import CaseRef, PixelBoxAnnotation, Study
from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.detection import BoxRecord, read_coco_json, read_cxr14_csv
from pipeline.ingest.readers.image2d import read_image
from sources.base import SourceAdapter
from sources.layouts import LayoutBase


class Cxr14Layout(LayoutBase):
    """2-D images + a ChestX-ray14-style box CSV (image, label, x, y, w, h by position)."""

    csv: str = Field("BBox_List_2017.csv", description="the box CSV, relative to the root")
    images: str = Field("images", description="folder of the images (found by name, flat or nested)")
    image_size: tuple[int, int] | None = Field(
        None, description="[W, H] of the frame the boxes are given in; other image sizes get scaled boxes"
    )
    split_lists: dict[str, str] = Field(
        default_factory=dict, description="{split: file} lists of image names, used when present"
    )
    encoding: str | None = Field(
        None, description="the CSV's text encoding (default: a byte-order mark, else UTF-8); an undecodable line "
        "fails only its image's case"
    )
    missing_images: Literal["error", "skip"] = Field(
        "error", description="error: a missing image fails its case; skip: the images present are the cases "
        "(a partial download; every case notes what was left out)"
    )


class CocoLayout(LayoutBase):
    """2-D images + a COCO detection JSON."""

    annotations: str | dict[str, str] = Field(description="a COCO JSON, or {split: json} (the key is the split)")
    images: str | dict[str, str] = Field(
        "images", description="image folder (`file_name` is relative to it), or {split: folder}"
    )

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".dcm")


def _safe_id(name: str) -> str:
    stem = re.sub(r"\.[A-Za-z0-9]{2,5}$", "", name)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__")).strip("_") or "image"


class _BoxAdapter(SourceAdapter):
    def _path(self, spec: str | None, default: str) -> Path:
        p = Path(spec or default).expanduser()
        return p if p.is_absolute() else self.root / p

    def _image_index(self, folder: Path) -> dict[str, Path]:
        """name -> path of every image under ``folder`` (recursive; first by sorted path wins)."""
        index: dict[str, Path] = {}
        if not folder.is_dir():
            return index
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for f in sorted(files):
                if f.lower().endswith(_IMAGE_EXT):
                    index.setdefault(f, Path(root) / f)
        return index

    def _ref(self, case_id: str, image: Path, ann_file: Path, recs: list[BoxRecord], split: str | None,
             size: tuple[int, int] | None) -> CaseRef:
        return CaseRef(
            source=self.card.name,
            case_id=case_id,
            patient_id=self.patient_of(case_id, image.as_posix()),
            paths={"image": str(image)},
            official_split=split if split is not None else self.official_split(image.as_posix(), case_id),
            extra={
                "boxes": [[r.label, r.x, r.y, r.w, r.h, r.where] for r in recs if r.error is None],
                "errors": [f"{r.where}: {r.error}" for r in recs if r.error is not None],
                "frame_size": list(size) if size else None,
                # the annotation file is not a fingerprinted path: this case's rows (above) are its content
                "annotation_file": str(ann_file),
            },
        )

    def load(self, ref: CaseRef) -> Study:
        ann = ref.extra["annotation_file"]
        img_name = Path(ref.paths["image"]).name
        if ref.extra.get("errors"):
            raise ReadError(
                f"{shown(ann)}: invalid box for image {img_name}: " + "; ".join(ref.extra["errors"][:3]),
                file=ann,
                hint="fix or delete that row in the annotation file (the other images are unaffected)",
            )
        path = Path(ref.paths["image"])
        if not path.is_file():
            raise ReadError(
                f"image {img_name} (boxes in {shown(ann)}) not found under {shown(path.parent)}",
                file=str(path),
                hint=self._missing_hint(),
            )
        image = read_image(path)
        h, w = image.shape[:2]
        notes: list[str] = []
        sx = sy = 1.0
        frame = ref.extra.get("frame_size")
        if frame and frame[0] and frame[1] and (int(frame[0]), int(frame[1])) != (w, h):
            sx, sy = w / float(frame[0]), h / float(frame[1])
            notes.append(f"image {img_name} is {w}x{h}, boxes are given for {frame[0]}x{frame[1]}: boxes scaled")
        if ref.extra.get("subset_note"):
            notes.append(ref.extra["subset_note"])
        boxes: list[PixelBoxAnnotation] = []
        for label, x, y, bw, bh, where in ref.extra.get("boxes", []):
            term = self.term_for(label)
            if term is None:
                notes.append(f"{where}: label {label!r} has no term in card {self.card.name}; skipped")
                continue
            x0, y0 = x * sx, y * sy
            x1, y1 = (x + bw) * sx - 1.0, (y + bh) * sy - 1.0  # inclusive: continuous right edge - 1
            cx0, cy0 = max(0.0, x0), max(0.0, y0)
            cx1, cy1 = min(float(w - 1), x1), min(float(h - 1), y1)
            if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
                notes.append(f"{where}: box clipped to the {w}x{h} image")
            if cx1 < cx0 or cy1 < cy0:
                notes.append(f"{where}: box lies outside the image; skipped")
                continue
            boxes.append(PixelBoxAnnotation(term, (cx0, cy0, cx1, cy1)))
        if not boxes:
            raise ReadError(
                f"{Path(ann).name}: no box of image {img_name} has a label with a term in card {self.card.name}",
                file=ann, hint="add the labels to the card's labels")
        return self.study_2d(ref, image, [], notes, boxes,
                             box_convention="x,y,w,h -> inclusive (x, y, x+w-1, y+h-1)")

    def _missing_hint(self) -> str:
        return "download the images and point the card's layout.images at their folder"


class Cxr14CsvAdapter(_BoxAdapter):
    name = "cxr14_csv"
    formats = ("csv",)
    description = "2-D images + ChestX-ray14-style box CSV (image, label, x, y, w, h by position)"
    layout_model = Cxr14Layout

    def _split_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for split, rel in self.layout.split_lists.items():
            p = self._path(rel, rel)
            if p.is_file():
                text = p.read_bytes().decode(self.layout.encoding or "utf-8-sig", errors="replace")
                for line in text.split():
                    out.setdefault(line.strip(), split)
        return out

    def discover(self) -> list[CaseRef]:
        lay = self.layout
        csv_path = self._path(lay.csv, "BBox_List_2017.csv")
        recs = read_cxr14_csv(csv_path, encoding=lay.encoding)
        folder = self._path(lay.images, "images")
        index = self._image_index(folder)
        splits = self._split_map()
        size = tuple(lay.image_size) if lay.image_size else None
        by_image: dict[str, list[BoxRecord]] = {}
        for r in recs:
            by_image.setdefault(r.image, []).append(r)
        note = self._subset_note(by_image, index, csv_path, folder)
        refs = []
        for name, group in by_image.items():
            if note is not None and Path(name).name not in index:
                continue
            image = index.get(Path(name).name, folder / name)
            ref = self._ref(_safe_id(name), image, csv_path, group, splits.get(name), size)
            if note:
                ref.extra["subset_note"] = note
            refs.append(ref)
        return sorted(refs, key=lambda r: r.case_id)

    def _subset_note(self, by_image: dict[str, list[BoxRecord]], index: dict[str, Path], csv_path: Path,
                     folder: Path) -> str | None:
        """``layout.missing_images: skip``: the images present are the cases (a partial download).

        Returns None when every image is a case (``error``, the default: a missing image fails its case),
        else the note every case carries, which counts the images and boxes left out.  Raises when no
        image is present at all (nothing to build: the images were not downloaded)."""
        if self.layout.missing_images == "error":
            return None
        absent = [n for n in by_image if Path(n).name not in index]
        if len(absent) == len(by_image):
            raise ReadError(f"none of the {len(by_image)} images named in {csv_path.name} is under {folder}",
                            file=str(folder), hint=self._missing_hint())
        boxes = sum(len(by_image[n]) for n in absent)
        return (f"{len(absent)} of the {len(by_image)} images named in {csv_path.name} are not under {folder.name}/ "
                f"(layout.missing_images: skip); their {boxes} boxes are not used") if absent else ""

    def _missing_hint(self) -> str:
        return ("ChestX-ray14 images are not in the box CSV: download images_*.tar.gz from the NIH "
                "(https://nihcc.app.box.com/v/ChestXray-NIHCC), extract them into the folder named by the "
                "card's layout.images, or point layout.images at your copy")


class CocoJsonAdapter(_BoxAdapter):
    name = "coco_json"
    formats = ("json", "coco")
    description = "2-D images + COCO detection JSON (bbox = x, y, w, h)"
    layout_model = CocoLayout

    def discover(self) -> list[CaseRef]:
        anns = self.layout.annotations
        items = list(anns.items()) if isinstance(anns, dict) else [(None, anns)]
        images_spec = self.layout.images
        refs: dict[str, CaseRef] = {}
        for split, rel in items:
            path = self._path(rel, rel)
            data = read_coco_json(path)
            sub = images_spec.get(split, "images") if isinstance(images_spec, dict) else images_spec
            folder = self._path(sub, "images")
            by_image: dict[str, list[BoxRecord]] = {}
            for r in data.boxes:
                by_image.setdefault(r.image, []).append(r)
            for name, group in by_image.items():
                cid = _safe_id(name)
                if cid in refs:
                    cid = _safe_id(f"{split}/{name}") if split else cid
                    if cid in refs:
                        raise ValueError(f"card {self.card.name}: image {name} appears twice in {path.name}")
                size = data.images.get(name)
                refs[cid] = self._ref(cid, folder / name, path, group, split, size if size and all(size) else None)
        return sorted(refs.values(), key=lambda r: r.case_id)

