"""Detection boxes: the ChestX-ray14 CSV facts, robust parsing, the box convention, both adapters."""

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
from sources.detection import synthesise_blank_images

SAMPLES = Path(os.environ.get("MEDREG_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "data"))
CSV = SAMPLES / "nih-cxr14-bbox" / "BBox_List_2017.csv"


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
    card = load_card("nih-cxr14")
    if update:
        card = card.model_copy(update=update)
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


def test_resized_images_get_scaled_boxes(tmp_path):
    (tmp_path / "b.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h]\nsmall.png,Mass,512,256,128,64\n")
    synthesise_blank_images(tmp_path / "images", ["small.png"], size=(256, 256))
    ad = _adapter(tmp_path, layout={**load_card("nih-cxr14").layout, "csv": "b.csv"})
    (ref,) = ad.discover()
    st_ = ad.load(ref)
    assert st_.boxes[0].box == pytest.approx((128, 64, 159, 79))
    assert any("scaled" in n for n in st_.notes)


def test_official_split_lists(tmp_path):
    (tmp_path / "b.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h]\n00000001_000.png,Mass,1,1,5,5\n"
                                    "00000002_000.png,Nodule,1,1,5,5\n")
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n")
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000003_000.png\n")
    ad = _adapter(tmp_path, layout={**load_card("nih-cxr14").layout, "csv": "b.csv"})
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
