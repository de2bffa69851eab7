"""pipeline/ingest/buffers.py: volume buffers reused from case to case, never while an array still uses
them, and the NIfTI reader's results unchanged by the reuse (real TotalSegmentator sample files)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pipeline.ingest import buffers
from pipeline.ingest.readers.nifti import read_nifti
from tests.helpers_proc import in_child_process
from tests.test_boxes import sample


@pytest.fixture
def small_buffers(monkeypatch):
    """Pool buffers of any size (the sample volumes are far below the 16 MB a build pools)."""
    monkeypatch.setattr(buffers, "MIN_BYTES", 0)
    buffers.clear()
    yield
    buffers.clear()


def test_reused_only_when_free(small_buffers) -> None:
    with buffers.reuse_buffers():
        a = buffers.take(1000)
        first = id(a.base)
        view = np.ndarray((10,), np.int16, buffer=a)[::2]
        del a
        assert buffers.pooled() == [(1000, False)]  # a view still uses it
        b = buffers.take(1000)
        assert id(b.base) != first  # so a new one is made
        del view
        assert (1000, True) in buffers.pooled()
        c = buffers.take(800)  # a free buffer up to twice the request is reused
        assert id(c.base) == first and c.nbytes == 800 and c.flags.writeable
        d = buffers.take(300)  # too small a request for either: new memory
        assert id(d.base) not in (first, id(b.base))
        assert len(buffers.pooled()) == 3
        keep = c.base  # one plain reference to the buffer itself is enough to keep it out
        del c
        assert id(buffers.take(800).base) != first
        del keep
    assert buffers.pooled() == []  # emptied when the block ends


def test_off_outside_builds_and_bounded(small_buffers, monkeypatch) -> None:
    a = buffers.take(4096)
    assert a.base is None and buffers.pooled() == []  # a notebook reading a case keeps nothing
    monkeypatch.setattr(buffers, "MAX_BUFFERS", 2)
    with buffers.reuse_buffers():
        held = [buffers.take(100 * (i + 1)) for i in range(4)]
        assert len(buffers.pooled()) == 2  # the rest are plain arrays
        del held
        buffers.take(5000)  # a free buffer of another size makes room
        assert sorted(n for n, _ in buffers.pooled()) == [200, 5000]
    monkeypatch.setattr(buffers, "MAX_POOL_BYTES", 1000)
    with buffers.reuse_buffers():
        big = buffers.take(2000)
        assert buffers.pooled() == [] and big.nbytes == 2000


def _pooled_after_take() -> int:  # called in a child process, as in a build's worker
    from pipeline.ingest import buffers as b

    x = b.take(b.MIN_BYTES)
    n = len(b.pooled())
    del x
    return n


def test_always_on_in_worker_processes() -> None:
    assert in_child_process(_pooled_after_take) == 1


def test_reader_gives_each_file_its_own_data_through_reused_buffers(small_buffers) -> None:
    """Reading the CT, its label map, the MR and the CT again in one build: every array equals nibabel's,
    and the second CT read reuses the memory the first one freed."""
    files = [sample("totalseg-nifti", "ct", "example_ct_sm.nii.gz"), sample("totalseg-nifti", "ct", "example_seg.nii.gz"),
             sample("totalseg-nifti", "mr", "example_mr_sm.nii.gz")]
    expect = [np.asanyarray(nib.load(str(f)).dataobj) for f in files]
    with buffers.reuse_buffers():
        for f, ref in zip(files, expect, strict=True):
            arr, _ = read_nifti(f)
            assert arr.dtype == ref.dtype and np.array_equal(arr, ref), f.name
            del arr
        assert all(free for _, free in buffers.pooled())
        n = len(buffers.pooled())
        again, _ = read_nifti(files[0])
        assert np.array_equal(again, expect[0]) and len(buffers.pooled()) == n  # reused, not grown
        held, _ = read_nifti(files[2])  # kept while the next file is read: not overwritten
        other, _ = read_nifti(files[1], integer_labels=True)
        assert np.array_equal(held, expect[2]) and np.array_equal(other, expect[1])


def test_zeros_clears_a_reused_buffer(small_buffers) -> None:
    """A label layer (pipeline/ingest/packing.py) asks for zeros: a reused buffer comes back cleared."""
    with buffers.reuse_buffers():
        dirty = buffers.take(4096)
        dirty.fill(7)
        first = id(dirty.base)
        del dirty
        z = buffers.zeros(4096)
        assert id(z.base) == first and not z.any()
    assert not buffers.zeros(4096).any() and buffers.pooled() == []
