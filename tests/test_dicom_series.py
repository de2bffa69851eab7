"""DICOM series reader: sorting by position, rescale, geometry, display orientation, notes and codecs."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipeline.ingest.geometry import display_view
from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.dicom import read_series
from synthetic_dicom import write_synthetic_series

SAMPLES = Path(os.environ.get("MEDREG_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "data"))
DCMQI = SAMPLES / "dcmqi-ct-liver-seg"
VH = SAMPLES / "rtstruct-visible-human" / "AnonDICOM"


@pytest.fixture(scope="module", autouse=True)
def _samples_present():
    assert SAMPLES.is_dir(), f"sample data missing at {SAMPLES}: set MEDREG_SAMPLES"


def _names(series):
    return [Path(f).name for f in series.files]


# --- real samples ------------------------------------------------------------------------------------

def test_visible_human_sorted_by_z_not_file_name():
    s = read_series(VH)  # the folder also holds the RTSTRUCT and two NIfTI files
    assert _names(s) == ["CT_2.dcm", "CT_4.dcm", "CT_1.dcm", "CT_3.dcm"]
    assert s.slice_offsets.tolist() == [1000.0, 1001.0, 1002.0, 1003.0]
    assert s.shape == (4, 512, 512) and s.array.dtype == np.int16
    assert s.pixel_spacing == (1.0, 1.0) and s.slice_spacing == pytest.approx(1.0)
    assert not s.notes


def test_visible_human_matches_reference_nifti_and_rescale():
    s = read_series(VH)
    ref = np.asanyarray(nib.load(VH / "Image.nii.gz").dataobj).transpose(2, 1, 0)  # (x,y,z) -> (z,row,col)
    assert np.array_equal(s.array.astype(np.float32), ref)
    raw = pydicom.dcmread(VH / "CT_2.dcm").pixel_array.astype(np.int32)
    assert np.array_equal(s.array[0], raw - 1024)  # RescaleIntercept -1024, slope 1
    # the reader's RAS affine equals the reference NIfTI's after the axis transpose
    aff = nib.load(VH / "Image.nii.gz").affine
    perm = np.zeros((4, 4)); perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1
    assert np.allclose(s.affine_ras, aff @ perm)


def test_dcmqi_order_geometry_and_hu():
    s = read_series(DCMQI / "ct-3slice")
    assert _names(s) == ["03.dcm", "02.dcm", "01.dcm"]  # z ascending: -128.69, -127.69, -126.69
    assert np.allclose(s.slice_offsets, [-128.69, -127.69, -126.69], atol=1e-4)
    assert s.pixel_spacing == pytest.approx((0.810547, 0.810547))
    assert s.rescaled and s.array.dtype == np.int16
    assert s.patient_id == "99000"  # kept only for patient-level splits (hashed downstream)
    # whole dcmqi folder: the SEG beside the series is not an image and is ignored
    s2 = read_series(DCMQI)
    assert _names(s2) == _names(s) and not s2.notes


def test_dcmqi_display_equals_stored_pixels():
    s = read_series(DCMQI / "ct-3slice")
    vol, geom = s.to_canonical()
    assert geom.source_codes == ("S", "P", "L")
    for k in range(3):
        stored = pydicom.dcmread(s.files[k]).pixel_array.astype(np.int32) - 1024
        assert np.array_equal(display_view(vol, "axial", k), stored)
    # (laterality of the liver itself is asserted with its SEG mask in test_dicom_seg.py)


def test_only_header_tags_needed_are_kept():
    s = read_series(DCMQI / "ct-3slice")
    text = repr({k: v for k, v in vars(s).items() if k != "array"})
    assert "JANCT000" not in text and "20030417" not in text


# --- synthetic series ---------------------------------------------------------------------------------

def _phantom(shape, spacing, origin, iop, marker_lps, radius=12.0):
    """Stored values of a series whose voxel (k, r, c) lies at origin + k*s0*n + r*s1*col + c*s2*row."""
    iop = np.asarray(iop, float)
    row_dir, col_dir = iop[:3], iop[3:]
    n = np.cross(row_dir, col_dir)
    K, R, C = shape
    k, r, c = np.meshgrid(np.arange(K), np.arange(R), np.arange(C), indexing="ij")
    pts = (np.asarray(origin)[None, None, None] + k[..., None] * spacing[0] * n + r[..., None] * spacing[1] * col_dir
           + c[..., None] * spacing[2] * row_dir)
    d = np.linalg.norm(pts - np.asarray(marker_lps), axis=-1)
    return np.where(d < radius, 2000, 1024).astype(np.int16)


ORIENTATIONS = {
    # name: (IOP, origin chosen so the field of view is centred on the patient origin)
    "axial": ((1, 0, 0, 0, 1, 0), (-60.0, -60.0, -60.0)),
    "axial_rotated_180": ((-1, 0, 0, 0, -1, 0), (60.0, 60.0, -60.0)),
    "coronal": ((1, 0, 0, 0, 0, -1), (-60.0, -60.0, 60.0)),
    "sagittal": ((0, 1, 0, 0, 0, -1), (60.0, -60.0, 60.0)),  # normal -x: slices run right-to-left
}


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_display_orientation_any_acquisition_plane(tmp_path, name):
    """A marker at the patient's right-anterior-superior lands at image left, top, upper slices."""
    iop, origin = ORIENTATIONS[name]
    shape, spacing = (30, 30, 30), (4.0, 4.0, 4.0)
    marker = (-30.0, -30.0, 30.0)  # LPS: right (-x), anterior (-y), superior (+z)
    write_synthetic_series(tmp_path, _phantom(shape, spacing, origin, iop, marker), spacing=spacing,
                           origin=origin, iop=iop)
    s = read_series(tmp_path)
    vol, geom = s.to_canonical()
    k, r, c = np.nonzero(vol > 500)
    assert k.mean() > 15 and r.mean() < 15 and c.mean() < 15, (name, k.mean(), r.mean(), c.mean())
    # and its physical centre is where it was drawn (RAS = (-x, -y, z) of LPS)
    centre = geom.affine @ np.array([k.mean(), r.mean(), c.mean(), 1.0])
    assert np.allclose(centre[:3], (30.0, 30.0, 30.0), atol=1.0)


def test_shuffled_names_and_instance_numbers(tmp_path):
    vol = np.stack([np.full((16, 16), 100 + 10 * k, np.int16) for k in range(12)])
    write_synthetic_series(tmp_path, vol, seed=3)
    s = read_series(sorted(tmp_path.iterdir()))  # a list of files works too
    assert s.array[:, 0, 0].tolist() == [100 + 10 * k - 1024 for k in range(12)]
    # file names / InstanceNumbers are shuffled, so the order came from the positions
    inst = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in s.files]
    assert inst != sorted(inst)


def test_gap_and_nonuniform_spacing_notes(tmp_path):
    vol = np.zeros((6, 8, 8), np.int16)
    zs = [0, 2, 4, 10, 12, 14]  # one gap of 6 mm (two missing slices)
    write_synthetic_series(tmp_path / "gap", vol, positions=[(0, 0, z) for z in zs], spacing=(2, 1, 1))
    s = read_series(tmp_path / "gap")
    assert any("gap" in n and "2 slice(s) missing" in n for n in s.notes), s.notes
    assert s.slice_spacing == pytest.approx(2.0)
    zs = [0, 2, 4.1, 6, 8.2, 10]
    write_synthetic_series(tmp_path / "nonuni", vol, positions=[(0, 0, z) for z in zs], spacing=(2, 1, 1))
    s = read_series(tmp_path / "nonuni")
    assert any("non-uniform slice spacing" in n for n in s.notes), s.notes


def test_two_series_in_one_folder(tmp_path):
    a = write_synthetic_series(tmp_path, np.zeros((5, 8, 8), np.int16), series_uid="1.2.3.4.5", names=[f"a{i}.dcm" for i in range(5)])
    write_synthetic_series(tmp_path, np.ones((3, 8, 8), np.int16), series_uid="1.2.3.4.6", names=[f"b{i}.dcm" for i in range(3)], seed=1)
    s = read_series(tmp_path)
    assert s.series_uid == "1.2.3.4.5" and s.shape[0] == 5
    assert any("2 image series" in n and "largest" in n for n in s.notes)
    s = read_series(tmp_path, series_uid="1.2.3.4.6")
    assert s.shape[0] == 3 and not s.notes
    with pytest.raises(ReadError, match="is not in"):
        read_series(tmp_path, series_uid="9.9.9")
    assert len(a) == 5


def test_float_rescale_and_uint16(tmp_path):
    vol = np.arange(2 * 4 * 4, dtype=np.uint16).reshape(2, 4, 4) * 3
    write_synthetic_series(tmp_path / "f", vol, slope=0.5, intercept=-10)
    s = read_series(tmp_path / "f")
    assert s.array.dtype == np.float32 and np.allclose(s.array, vol * 0.5 - 10)
    write_synthetic_series(tmp_path / "u", vol, modality="MR", intercept=0, slope=1)
    s = read_series(tmp_path / "u")
    assert s.array.dtype == np.int16 and np.array_equal(s.array, vol) and not s.rescaled


@pytest.mark.parametrize("ts", [
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.5",  # RLE lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless (pyjpegls)
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless (pylibjpeg-openjpeg)
])
def test_compressed_transfer_syntaxes(tmp_path, ts):
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 3000, size=(3, 64, 64)).astype(np.int16)
    write_synthetic_series(tmp_path, vol, transfer_syntax=ts)
    assert str(pydicom.dcmread(next(tmp_path.iterdir())).file_meta.TransferSyntaxUID) == ts
    s = read_series(tmp_path)
    assert np.array_equal(s.array, vol - 1024)


def test_enhanced_multiframe_equals_single_frames(tmp_path):
    import highdicom as hd
    singles = [pydicom.dcmread(f) for f in sorted(VH.glob("CT_*.dcm"))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom dislikes the sample's one-component (anonymised) PatientName
        enh = hd.legacy.LegacyConvertedEnhancedCTImage(singles, series_instance_uid=hd.UID(), series_number=9,
                                                        sop_instance_uid=hd.UID(), instance_number=1)
    enh.save_as(tmp_path / "enhanced.dcm")
    a, b = read_series(tmp_path), read_series(VH)
    assert np.array_equal(a.array, b.array)
    assert np.allclose(a.affine_lps, b.affine_lps)
    assert any("multi-frame" in n for n in a.notes)


def test_single_slice_and_non_dicom_files(tmp_path):
    write_synthetic_series(tmp_path, np.zeros((1, 8, 8), np.int16), spacing=(2.5, 1, 1))
    (tmp_path / "notes.dat").write_bytes(b"not dicom at all")
    s = read_series(tmp_path)
    assert s.shape == (1, 8, 8) and s.slice_spacing == 2.5
    assert any("single-slice" in n for n in s.notes) and any("non-DICOM" in n for n in s.notes)


def test_copy_of_sample_with_extra_files(tmp_path):
    for f in VH.glob("CT_*.dcm"):
        shutil.copy(f, tmp_path / f"x_{f.name}")
    (tmp_path / "DICOMDIR").write_bytes(b"")
    s = read_series(tmp_path)
    assert s.shape == (4, 512, 512)
