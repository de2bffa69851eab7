"""Two datasets the project has never seen go through with a card alone (issue 11).

* A DICOM-SEG with five coded segments whose terms are not in the shipped glossary (SCT 51114001 artery,
  20982000 capillary, 79654002 edema, 29092000 vein, 85756007 tissue), written with highdicom on the dcmqi
  CT: the card defines the terms and maps the codes.
* A DRIVE-like fundus folder: ``images/21_training.tif``, vessels ``1st_manual/21_manual1.gif``, field of
  view ``mask/21_training_mask.gif``: the card pairs them with ``image_regex`` and names the field-of-view
  folder ``roi_masks``.

Each is built into a release in-process, and every emitted box is checked against boxes computed here
independently (pydicom/highdicom + scipy for the SEG, Pillow + scipy for the fundus masks).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import orjson
import pydicom
import pytest
import yaml
from PIL import Image
from pydicom.sr.codedict import codes
from scipy import ndimage

from pipeline.ingest.convert import convert
from pipeline.release.case import build
from schemas.config import ReleaseConfig
from sources.base import get_adapter, load_card
from throwaway_datasets import DRIVE_CARD, H, W, fundus_case, write_card

SEGMENTS = [  # (number, label, SCT code, meaning, term)
    (1, "artery", "51114001", "Artery", "artery"),
    (2, "capillary", "20982000", "Capillary", "capillary"),
    (3, "edema", "79654002", "Edema", "edema"),
    (4, "vein", "29092000", "Vein", "vein"),
    (5, "tissue", "85756007", "Tissue", "tissue"),
]

SEG_CARD = {
    "name": "coded-vessels",
    "title": "coded DICOM-SEG whose terms are new (test)",
    "adapter": "dicom_seg",
    "licence": "CC0-1.0",
    "modality": "CT",
    "body_region": "thorax",
    "intensity": {"preset": "soft_tissue"},
    "terms": {
        "artery": {"en": "artery", "zh": "动脉", "category": "vessel", "body_region": ["thorax", "abdomen"],
                   "codes": {"SCT": "51114001"}},
        "capillary": {"en": "capillary", "zh": "毛细血管", "category": "vessel", "body_region": "thorax",
                      "codes": {"SCT": "20982000"}},
        "vein": {"en": "vein", "zh": "静脉", "category": "vessel", "body_region": ["thorax", "abdomen"],
                 "codes": {"SCT": "29092000"}},
        "edema": {"en": "edema", "zh": "水肿", "synonyms_en": ["oedema"], "category": "finding",
                  "body_region": "thorax", "codes": {"SCT": "79654002"}},
        "tissue": {"en": "tissue", "zh": "组织", "category": "tissue", "body_region": "thorax",
                   "codes": {"SCT": "85756007"}},
    },
    "labels": {f"SCT:{code}": term for _, _, code, _, term in SEGMENTS},
    "box_policy": {"mode": "component", "min_pixels": 0},
    "layout": {"scan": "."},
}


def _rows(release: Path) -> list[dict]:
    shards = sorted((release / "data").rglob("*.jsonl"))
    return [orjson.loads(line) for p in shards for line in p.read_bytes().splitlines()]


def _config(card_path: Path, root: Path, **extra) -> ReleaseConfig:
    return ReleaseConfig.model_validate({
        "name": "card-only", "version": "1", "seed": 3, "sources": [{"card": str(card_path), "root": str(root)}],
        "slicing": {"axes": ["axial"], "min_spacing_mm": 0, "max_slices_per_case": 8, "min_label_pixels": 1},
        "tasks": {"mix": {"region_to_text": 1, "text_to_region": 1, "grounded_report": 1}, "langs": ["en", "zh"]},
        "validation": {"validators": ["rules"], "policy": {"per_validator": {"rules": {"fail": "flag"}}}},
        **extra,
    })


def _regions(rows: list[dict]) -> set[tuple[int, str, tuple[int, ...]]]:
    return {(r["meta"]["slice_index"], g["term"], tuple(g["box_px"])) for r in rows for g in r["meta"]["regions"]}


# --- the coded DICOM-SEG -------------------------------------------------------------------------------


def _masks(shape: tuple[int, int]) -> dict[int, np.ndarray]:
    """Per segment a (3, R, C) mask in the order of the CT files 01, 02, 03 (no two segments overlap)."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    m = {n: np.zeros((3, *shape), bool) for n, *_ in SEGMENTS}
    m[1][:, 100:121, 200:241] = True  # artery on every slice
    m[2][1] = (rr - 300) ** 2 / 15**2 + (cc - 120) ** 2 / 25**2 <= 1  # capillary: an ellipse on 02.dcm
    m[3][0, 250:262, 300:330] = True  # edema: two components on 01.dcm
    m[3][0, 280:300, 340:352] = True
    m[4][2, 400:431, 60:75] = True  # vein on 03.dcm
    m[5][:, 330:380, 380:460] = True  # tissue on every slice
    return m


@pytest.fixture()
def coded_seg(tmp_path, samples):
    ct = samples / "dcmqi-ct-liver-seg" / "ct-3slice"
    root = tmp_path / "coded"
    shutil.copytree(ct, root / "ct")
    files = sorted((root / "ct").glob("*.dcm"))
    sources = [pydicom.dcmread(f) for f in files]
    for ds in sources:
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # the dcmqi CT has an empty value, which highdicom rejects
    masks = _masks((int(sources[0].Rows), int(sources[0].Columns)))
    pixels = np.stack([masks[n] for n, *_ in SEGMENTS], axis=-1).astype(np.uint8)
    descs = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=label, algorithm_type="MANUAL",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure if term == "edema"
            else codes.SCT.AnatomicalStructure,
            segmented_property_type=hd.sr.CodedConcept(value=code, scheme_designator="SCT", meaning=meaning))
        for n, label, code, meaning, term in SEGMENTS
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixels, segmentation_type="BINARY", segment_descriptions=descs,
            series_instance_uid=hd.UID(), series_number=7, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1")
    seg.save_as(root / "vessels-seg.dcm")
    card_path = tmp_path / "coded-vessels.yaml"
    card_path.write_text(yaml.safe_dump(SEG_CARD, allow_unicode=True), encoding="utf-8")
    return root, card_path, sources, masks


def _expected_seg_boxes(sources, masks) -> set[tuple[int, str, tuple[int, ...]]]:
    """(canonical slice, term, box) per 4-connected component, computed from the masks written above."""
    for ds in sources:  # axial, rows along +y (posterior), columns along +x (patient left): display == stored
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    z = [float(ds.ImagePositionPatient[2]) for ds in sources]
    canonical = {i: k for k, i in enumerate(np.argsort(z))}  # canonical axis 0 runs inferior -> superior
    out = set()
    for n, _label, _code, _meaning, term in SEGMENTS:
        for i in range(3):
            lab, _ = ndimage.label(masks[n][i])
            for sl in ndimage.find_objects(lab):
                out.add((canonical[i], term, (sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1)))
    return out


def test_coded_seg_with_new_terms_builds_with_a_card_only(tmp_path, samples, coded_seg):
    root, card_path, sources, masks = coded_seg
    release = build(_config(card_path, root), tmp_path / "out", samples_root=samples)
    rows = _rows(release)
    manifest = orjson.loads((release / "manifest.json").read_bytes())
    assert manifest["counts"]["errors"] == 0 and rows
    expected = _expected_seg_boxes(sources, masks)
    assert len(expected) == 10  # artery x3, capillary, edema x2 components, vein, tissue x3
    got = _regions(rows)
    assert got <= expected  # every box written is a box of the masks
    assert {t for _, t, _ in got} == {term for *_, term in SEGMENTS}
    assert {r["meta"]["slice_index"] for r in rows} == {0, 1, 2}
    # the converted slices hold exactly the expected regions (rows sample subsets of them)
    cfg = _config(card_path, root)
    card = load_card(str(card_path))
    (ref,) = get_adapter(card, root).discover()
    conv = convert(get_adapter(card, root).load(ref), card, card.box_policy, cfg.slicing)
    assert {(s.index, r.term, r.box_px) for s in conv.slices for r in s.regions} == expected
    zh = " ".join(t["value"] for r in rows if r["meta"]["lang"] == "zh" for t in r["conversations"])
    en = " ".join(t["value"] for r in rows if r["meta"]["lang"] == "en" for t in r["conversations"])
    for name in ("动脉", "毛细血管", "水肿", "静脉", "组织"):
        assert f"<ref>{name}</ref>" in zh
    for name in ("artery", "capillary", "edema", "vein", "tissue"):
        assert f"<ref>{name}</ref>" in en


# --- the DRIVE-like fundus folder ----------------------------------------------------------------------

@pytest.fixture()
def drive(tmp_path):
    root = tmp_path / "drive"
    rng = np.random.default_rng(21)
    for case in ("21", "22"):
        fundus_case(root, case, rng)
    return root


def _bbox(path: Path) -> tuple[int, int, int, int]:
    arr = np.asarray(Image.open(path).convert("L")) > 127
    (sl,) = ndimage.find_objects(arr.astype(np.uint8))
    return (sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1)


def test_drive_like_folder_builds_with_a_card_only(tmp_path, samples, drive):
    card_path = write_card(tmp_path, DRIVE_CARD)
    release = build(_config(card_path, drive), tmp_path / "out", samples_root=samples)
    rows = _rows(release)
    assert orjson.loads((release / "manifest.json").read_bytes())["counts"]["errors"] == 0
    for case in ("21", "22"):
        case_rows = [r for r in rows if r["meta"]["case_id"] == f"{case}_training"]
        assert case_rows
        vessel = _bbox(drive / "1st_manual" / f"{case}_manual1.gif")
        fov = _bbox(drive / "mask" / f"{case}_training_mask.gif")
        assert _regions(case_rows) == {(0, "retinal_vessel", vessel)}  # the field of view is never an object
        assert {orjson.loads(r["meta"]["transform"])["roi_box_px"] == list(fov) for r in case_rows} == {True}
        assert all((r["width"], r["height"]) == (W, H) for r in case_rows)
    zh = " ".join(t["value"] for r in rows if r["meta"]["lang"] == "zh" for t in r["conversations"])
    assert "<ref>视网膜血管</ref>" in zh
