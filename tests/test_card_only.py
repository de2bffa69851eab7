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

from pathlib import Path

import numpy as np
import pydicom
import orjson
import pytest
from PIL import Image
from scipy import ndimage

from pipeline.ingest.convert import convert
from flows.run import build
from schemas.config import ReleaseConfig
from sources.base import get_adapter, load_card
from throwaway_datasets import DRIVE_CARD, SEG_CARD, SEGMENTS, H, W, fundus_case, write_card, write_coded_seg


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


@pytest.fixture()
def coded_seg(tmp_path, samples):
    root = tmp_path / "coded"
    sources, masks = write_coded_seg(root, samples / "dcmqi-ct-liver-seg" / "ct-3slice")
    card_path = write_card(tmp_path, SEG_CARD, "coded-vessels.yaml")
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
    # one case per batch, two worker processes: the card's terms must reach processes that only get the job
    runner = {"kind": "local", "max_workers": 2, "batch_cases": 1}
    release = build(_config(card_path, drive, runner=runner), tmp_path / "out", samples_root=samples)
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


def test_segment_side_without_a_sided_term_is_noted_not_a_late_error(tmp_path, coded_seg):
    """A laterality modifier on a segment whose card term has no ``*_left`` partner: the base term is
    emitted and the side is noted (before, ``artery_left`` reached the sample generator and failed late)."""
    from pydicom.dataset import Dataset

    root, card_path, _sources, _masks = coded_seg
    seg_path = root / "vessels-seg.dcm"
    ds = pydicom.dcmread(seg_path)
    mod = Dataset()
    mod.CodeValue, mod.CodingSchemeDesignator, mod.CodeMeaning = "7771000", "SCT", "Left"
    ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [mod]
    ds.save_as(seg_path)
    card = load_card(str(card_path))
    ad = get_adapter(card, root)
    (ref,) = ad.discover()
    st = ad.load(ref)
    assert {t for layer in st.layers for t in layer.names.values()} == {term for *_, term in SEGMENTS}
    assert any("segment 1 ('artery') is left, but term 'artery' has no artery_left" in n for n in st.notes)
