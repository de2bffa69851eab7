"""DICOM-SEG: the dcmqi README facts, frame mapping by UID / position, segment types, grids and terms."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipeline.ingest.geometry import display_view
from pipeline.ingest.readers.dicom import read_series
from pipeline.ingest.readers.dicom_seg import read_seg, read_seg_header
from sources.base import get_adapter, load_card

import highdicom as hd  # noqa: E402

SAMPLES = Path(os.environ.get("MEDREG_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "data"))
DCMQI = SAMPLES / "dcmqi-ct-liver-seg"

# README: per-frame mask boxes as (row, col) inclusive, by source file
README_BOXES = {
    "03.dcm": ((145, 79), (366, 350), 36233),
    "02.dcm": ((146, 80), (365, 349), 35645),
    "01.dcm": ((147, 81), (364, 348), 35220),
}


@pytest.fixture(scope="module", autouse=True)
def _samples_present():
    assert SAMPLES.is_dir(), f"sample data missing at {SAMPLES}: set MEDREG_SAMPLES"


@pytest.fixture(scope="module")
def series():
    return read_series(DCMQI / "ct-3slice")


@pytest.fixture(scope="module")
def liver_study():
    card = load_card("dcmqi-liver-seg")
    ad = get_adapter(card, card.resolve_root(SAMPLES))
    (ref,) = ad.discover()
    return ref, ad.load(ref)


def _box_rc(mask2d):
    r, c = np.nonzero(mask2d)
    return (int(r.min()), int(c.min())), (int(r.max()), int(c.max())), int(mask2d.sum())


# --- the dcmqi sample ----------------------------------------------------------------------------------

def test_frames_are_stored_in_reverse_slice_order():
    ds = pydicom.dcmread(DCMQI / "liver.dcm", stop_before_pixels=True)
    ct = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f.name for f in (DCMQI / "ct-3slice").iterdir()}
    refs = [ct[fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
            for fg in ds.PerFrameFunctionalGroupsSequence]
    assert refs == ["03.dcm", "02.dcm", "01.dcm"]


def test_readme_boxes_per_source_file(series):
    vol = read_seg(DCMQI / "liver.dcm", series)
    assert vol.mapping == "grid" and vol.layer_segments == [[1]] and not vol.overlaps
    mask = vol.mask(1)
    for k, f in enumerate(series.files):
        assert _box_rc(mask[k]) == README_BOXES[Path(f).name]
    k, r, c = np.nonzero(mask)
    assert (r.min(), c.min(), r.max(), c.max()) == (145, 79, 366, 350)  # 3-D box over the series


def test_mean_hu_in_liver(series):
    mask = read_seg(DCMQI / "liver.dcm", series).mask(1)
    assert float(series.array[mask].mean()) == pytest.approx(37.3, abs=0.05)


def test_adapter_display_boxes_laterality_and_terms(liver_study):
    ref, st = liver_study
    assert ref.case_id == "liver" and ref.patient_id == "99000"
    assert st.is_3d and st.modality == "CT" and st.image.shape == (3, 512, 512)
    (layer,) = st.layers
    assert layer.names == {1: "liver"}
    # axial IOP 1,0,0,0,1,0: display image == stored pixels, display box = (col_min,row_min,col_max,row_max)
    files = ["03.dcm", "02.dcm", "01.dcm"]  # canonical k runs inferior -> superior
    for k, name in enumerate(files):
        m = display_view(layer.array, "axial", k) == 1
        (r0, c0), (r1, c1), n = README_BOXES[name]
        ys, xs = np.nonzero(m)
        assert (xs.min(), ys.min(), xs.max(), ys.max()) == (c0, r0, c1, r1) and m.sum() == n
    # liver = patient right = IMAGE LEFT after to_canonical
    k, r, c = np.nonzero(layer.array == 1)
    assert c.mean() < 256 and c.max() < 512 // 2 + 120
    assert float(st.image[layer.array == 1].mean()) == pytest.approx(37.3, abs=0.05)
    # privacy: no name/date of the header reaches the study
    text = repr((st.notes, st.transform, ref))
    assert "JANCT000" not in text and "2003" not in text and "20160318" not in text


def test_position_only_mapping_when_references_are_stripped(tmp_path, series):
    ds = pydicom.dcmread(DCMQI / "liver.dcm")
    for fg in ds.PerFrameFunctionalGroupsSequence:
        del fg.DerivationImageSequence
    del ds.ReferencedSeriesSequence
    ds.save_as(tmp_path / "noref.dcm")
    a = read_seg(tmp_path / "noref.dcm", series).mask(1)
    b = read_seg(DCMQI / "liver.dcm", series).mask(1)
    assert np.array_equal(a, b)


def test_uid_only_mapping_when_positions_are_stripped(tmp_path, series):
    ds = pydicom.dcmread(DCMQI / "liver.dcm")
    for fg in ds.PerFrameFunctionalGroupsSequence:
        del fg.PlanePositionSequence
    ds.save_as(tmp_path / "nopos.dcm")
    assert np.array_equal(read_seg(tmp_path / "nopos.dcm", series).mask(1), read_seg(DCMQI / "liver.dcm", series).mask(1))


def test_header_segments_and_codes():
    h = read_seg_header(DCMQI / "liver.dcm")
    seg = h.segments[1]
    assert seg.label == "Liver" and seg.property_type.key == "SRT:T-62000" and seg.category.value == "T-D0050"
    assert h.segmentation_type == "BINARY" and h.n_frames == 3 and len(h.referenced_sop_uids) == 3


# --- synthetic SEGs built with highdicom on the dcmqi CT ----------------------------------------------

def _sources(series):
    out = []
    for f in series.files:
        ds = pydicom.dcmread(f)
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # the dcmqi CT has an empty value, which highdicom rejects
        out.append(ds)
    return out


def _desc(n, label, prop, category=codes.SCT.Organ):
    return hd.seg.SegmentDescription(segment_number=n, segment_label=label, segmented_property_category=category,
                                     segmented_property_type=prop, algorithm_type="MANUAL")


def _write_seg(path, series, pixel_array, descs, seg_type="BINARY", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=_sources(series), pixel_array=pixel_array, segmentation_type=seg_type,
            segment_descriptions=descs, series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="test", manufacturer_model_name="test", software_versions="1",
            device_serial_number="1", **kw)
    seg.save_as(path)
    return path


@pytest.fixture(scope="module")
def liver_mask(series):
    return read_seg(DCMQI / "liver.dcm", series).mask(1)


def _box(shape, r0, r1, c0, c1, ks=(0, 1, 2)):
    m = np.zeros(shape, bool)
    for k in ks:
        m[k, r0:r1, c0:c1] = True
    return m


def test_multi_segment_without_overlap_is_one_layer(tmp_path, series, liver_mask):
    spleen = _box(series.shape, 200, 260, 400, 460)
    px = np.stack([liver_mask, spleen], axis=-1).astype(np.uint8)
    p = _write_seg(tmp_path / "two.dcm", series, px, [_desc(1, "Liver", codes.SCT.Liver), _desc(2, "Spleen", codes.SCT.Spleen)])
    vol = read_seg(p, series)
    assert vol.layer_segments == [[1, 2]] and not vol.overlaps
    assert np.array_equal(vol.mask(1), liver_mask) and np.array_equal(vol.mask(2), spleen)


def test_overlapping_segments_become_layers(tmp_path, series, liver_mask):
    lesion = _box(series.shape, 200, 240, 150, 190)  # inside the liver
    spleen = _box(series.shape, 200, 260, 400, 460)
    px = np.stack([liver_mask, lesion, spleen], axis=-1).astype(np.uint8)
    descs = [_desc(1, "Liver", codes.SCT.Liver), _desc(2, "Lesion", codes.SCT.Neoplasm, codes.SCT.MorphologicallyAbnormalStructure),
             _desc(3, "Spleen", codes.SCT.Spleen)]
    p = _write_seg(tmp_path / "ovl.dcm", series, px, descs)
    vol = read_seg(p, series)
    assert vol.overlaps == [(1, 2)]
    assert vol.layer_segments == [[1, 3], [2]]
    assert np.array_equal(vol.mask(2), lesion) and np.array_equal(vol.mask(1), liver_mask)
    # through the adapter: the lesion has no term in this card -> skipped with a note, liver + spleen kept
    root = tmp_path / "ds"
    shutil.copytree(DCMQI / "ct-3slice", root / "ct")
    shutil.copy(p, root / "seg.dcm")
    card = load_card("dcmqi-liver-seg").model_copy(update={"resolve_labels_with_glossary": False})
    ad = get_adapter(card, root)
    (ref,) = ad.discover()
    st = ad.load(ref)
    assert [layer.names for layer in st.layers] == [{1: "liver", 3: "spleen"}]
    assert any("segment 2" in n and "no term" in n for n in st.notes)
    card = card.model_copy(update={"labels": {**card.labels, "SCT:108369006": "tumor"}})
    st = get_adapter(card, root).load(ref)
    assert [layer.names for layer in st.layers] == [{1: "liver", 3: "spleen"}, {2: "tumor"}]


def test_fractional_threshold_half_of_max(tmp_path, series, liver_mask):
    prob = np.where(liver_mask, 0.8, 0.0).astype(np.float32)
    prob[:, 10:20, 10:20] = 0.3  # below half: background
    prob[:, 30:40, 30:40] = 0.55  # above half: foreground
    p = _write_seg(tmp_path / "frac.dcm", series, prob, [_desc(1, "Liver", codes.SCT.Liver)], seg_type="FRACTIONAL")
    vol = read_seg(p, series)
    assert vol.header.segmentation_type == "FRACTIONAL"
    expect = liver_mask.copy()
    expect[:, 30:40, 30:40] = True
    assert np.array_equal(vol.mask(1), expect)


def test_sparse_frames(tmp_path, series):
    m = _box(series.shape, 100, 120, 100, 130, ks=(1,))
    p = _write_seg(tmp_path / "sparse.dcm", series, m.astype(np.uint8), [_desc(1, "Liver", codes.SCT.Liver)])
    assert read_seg_header(p).n_frames == 1  # empty frames omitted
    assert np.array_equal(read_seg(p, series).mask(1), m)


def test_labelmap_segmentation(tmp_path, series, liver_mask):
    lab = np.zeros(series.shape, np.uint8)
    lab[liver_mask] = 1
    lab[_box(series.shape, 200, 260, 400, 460)] = 2
    p = _write_seg(tmp_path / "lm.dcm", series, lab, [_desc(1, "Liver", codes.SCT.Liver), _desc(2, "Spleen", codes.SCT.Spleen)],
                   seg_type="LABELMAP")
    vol = read_seg(p, series)
    assert np.array_equal(vol.mask(1), liver_mask) and vol.mask(2).sum() == 3 * 60 * 60


def test_seg_on_another_grid_is_aligned_in_physical_space(tmp_path, series, liver_mask):
    """A SEG stored at half resolution (2x pixel spacing, same origin) lands on the CT grid."""
    ps = series.pixel_spacing[0]
    coarse = liver_mask[:, ::2, ::2]
    positions = [hd.PlanePositionSequence(coordinate_system="PATIENT", image_position=[float(v) for v in p])
                 for p in series.positions]
    p = _write_seg(
        tmp_path / "coarse.dcm", series, coarse.astype(np.uint8), [_desc(1, "Liver", codes.SCT.Liver)],
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=(2 * ps, 2 * ps), slice_thickness=1.0),
        plane_orientation=hd.PlaneOrientationSequence(coordinate_system="PATIENT", image_orientation=(1, 0, 0, 0, 1, 0)),
        plane_positions=positions,
    )
    vol = read_seg(p, series)
    assert vol.mapping == "physical" and any("resampled in physical space" in n for n in vol.notes)
    m = vol.mask(1)
    iou = (m & liver_mask).sum() / (m | liver_mask).sum()
    assert iou > 0.97
    # the coarse pixel (i, j) covers fine pixels 2i-0.5 .. 2i+1.5: nearest neighbour maps fine 2i and 2i+1 to i
    assert np.array_equal(m[:, ::2, ::2], coarse)


def test_laterality_modifier_and_label_fallback(tmp_path, series):
    left = _box(series.shape, 200, 260, 400, 460)
    other = _box(series.shape, 100, 120, 100, 130)
    px = np.stack([left, other], axis=-1).astype(np.uint8)
    p = _write_seg(tmp_path / "k.dcm", series, px,
                   [_desc(1, "Kidney L", codes.SCT.Kidney), _desc(2, "my blob", codes.SCT.Neoplasm)])
    ds = pydicom.dcmread(p)
    mod = Dataset()
    mod.CodeValue, mod.CodingSchemeDesignator, mod.CodeMeaning = "7771000", "SCT", "Left"
    ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [mod]
    ds.save_as(p)
    root = tmp_path / "ds"
    shutil.copytree(DCMQI / "ct-3slice", root / "ct")
    shutil.copy(p, root / "seg.dcm")
    card = load_card("dcmqi-liver-seg").model_copy(
        update={"resolve_labels_with_glossary": False, "labels": {"my blob": "kidney_cyst"}})
    ad = get_adapter(card, root)
    (ref,) = ad.discover()
    st = ad.load(ref)
    assert st.layers[0].names == {1: "kidney_left", 2: "kidney_cyst"}


def test_slice_positions_along_each_axis(liver_study):
    _, st = liver_study
    # origin_mm lists the LPS position of voxel (0,0,0) per canonical axis (S, P, L): z, y, x
    assert st.origin_mm == pytest.approx((-128.69, -226.8, -235.2), abs=1e-3)
    k_pos = [st.origin_mm[0] + k * st.spacing[0] for k in range(3)]
    assert k_pos == pytest.approx([-128.69, -127.69, -126.69], abs=1e-3)
