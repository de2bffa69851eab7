"""Broken inputs: each gives a clear ReadError that names the file and carries a hint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.dicom import read_series
from pipeline.ingest.readers.dicom_seg import read_seg
from pipeline.ingest.readers.rtstruct import read_rtstruct
from schemas.card import SourceCard
from sources.base import get_adapter, load_card
from synthetic_dicom import write_synthetic_series

SAMPLES = Path(os.environ.get("MEDREG_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "data"))
DCMQI = SAMPLES / "dcmqi-ct-liver-seg"
VH = SAMPLES / "rtstruct-visible-human" / "AnonDICOM"
CSV = SAMPLES / "nih-cxr14-bbox" / "BBox_List_2017.csv"


@pytest.fixture(scope="module", autouse=True)
def _samples_present():
    assert SAMPLES.is_dir(), f"sample data missing at {SAMPLES}: set MEDREG_SAMPLES"


def series_uid_not_in(err: ReadError, uid: str) -> bool:
    """Messages reach the run report: full UIDs (which may embed dates) must not appear."""
    return uid not in str(err) and uid not in err.hint


def _assert_clear(err: ReadError, filename: str, *words: str):
    text = str(err)
    assert filename in text, text
    assert err.file is not None and Path(err.file).name == filename
    assert err.hint, "a ReadError must tell the user what to do"
    for w in words:
        assert w in text or w in err.hint, (w, text, err.hint)


# --- DICOM series -----------------------------------------------------------------------------------

def test_missing_image_position_patient(tmp_path):
    shutil.copytree(DCMQI / "ct-3slice", tmp_path / "ct")
    ds = pydicom.dcmread(tmp_path / "ct" / "02.dcm")
    del ds.ImagePositionPatient
    ds.save_as(tmp_path / "ct" / "02.dcm")
    with pytest.raises(ReadError) as ei:
        read_series(tmp_path / "ct")
    _assert_clear(ei.value, "02.dcm", "ImagePositionPatient", "remove it")
    # through the adapter too (the run report gets the same message for that case)
    shutil.copy(DCMQI / "liver.dcm", tmp_path / "liver.dcm")
    card = load_card("dcmqi-liver-seg")
    ad = get_adapter(card, tmp_path)
    (ref,) = ad.discover()
    with pytest.raises(ReadError, match="02.dcm"):
        ad.load(ref)


def test_mixed_orientations(tmp_path):
    shutil.copytree(DCMQI / "ct-3slice", tmp_path / "ct")
    ds = pydicom.dcmread(tmp_path / "ct" / "03.dcm")
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal scout in an axial series
    ds.save_as(tmp_path / "ct" / "03.dcm")
    with pytest.raises(ReadError) as ei:
        read_series(tmp_path / "ct")
    _assert_clear(ei.value, "03.dcm", "mixed orientations", "scout")


def test_inconsistent_rows_columns(tmp_path):
    write_synthetic_series(tmp_path, np.zeros((3, 16, 16), np.int16), names=["a.dcm", "b.dcm", "c.dcm"], seed=1,
                           series_uid="1.2.3.99")
    write_synthetic_series(tmp_path / "x", np.zeros((1, 8, 8), np.int16), names=["d.dcm"], series_uid="1.2.3.99",
                           origin=(-200, -200, 50), seed=2)
    shutil.move(tmp_path / "x" / "d.dcm", tmp_path / "d.dcm")
    with pytest.raises(ReadError) as ei:
        read_series(tmp_path)
    assert "8x8" in str(ei.value) and "16x16" in str(ei.value) and ei.value.hint


def test_duplicate_positions(tmp_path):
    write_synthetic_series(tmp_path, np.zeros((3, 8, 8), np.int16), positions=[(0, 0, 0), (0, 0, 1), (0, 0, 1)],
                           names=["a.dcm", "b.dcm", "c.dcm"])
    with pytest.raises(ReadError) as ei:
        read_series(tmp_path)
    assert "same position" in str(ei.value) and "phases" in ei.value.hint


def test_truncated_pixel_data(tmp_path):
    shutil.copytree(DCMQI / "ct-3slice", tmp_path / "ct")
    data = (tmp_path / "ct" / "01.dcm").read_bytes()
    (tmp_path / "ct" / "01.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadError) as ei:
        read_series(tmp_path / "ct")
    assert "01.dcm" in str(ei.value) and ei.value.hint


def test_folder_without_series(tmp_path):
    (tmp_path / "readme.dat").write_bytes(b"nothing")
    shutil.copy(DCMQI / "liver.dcm", tmp_path / "liver.dcm")
    with pytest.raises(ReadError, match="no DICOM image series"):
        read_series(tmp_path)


# --- DICOM-SEG --------------------------------------------------------------------------------------

def test_seg_referencing_no_image_of_the_series(tmp_path):
    ds = pydicom.dcmread(DCMQI / "liver.dcm")
    for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID = f"1.2.3.4.5.{i}"
    for item in ds.ReferencedSeriesSequence:
        item.SeriesInstanceUID = "1.2.3.4.5"
        for j, inst in enumerate(item.ReferencedInstanceSequence):
            inst.ReferencedSOPInstanceUID = f"1.2.3.4.5.{j}"
    ds.save_as(tmp_path / "liver.dcm")
    series = read_series(DCMQI / "ct-3slice")
    with pytest.raises(ReadError) as ei:
        read_seg(tmp_path / "liver.dcm", series)
    _assert_clear(ei.value, "liver.dcm", "another series", "none of which")
    assert series_uid_not_in(ei.value, series.series_uid)


def test_seg_whose_series_is_missing_from_the_dataset(tmp_path):
    shutil.copy(DCMQI / "liver.dcm", tmp_path / "liver.dcm")
    ad = get_adapter(load_card("dcmqi-liver-seg"), tmp_path)
    (ref,) = ad.discover()  # discovery still lists the case; loading it fails alone
    with pytest.raises(ReadError) as ei:
        ad.load(ref)
    _assert_clear(ei.value, "liver.dcm", "no image series")


def test_not_a_seg(tmp_path):
    with pytest.raises(ReadError, match="not a DICOM Segmentation"):
        read_seg(DCMQI / "ct-3slice" / "01.dcm", read_series(DCMQI / "ct-3slice"))


# --- RTSTRUCT ---------------------------------------------------------------------------------------

def test_rtstruct_pointing_at_another_series(tmp_path):
    ds = pydicom.dcmread(VH / "RS_Body_SpinalCord.dcm")
    for fr in ds.ReferencedFrameOfReferenceSequence:
        for st in fr.RTReferencedStudySequence:
            for se in st.RTReferencedSeriesSequence:
                se.SeriesInstanceUID = "1.2.3.4.5"
                for i, im in enumerate(se.ContourImageSequence):
                    im.ReferencedSOPInstanceUID = f"1.2.3.4.5.{i}"
    for roi in ds.ROIContourSequence:
        for i, c in enumerate(roi.ContourSequence):
            c.ContourImageSequence[0].ReferencedSOPInstanceUID = f"1.2.3.4.5.{i}"
    ds.save_as(tmp_path / "RS.dcm")
    with pytest.raises(ReadError) as ei:
        read_rtstruct(tmp_path / "RS.dcm", read_series(VH))
    _assert_clear(ei.value, "RS.dcm", "another series", "...3.4.5")
    assert series_uid_not_in(ei.value, read_series(VH).series_uid)


# --- NIfTI label map on a DICOM series ----------------------------------------------------------------

def test_nifti_label_map_with_no_physical_overlap(tmp_path):
    img = nib.load(VH / "Mask.nii.gz")
    aff = img.affine.copy()
    aff[:3, 3] += (5000.0, 0.0, 0.0)  # 5 m to the side
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), aff), tmp_path / "far.nii.gz")
    card = SourceCard(name="vh-far", title="t", adapter="dicom_nifti_labels", licence="x", modality="CT",
                      labels={"1": "spinal_cord", "2": "body"},
                      layout={"cases": [{"id": "vh", "series": str(VH), "labels": "far.nii.gz"}]})
    ad = get_adapter(card, tmp_path)
    (ref,) = ad.discover()
    with pytest.raises(ReadError) as ei:
        ad.load(ref)
    _assert_clear(ei.value, "far.nii.gz", "does not overlap", "another scan")


# --- detection CSV --------------------------------------------------------------------------------

def test_csv_row_with_negative_width_fails_only_its_case(tmp_path):
    lines = CSV.read_text().splitlines()
    bad = lines[3].split(",")
    bad[4] = "-" + bad[4]  # negative width on the 3rd data row (line 4)
    lines[3] = ",".join(bad)
    (tmp_path / CSV.name).write_text("\n".join(lines) + "\n")
    bad_image = bad[0]
    from synthetic_images import synthesise_blank_images

    names = sorted({ln.split(",")[0] for ln in lines[1:]})
    synthesise_blank_images(tmp_path / "images", names[:3] + [bad_image])
    card = load_card("nih-cxr14")
    card = card.model_copy(update={"layout": {**card.layout, "csv": CSV.name, "missing_images": "error"}})
    ad = get_adapter(card, tmp_path)
    refs = {r.case_id: r for r in ad.discover()}
    assert len(refs) == 880
    with pytest.raises(ReadError) as ei:
        ad.load(refs[Path(bad_image).stem])
    _assert_clear(ei.value, CSV.name, "line 4", "width", bad_image)
    for n in names[:3]:  # the others load
        if n != bad_image:
            assert ad.load(refs[Path(n).stem]).boxes
