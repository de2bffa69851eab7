"""One layer packer for overlapping masks: the same layers and overlaps as plain full-array packing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.ingest.packing import LayerPacker, MaskRuns, runs_of_chunk


def _reference(masks: list[np.ndarray], labels: list[int]) -> tuple[list[np.ndarray], set[tuple[int, int]]]:
    """First-fit packing on full arrays (what dicom_seg and sources/nifti each did before)."""
    layers: list[np.ndarray] = []
    overlaps: set[tuple[int, int]] = set()
    for m, lab in zip(masks, labels, strict=True):
        if not m.any():
            continue
        for arr in layers:
            clash = {int(v) for v in np.unique(arr[m]) if v}
            overlaps.update((min(lab, c), max(lab, c)) for c in clash)
            if not clash:
                arr[m] = lab
                break
        else:
            arr = np.zeros(m.shape, np.uint16)
            arr[m] = lab
            layers.append(arr)
    return layers, overlaps


shapes = st.tuples(st.integers(1, 5), st.integers(1, 7), st.integers(1, 9))


def _packed_form(runs: MaskRuns, dtype: type, whole: bool) -> MaskRuns:
    """The same mask with its later half of segments, or all of them, in the packed form (the sparse NIfTI
    reader's); all packed, the packer checks and places in one pass (and clears a placement that clashes)."""
    row = runs.row
    segs = [(a, np.asarray(v[a - s : a - s + row - a % row], dtype))  # one segment a row, as the reader's
            for s, v in runs.runs for a in range(s, s + v.size, 1) if a == s or a % row == 0]
    cut = 0 if whole else len(segs) // 2
    keep, rest = segs[:cut], segs[cut:]
    offs = np.cumsum([0] + [v.size for _, v in rest]).astype(np.int64)
    values = np.concatenate([v for _, v in rest]) if rest else np.zeros(0, dtype)
    return MaskRuns(runs.shape, runs.order, keep, (np.array([s for s, _ in rest], np.int64), offs, values))


@given(shapes.flatmap(lambda s: st.lists(arrays(np.bool_, s), min_size=1, max_size=6)), st.sampled_from(["C", "F"]),
       st.sampled_from([None, np.uint8, np.uint16, np.bool_]), st.booleans(), st.booleans(),
       st.sampled_from([np.uint8, np.uint16]))
def test_property_packer_equals_full_array_packing(masks, order, packed, whole, record, layer_dtype):
    """Listed runs, or half or all of them packed (the sparse NIfTI reader's form, uint8, uint16 or bool
    values), with and without overlap recording, in uint8 or uint16 layers: the same layers as first-fit
    packing on full arrays."""
    labels = [3 * i + 2 for i in range(len(masks))]
    packer = LayerPacker(masks[0].shape, order=order, dtype=layer_dtype)
    for m, lab in zip(masks, labels, strict=True):
        runs = MaskRuns.from_array(m, order)
        if packed is not None:
            runs = _packed_form(runs, packed, whole)
        assert bool(runs) == bool(m.any()) and runs.count() == int(m.sum())
        np.testing.assert_array_equal(runs.to_array(), m)
        packer.add(lab, runs, record_overlaps=record)
    want, overlaps = _reference(masks, labels)
    assert len(packer.layers) == len(want)
    for got, ref in zip(packer.layers, want, strict=True):
        np.testing.assert_array_equal(got, ref)
        assert got.dtype == layer_dtype
        assert got.flags.c_contiguous if order == "C" else got.flags.f_contiguous
    assert packer.overlaps == (overlaps if record else set())
    assert [sorted(x) for x in packer.labels] == [sorted(int(v) for v in np.unique(a) if v) for a in want]


@given(arrays(np.uint8, st.integers(1, 200), elements=st.sampled_from([0, 0, 0, 1, 255])),
       st.integers(0, 1000), st.integers(1, 17))
def test_property_runs_of_any_chunk(values, pos, row):
    runs = runs_of_chunk(values, pos, row)
    rebuilt = np.zeros(pos + values.size, bool)
    for start, seg in runs:
        assert pos <= start and start + seg.size <= pos + values.size
        rebuilt[start : start + seg.size] = seg != 0
    np.testing.assert_array_equal(rebuilt[pos:], values != 0)
    starts = [s for s, _ in runs]
    assert starts == sorted(starts)


def test_sparse_slices_and_checks():
    shape = (4, 5, 6)
    a = {1: np.eye(5, 6, dtype=bool), 3: np.ones((5, 6), bool)}
    runs = MaskRuns.from_slices(a, shape)
    full = np.zeros(shape, bool)
    full[1], full[3] = a[1], a[3]
    np.testing.assert_array_equal(runs.to_array(), full)
    packer = LayerPacker(shape)
    assert packer.add(7, MaskRuns.from_slices({}, shape)) == -1 and packer.layers == []
    assert packer.add(7, runs) == 0 and packer.add(8, runs, record_overlaps=True) == 1
    assert packer.overlaps == {(7, 8)} and packer.labels == [[7], [8]]
    with pytest.raises(ValueError, match="do not fit"):
        packer.add(9, MaskRuns.from_array(full, "F"))
    with pytest.raises(ValueError, match="does not fit a uint16"):
        packer.add(70000, runs)


@pytest.mark.parametrize("layer_dtype", [np.uint8, np.uint16])
def test_a_packed_mask_that_clashes_late_leaves_the_layer_as_it_was(layer_dtype):
    """All packed, a mask is checked and placed segment by segment in one pass: when a later segment meets
    a labelled voxel, the segments already written are cleared, and the mask goes to the next layer."""
    shape = (4, 3, 2)
    first = np.zeros(shape, bool)
    first[:, 2, 1] = True
    second = np.zeros(shape, bool)
    second[:, 0, 0] = second[:, 1, 0] = second[:, 2, 1] = True  # clashes only in its last row
    packer = LayerPacker(shape, order="F", dtype=layer_dtype)
    runs = [_packed_form(MaskRuns.from_array(m, "F"), np.uint8, True) for m in (first, second)]
    assert runs[1].packed is not None and runs[1].packed[0].size == 3 and not runs[1].runs
    assert packer.add(5, runs[0]) == 0 and packer.add(7, runs[1]) == 1
    np.testing.assert_array_equal(packer.layers[0], first * 5)
    np.testing.assert_array_equal(packer.layers[1], second * 7)
    assert packer.labels == [[5], [7]]
