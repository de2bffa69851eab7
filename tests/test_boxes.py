"""pipeline.regions.boxes on real public sample data (TotalSegmentator, BiomedParse, Kvasir-SEG) and on
random volumes against a brute-force reference."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.regions.boxes import HAVE_NUMBA, RegionPx, SliceLabelBoxes, regions_2d, slice_label_boxes
from tests.helpers_proc import in_child_process

SAMPLES = Path(os.environ.get("MEDREG_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "data"))


def sample(*parts: str) -> Path:
    path = SAMPLES.joinpath(*parts)
    if not path.exists():  # fail loudly: these tests are the reference check, never skip them
        raise FileNotFoundError(
            f"sample data missing: {path}. Set MEDREG_SAMPLES to the shared sample-data folder "
            "(or fetch it with flows.samples.download_samples)."
        )
    return path


# ---------------------------------------------------------------------------------------------------
# brute force references
# ---------------------------------------------------------------------------------------------------


def brute_slice_boxes(vol: np.ndarray) -> dict[tuple[int, int], tuple[int, int, int, int, int]]:
    """(slice, label) -> (rmin, rmax, cmin, cmax, count) with np.where, one label at a time."""
    out = {}
    for k in range(vol.shape[0]):
        for lab in np.unique(vol[k]):
            if lab == 0:
                continue
            rr, cc = np.where(vol[k] == lab)
            out[(k, int(lab))] = (rr.min(), rr.max(), cc.min(), cc.max(), rr.size)
    return out


def as_dict(res: SliceLabelBoxes) -> dict[tuple[int, int], tuple[int, int, int, int, int]]:
    return {
        (int(k), int(lab)): (int(a), int(b), int(c), int(d), int(n))
        for k, lab, a, b, c, d, n in zip(
            res.slice, res.label, res.rmin, res.rmax, res.cmin, res.cmax, res.count, strict=True
        )
    }


def assert_sorted(res: SliceLabelBoxes) -> None:
    key = res.slice.astype(np.int64) * (int(res.label.max(initial=0)) + 1) + res.label
    assert np.all(np.diff(key) > 0), "records must be sorted by (slice, label) without duplicates"


# ---------------------------------------------------------------------------------------------------
# TotalSegmentator CT label map
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def totalseg_ct() -> np.ndarray:
    import nibabel as nib

    a = np.asarray(nib.load(sample("totalseg-nifti", "ct", "example_seg.nii.gz")).dataobj)
    assert a.shape == (122, 101, 30) and a.dtype == np.uint8
    return np.transpose(a, (2, 0, 1))  # (i, j, k) -> (k, i, j): slices along k


def test_totalseg_volume_boxes_match_readme(totalseg_ct: np.ndarray) -> None:
    res = slice_label_boxes(totalseg_ct)
    # README boxes are (i, j, k); volume_box gives (kmin, rmin=i, cmin=j, kmax, rmax, cmax)
    assert res.volume_box(5) == (0, 41, 25, 29, 105, 86)  # liver [41,25,0]-[105,86,29]
    assert res.volume_box(1) == (0, 10, 22, 29, 43, 57)  # spleen [10,22,0]-[43,57,29]
    assert res.volume_box(13) == (29, 91, 78, 29, 91, 78)  # single voxel [91,78,29]
    assert res.volume_count(13) == 1
    assert res.slices_with_label(13).tolist() == [29]
    present = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 18, 19, 20, 30, 31, 32, 33, 52, 63, 64, 79,
               86, 87, 88, 89, 98, 99, 100, 101, 102, 103, 110, 111, 112, 113, 114, 115, 117]  # fmt: skip
    assert res.labels().tolist() == present
    vb = res.volume_boxes()
    assert sorted(vb) == present
    assert all(vb[lab] == res.volume_box(lab) for lab in present)
    with pytest.raises(KeyError, match="label 12"):
        res.volume_box(12)


def test_totalseg_every_slice_box_matches_brute_force(totalseg_ct: np.ndarray) -> None:
    res = slice_label_boxes(totalseg_ct)
    assert_sorted(res)
    assert as_dict(res) == brute_slice_boxes(totalseg_ct)
    assert int(res.count.sum()) == int((totalseg_ct > 0).sum())
    # helpers
    s29 = res.for_slice(29)
    assert set(s29.slice.tolist()) == {29} and 13 in s29.label.tolist()
    assert len(res.for_slice(1000)) == 0
    assert np.array_equal(res.for_label(5).slice, res.slices_with_label(5))
    bx = res.boxes_px()
    assert np.array_equal(bx[:, 0], res.cmin) and np.array_equal(bx[:, 3], res.rmax)


def test_totalseg_other_layouts_and_dtypes(totalseg_ct: np.ndarray) -> None:
    ref = as_dict(slice_label_boxes(totalseg_ct))
    # non-contiguous input (the transposed nibabel array is a view), wide dtypes, big ids
    for dt in (np.uint16, np.int16, np.int32, np.int64, np.uint32):
        assert as_dict(slice_label_boxes(totalseg_ct.astype(dt))) == ref, dt
    shifted = totalseg_ct.astype(np.int64) * 100_003  # ids far above 2**20: remapped internally
    got = as_dict(slice_label_boxes(shifted))
    assert got == {(k, lab * 100_003): v for (k, lab), v in ref.items()}
    # coronal slicing: slices along i
    cor = np.transpose(totalseg_ct, (1, 0, 2))
    assert as_dict(slice_label_boxes(cor)) == brute_slice_boxes(np.ascontiguousarray(cor))


def _kernel_threads() -> int:  # called in a child process, as in a build's worker
    from pipeline.regions._kernel import kernel_threads

    return kernel_threads()


def test_box_pass_threads_serial_in_workers(totalseg_ct: np.ndarray, monkeypatch) -> None:
    """The 3-D box pass runs on numba's threads in the main process and on one thread in a build's worker
    processes (MEDREG_KERNEL_THREADS overrides); the boxes are the same either way."""
    import numba

    from pipeline.regions._kernel import kernel_threads

    monkeypatch.delenv("MEDREG_KERNEL_THREADS", raising=False)
    assert kernel_threads() == numba.get_num_threads()
    assert in_child_process(_kernel_threads) == 1
    threaded = as_dict(slice_label_boxes(totalseg_ct))
    monkeypatch.setenv("MEDREG_KERNEL_THREADS", "1")
    assert kernel_threads() == 1
    assert as_dict(slice_label_boxes(totalseg_ct)) == threaded
    monkeypatch.setenv("MEDREG_KERNEL_THREADS", "64")
    assert kernel_threads() == numba.get_num_threads()  # never more than numba's pool
    monkeypatch.setenv("MEDREG_KERNEL_THREADS", "many")
    with pytest.raises(ValueError, match="MEDREG_KERNEL_THREADS='many'"):
        kernel_threads()


def test_numpy_fallback_matches_kernel(totalseg_ct: np.ndarray) -> None:
    a = slice_label_boxes(totalseg_ct, use_numba=False)
    b = slice_label_boxes(totalseg_ct)
    assert as_dict(a) == as_dict(b)
    assert HAVE_NUMBA  # numba is a project dependency: the fast path must be the one in use


# ---------------------------------------------------------------------------------------------------
# edge cases and validation
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_numba", [True, False])
def test_negative_labels_rejected(use_numba: bool) -> None:
    a = np.zeros((2, 3, 9), np.int16)
    a[1, 2, 3] = -4
    with pytest.raises(ValueError, match="negative"):
        slice_label_boxes(a, use_numba=use_numba)
    with pytest.raises(ValueError, match="negative"):
        slice_label_boxes(a.astype(np.int64), use_numba=use_numba)


def test_shapes_and_dtypes_validated() -> None:
    with pytest.raises(ValueError, match=r"\(K, R, C\)"):
        slice_label_boxes(np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="integers"):
        slice_label_boxes(np.zeros((1, 3, 3), np.float32))
    assert len(slice_label_boxes(np.zeros((0, 4, 4), np.uint8))) == 0
    assert len(slice_label_boxes(np.zeros((3, 4, 4), np.uint8))) == 0
    b = slice_label_boxes(np.ones((1, 2, 3), bool))
    assert as_dict(b) == {(0, 1): (0, 1, 0, 2, 6)}


def test_many_labels_on_one_slice_overflow_path() -> None:
    # 3000 distinct ids on one slice: more than the records reserved per slice by default
    rng = np.random.default_rng(3)
    vol = np.zeros((3, 64, 64), np.uint16)
    vol[1].flat[:3000] = rng.permutation(np.arange(1, 60001))[:3000]
    vol[2, 5:9, 7:60] = 65535
    assert as_dict(slice_label_boxes(vol)) == brute_slice_boxes(vol)


def test_word_skipping_edges() -> None:
    # runs that start/end at every offset within 8-byte words, odd widths, a full row of one label
    for width in (1, 7, 8, 9, 15, 16, 17, 33):
        vol = np.zeros((2, 5, width), np.uint8)
        for r in range(5):
            vol[0, r, r % width :] = 3
            vol[1, r, : (r * 3) % (width + 1)] = 200
        vol[1, 4, :] = 7
        assert as_dict(slice_label_boxes(vol)) == brute_slice_boxes(vol), width


@st.composite
def label_volumes(draw):
    dtype = draw(st.sampled_from([np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64]))
    shape = draw(st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 20)))
    n_ids = draw(st.integers(1, 6))
    hi = min(int(np.iinfo(dtype).max), 70000)
    ids = draw(st.lists(st.integers(1, hi), min_size=n_ids, max_size=n_ids))
    idx = draw(arrays(np.int8, shape, elements=st.integers(0, n_ids)))
    table = np.array([0, *ids], dtype=np.int64)
    return table[idx].astype(dtype)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_volumes())
def test_property_random_volumes_vs_brute_force(vol: np.ndarray) -> None:
    res = slice_label_boxes(vol)
    assert_sorted(res)
    expect = brute_slice_boxes(vol)
    assert as_dict(res) == expect
    assert as_dict(slice_label_boxes(vol, use_numba=False)) == expect
    for lab in res.labels().tolist():
        kk, rr, cc = np.where(vol == lab)
        assert res.volume_box(lab) == (kk.min(), rr.min(), cc.min(), kk.max(), rr.max(), cc.max())


# ---------------------------------------------------------------------------------------------------
# regions_2d: BiomedParse masks (RGBA PNG; channel 0 > 127)
# ---------------------------------------------------------------------------------------------------

BIOMEDPARSE = {  # mask stem: (foreground px, union box, 4-connected components) from the README
    "15_X-Ray_chest_lung": (388640, (68, 68, 931, 951), 2),
    "15_X-Ray_chest_left+lung": (180576, (556, 72, 931, 951), 1),
    "15_X-Ray_chest_right+lung": (208064, (68, 68, 475, 947), 1),
    "15_X-Ray_chest_COVID-19+infection": (388640, (68, 68, 931, 951), 2),
    "20_ultrasound_breast_tumor": (90559, (162, 220, 552, 529), 1),
    "23_fundus_retinal_optic+disc": (12876, (244, 417, 379, 578), 1),
    "23_fundus_retinal_optic+cup": (4452, (282, 459, 355, 535), 1),
    "24_endoscope_colon_polyp": (27859, (132, 383, 813, 605), 2),
    "24_endoscope_colon_neoplastic+polyp": (25444, (132, 383, 281, 599), 1),
    "24_endoscope_colon_non-neoplastic+polyp": (2415, (756, 551, 813, 605), 1),
    "25_dermoscopy_skin_melanoma": (72478, (449, 338, 733, 700), 1),
}


def load_biomedparse_mask(stem: str) -> np.ndarray:
    from PIL import Image

    rgba = np.asarray(Image.open(sample("biomedparse-demo-2d", "demo_mask", f"{stem}.png")))
    assert rgba.shape == (1024, 1024, 4)
    return (rgba[..., 0] > 127).astype(np.uint8)


@pytest.mark.parametrize("stem", sorted(BIOMEDPARSE))
def test_biomedparse_boxes_and_components(stem: str) -> None:
    px, box, n_comp = BIOMEDPARSE[stem]
    mask = load_biomedparse_mask(stem)
    names = {1: stem.split("_", 3)[-1].replace("+", " ")}
    comps = regions_2d(mask, names, policy="component", connectivity=1)
    assert len(comps) == n_comp
    assert sum(r.area for r in comps) == px
    assert [r.component for r in comps] == list(range(n_comp))
    union = (min(r.box_px[0] for r in comps), min(r.box_px[1] for r in comps),
             max(r.box_px[2] for r in comps), max(r.box_px[3] for r in comps))  # fmt: skip
    assert union == box
    by_label = regions_2d(mask, names, policy="label")
    assert [(r.box_px, r.area, r.component) for r in by_label] == [(box, px, 0)]
    inst = regions_2d(mask, names, policy="component", instance=True)
    assert [(r.box_px, r.area) for r in inst] == [(box, px)]
    # dust threshold with the label policy goes through the component path: same union here
    assert [r.box_px for r in regions_2d(mask, names, policy="label", min_pixels=10)] == [box]


def test_biomedparse_polyp_component_order_and_multilabel() -> None:
    polyp = load_biomedparse_mask("24_endoscope_colon_polyp")
    comps = regions_2d(polyp, {1: "polyp"}, policy="component")
    # reading order: the neoplastic one (y_min 383) before the non-neoplastic one (y_min 551)
    assert [r.box_px for r in comps] == [(132, 383, 281, 599), (756, 551, 813, 605)]
    assert [r.area for r in comps] == [25444, 2415]
    # one multi-label slice: 1 = neoplastic, 2 = non-neoplastic
    neo = load_biomedparse_mask("24_endoscope_colon_neoplastic+polyp")
    non = load_biomedparse_mask("24_endoscope_colon_non-neoplastic+polyp")
    multi = (neo + 2 * non).astype(np.uint8)
    names = {1: "neoplastic polyp", 2: "non-neoplastic polyp"}
    got = regions_2d(multi, names, policy="component", connectivity=2)
    assert [(r.term, r.label_id, r.box_px, r.component) for r in got] == [
        ("neoplastic polyp", 1, (132, 383, 281, 599), 0),
        ("non-neoplastic polyp", 2, (756, 551, 813, 605), 0),
    ]
    only2 = regions_2d(multi, {2: "non-neoplastic polyp"})
    assert [r.box_px for r in only2] == [(756, 551, 813, 605)]
    # the lung mask: left/right lungs are separate components; sides in reading order
    lungs = regions_2d(load_biomedparse_mask("15_X-Ray_chest_lung"), {1: "lung"})
    assert [r.box_px for r in lungs] == [(68, 68, 475, 947), (556, 72, 931, 951)]
    region = lungs[0].to_region(1024, 1024)
    assert region.box_px == (68, 68, 475, 947) and region.term == "lung" and region.label_id == 1
    assert all(0 <= v <= 999 for v in region.box)


# ---------------------------------------------------------------------------------------------------
# regions_2d: Kvasir-SEG JPEG masks (compression noise, a stray pixel)
# ---------------------------------------------------------------------------------------------------

KVASIR_MASK_UNION = {  # README "mask (union of components)" column
    "cju0qkwl35piu0993l0dewei2": (39, 6, 429, 337),
    "cju0qoxqj9q6s0835b43399p4": (195, 285, 912, 1048),
    "cju0qx73cjw570799j4n5cjze": (188, 15, 542, 525),
    "cju0rx1idathl0835detmsp84": (293, 155, 480, 374),
}
STRAY = "cju0roawvklrq0799vmjorwfv"


def load_kvasir_mask(stem: str) -> np.ndarray:
    from PIL import Image

    rgb = np.asarray(Image.open(sample("kvasir-seg-sample", "masks", f"{stem}.jpg")).convert("RGB"))
    return (rgb.mean(axis=2) > 127).astype(np.uint8)


def close(a, b, tol: int = 1) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("stem", sorted(KVASIR_MASK_UNION))
def test_kvasir_boxes_with_dust_threshold(stem: str) -> None:
    mask = load_kvasir_mask(stem)
    got = regions_2d(mask, {1: "polyp"}, policy="label", min_pixels=50)
    assert len(got) == 1
    assert close(got[0].box_px, KVASIR_MASK_UNION[stem]), (got[0].box_px, KVASIR_MASK_UNION[stem])
    # the dataset's JSON boxes are one pixel larger on every side than the mask extent
    js = json.loads(sample("kvasir-seg-sample", "kavsir_bboxes.json").read_text())[stem]["bbox"]
    assert len(js) == 1
    jb = (js[0]["xmin"], js[0]["ymin"], js[0]["xmax"], js[0]["ymax"])
    assert close(got[0].box_px, (jb[0] + 1, jb[1] + 1, jb[2] - 1, jb[3] - 1))


def test_kvasir_stray_pixel_is_dust() -> None:
    mask = load_kvasir_mask(STRAY)
    assert mask[0, 0] == 1  # the spurious white pixel at (0, 0)
    naive = regions_2d(mask, {1: "polyp"}, policy="label")
    assert naive[0].box_px[:2] == (0, 0)  # without a threshold the union box starts at the corner
    comps = regions_2d(mask, {1: "polyp"}, policy="component", min_pixels=50)
    assert len(comps) == 2
    expect = [(487, 43, 621, 338), (330, 72, 436, 149)]  # README: the 2 real components
    # reading order: top first (y_min 43 before 72)
    assert all(close(r.box_px, e) for r, e in zip(comps, expect, strict=True)), comps
    assert [r.component for r in comps] == [0, 1]
    union = regions_2d(mask, {1: "polyp"}, policy="label", min_pixels=50)
    assert close(union[0].box_px, (330, 43, 621, 338))
    # a fractional threshold does the same (50 px of 622 x 528 is ~0.015 %)
    frac = regions_2d(mask, {1: "polyp"}, policy="component", min_fraction=0.0002)
    assert [r.box_px for r in frac] == [r.box_px for r in comps]


# ---------------------------------------------------------------------------------------------------
# regions_2d: synthetic semantics
# ---------------------------------------------------------------------------------------------------


def test_regions_2d_connectivity_dust_and_order() -> None:
    a = np.zeros((10, 12), np.uint8)
    a[1, 1] = a[2, 2] = 3  # diagonal pair: 2 components with 4-conn, 1 with 8-conn
    a[5:8, 6:11] = 3  # 15 px block
    a[0, 8:10] = 4  # label 4 (not named -> ignored)
    a[9, 0:3] = 5  # 3 px
    names = {3: "kidney", 5: "cyst"}
    four = regions_2d(a, names, connectivity=1)
    assert [(r.term, r.box_px, r.area, r.component) for r in four] == [
        ("kidney", (1, 1, 1, 1), 1, 0),
        ("kidney", (2, 2, 2, 2), 1, 1),
        ("kidney", (6, 5, 10, 7), 15, 2),
        ("cyst", (0, 9, 2, 9), 3, 0),
    ]
    eight = regions_2d(a, names, connectivity=2)
    assert [(r.box_px, r.area) for r in eight][:2] == [((1, 1, 2, 2), 2), ((6, 5, 10, 7), 15)]
    dusted = regions_2d(a, names, min_pixels=3)
    assert [(r.term, r.box_px) for r in dusted] == [("kidney", (6, 5, 10, 7)), ("cyst", (0, 9, 2, 9))]
    per_label = regions_2d(a, names, policy="label", min_pixels=2, connectivity=2)
    assert [(r.term, r.box_px, r.area) for r in per_label] == [
        ("kidney", (1, 1, 10, 7), 17),
        ("cyst", (0, 9, 2, 9), 3),
    ]
    assert regions_2d(a, {9: "absent"}) == []
    assert regions_2d(np.zeros((4, 4), np.uint8), names) == []
    assert all(isinstance(r, RegionPx) for r in four)
    with pytest.raises(ValueError, match="policy"):
        regions_2d(a, names, policy="blob")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="connectivity"):
        regions_2d(a, names, connectivity=3)
    with pytest.raises(ValueError, match="2-D"):
        regions_2d(a[None], names)
    with pytest.raises(ValueError, match="negative"):
        regions_2d(-a.astype(np.int16), names)


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 16), st.integers(1, 16)), elements=st.integers(0, 3)),
       st.integers(1, 2), st.integers(0, 4))  # fmt: skip
def test_property_regions_2d_vs_scipy(a: np.ndarray, connectivity: int, min_pixels: int) -> None:
    from scipy import ndimage

    names = {1: "a", 2: "b", 3: "c"}
    got = regions_2d(a, names, connectivity=connectivity, min_pixels=min_pixels)
    expect = []
    st_ = ndimage.generate_binary_structure(2, connectivity)
    for lab in (1, 2, 3):
        cc, n = ndimage.label(a == lab, structure=st_)
        for i, sl in enumerate(ndimage.find_objects(cc), start=1):
            area = int((cc[sl] == i).sum())
            if area >= min_pixels:
                box = (sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1)
                expect.append((lab, box, area))
    expect.sort(key=lambda t: (t[1][1], t[1][0], t[1][3], t[1][2], t[0]))
    assert [(r.label_id, r.box_px, r.area) for r in got] == expect


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([np.uint16, np.int16, np.int32, np.int64]),
       st.tuples(st.integers(1, 2), st.integers(1, 24), st.integers(1, 24)),
       st.lists(st.integers(1, 32767), min_size=1, max_size=5), st.integers(0, 2**32 - 1))  # fmt: skip
def test_property_small_arrays_scratch_sized_to_labels(dtype, shape, ids, seed) -> None:
    """Slices and component images get a kernel scratch sized to their largest label, not 65,536 slots:
    the boxes must not change (ids near the top of the dtype included)."""
    rng = np.random.default_rng(seed)
    vol = rng.choice(np.array([0, *ids], dtype=np.int64), size=shape, p=None).astype(dtype)
    got, want = slice_label_boxes(vol), slice_label_boxes(vol, use_numba=False)
    for f in ("slice", "label", "rmin", "rmax", "cmin", "cmax", "count"):
        np.testing.assert_array_equal(getattr(got, f), getattr(want, f))
    names = {i: f"t{i}" for i in ids}
    a = vol[0]
    comp = regions_2d(a, names, policy="component", min_pixels=2)
    brute = []
    from scipy import ndimage

    for lab in sorted(set(ids)):
        cc, _ = ndimage.label(a == lab)
        for i, sl in enumerate(ndimage.find_objects(cc), start=1):
            area = int((cc[sl] == i).sum())
            if area >= 2:
                brute.append((lab, (sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1), area))
    brute.sort(key=lambda t: (t[1][1], t[1][0], t[1][3], t[1][2], t[0]))
    assert [(r.label_id, r.box_px, r.area) for r in comp] == brute
