"""Adapters on the real sample data, asserting the reference facts of each folder's README."""

import json

import numpy as np
import pytest

from pipeline.ingest.convert import convert
from pipeline.ingest.readers import ReadError
from schemas.config import SlicingConfig
from sources.base import adapters, get_adapter, load_card
from sources.terms import label_table


def _adapter(name, samples):
    card = load_card(name)
    return card, get_adapter(card, card.resolve_root(samples))


def _convert(card, study, axes=("axial",)):
    return convert(study, card, card.box_policy, SlicingConfig(axes=list(axes), min_spacing_mm=0, max_slices_per_case=1000))


def test_registry_lists_builtins():
    names = set(adapters())
    assert {"nifti_labelmap", "sam_med2d", "mask_folder_2d"} <= names


def test_totalseg_ct_liver_box_and_laterality(samples):
    card, ad = _adapter("totalseg-ct", samples)
    (ref,) = ad.discover()
    st = ad.load(ref)
    assert st.is_3d and st.transform["source_orientation"] == "RAS"
    lab = st.layers[0].array
    k, r, c = np.where(lab == 5)
    # README voxel box (i, j, k): [41,25,0]-[105,86,29]; canonical = (k, flipped j, flipped i)
    ni, nj = 122, 101
    assert (k.min(), k.max()) == (0, 29)
    assert (nj - 1 - r.max(), nj - 1 - r.min()) == (25, 86)
    assert (ni - 1 - c.max(), ni - 1 - c.min()) == (41, 105)
    # the one-voxel label 13 survives the layout change
    assert (lab == 13).sum() == 1
    res = _convert(card, st)
    for sl in res.slices:
        terms = {r.term: r for r in sl.regions}
        w = sl.image.shape[1]
        if "liver" in terms and "spleen" in terms:
            lx = (terms["liver"].box_px[0] + terms["liver"].box_px[2]) / 2
            sx = (terms["spleen"].box_px[0] + terms["spleen"].box_px[2]) / 2
            assert lx < w / 2 < sx
        for t, reg in terms.items():
            if t.endswith("_right") and t[: -len("_right")] + "_left" in terms:
                other = terms[t[: -len("_right")] + "_left"]
                assert reg.box_px[0] + reg.box_px[2] < other.box_px[0] + other.box_px[2], t


def test_totalseg_mr_uses_its_own_label_map(samples):
    card, ad = _adapter("totalseg-mr", samples)
    (ref,) = ad.discover()
    st = ad.load(ref)
    assert st.transform["source_orientation"] == "LPS"
    names = st.layers[0].names
    assert names[11] == "lung_right" and names[5] == "liver"  # 11 is lung_lower_lobe_left in CT
    ct_card = load_card("totalseg-ct")
    assert label_table(ct_card)["11"] == "lung_lower_lobe_left"
    res = _convert(card, st)
    mid = [s for s in res.slices if {"liver", "spleen"} <= {r.term for r in s.regions}]
    assert mid
    for sl in mid:
        t = {r.term: r.box_px for r in sl.regions}
        assert (t["liver"][0] + t["liver"][2]) / 2 < sl.image.shape[1] / 2 < (t["spleen"][0] + t["spleen"][2]) / 2


def test_sam_med2d_instance_files_one_box_each(samples):
    card, ad = _adapter("sam-med2d", samples)
    refs = {r.case_id: r for r in ad.discover()}
    # every mask on disk is referenced by a JSON index and becomes one layer
    masks = sorted((samples / "sam-med2d-demo/data_demo/masks").glob("*.png"))
    assert sum(len(r.extra["files"]) for r in refs.values()) == len(masks) == 30
    assert refs["amos_0004_75"].official_split == "test" and refs["amos_0006_90"].official_split == "train"
    assert refs["amos_0004_75"].patient_id == "amos_0004"
    st = ad.load(refs["s0619_32"])
    res = _convert(card, st)
    (sl,) = res.slices
    # one box per instance file (hip_left has two instance files -> two boxes)
    assert len(sl.regions) == len(refs["s0619_32"].extra["files"])
    assert sum(r.term == "hip_left" for r in sl.regions) == 2
    # the card flips the upside-down AMOS CT exports vertically (flip_ud): the README's boxes with y -> 511 - y
    st = ad.load(refs["amos_0004_75"])
    assert st.transform["display"] == "flip_ud"
    boxes = {r.term: (r.box_px, r.area) for r in _convert(card, st).slices[0].regions}
    assert boxes["liver"] == ((153, 511 - 294, 221, 511 - 237), 3012)
    assert boxes["aorta"] == ((289, 511 - 229, 315, 511 - 203), 530)
    st = ad.load(refs["amos_0006_90"])
    boxes = {r.term: r.box_px for r in _convert(card, st).slices[0].regions}
    assert boxes["liver"] == (97, 511 - 355, 269, 511 - 188)


README_BIOMEDPARSE = {
    "15_X-Ray_chest": {"lung": [(68, 68, 475, 947), (556, 72, 931, 951)], "lung_left": [(556, 72, 931, 951)], "lung_right": [(68, 68, 475, 947)]},
    "23_fundus_retinal": {"optic_disc": [(244, 417, 379, 578)], "optic_cup": [(282, 459, 355, 535)]},
    "24_endoscope_colon": {"neoplastic_polyp": [(132, 383, 281, 599)], "non_neoplastic_polyp": [(756, 551, 813, 605)]},
    "20_ultrasound_breast": {"breast_tumor": [(162, 220, 552, 529)]},
    "25_dermoscopy_skin": {"melanoma": [(449, 338, 733, 700)]},
}


def test_biomedparse_boxes_modalities_and_components(samples):
    card, ad = _adapter("biomedparse-2d", samples)
    refs = {r.case_id: r for r in ad.discover()}
    assert len(refs) == 5
    mods = {}
    for cid, expect in README_BIOMEDPARSE.items():
        st = ad.load(refs[cid])
        mods[cid] = st.modality
        (sl,) = _convert(card, st).slices
        for term, boxes in expect.items():
            got = sorted(r.box_px for r in sl.regions if r.term == term)
            assert got == sorted(boxes), (cid, term, got)
    assert mods == {"15_X-Ray_chest": "XR", "23_fundus_retinal": "fundus", "24_endoscope_colon": "endoscopy",
                    "20_ultrasound_breast": "US", "25_dermoscopy_skin": "dermoscopy"}
    # the generic polyp mask is the union of two components -> two boxes with the component policy
    st = ad.load(refs["24_endoscope_colon"])
    polyps = [r for r in _convert(card, st).slices[0].regions if r.term == "polyp"]
    assert len(polyps) == 2
    assert sum(r.area for r in polyps) == 27859
    # and one box with the label policy
    one = convert(st, card, card.box_policy.model_copy(update={"mode": "label"}), SlicingConfig())
    assert [r.box_px for r in one.slices[0].regions if r.term == "polyp"] == [(132, 383, 813, 605)]


def test_kvasir_boxes_match_dataset_json_within_one_pixel(samples):
    card, ad = _adapter("kvasir-seg", samples)
    ref_boxes = json.loads((samples / "kvasir-seg-sample/kavsir_bboxes.json").read_text())
    for ref in ad.discover():
        st = ad.load(ref)
        (sl,) = _convert(card, st).slices
        got = sorted(r.box_px for r in sl.regions)
        entry = ref_boxes[ref.case_id]
        assert (entry["width"], entry["height"]) == (sl.image.shape[1], sl.image.shape[0])
        expect = sorted((b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in entry["bbox"])
        if ref.case_id == "cju0roawvklrq0799vmjorwfv":
            # the stray (0,0) pixel is dust; the 3-px sliver is merged into the first polyp by the mask
            assert len(got) == 2 and all(b[0] > 0 for b in got)
            expect = [e for e in expect if e[2] - e[0] > 5]
        assert len(got) == len(expect), ref.case_id
        for g, e in zip(got, expect):
            assert all(abs(a - b) <= 1 for a, b in zip(g, e)), (ref.case_id, g, e)


def test_mask_image_size_mismatch_is_a_clear_error(samples, tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "images/a.jpg")
    Image.new("L", (32, 32), 255).save(tmp_path / "masks/a.jpg")
    card = load_card("kvasir-seg")
    ad = get_adapter(card, tmp_path)
    (ref,) = ad.discover()
    with pytest.raises(ReadError) as ei:
        ad.load(ref)
    assert "a.jpg" in str(ei.value) and "32x32" in str(ei.value) and ei.value.file.endswith("masks/a.jpg")


def test_truncated_nifti_is_a_clear_error(samples, tmp_path):
    src = samples / "totalseg-nifti/ct/example_ct_sm.nii.gz"
    bad = tmp_path / "ct.nii.gz"
    bad.write_bytes(src.read_bytes()[:5000])
    from pipeline.ingest.readers.nifti import read_nifti

    with pytest.raises(ReadError) as ei:
        read_nifti(bad)
    assert ei.value.file == str(bad) and "truncated" in ei.value.hint


def test_totalseg_dataset_layout_one_mask_file_per_structure(samples, tmp_path):
    """The TotalSegmentator dataset ships sXXXX/ct.nii.gz + sXXXX/segmentations/<structure>.nii.gz:
    split the example label map into such files; the adapter must give the same regions."""
    import nibabel as nib

    from pipeline.language.glossary import load_label_map

    src = samples / "totalseg-nifti/ct"
    case = tmp_path / "s0001"
    (case / "segmentations").mkdir(parents=True)
    (case / "ct.nii.gz").write_bytes((src / "example_ct_sm.nii.gz").read_bytes())
    seg = nib.load(str(src / "example_seg.nii.gz"))
    arr = np.asanyarray(seg.dataobj)
    names = load_label_map("totalseg_total")
    for lid, name in names.items():
        nib.save(nib.Nifti1Image((arr == lid).astype(np.uint8), seg.affine), str(case / "segmentations" / f"{name}.nii.gz"))
    card = load_card("totalseg-ct").model_copy(update={"layout": {
        "image_glob": "s*/ct.nii.gz", "label_from_image": [r"ct\.nii\.gz$", "segmentations"], "case_regex": r"^(s\d{4})/"}})
    ad = get_adapter(card, tmp_path)
    (ref,) = ad.discover()
    assert ref.case_id == "s0001" and ref.paths["labels"].endswith("segmentations")
    st = ad.load(ref)
    assert len(st.layers) == 1  # TotalSegmentator structures do not overlap: one packed layer
    card0, ad0 = _adapter("totalseg-ct", samples)
    st0 = ad0.load(ad0.discover()[0])
    a = {(s.axis, s.index): sorted((r.term, r.box_px, r.label_id) for r in s.regions) for s in _convert(card, st).slices}
    b = {(s.axis, s.index): sorted((r.term, r.box_px, r.label_id) for r in s.regions) for s in _convert(card0, st0).slices}
    assert a == b and len(a) > 5
