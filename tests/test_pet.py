"""PET as a modality, on the real IBSI soft-tissue-sarcoma sample (../shared/data/ibsi-sts-pet, README facts).

Both forms of one FDG-PET: the SUV NIfTI + mask (qform only) and the 48-slice PT DICOM series + RTSTRUCT,
with their traps: values already SUV (Units GML, SUVType BW, a RescaleSlope per slice), contour z 0.02-0.04
mm off the slice z, ContourImageSequence UIDs that name no image, InstanceNumber from 0 and a constant
ImageIndex.  Box convention used below: canonical volume (slice, row, col) = DICOM (sorted slice, row,
column) = NIfTI (k, j, i); an axial display image is ``volume[slice]`` (row 0 anterior, column 0 patient
right), enlarged by the cards' integer ``display.upscale_to_px`` factor (8 for these 30x27 slices).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import orjson
import pydicom
import pytest

from pipeline.ingest.convert import convert
from pipeline.ingest.inspect import format_inspection, inspect_path
from pipeline.ingest.intensity import window_for
from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.dicom import read_series
from pipeline.ingest.readers.nifti import read_nifti
from pipeline.ingest.readers.pet import read_pet_facts, to_suv, uptake_seconds
from pipeline.ingest.readers.rtstruct import read_rtstruct
from pipeline.language.glossary import load_glossary
from flows.run import build
from schemas.card import IntensitySpec, SourceCard
from schemas.config import ReleaseConfig, SlicingConfig
from sources.base import get_adapter, load_card

# the README's facts
N_VOXELS = 555
PER_SLICE = [1, 11, 21, 31, 38, 50, 58, 58, 58, 56, 52, 42, 32, 22, 17, 8]  # k = 16 ... 31
BOX_SRC = ((16, 10, 10), (31, 16, 19))  # (slice, row, col) inclusive: DICOM [10,10,16]-[16,19,31] row/col/slice
SUV_IN = {"mean": 7.370, "median": 5.355, "max": 21.676, "min": 0.695}
SUV_OUT_MEAN = 0.525
ALL_SLICES = SlicingConfig(axes=["axial"], min_spacing_mm=0, max_slices_per_case=100, min_label_pixels=1)


@pytest.fixture(scope="module")
def pet(samples: Path) -> Path:
    return samples / "ibsi-sts-pet"


@pytest.fixture(scope="module")
def series(pet):
    return read_series(pet / "dicom" / "image")


@pytest.fixture(scope="module")
def nifti_mask(pet):
    """The NIfTI mask as (slice, row, col): NIfTI (i, j, k) are DICOM (column, row, slice)."""
    return np.asarray(nib.load(pet / "nifti" / "PET_mask.nii.gz").dataobj).transpose(2, 1, 0) > 0


def _study(samples, card_name):
    card = load_card(card_name)
    ad = get_adapter(card, card.resolve_root(samples))
    (ref,) = ad.discover()
    return card, ad, ref, ad.load(ref)


@pytest.fixture(scope="module")
def dicom_form(samples):
    return _study(samples, "ibsi-sts-pet-dicom")


@pytest.fixture(scope="module")
def nifti_form(samples):
    return _study(samples, "ibsi-sts-pet-nifti")


def _copy_series(pet: Path, dest: Path, edit=None) -> Path:
    """The DICOM form copied to ``dest`` (same layout), with ``edit(ds, k)`` applied to each image file."""
    shutil.copytree(pet / "dicom", dest / "dicom")
    if edit is not None:
        for k, f in enumerate(sorted((dest / "dicom" / "image").glob("*.dcm"))):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # StudyID longer than SH allows (a README quirk)
                ds = pydicom.dcmread(f)
                edit(ds, k)
                ds.save_as(f)
    return dest


def _dicom_adapter(root: Path, **intensity):
    card = load_card("ibsi-sts-pet-dicom")
    if intensity:
        card = card.model_copy(update={"intensity": card.intensity.model_copy(update=intensity)})
    ad = get_adapter(card, root)
    (ref,) = ad.discover()
    return ad, ref


# --- the DICOM series: SUV facts, sorting -------------------------------------------------------------------

def test_pet_header_facts(pet):
    files = sorted(str(p) for p in (pet / "dicom" / "image").glob("*.dcm"))
    f = read_pet_facts(files)
    assert (f.units, f.suv_type, f.decay_correction) == ("GML", "BW", "ADMIN")
    assert {"DECY", "ATTN", "SCAT"} <= set(f.corrected) and f.is_suv and not f.disagreement
    assert f.files == 48 and f.distinct_slopes == 48  # a different RescaleSlope on every slice
    assert f.slope_range[0] == pytest.approx(4.45e-5, rel=1e-3) and f.slope_range[1] == pytest.approx(6.62e-4, rel=1e-3)
    assert f.intercepts == (0.0,)
    # the date trap: RadiopharmaceuticalStartDateTime is a day after the scan; the times of day give 4019 s
    secs, how = uptake_seconds(f)
    assert secs == 4019 and "dates shifted" in how and "SeriesTime" in how
    summary = f.summary()
    assert summary["values"].startswith("SUV as stored")
    text = json.dumps({k: v for k, v in summary.items() if k != "rescale_slope_range"})
    for secret in ("99", "433344096", "2006", "STS_002", "1351", "1457"):  # weight, dose, dates, id, times
        assert secret not in text, secret


def test_series_sorted_by_position_not_instance_number(pet, series, tmp_path):
    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((pet / "dicom" / "image").glob("*.dcm"))]
    assert [int(h.InstanceNumber) for h in heads] == list(range(48))  # starts at 0
    assert {int(h.ImageIndex) for h in heads} == {1}  # constant: cannot sort
    z = series.positions[:, 2]
    assert series.shape == (48, 27, 30) and series.modality == "PT"
    assert z[0] == pytest.approx(-629.02) and z[-1] == pytest.approx(-475.33)
    assert np.allclose(np.diff(z), 3.27, atol=1e-3)
    assert [Path(f).name for f in series.files] == [f"{k:06d}.dcm" for k in range(48)]  # z increases with the name
    # renamed in reverse order, with InstanceNumbers reversed: the same volume
    shuffled = tmp_path / "rev"
    shuffled.mkdir()
    for k, f in enumerate(sorted((pet / "dicom" / "image").glob("*.dcm"))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(f)
        ds.InstanceNumber = 47 - k
        ds.save_as(shuffled / f"{47 - k:06d}.dcm")
    again = read_series(shuffled)
    assert np.array_equal(again.array, series.array) and np.allclose(again.positions, series.positions)


def test_dicom_values_are_the_nifti_suv(pet, series):
    """Stored value x per-slice RescaleSlope = the NIfTI SUV (README: to within 1.6e-6)."""
    img, _ = read_nifti(pet / "nifti" / "PET_image.nii.gz")
    assert np.abs(series.array - img.transpose(2, 1, 0)).max() <= 1.6e-6
    assert float(series.array.max()) == pytest.approx(21.676, abs=1e-3)


# --- the RTSTRUCT: tolerance, UIDs, the same 555 voxels --------------------------------------------------------

def test_rtstruct_rasterises_to_the_nifti_mask(pet, series, nifti_mask):
    vol = read_rtstruct(pet / "dicom" / "mask" / "RS.dcm", series)
    roi = vol.number_of("GTV_Mass_PET")
    assert roi == 1 and vol.header.rois[1].interpreted_type == "GTV" and vol.header.rois[1].n_contours == 16
    mask = vol.mask(roi)
    assert int(mask.sum()) == N_VOXELS == int(nifti_mask.sum())
    assert int((mask != nifti_mask).sum()) == 0
    assert mask.sum(axis=(1, 2))[16:32].tolist() == PER_SLICE and mask[16].nonzero() == (np.array([13]), np.array([16]))
    notes = " | ".join(vol.notes)
    assert "name no image of the series" in notes  # ContourImageSequence UIDs: not fatal, a note
    assert "up to 0.040 mm off their slice planes" in notes


def test_contour_z_is_off_the_slice_z(pet, series):
    """Exact z matching finds no slice for any contour; the reader's tolerance finds all 16."""
    ds = pydicom.dcmread(pet / "dicom" / "mask" / "RS.dcm")
    contours = [c for it in ds.ROIContourSequence for c in it.ContourSequence]
    assert len(contours) == 16 and sum(len(c.ContourData) // 3 for c in contours) == 5058
    zs = [float(c.ContourData[2]) for c in contours]
    assert all(series.index_at(np.array([0.0, 0.0, z]), tol=0.0) is None for z in zs)
    offsets = [abs(series.slice_offsets[series.index_at(np.array([0.0, 0.0, z]))] - z) for z in zs]
    assert min(offsets) >= 0.02 - 1e-6 and max(offsets) <= 0.04 + 1e-6
    sops = set(series.sop_uids)
    refs = [str(im.ReferencedSOPInstanceUID) for c in contours for im in c.ContourImageSequence]
    assert refs and not sops.intersection(refs)  # 0 of 16 match


# --- both forms through their cards: boxes, SUV, geometry ----------------------------------------------------

def test_both_forms_give_the_readme_box_and_the_same_voxels(dicom_form, nifti_form, nifti_mask):
    for _card, _ad, ref, st in (dicom_form, nifti_form):
        assert st.modality == "PET" and st.image.shape == (48, 27, 30) and ref.official_split == "validation"
        (layer,) = st.layers
        assert layer.names == {1: "soft_tissue_sarcoma"}
        idx = np.argwhere(layer.array > 0)
        assert (tuple(idx.min(0)), tuple(idx.max(0))) == BOX_SRC
        assert np.array_equal(layer.array > 0, nifti_mask)
    assert np.abs(dicom_form[3].image - nifti_form[3].image).max() <= 1.6e-6
    assert dicom_form[0].intensity.window == (0, 10) and dicom_form[0].intensity.invert


def test_axial_display_boxes_are_the_voxel_boxes_times_the_factor(dicom_form, nifti_form, nifti_mask):
    outs = []
    for card, _ad, _ref, st in (dicom_form, nifti_form):
        conv = convert(st, card, card.box_policy, ALL_SLICES)
        assert st.transform["display_upscale"] == {"axial": 8}
        outs.append(conv.slices)
        assert [sl.index for sl in conv.slices] == list(range(16, 32))
        for sl in conv.slices:
            assert sl.image.shape == (27 * 8, 30 * 8) and sl.window == "PET SUV 0-10, inverted grey"
            (reg,) = sl.regions
            rows, cols = nifti_mask[sl.index].nonzero()
            assert reg.box_px == (cols.min() * 8, rows.min() * 8, cols.max() * 8 + 7, rows.max() * 8 + 7)
        x0 = min(sl.regions[0].box_px[0] for sl in conv.slices)
        y0 = min(sl.regions[0].box_px[1] for sl in conv.slices)
        x1 = max(sl.regions[0].box_px[2] for sl in conv.slices)
        y1 = max(sl.regions[0].box_px[3] for sl in conv.slices)
        assert (x0, y0, x1, y1) == (10 * 8, 10 * 8, 20 * 8 - 1, 17 * 8 - 1)  # cols 10..19, rows 10..16
    # the two forms write the same images
    assert all(np.array_equal(a.image, b.image) for a, b in zip(*outs, strict=True))


def test_lesion_suv_from_the_dicom_path(dicom_form):
    _card, _ad, _ref, st = dicom_form
    inside = st.layers[0].array > 0
    vals = st.image[inside]
    assert vals.mean() == pytest.approx(SUV_IN["mean"], abs=5e-4)
    assert float(np.median(vals)) == pytest.approx(SUV_IN["median"], abs=5e-4)
    assert vals.max() == pytest.approx(SUV_IN["max"], abs=5e-4) and vals.min() == pytest.approx(SUV_IN["min"], abs=5e-4)
    assert st.image[~inside].mean() == pytest.approx(SUV_OUT_MEAN, abs=5e-4)
    hottest = np.unravel_index(int(np.argmax(st.image)), st.image.shape)
    assert tuple(int(v) for v in hottest) == (19, 12, 14) and inside[hottest]  # (i,j,k) = (14,12,19)
    assert st.transform["pet_units"] == "GML" and st.transform["suv"] == "as stored"
    assert any("already SUV" in n and "no dose/weight factor" in n for n in st.notes)


def test_nifti_with_only_the_qform(pet, tmp_path, series):
    hdr = nib.load(pet / "nifti" / "PET_image.nii.gz").header
    assert (int(hdr["sform_code"]), int(hdr["qform_code"])) == (0, 1)
    img, aff = read_nifti(pet / "nifti" / "PET_image.nii.gz")
    assert np.allclose(aff, hdr.get_qform())
    assert "".join(nib.aff2axcodes(aff)) == "LPS" and np.allclose(np.diag(aff)[:3], [-5.46875, -5.46875, 3.27])
    # RAS origin (-2.734, -57.422, -629.02) = the LPS origin (2.734, 57.422, -629.02) of the DICOM series
    assert np.allclose(aff[:3, 3], [-2.734, -57.422, -629.02], atol=1e-3)
    assert np.allclose(series.affine_ras, aff[:, [2, 1, 0, 3]], atol=1e-3)
    # a garbage sform matrix with sform_code 0 is ignored
    nii = nib.load(pet / "nifti" / "PET_image.nii.gz")
    bad = nib.Nifti1Image(np.asarray(nii.dataobj), None, nii.header.copy())
    bad.header.set_sform(np.diag([9.0, 9.0, 9.0, 1.0]), code=0)
    bad.header.set_qform(nii.header.get_qform(), code=1)
    nib.save(bad, tmp_path / "q.nii.gz")
    again, aff2 = read_nifti(tmp_path / "q.nii.gz")
    assert np.array_equal(again, img) and np.allclose(aff2, aff)


# --- PET display --------------------------------------------------------------------------------------------

def test_suv_window_inverted_grey():
    suv = np.array([0.0, 2.5, 5.0, 10.0, 21.7], dtype=np.float32)
    win = window_for("PET", None, suv, (0.5, 99.5), fixed=(0.0, 10.0), invert=True)
    assert win.name == "PET SUV 0-10, inverted grey"
    assert win.apply(suv).tolist() == [255, 191, 128, 0, 0]  # SUV 0 white, >= 10 black
    assert window_for("PET", None, suv, (0.5, 99.5), fixed=(0.0, 10.0)).apply(suv).tolist() == [0, 64, 128, 255, 255]


def test_intensity_spec_validation():
    assert IntensitySpec(window=(0, 10), invert=True).window == (0.0, 10.0)
    with pytest.raises(ValueError, match="low < high"):
        IntensitySpec(window=(10, 0))
    with pytest.raises(ValueError, match="either a CT window preset or a fixed window"):
        IntensitySpec(preset="abdomen", window=(0, 10))
    with pytest.raises(ValueError, match="suv_conversion"):
        IntensitySpec(suv_conversion="guess")
    with pytest.raises(ValueError, match="percentiles"):
        IntensitySpec(percentiles=(99, 1))
    with pytest.raises(ValueError, match="upscale_to_px"):
        SourceCard(name="x", title="x", adapter="nifti_labelmap", licence="x", modality="PET",
                   display={"upscale_to_px": 4})


# --- units that are not SUV: refused, or converted only when the card says how -----------------------------

def test_bqml_series_is_refused_with_the_fix(pet, tmp_path):
    root = _copy_series(pet, tmp_path, lambda ds, k: setattr(ds, "Units", "BQML"))
    ad, ref = _dicom_adapter(root)
    with pytest.raises(ReadError) as ei:
        ad.load(ref)
    e = ei.value
    assert "Units BQML" in str(e) and "not SUV" in str(e) and "000000.dcm" in str(e)
    assert e.file.endswith("000000.dcm") and "suv_conversion: bqml_to_bw" in e.hint


def test_counts_series_is_refused(pet, tmp_path):
    root = _copy_series(pet, tmp_path, lambda ds, k: setattr(ds, "Units", "CNTS"))
    ad, ref = _dicom_adapter(root, suv_conversion="bqml_to_bw")
    with pytest.raises(ReadError, match="Units CNTS") as ei:
        ad.load(ref)
    assert "export the series as SUV" in ei.value.hint


def test_mixed_units_are_refused(pet, tmp_path):
    root = _copy_series(pet, tmp_path, lambda ds, k: setattr(ds, "Units", "BQML") if k == 7 else None)
    ad, ref = _dicom_adapter(root)
    with pytest.raises(ReadError, match="000007.dcm has Units BQML"):
        ad.load(ref)


def _as_bqml(factor_of):
    """Files whose rescaled values are Bq/ml: RescaleSlope divided by the SUV factor ``factor_of(ds)``."""
    def edit(ds, k):
        ds.Units = "BQML"
        ds.RescaleSlope = f"{float(ds.RescaleSlope) / factor_of(ds):.10e}"
    return edit


def test_bqml_converted_to_suv_bw_when_the_card_says_so(pet, tmp_path, dicom_form):
    ref_image = dicom_form[3].image
    # DecayCorrection ADMIN (as in the files): SUV = C * weight[g] / dose
    root = _copy_series(pet, tmp_path / "admin", _as_bqml(lambda ds: 99_000.0 / 433_344_096.0))
    ad, ref = _dicom_adapter(root, suv_conversion="bqml_to_bw")
    st = ad.load(ref)
    assert np.allclose(st.image, ref_image, rtol=1e-5, atol=1e-6)
    assert st.transform["suv"] == "bw from BQML" and any("no decay factor" in n for n in st.notes)
    # DecayCorrection START: the dose decays over the uptake; the shifted injection date is not used
    decayed = 433_344_096.0 * np.exp(-np.log(2) * 4019.0 / 6588.0)

    def start(ds, k):
        ds.DecayCorrection = "START"
        _as_bqml(lambda d: 99_000.0 / decayed)(ds, k)

    root = _copy_series(pet, tmp_path / "start", start)
    ad, ref = _dicom_adapter(root, suv_conversion="bqml_to_bw")
    st = ad.load(ref)
    assert np.allclose(st.image, ref_image, rtol=1e-5, atol=1e-6)
    assert any("4019 s" in n and "dates shifted" in n for n in st.notes)


def test_suv_is_never_converted_twice(series, pet):
    files = [str(f) for f in sorted((pet / "dicom" / "image").glob("*.dcm"))]
    out, notes, info = to_suv(series.array, read_pet_facts(files), "bqml_to_bw")
    assert out is series.array and info["suv"] == "as stored"
    assert any("not applied: the values are SUV already" in n for n in notes)


# --- inspect, glossary, a release --------------------------------------------------------------------------

def test_inspect_reports_the_suv_facts(pet):
    d = inspect_path(pet / "dicom")
    (s,) = d["dicom"]["series"]
    p = s["pet"]
    assert (p["units"], p["suv_type"], p["decay_correction"], p["distinct_slopes"]) == ("GML", "BW", "ADMIN", 48)
    assert p["rescale_slope_range"][0] == pytest.approx(4.45e-5, rel=1e-3)
    assert p["rescale_slope_range"][1] == pytest.approx(6.62e-4, rel=1e-3)
    text = format_inspection(d)
    assert "Units GML (g/ml, SUV), SUVType BW" in text and "SUV as stored" in text
    for secret in ("433344096", "STS_002", "20060128", "IBSI_1_STS_002_PET"):
        assert secret not in text + json.dumps(d, default=str), secret


def test_lesion_term_in_both_languages():
    gl = load_glossary()
    assert gl.display("soft_tissue_sarcoma", "en") == "soft-tissue sarcoma"
    assert gl.display("soft_tissue_sarcoma", "zh") == "软组织肉瘤"
    assert gl.resolve("sarcoma") == "soft_tissue_sarcoma" and gl.term("soft_tissue_sarcoma").category == "lesion"


def test_release_of_both_pet_forms(samples, tmp_path):
    cfg = ReleaseConfig.model_validate({
        "name": "pet", "version": "1", "seed": 3,
        "sources": [{"card": "ibsi-sts-pet-dicom"}, {"card": "ibsi-sts-pet-nifti"}],
        "slicing": {"axes": ["axial", "coronal"], "min_spacing_mm": 9, "max_slices_per_case": 6},
    })
    out = build(cfg, tmp_path / "out", samples_root=samples)
    m = orjson.loads((out / "manifest.json").read_bytes())
    assert m["counts"]["errors"] == 0 and set(m["counts"]["by_modality"]) == {"PET"}
    rows = [orjson.loads(line) for p in sorted((out / "data").rglob("*.jsonl")) for line in p.read_bytes().splitlines()]
    assert {r["meta"]["source"] for r in rows} == {"ibsi-sts-pet-dicom", "ibsi-sts-pet-nifti"}
    assert {r["meta"]["split"] for r in rows} == {"validation"} and {r["meta"]["modality"] for r in rows} == {"PET"}
    assert {r["meta"]["window"] for r in rows} == {"PET SUV 0-10, inverted grey"}
    terms = {reg["term"] for r in rows for reg in r["meta"]["regions"]}
    assert terms == {"soft_tissue_sarcoma"}
    tr = orjson.loads(next(r for r in rows if r["meta"]["source"] == "ibsi-sts-pet-dicom")["meta"]["transform"])
    assert tr["pet_units"] == "GML" and tr["display_upscale"] == {"axial": 8, "coronal": 5}
    # the same images from both forms are stored once
    # privacy: PatientID/Name, the StudyID, dates, dose and the UIDs never reach an output file
    head = pydicom.dcmread(samples / "ibsi-sts-pet" / "dicom" / "image" / "000000.dcm", stop_before_pixels=True)
    secrets = {"STS_002", "20060128", "20060129", "433344096", str(head.SeriesInstanceUID), str(head.StudyInstanceUID)}
    for p in out.rglob("*"):
        if p.is_file() and p.suffix in (".jsonl", ".json", ".md", ".html", ".txt"):
            text = p.read_text(encoding="utf-8")
            assert not [s for s in secrets if s in text], p.name
    forms = ("ibsi-sts-pet-dicom", "ibsi-sts-pet-nifti")
    images = {s: {r["image"] for r in rows if r["meta"]["source"] == s} for s in forms}
    assert images["ibsi-sts-pet-dicom"] == images["ibsi-sts-pet-nifti"]
