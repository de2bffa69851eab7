"""pipeline.regions.counts: per-slice voxel counts along all three axes in one pass, on the TotalSegmentator
sample (its README facts) and on random volumes against np.unique slice by slice."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.regions.boxes import slice_label_boxes
from pipeline.regions.counts import MAX_TABLE_LABELS, SliceLabelCounts, slice_label_counts
from tests.helpers_proc import in_child_process
from tests.test_boxes import sample


def brute_counts(vol: np.ndarray, axis: int) -> dict[tuple[int, int], int]:
    """(slice, label) -> voxels along ``axis``, with np.unique on each slice."""
    out = {}
    moved = np.moveaxis(vol, axis, 0)
    for k in range(moved.shape[0]):
        ids, n = np.unique(moved[k], return_counts=True)
        out.update({(k, int(i)): int(c) for i, c in zip(ids, n, strict=True) if i != 0})
    return out


def as_dict(c: SliceLabelCounts) -> dict[tuple[int, int], int]:
    key = c.slice * (int(c.label.max(initial=0)) + 1) + c.label
    assert np.all(np.diff(key) > 0), "sorted by (slice, label), no repeats"
    assert c.slice.dtype == c.label.dtype == c.count.dtype == np.int64
    return {(int(k), int(lab)): int(n) for k, lab, n in zip(c.slice, c.label, c.count, strict=True)}


@pytest.fixture(scope="module")
def totalseg_seg() -> np.ndarray:
    import nibabel as nib

    a = np.asarray(nib.load(sample("totalseg-nifti", "ct", "example_seg.nii.gz")).dataobj)
    assert a.shape == (122, 101, 30) and a.dtype == np.uint8
    return a


def test_totalseg_counts_on_every_axis(totalseg_seg: np.ndarray) -> None:
    got = slice_label_counts(totalseg_seg)
    for ax in range(3):
        assert as_dict(got[ax]) == brute_counts(totalseg_seg, ax), ax
    # README: label 13 is one voxel at [91, 78, 29]; the liver (5) spans i 41..105, j 25..86, k 0..29
    for ax, at in enumerate((91, 78, 29)):
        c = got[ax]
        sel = c.label == 13
        assert c.slice[sel].tolist() == [at] and c.count[sel].tolist() == [1]
    liver = [np.unique(got[ax].slice[got[ax].label == 5]) for ax in range(3)]
    assert [(int(s.min()), int(s.max())) for s in liver] == [(41, 105), (25, 86), (0, 29)]
    total = int((totalseg_seg > 0).sum())
    assert all(int(got[ax].count.sum()) == total for ax in range(3))


def test_reoriented_views_are_counted_in_place(totalseg_seg: np.ndarray) -> None:
    """The canonical display orientation is a view with reversed axes (as the NIfTI reader returns it): the
    counts are those of the view, the same as the box pass gives on each axis moved first."""
    views = [
        np.transpose(totalseg_seg, (2, 1, 0))[:, ::-1, ::-1],  # S-P-L from RAS: strides (+, -, -)
        totalseg_seg[::-1, :, ::-1],
        np.asfortranarray(totalseg_seg)[:, ::-1],  # Fortran order: copied once
        totalseg_seg[::2, 1:, ::-3],  # stepped, not contiguous
    ]
    for v in views:
        got = slice_label_counts(v)
        for ax in range(3):
            b = slice_label_boxes(np.moveaxis(v, ax, 0))
            assert as_dict(got[ax]) == dict(zip(zip(b.slice.tolist(), b.label.tolist()), b.count.tolist())), ax
            assert as_dict(got[ax]) == brute_counts(v, ax)


def _counts_in_child(vol: np.ndarray) -> dict[int, dict[tuple[int, int], int]]:  # as in a build's worker
    return {ax: as_dict(c) for ax, c in slice_label_counts(vol).items()}


def test_threads_and_worker_processes_agree(totalseg_seg: np.ndarray, monkeypatch) -> None:
    expect = {ax: brute_counts(totalseg_seg, ax) for ax in range(3)}
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("MEDREG_KERNEL_THREADS", threads)
        assert {ax: as_dict(c) for ax, c in slice_label_counts(totalseg_seg).items()} == expect, threads
    monkeypatch.delenv("MEDREG_KERNEL_THREADS")
    assert in_child_process(_counts_in_child, totalseg_seg) == expect  # the serial kernel


def test_axes_subset_dtypes_and_errors() -> None:
    vol = np.zeros((3, 4, 5), np.uint8)
    vol[1, 2, 1:4] = 9
    got = slice_label_counts(vol, axes=(1,))
    assert list(got) == [1] and as_dict(got[1]) == {(2, 9): 3}
    assert as_dict(slice_label_counts(np.ones((1, 2, 3), bool))[2]) == {(0, 1): 2, (1, 1): 2, (2, 1): 2}
    assert all(len(c.slice) == 0 for c in slice_label_counts(np.zeros((0, 4, 4), np.uint8)).values())
    assert all(len(c.slice) == 0 for c in slice_label_counts(np.zeros((2, 4, 4), np.int16)).values())
    neg = np.zeros((2, 3, 9), np.int16)
    neg[1, 1, 4] = -2
    with pytest.raises(ValueError, match="negative"):
        slice_label_counts(neg)
    with pytest.raises(ValueError, match="integers"):
        slice_label_counts(np.zeros((1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="label volume"):
        slice_label_counts(np.zeros((3, 3), np.uint8))
    big = np.zeros((2, 3, 4), np.uint32)
    big[0, 1, 1:3] = MAX_TABLE_LABELS + 5  # beyond the tables: counted through the box pass
    big[1, 2, 0] = 70_000
    big[1, 0, 3] = 2**31
    assert as_dict(slice_label_counts(big)[0]) == {(0, MAX_TABLE_LABELS + 5): 2, (1, 70_000): 1, (1, 2**31): 1}
    swapped = np.arange(24, dtype=">u2").reshape(2, 3, 4) % 3  # big-endian
    assert as_dict(slice_label_counts(swapped)[1]) == brute_counts(swapped.astype(np.uint16), 1)


@st.composite
def label_volumes(draw):
    dtype = draw(st.sampled_from([np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64, np.uint64]))
    shape = draw(st.tuples(st.integers(1, 5), st.integers(1, 12), st.integers(1, 21)))
    n_ids = draw(st.integers(1, 6))
    hi = min(int(np.iinfo(dtype).max), draw(st.sampled_from([100, 300, 2000, 70000])))
    ids = draw(st.lists(st.integers(1, hi), min_size=n_ids, max_size=n_ids))
    idx = draw(arrays(np.int8, shape, elements=st.integers(0, n_ids)))
    table = np.array([0, *ids], dtype=np.int64)
    vol = table[idx].astype(dtype)
    flips = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    return vol[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_volumes())
def test_property_random_volumes_vs_unique(vol: np.ndarray) -> None:
    got = slice_label_counts(vol)
    for ax in range(3):
        assert as_dict(got[ax]) == brute_counts(vol, ax), ax
