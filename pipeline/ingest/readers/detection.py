"""Detection box lists: the ChestX-ray14 ``BBox_List_2017.csv`` and generic COCO JSON.

Box convention
--------------
Both formats give ``x, y, w, h`` in pixels with ``(x, y)`` the top-left corner.  We read ``x`` as the
index of the first covered pixel and ``w`` as the number of covered pixels, so the inclusive pixel box
of the house convention (``[x_min, y_min, x_max, y_max]``, docs/architecture.md) is

    (x, y, x + w - 1, y + h - 1)            see :func:`xywh_to_inclusive`

Values stay float (ChestX-ray14 boxes are fractional, e.g. 225.08); the normaliser uses the continuous
edges ``x_min`` and ``x_max + 1 = x + w``, so the original extent is reproduced exactly and no rounding
happens here.

Robust parsing
--------------
* ChestX-ray14's header has 4 names for 6 columns (``Image Index,Finding Label,Bbox [x,y,w,h]``) and
  some copies carry trailing empty columns: the CSV is read with the ``csv`` module *by position*
  (image, label, x, y, w, h), never by header name.  BOM, CRLF and blank lines are fine.
* A bad row (missing or non-numeric value, width/height <= 0, non-finite) does not stop the read: it
  becomes a :class:`BoxRecord` with ``error`` set, and the adapter fails only the case (image) it
  belongs to.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.ingest.readers import ReadError


def xywh_to_inclusive(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
    """``x, y, w, h`` (top-left corner + size in pixels) -> inclusive ``(x_min, y_min, x_max, y_max)``."""
    return (x, y, x + w - 1.0, y + h - 1.0)


def inclusive_to_xywh(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Inverse of :func:`xywh_to_inclusive`."""
    x0, y0, x1, y1 = box
    return (x0, y0, x1 - x0 + 1.0, y1 - y0 + 1.0)


@dataclass
class BoxRecord:
    image: str  # image file name (as written in the annotation file)
    label: str  # dataset label (finding / category name)
    x: float = math.nan
    y: float = math.nan
    w: float = math.nan
    h: float = math.nan
    where: str = ""  # "line 5" / "annotation 17": for error messages
    error: str | None = None

    @property
    def box(self) -> tuple[float, float, float, float]:
        return xywh_to_inclusive(self.x, self.y, self.w, self.h)


def _check(rec: BoxRecord) -> BoxRecord:
    vals = (rec.x, rec.y, rec.w, rec.h)
    if not all(math.isfinite(v) for v in vals):
        rec.error = f"non-finite box value {vals}"
    elif rec.w <= 0 or rec.h <= 0:
        what = "width" if rec.w <= 0 else "height"
        rec.error = f"{what} {rec.w if rec.w <= 0 else rec.h:g} is not positive (x,y,w,h = {rec.x:g},{rec.y:g},{rec.w:g},{rec.h:g})"
    elif rec.x + rec.w <= 0 or rec.y + rec.h <= 0:
        rec.error = f"box lies left of / above the image (x,y,w,h = {rec.x:g},{rec.y:g},{rec.w:g},{rec.h:g})"
    return rec


def read_cxr14_csv(path: str | Path) -> list[BoxRecord]:
    """Every data row of a ChestX-ray14-style box CSV (image, label, x, y, w, h by position)."""
    path = Path(path)
    if not path.is_file():
        raise ReadError(f"file not found: {path}", file=str(path), hint="check the card's layout.csv")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReadError(f"cannot read {path.name}: {exc}", file=str(path), hint="is this the BBox_List CSV?") from exc
    out: list[BoxRecord] = []
    reader = csv.reader(text.splitlines())
    for lineno, row in enumerate(reader, start=1):
        cells = [c.strip() for c in row]
        while cells and cells[-1] == "":
            cells.pop()  # trailing empty columns
        if not cells:
            continue
        if lineno == 1 and not _is_number(cells[2] if len(cells) > 2 else ""):
            continue  # header (any spelling)
        where = f"line {lineno}"
        if len(cells) < 6:
            out.append(BoxRecord(cells[0] if cells else "", cells[1] if len(cells) > 1 else "", where=where,
                                 error=f"{len(cells)} fields, expected 6 (image, label, x, y, w, h)"))
            continue
        try:
            x, y, w, h = (float(v) for v in cells[2:6])
        except ValueError:
            out.append(BoxRecord(cells[0], cells[1], where=where, error=f"non-numeric box {cells[2:6]}"))
            continue
        out.append(_check(BoxRecord(cells[0], cells[1], x, y, w, h, where=where)))
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@dataclass
class CocoData:
    images: dict[str, tuple[int, int]]  # file_name -> (width, height); 0 when not given
    categories: dict[int, str]
    boxes: list[BoxRecord] = field(default_factory=list)


def read_coco_json(path: str | Path) -> CocoData:
    """Images, categories and ``bbox`` annotations of a COCO detection/instances JSON."""
    path = Path(path)
    if not path.is_file():
        raise ReadError(f"file not found: {path}", file=str(path), hint="check the card's layout.annotations")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReadError(f"cannot parse COCO JSON {path.name}: {exc}", file=str(path),
                        hint="the file is truncated or not JSON") from exc
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ReadError(f"{path.name} is not COCO JSON (needs `images`, `annotations`, `categories`)",
                        file=str(path), hint="use the instances_*.json / detection file")
    images_by_id: dict = {}
    images: dict[str, tuple[int, int]] = {}
    for im in data.get("images") or []:
        name = str(im.get("file_name", ""))
        images_by_id[im.get("id")] = name
        images[name] = (int(im.get("width") or 0), int(im.get("height") or 0))
    categories = {int(c["id"]): str(c.get("name", c["id"])) for c in data.get("categories") or [] if "id" in c}
    out = CocoData(images, categories)
    for i, ann in enumerate(data.get("annotations") or []):
        where = f"annotation {ann.get('id', i)}"
        name = images_by_id.get(ann.get("image_id"))
        cat = ann.get("category_id")
        label = categories.get(int(cat)) if isinstance(cat, (int, float, str)) and str(cat).lstrip("-").isdigit() else None
        if name is None:
            out.boxes.append(BoxRecord(f"<image_id {ann.get('image_id')}>", str(label), where=where,
                                       error=f"image_id {ann.get('image_id')} is not in `images`"))
            continue
        if label is None:
            out.boxes.append(BoxRecord(name, str(cat), where=where, error=f"category_id {cat} is not in `categories`"))
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            out.boxes.append(BoxRecord(name, label, where=where, error=f"bbox {bbox!r} is not [x, y, w, h]"))
            continue
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            out.boxes.append(BoxRecord(name, label, where=where, error=f"non-numeric bbox {bbox!r}"))
            continue
        out.boxes.append(_check(BoxRecord(name, label, x, y, w, h, where=where)))
    return out
