"""RTSTRUCT rasterisation on the Visible Human sample, the even-odd fill, and the NIfTI-label sibling."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.ingest.readers.dicom import read_series
from pipeline.ingest.readers.rtstruct import fill_even_odd, read_rtstruct, read_rtstruct_header
from schemas.card import SourceCard
from sources.base import get_adapter, load_card

SAMPLES = Path(os.environ.get("MEDREG_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "data"))
VH = SAMPLES / "rtstruct-visible-human" / "AnonDICOM"


@pytest.fixture(scope="module", autouse=True)
def _samples_present():
    assert SAMPLES.is_dir(), f"sample data missing at {SAMPLES}: set MEDREG_SAMPLES"


@pytest.fixture(scope="module")
def series():
    return read_series(VH)


@pytest.fixture(scope="module")
def reference():
    # Mask.nii.gz is (x, y, z) = (col, row, slice): transpose to (slice, row, col); 1 = SpinalCord, 2 = BODY
    return np.asanyarray(nib.load(VH / "Mask.nii.gz").dataobj).transpose(2, 1, 0)


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_header_rois_and_references(series):
    h = read_rtstruct_header(VH / "RS_Body_SpinalCord.dcm")
    assert {n: r.name for n, r in h.rois.items()} == {13: "BODY", 23: "SpinalCord"}
    assert h.rois[13].interpreted_type == "EXTERNAL" and h.rois[13].geometric_types == ("CLOSED_PLANAR",)
    assert h.rois[23].n_contours == 4
    assert h.referenced_series_uids == [series.series_uid]
    assert set(h.referenced_sop_uids) == set(series.sop_uids)


def test_iou_against_reference_mask(series, reference):
    vol = read_rtstruct(VH / "RS_Body_SpinalCord.dcm", series)
    body, cord = vol.mask(vol.number_of("BODY")), vol.mask(vol.number_of("SpinalCord"))
    assert _iou(body, reference == 2) >= 0.97
    assert _iou(cord, reference == 1) >= 0.85
    # the cord lies inside the body: two layers, overlap reported
    assert vol.overlaps == [(13, 23)] and vol.layer_rois == [[13], [23]]


def test_boxes_match_readme_within_boundary_convention(series):
    vol = read_rtstruct(VH / "RS_Body_SpinalCord.dcm", series)
    # README (plain polygon fill, boundary pixels included): BODY [0,197,86]-[3,367,454],
    # SpinalCord [0,269,243]-[3,284,261].  Pixel-centre filling may drop a boundary row/column.
    for name, lo, hi in (("BODY", (0, 197, 86), (3, 367, 454)), ("SpinalCord", (0, 269, 243), (3, 284, 261))):
        k, r, c = np.nonzero(vol.mask(vol.number_of(name)))
        assert np.allclose((k.min(), r.min(), c.min()), lo, atol=1)
        assert np.allclose((k.max(), r.max(), c.max()), hi, atol=1)


def test_contours_match_slices_by_position_without_uids(tmp_path, series):
    ds = pydicom.dcmread(VH / "RS_Body_SpinalCord.dcm")
    for roi in ds.ROIContourSequence:
        for c in roi.ContourSequence:
            del c.ContourImageSequence
    ds.save_as(tmp_path / "rs.dcm")
    a = read_rtstruct(tmp_path / "rs.dcm", series)
    b = read_rtstruct(VH / "RS_Body_SpinalCord.dcm", series)
    for n in (13, 23):
        assert np.array_equal(a.mask(n), b.mask(n))


def test_adapter_terms_layers_and_display(series, reference):
    card = load_card("rtstruct-visible-human")
    ad = get_adapter(card, card.resolve_root(SAMPLES))
    (ref,) = ad.discover()
    st_ = ad.load(ref)
    assert ref.case_id == "AnonDICOM__RS_Body_SpinalCord"
    names = [layer.names for layer in st_.layers]
    assert names == [{13: "body"}, {23: "spinal_cord"}]
    # canonical == stored layout here (axial, IOP 1,0,0,0,1,0; slices ascending z)
    assert np.array_equal(st_.image, series.array)
    assert _iou(st_.layers[0].array == 13, reference == 2) >= 0.97
    # the spinal cord lies inside the body, in the middle third of its width
    cord, body = st_.layers[1].array == 23, st_.layers[0].array == 13
    assert (cord & body).sum() >= 0.98 * cord.sum()
    _, _, c = np.nonzero(cord)
    _, _, cb = np.nonzero(body)
    third = (cb.max() - cb.min()) / 3
    assert cb.min() + third < c.mean() < cb.max() - third
    text = repr((st_.notes, st_.transform))
    assert "xFGUXdDEoVLdjlzI" not in text and "Visible Human" not in text


def test_nifti_labels_on_dicom_series_agree_with_rtstruct(series):
    card = SourceCard(
        name="vh-nifti", title="t", adapter="dicom_nifti_labels", licence="x", modality="CT",
        labels={"1": "spinal_cord", "2": "body"},
        layout={"cases": [{"id": "vh", "series": "AnonDICOM", "labels": "AnonDICOM/Mask.nii.gz"}]},
    )
    ad = get_adapter(card, VH.parent)
    (ref,) = ad.discover()
    st_ = ad.load(ref)
    assert any("exact voxel match" in n for n in st_.notes)
    lab = st_.layers[0].array
    vol = read_rtstruct(VH / "RS_Body_SpinalCord.dcm", series)
    assert _iou(lab == 2, vol.mask(13)) >= 0.97 and _iou(lab == 1, vol.mask(23)) >= 0.85


# --- the even-odd fill -----------------------------------------------------------------------------

def test_fill_square_pixel_centres():
    # square with edges at 1.5 and 4.5: centres 2, 3, 4 inside
    m = fill_even_odd([np.array([[1.5, 1.5], [1.5, 4.5], [4.5, 4.5], [4.5, 1.5]])], (8, 8))
    r, c = np.nonzero(m)
    assert (r.min(), r.max(), c.min(), c.max()) == (2, 4, 2, 4) and m.sum() == 9


def test_fill_hole_xor_and_orientation_free():
    outer = np.array([[0, 0], [0, 20], [20, 20], [20, 0]], float) + 0.5
    inner = np.array([[5, 5], [15, 5], [15, 15], [5, 15]], float) + 0.5  # opposite winding
    m = fill_even_odd([outer, inner], (24, 24))
    assert m.sum() == 20 * 20 - 10 * 10
    assert not m[10, 10] and m[2, 2]
    # same winding: still a hole (even-odd, not non-zero winding)
    m2 = fill_even_odd([outer, inner[::-1]], (24, 24))
    assert np.array_equal(m, m2)


def test_fill_clips_to_the_image():
    m = fill_even_odd([np.array([[-5, -5], [-5, 3.2], [3.2, 3.2], [3.2, -5]])], (6, 6))
    assert m.sum() == 16 and m[:4, :4].all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.3, 30.7), st.floats(0.3, 30.7)), min_size=3, max_size=12))
def test_fill_matches_point_in_polygon(points):
    from skimage.measure import points_in_poly

    poly = np.array(points, float)
    m = fill_even_odd([poly], (32, 32))
    rr, cc = np.mgrid[0:32, 0:32]
    ref = points_in_poly(np.c_[rr.ravel(), cc.ravel()], poly).reshape(32, 32)
    # identical except for pixel centres lying exactly on an edge, where inside/outside is a convention
    # (hypothesis likes integer vertices, so such centres are common): those are left out
    pts = np.c_[rr.ravel(), cc.ravel()].astype(float)
    on_edge = np.zeros(len(pts), bool)
    for a, b in zip(poly, np.roll(poly, -1, axis=0)):
        ab = b - a
        t = np.clip(((pts - a) @ ab) / max(ab @ ab, 1e-12), 0, 1)
        on_edge |= np.linalg.norm(pts - (a + t[:, None] * ab), axis=1) < 1e-6
    assert not ((m != ref).ravel() & ~on_edge).any()
