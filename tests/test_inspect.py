"""``inspect_path``: what a file or folder is, enough to write a card, with no patient data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.ingest.inspect import format_inspection, inspect_path
from synthetic_dicom import write_synthetic_series

SAMPLES = Path(os.environ.get("MEDREG_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "data"))

# values of the samples' headers that must never be shown
SECRETS = ["JANCT000", "99000", "20030417", "2003", "xFGUXdDEoVLdjlzI", "C5NnmkW2D8md5V6uoN7OM9PAU",
           "Visible Human", "UCSD", "03086212"]


@pytest.fixture(scope="module", autouse=True)
def _samples_present():
    assert SAMPLES.is_dir(), f"sample data missing at {SAMPLES}: set MEDREG_SAMPLES"


def _no_secrets(d, extra=()):
    text = json.dumps(d, default=str) + format_inspection(d)
    for s in list(SECRETS) + list(extra):
        assert s not in text, s
    return text


def _uids(folder: Path) -> list[str]:
    out = []
    for f in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out += [str(ds.get(k)) for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID") if ds.get(k)]
    return out


def test_dcmqi_folder():
    root = SAMPLES / "dcmqi-ct-liver-seg"
    d = inspect_path(root)
    assert d["kind"] == "folder" and d["suggested_adapter"] == "dicom_seg"
    (s,) = d["dicom"]["series"]
    assert (s["modality"], s["slices"], s["rows_cols"], s["orientation"], s["axis_codes"]) == ("CT", 3, [512, 512], "axial", "SPL")
    assert s["spacing_mm"] == [1.0, 0.8105, 0.8105] and s["rescale"] == [(1.0, -1024.0)]
    (seg,) = d["dicom"]["segmentations"]
    assert seg["refers_to_series"] == 1 and seg["type"] == "BINARY" and seg["frames"] == 3
    assert seg["segments"] == [{"number": 1, "label": "Liver", "code": "SRT:T-62000", "meaning": "Liver",
                                "category": "Tissue", "laterality": None}]
    text = _no_secrets(d, _uids(root))
    assert "segment 1: 'Liver' SRT:T-62000" in text


def test_visible_human_folder():
    root = SAMPLES / "rtstruct-visible-human"
    d = inspect_path(root)
    assert d["suggested_adapter"] == "dicom_rtstruct"
    (rt,) = d["dicom"]["structure_sets"]
    assert rt["refers_to_series"] == 1
    assert [(r["number"], r["name"], r["type"], r["contours"]) for r in rt["rois"]] == [
        (13, "BODY", "EXTERNAL", 4), (23, "SpinalCord", "ORGAN", 4)]
    masks = {n["path"]: n for n in d["nifti"]}
    assert masks["AnonDICOM/Mask.nii.gz"]["looks_like"] == "label map"
    assert masks["AnonDICOM/Mask.nii.gz"]["label_ids"] == [1, 2] and masks["AnonDICOM/Mask.nii.gz"]["orientation"] == "LPS"
    assert masks["AnonDICOM/Image.nii.gz"]["looks_like"] == "image"
    _no_secrets(d, _uids(root))


def test_cxr14_csv():
    d = inspect_path(SAMPLES / "nih-cxr14-bbox" / "BBox_List_2017.csv")
    assert d["kind"] == "csv" and d["rows"] == 984 and d["columns"] == 6
    assert "3 names for 6 columns" in d["header_quirk"] and "by position" in d["header_quirk"]
    assert (d["boxes"], d["images"], d["max_boxes_per_image"]) == (984, 880, 4)
    assert d["labels"]["Effusion"] == 153 and d["labels"]["Infiltrate"] == 123
    assert d["suggested_adapter"] == "cxr14_csv" and d["non_positive_sizes"] == 0
    assert max(d["max_right_bottom"]) < 1024


def test_nifti_label_map_and_image():
    d = inspect_path(SAMPLES / "totalseg-nifti" / "ct" / "example_seg.nii.gz")
    assert d["looks_like"] == "label map" and d["orientation"] == "RAS" and d["shape"] == [122, 101, 30]
    assert 13 in d["label_ids"] and d["label_voxels"]["13"] == 1 and len(d["label_ids"]) == 41
    d = inspect_path(SAMPLES / "totalseg-nifti" / "mr" / "example_mr_sm.nii.gz")
    assert d["looks_like"] == "image" and d["orientation"] == "LPS" and d["spacing_mm"] == [3.0, 3.0, 3.0]
    d = inspect_path(SAMPLES / "mricron-atlases" / "aal.nii.gz")
    assert d["sidecar_names"] == "aal.nii.txt" and d["sform_code"] == 4 and d["qform_code"] == 0


def test_masks_and_images():
    d = inspect_path(SAMPLES / "biomedparse-demo-2d" / "demo_mask" / "15_X-Ray_chest_lung.png")
    assert d["mode"] == "RGBA" and d["values"] == {"0": 659936, "255": 388640} and d["looks_like"] == "binary mask"
    d = inspect_path(SAMPLES / "kvasir-seg-sample")
    kinds = {i["path"].split("/")[0]: i["looks_like"] for i in d["images"]}
    assert kinds["images"] == "colour image" and kinds["masks"].startswith("near-binary")
    (js,) = d["tables"]
    assert js["box_labels"] == {"polyp": 7}


def test_coco_json(tmp_path):
    data = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 3, "name": "polyp"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]}]}
    (tmp_path / "c.json").write_text(json.dumps(data))
    d = inspect_path(tmp_path / "c.json")
    assert d["looks_like"] == "COCO" and d["per_category"] == {"polyp": 1} and d["suggested_adapter"] == "coco_json"


def test_synthetic_series_with_patient_tags_and_a_gap(tmp_path):
    write_synthetic_series(tmp_path / "s", np.zeros((4, 8, 8), np.int16), positions=[(0, 0, z) for z in (0, 1, 2, 6)],
                           patient_id="PAT-SECRET-7", names=["a", "b", "c", "d"])  # no .dcm extension
    d = inspect_path(tmp_path)
    (s,) = d["dicom"]["series"]
    assert s["slices"] == 4 and any("gap" in n for n in s["notes"])
    _no_secrets(d, ["PAT-SECRET-7", "Doe", "Jane", "19700101", "20200102", "ACC123", "Synthetic Hospital", "Who^Doctor"]
                + _uids(tmp_path))


def test_broken_series_is_described_not_raised(tmp_path):
    write_synthetic_series(tmp_path, np.zeros((2, 8, 8), np.int16), names=["a.dcm", "b.dcm"])
    ds = pydicom.dcmread(tmp_path / "b.dcm")
    del ds.ImagePositionPatient
    ds.save_as(tmp_path / "b.dcm")
    d = inspect_path(tmp_path)
    (s,) = d["dicom"]["series"]
    assert "ImagePositionPatient" in s["problem"] and "b.dcm" in s["problem"]
    assert "problem" in format_inspection(d)


def test_missing_and_unknown(tmp_path):
    assert inspect_path(tmp_path / "nope")["kind"] == "missing"
    (tmp_path / "x.bin").write_bytes(b"\x00" * 10)
    assert inspect_path(tmp_path / "x.bin")["kind"] == "unknown"
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    assert inspect_path(tmp_path / "bad.nii.gz")["kind"] == "unreadable"
