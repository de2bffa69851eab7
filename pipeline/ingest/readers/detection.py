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
  belongs to.  The same holds for a line that is not valid text in the file's encoding (the card's
  ``layout.encoding``, else a byte-order mark, else UTF-8): one latin-1 byte fails one record, named by
  its line number.  A CSV without a single data row is an error, not zero cases.
* COCO: a bad ``images`` entry (a width that is not a number) fails that image's case only.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.paths import shown
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
        value = rec.w if rec.w <= 0 else rec.h
        rec.error = f"{what} {value:g} is not positive (x,y,w,h = {rec.x:g},{rec.y:g},{rec.w:g},{rec.h:g})"
    elif rec.x + rec.w <= 0 or rec.y + rec.h <= 0:
        rec.error = f"box lies left of / above the image (x,y,w,h = {rec.x:g},{rec.y:g},{rec.w:g},{rec.h:g})"
    return rec


_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def decode_lines(raw: bytes, encoding: str | None, name: str, file: str) -> list[tuple[int, str, str | None]]:
    """``(line number, text, error)`` of every line of a text file.

    The encoding is the declared one (card ``layout.encoding``), else the one a byte-order mark names,
    else UTF-8.  A line that does not decode is kept with ``error`` set (its text decoded with
    replacement characters, so the record can still be attributed): one bad byte fails one record, not
    the whole file.
    """
    if encoding is not None:
        try:
            encoding = codecs.lookup(encoding).name
        except LookupError as exc:
            raise ReadError(f"{name}: unknown text encoding in the card's layout.encoding", file=file,
                            hint="use a Python codec name such as utf-8, latin-1 or cp1252") from exc
    else:
        encoding = next((enc for bom, enc in _BOMS if raw.startswith(bom)), "utf-8-sig")
    try:
        return [(i, line, None) for i, line in enumerate(raw.decode(encoding).splitlines(), start=1)]
    except UnicodeDecodeError:
        if encoding in ("utf-16", "utf-32"):
            raise ReadError(f"{name}: not valid {encoding} text", file=file,
                            hint="the file is damaged; re-download it") from None
    out: list[tuple[int, str, str | None]] = []
    for i, line in enumerate(raw.splitlines(), start=1):
        try:
            out.append((i, line.decode(encoding), None))
        except UnicodeDecodeError as exc:
            out.append((i, line.decode(encoding, errors="replace"),
                        f"not valid {encoding} text (byte {line[exc.start]:#04x} at column {exc.start + 1}); if the "
                        "file uses another encoding, set the card's layout.encoding (e.g. latin-1)"))
    return out


def read_cxr14_csv(path: str | Path, *, encoding: str | None = None) -> list[BoxRecord]:
    """Every data row of a ChestX-ray14-style box CSV (image, label, x, y, w, h by position).

    ``encoding``: the file's text encoding (default: byte-order mark, else UTF-8); a line that does not
    decode becomes a record with ``error`` set.  A file without a single data row is a ReadError.
    """
    path = Path(path)
    name = shown(path)
    if not path.is_file():
        raise ReadError(f"file not found: {name}", file=str(path), hint="check the card's layout.csv")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ReadError(f"cannot read {name}: {exc.strerror}", file=str(path),
                        hint="is this the BBox_List CSV?") from exc
    out: list[BoxRecord] = []
    for lineno, text, bad in decode_lines(raw, encoding, name, str(path)):
        cells = [c.strip() for c in next(csv.reader([text]), [])]
        while cells and cells[-1] == "":
            cells.pop()  # trailing empty columns
        if not cells:
            continue
        if lineno == 1 and bad is None and not _is_number(cells[2] if len(cells) > 2 else ""):
            continue  # header (any spelling)
        out.append(_csv_record(cells, f"line {lineno}", bad))
    if not out:
        raise ReadError(f"{name} holds no box rows (empty, or a header only)", file=str(path),
                        hint="point the card's layout.csv at the box list (image, label, x, y, w, h per line)")
    return out


def _csv_record(cells: list[str], where: str, bad: str | None) -> BoxRecord:
    image, label = (cells[0] if cells else ""), (cells[1] if len(cells) > 1 else "")
    if bad is not None:
        return BoxRecord(image, label, where=where, error=bad)
    if len(cells) < 6:
        return BoxRecord(image, label, where=where, error=f"{len(cells)} fields, expected 6 (image, label, x, y, w, h)")
    try:
        x, y, w, h = (float(v) for v in cells[2:6])
    except ValueError:
        names = [k for k, v in zip("xywh", cells[2:6], strict=True) if not _is_number(v)]
        return BoxRecord(image, label, where=where, error=f"non-numeric box field(s) {', '.join(names)}")
    return _check(BoxRecord(image, label, x, y, w, h, where=where))


def _whole(value: object) -> int | None:
    """A COCO integer field (int, integral float or digit string; missing = 0), None when invalid."""
    if value is None or value == "":
        return 0
    try:
        f = float(value)  # type: ignore[arg-type]  # anything float() refuses is invalid
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) and f >= 0 and f == int(f) else None


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
    """Images, categories and ``bbox`` annotations of a COCO detection/instances JSON.

    A bad entry (an image whose width is not a number, a box that is not ``[x, y, w, h]``) becomes a
    record with ``error`` set for the image it belongs to; the rest of the file is read.
    """
    path = Path(path)
    name = shown(path)
    if not path.is_file():
        raise ReadError(f"file not found: {name}", file=str(path), hint="check the card's layout.annotations")
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ReadError(f"{name} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})",
                        file=str(path), hint="JSON must be UTF-8; re-save the file as UTF-8") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ReadError(f"cannot parse COCO JSON {name}: {exc}", file=str(path),
                        hint="the file is truncated or not JSON") from exc
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ReadError(f"{name} is not COCO JSON (needs `images`, `annotations`, `categories`)",
                        file=str(path), hint="use the instances_*.json / detection file")
    images_by_id, images, image_errors = _coco_images(data.get("images") or [])
    categories = {}
    for c in data.get("categories") or []:
        cid = _whole(c.get("id")) if isinstance(c, dict) else None
        if cid is not None:
            categories[cid] = str(c.get("name", cid))
    out = CocoData(images, categories)
    for i, ann in enumerate(data.get("annotations") or []):
        if isinstance(ann, dict):
            out.boxes.append(_coco_box(ann, i, images_by_id, image_errors, categories))
    return out


def _coco_images(entries: list) -> tuple[dict, dict[str, tuple[int, int]], dict[str, str]]:
    """(id -> file name, file name -> (width, height), file name -> error of its `images` entry)."""
    by_id: dict = {}
    images: dict[str, tuple[int, int]] = {}
    errors: dict[str, str] = {}  # one bad `images` entry fails that image's case only
    for i, im in enumerate(entries):
        if not isinstance(im, dict):
            continue  # no file name: nothing can refer to it (its annotations report an unknown image_id)
        name = str(im.get("file_name", ""))
        by_id[im.get("id")] = name
        width, height = _whole(im.get("width")), _whole(im.get("height"))
        bad = [k for k, v in (("width", width), ("height", height)) if v is None]
        if bad:
            errors[name] = f"images entry {im.get('id', i)}: {' and '.join(bad)} not a whole number >= 0"
        images[name] = (width or 0, height or 0)
    return by_id, images, errors


def _coco_box(ann: dict, i: int, images_by_id: dict, image_errors: dict[str, str],
              categories: dict[int, str]) -> BoxRecord:
    where = f"annotation {ann.get('id', i)}"
    name = images_by_id.get(ann.get("image_id"))
    cat = ann.get("category_id")
    cid = _whole(cat) if isinstance(cat, (int, float, str)) else None
    label = categories.get(cid) if cid is not None else None
    if name is None:
        return BoxRecord(f"<image_id {ann.get('image_id')}>", str(label), where=where,
                         error=f"image_id {ann.get('image_id')} is not in `images`")
    if name in image_errors:
        return BoxRecord(name, str(label), where=where, error=image_errors[name])
    if label is None:
        return BoxRecord(name, str(cat), where=where, error=f"category_id {cat} is not in `categories`")
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return BoxRecord(name, label, where=where, error="bbox is not [x, y, w, h]")
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return BoxRecord(name, label, where=where, error="non-numeric bbox value")
    return _check(BoxRecord(name, label, x, y, w, h, where=where))
