"""Detection boxes: the ChestX-ray14 CSV facts, robust parsing, the box convention, both adapters, and the
shipped nih-cxr14 card on the four real radiographs of ../shared/data/nih-cxr14-images (README facts).

Tests of CSV edge cases (all 880 boxed images, resized copies, split lists) synthesise blank images with
the right names; the card and the demo use the real images."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.detection import inclusive_to_xywh, read_coco_json, read_cxr14_csv, xywh_to_inclusive
from schemas.card import SourceCard
from sources.base import get_adapter, load_card
from pipeline.ingest.convert import convert
from schemas.config import SlicingConfig
from synthetic_images import synthesise_blank_images

SAMPLES = Path(os.environ.get("MEDREG_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "data"))
CSV = SAMPLES / "nih-cxr14-bbox" / "BBox_List_2017.csv"
REAL = SAMPLES / "nih-cxr14-images"
# README: image -> (Finding Label, inclusive pixel box x0, y0, x1 y1 (floor / ceil - 1), lung zone)
REAL_BOXES = {
    "00000032_037": ("Infiltrate", (339, 119, 511, 470), "right upper"),
    "00000150_002": ("Pneumonia", (601, 595, 817, 776), "left lower"),
    "00000211_016": ("Infiltrate", (237, 465, 468, 794), "right lower"),
    "00000468_017": ("Atelectasis", (149, 518, 261, 564), "right mid"),
}
REAL_INTENSITY = {"00000032_037": (4, 238, 158.8), "00000150_002": (0, 255, 103.2),
                  "00000211_016": (0, 225, 113.7), "00000468_017": (0, 255, 105.0)}


@pytest.fixture(scope="module", autouse=True)
def _samples_present():
    assert SAMPLES.is_dir(), f"sample data missing at {SAMPLES}: set MEDREG_SAMPLES"


@pytest.fixture(scope="module")
def records():
    return read_cxr14_csv(CSV)


@pytest.fixture(scope="module")
def cxr_root(tmp_path_factory, records):
    """The sample CSV plus blank 1024x1024 PNGs with the right names (the sample has no images)."""
    root = tmp_path_factory.mktemp("cxr14")
    shutil.copy(CSV, root / CSV.name)
    synthesise_blank_images(root / "images", sorted({r.image for r in records}))
    return root


def _adapter(root, **update):
    """The nih-cxr14 card on a synthetic root holding BBox_List_2017.csv (every image a case)."""
    card = load_card("nih-cxr14")
    layout = {**card.layout, "csv": CSV.name, "missing_images": "error", **update.pop("layout", {})}
    card = card.model_copy(update={"layout": layout, **update})
    return get_adapter(card, root)


# --- the CSV facts (README) ---------------------------------------------------------------------------

def test_readme_facts(records):
    assert len(records) == 984 and all(r.error is None for r in records)
    per_image = Counter(r.image for r in records)
    assert len(per_image) == 880
    assert sum(1 for n in per_image.values() if n > 1) == 93 and max(per_image.values()) == 4
    assert Counter(r.label for r in records) == {
        "Atelectasis": 180, "Cardiomegaly": 146, "Effusion": 153, "Infiltrate": 123, "Mass": 85, "Nodule": 79,
        "Pneumonia": 120, "Pneumothorax": 98}
    first = records[0]
    assert (first.image, first.label) == ("00013118_008.png", "Atelectasis")
    assert (first.x, first.y, first.w, first.h) == (225.0847458, 547.0192168, 86.77966102, 79.18644068)
    assert min(r.x for r in records) == pytest.approx(5.42, abs=0.01)
    assert max(r.x for r in records) == pytest.approx(905.89, abs=0.01)
    assert min(r.y for r in records) == pytest.approx(12.84, abs=0.01)
    assert max(r.y for r in records) == pytest.approx(876.98, abs=0.01)
    assert max(r.x + r.w for r in records) == pytest.approx(1012.08, abs=0.01)
    assert max(r.y + r.h for r in records) == pytest.approx(1022.05, abs=0.01)
    assert all(r.x + r.w < 1024 and r.y + r.h < 1024 for r in records)  # every box inside 1024 x 1024
    assert min(r.w for r in records) == pytest.approx(27.31, abs=0.01)
    assert min(r.h for r in records) == pytest.approx(21.62, abs=0.01)


def test_quirky_copies_parse_the_same(tmp_path, records):
    """CRLF, a BOM, trailing empty columns, blank lines and another header spelling."""
    lines = CSV.read_text().splitlines()
    body = [ln + ",," for ln in lines[1:]]
    text = "\ufeffImage Index,Finding Label,x,y,w,h,,\r\n" + "\r\n".join(body[:500]) + "\r\n\r\n" + "\r\n".join(body[500:]) + "\r\n"
    (tmp_path / "q.csv").write_text(text, encoding="utf-8", newline="")
    again = read_cxr14_csv(tmp_path / "q.csv")
    assert [(r.image, r.label, r.x, r.y, r.w, r.h) for r in again] == [(r.image, r.label, r.x, r.y, r.w, r.h) for r in records]


def test_bad_rows_are_flagged_not_fatal(tmp_path):
    (tmp_path / "b.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h]\n"
        "a.png,Mass,10,10,-5,20\n"
        "b.png,Mass,10,10,abc,20\n"
        "c.png,Mass,10,10\n"
        "d.png,Mass,10,10,5,20\n")
    recs = read_cxr14_csv(tmp_path / "b.csv")
    assert [r.error is None for r in recs] == [False, False, False, True]
    assert "width -5 is not positive" in recs[0].error and recs[0].where == "line 2"


def test_box_convention_documented_values():
    assert xywh_to_inclusive(10, 20, 5, 3) == (10, 20, 14, 22)  # 5 pixels: 10..14


@given(st.floats(0, 1000), st.floats(0, 1000), st.floats(1, 500), st.floats(1, 500))
def test_box_convention_round_trip(x, y, w, h):
    assert inclusive_to_xywh(xywh_to_inclusive(x, y, w, h)) == pytest.approx((x, y, w, h))


# --- the cxr14_csv adapter ----------------------------------------------------------------------------

def test_adapter_cases_boxes_and_terms(cxr_root, records):
    ad = _adapter(cxr_root)
    refs = ad.discover()
    assert len(refs) == 880 and len({r.patient_id for r in refs}) < 880
    ref = next(r for r in refs if r.case_id == "00013118_008")
    assert ref.patient_id == "00013118"
    st_ = ad.load(ref)
    assert st_.image.shape == (1, 1024, 1024) and not st_.is_3d and st_.layers == [] and st_.modality == "XR"
    (b,) = [b for b in st_.boxes if b.term == "atelectasis"]
    assert b.box == pytest.approx((225.0847458, 547.0192168, 225.0847458 + 86.77966102 - 1, 547.0192168 + 79.18644068 - 1))
    # every label maps to a term; totals over all cases
    total = Counter()
    for r in refs:
        for lab, *_ in r.extra["boxes"]:
            total[ad.term_for(lab)] += 1
    assert sum(total.values()) == 984
    assert total["pleural_effusion"] == 153 and total["infiltration"] == 123 and None not in total
    assert set(total) == {"atelectasis", "cardiomegaly", "pleural_effusion", "infiltration", "mass", "nodule",
                          "pneumonia", "pneumothorax"}


def test_adapter_loads_multi_box_image(cxr_root):
    ad = _adapter(cxr_root)
    refs = ad.discover()
    ref = max(refs, key=lambda r: len(r.extra["boxes"]))
    st_ = ad.load(ref)
    assert len(st_.boxes) == 4
    for b in st_.boxes:
        x0, y0, x1, y1 = b.box
        assert 0 <= x0 < x1 <= 1023 and 0 <= y0 < y1 <= 1023


def test_missing_image_is_a_case_error_with_hint(tmp_path):
    shutil.copy(CSV, tmp_path / CSV.name)
    ad = _adapter(tmp_path)
    refs = ad.discover()
    with pytest.raises(ReadError) as ei:
        ad.load(refs[0])
    assert "not found" in str(ei.value) and "images_" in ei.value.hint and ei.value.file.endswith(".png")


def test_missing_images_skip_with_no_image_at_all_fails_discovery(tmp_path):
    shutil.copy(CSV, tmp_path / CSV.name)
    ad = _adapter(tmp_path, layout={"missing_images": "skip"})
    with pytest.raises(ReadError, match="none of the 880 images named in BBox_List_2017.csv") as ei:
        ad.discover()
    assert "images_" in ei.value.hint
    with pytest.raises(ValueError, match="layout.missing_images: Input should be 'error' or 'skip'"):
        _adapter(tmp_path, layout={"missing_images": "maybe"}).discover()


def test_resized_images_get_scaled_boxes(tmp_path):
    (tmp_path / "b.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h]\nsmall.png,Mass,512,256,128,64\n")
    synthesise_blank_images(tmp_path / "images", ["small.png"], size=(256, 256))
    ad = _adapter(tmp_path, layout={"csv": "b.csv"})
    (ref,) = ad.discover()
    st_ = ad.load(ref)
    assert st_.boxes[0].box == pytest.approx((128, 64, 159, 79))
    assert any("scaled" in n for n in st_.notes)


def test_official_split_lists(tmp_path):
    (tmp_path / "b.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h]\n00000001_000.png,Mass,1,1,5,5\n"
                                    "00000002_000.png,Nodule,1,1,5,5\n")
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n")
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000003_000.png\n")
    ad = _adapter(tmp_path, layout={"csv": "b.csv"})
    assert {r.case_id: r.official_split for r in ad.discover()} == {"00000001_000": "train", "00000002_000": "test"}


# --- the coco_json adapter ----------------------------------------------------------------------------

def _coco(tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
                   {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
                   {"id": 3, "file_name": "c.png", "width": 64, "height": 48}],
        "categories": [{"id": 7, "name": "polyp"}, {"id": 8, "name": "tool"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10]},
            {"id": 2, "image_id": 1, "category_id": 8, "bbox": [0, 0, 4, 4]},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [50, 40, 30, 30]},  # runs off the image: clipped
            {"id": 4, "image_id": 3, "category_id": 7, "bbox": [1, 1, 0, 5]},  # zero width: case error
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    (tmp_path / "images").mkdir()
    for n in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((48, 64, 3), np.uint8) + 40).save(tmp_path / "images" / n)
    return SourceCard(name="toy-coco", title="toy", adapter="coco_json", licence="CC0-1.0", modality="endoscopy",
                      labels={"polyp": "polyp"}, layout={"annotations": "ann.json", "images": "images"})


def test_coco_adapter(tmp_path):
    card = _coco(tmp_path)
    ad = get_adapter(card, tmp_path)
    refs = {r.case_id: r for r in ad.discover()}
    assert sorted(refs) == ["a", "b", "c"]
    a = ad.load(refs["a"])
    assert [(b.term, b.box) for b in a.boxes] == [("polyp", (10, 5, 29, 14))]
    assert any("'tool' has no term" in n for n in a.notes)
    b = ad.load(refs["b"])
    assert b.boxes[0].box == (50, 40, 63, 47) and any("clipped" in n for n in b.notes)
    with pytest.raises(ReadError, match="width 0 is not positive"):
        ad.load(refs["c"])
    assert read_coco_json(tmp_path / "ann.json").categories == {7: "polyp", 8: "tool"}


def test_coco_split_mapping(tmp_path):
    card = _coco(tmp_path)
    card = card.model_copy(update={"layout": {"annotations": {"train": "ann.json"}, "images": {"train": "images"}}})
    assert {r.official_split for r in get_adapter(card, tmp_path).discover()} == {"train"}


def test_not_coco(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(ReadError, match="not COCO"):
        read_coco_json(tmp_path / "x.json")


# --- the shipped card on the real images (nih-cxr14-images) --------------------------------------------------

def test_real_images_readme_facts():
    for stem, (lo, hi, mean) in REAL_INTENSITY.items():
        with Image.open(REAL / "images" / f"{stem}.png") as im:
            assert (im.mode, im.size) == ("L", (1024, 1024))
            arr = np.asarray(im)
        assert (int(arr.min()), int(arr.max())) == (lo, hi) and float(arr.mean()) == pytest.approx(mean, abs=0.05)


def test_box_annotation_csv_header_has_three_empty_names(records):
    raw = (REAL / "box_annotation.csv").read_bytes()
    assert len(raw) == 92416 and b"\r" not in raw
    header, *body = raw.decode().splitlines()
    assert header == "Image Index,Finding Label,Bbox [x,y,w,h],,," and len(header.split(",")) == 9
    assert len(body) == 984 and {len(line.split(",")) for line in body} == {6}
    again = read_cxr14_csv(REAL / "box_annotation.csv")  # read by position: the empty names do not matter
    assert all(r.error is None for r in again) and len(again) == len(records)
    for a, b in zip(again, records, strict=True):
        assert (a.image, a.label) == (b.image, b.label)
        assert max(abs(a.x - b.x), abs(a.y - b.y), abs(a.w - b.w), abs(a.h - b.h)) <= 5e-8 + 1e-12  # 7th decimal


@pytest.fixture(scope="module")
def real():
    card = load_card("nih-cxr14")
    ad = get_adapter(card, card.resolve_root(SAMPLES))
    return card, ad, ad.discover()


def test_shipped_card_uses_the_real_images(real):
    card, ad, refs = real
    assert card.root == "nih-cxr14-images" and card.layout["missing_images"] == "skip"
    assert [r.case_id for r in refs] == sorted(REAL_BOXES)
    for ref in refs:
        st_ = ad.load(ref)
        with Image.open(REAL / "images" / f"{ref.case_id}.png") as im:
            assert np.array_equal(st_.image[0], np.asarray(im))  # the real pixels, not a synthetic stand-in
        assert st_.modality == "XR" and len(st_.boxes) == 1
        assert st_.boxes[0].term == ad.term_for(REAL_BOXES[ref.case_id][0])
        assert st_.notes == ["876 of the 880 images named in box_annotation.csv are not under images/ "
                             "(layout.missing_images: skip); their 980 boxes are not used"]


def test_real_boxes_equal_the_readme_inclusive_pixel_boxes(real):
    card, ad, refs = real
    for ref in refs:
        conv = convert(ad.load(ref), card, card.box_policy, SlicingConfig())
        (sl,) = conv.slices
        (reg,) = sl.regions
        label, box, _zone = REAL_BOXES[ref.case_id]
        assert (reg.term, reg.box_px) == (ad.term_for(label), box)
        assert sl.image.shape == (1024, 1024) and sl.window == "none (stored 8-bit)"
        # the 0-999 box decodes to within the grid's quantum (1024/999 px) of the pixel edges
        edges = (box[0], box[1], box[2] + 1, box[3] + 1)
        assert all(abs(v / 999 * 1024 - e) <= 1024 / 999 for v, e in zip(reg.box, edges, strict=True))


def test_real_boxes_land_on_the_lung_the_readme_names(real):
    """Radiological convention: the patient's right lung is on the image's left.  Each box lies in one half of
    the 1024-px film (one lung, never across the mediastinum) and in the README's zone: upper (centre above
    y 400), mid (400-650) or lower (below 600)."""
    _card, _ad, refs = real
    zones = {"upper": (0, 400), "mid": (400, 650), "lower": (600, 1024)}
    for ref in refs:
        _label, (x0, y0, x1, y1), zone = REAL_BOXES[ref.case_id]
        side, level = zone.split()
        assert (x1 < 512) if side == "right" else (x0 >= 512), ref.case_id
        lo, hi = zones[level]
        assert lo <= (y0 + y1) / 2 < hi, ref.case_id
        (ann,) = ref.extra["boxes"]
        assert ann[1] <= x0 + 1 and ann[1] + ann[3] - 1 >= x1 - 1  # the CSV box is the README box
