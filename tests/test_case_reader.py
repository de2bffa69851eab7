"""Reading one case's files at once (pipeline/ingest/concurrent.py): thread count, order, bounded window,
errors, and the NIfTI adapter giving the same study on one thread and on several."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pytest

from pipeline.ingest.concurrent import InlineExecutor, case_reader, prefetch, read_threads
from pipeline.ingest.readers import ReadError
from pipeline.language.glossary import load_label_map
from sources.base import get_adapter, load_card
from tests.helpers_proc import in_child_process


def _threads_in_child() -> int:  # called in a child process, as in a build's worker
    return read_threads()


def test_read_threads_default_env_and_worker_processes(monkeypatch):
    monkeypatch.delenv("MEDREG_READ_THREADS", raising=False)
    assert 1 <= read_threads() <= 2
    assert in_child_process(_threads_in_child) == 1  # the build's processes already use the cores
    monkeypatch.setenv("MEDREG_READ_THREADS", "4")
    assert read_threads() == 4
    monkeypatch.setenv("MEDREG_READ_THREADS", "0")
    assert read_threads() == 1
    monkeypatch.setenv("MEDREG_READ_THREADS", "two")
    with pytest.raises(ValueError, match="MEDREG_READ_THREADS='two'"):
        read_threads()


def test_prefetch_is_in_order_and_bounded():
    live, peak, lock = 0, 0, threading.Lock()
    submitted: list[int] = []

    def work(i: int) -> int:
        nonlocal live, peak
        with lock:
            live += 1
            peak = max(peak, live)
        time.sleep(0.002 * (i % 3))
        with lock:
            live -= 1
        return i * i

    class Counting(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            submitted.append(args[0])
            return super().submit(fn, *args, **kwargs)

    with Counting(3) as pool:
        futs = prefetch(pool, work, range(40), window=5)
        assert submitted == [0, 1, 2, 3, 4]  # the first window goes at once, before anything is consumed
        out = []
        for f in futs:
            out.append(f.result())
            assert len(submitted) - len(out) <= 5  # never more than the window ahead
    assert out == [i * i for i in range(40)] and peak <= 3


def test_inline_executor_and_errors():
    with case_reader(1) as pool:
        assert isinstance(pool, InlineExecutor)
        fut = pool.submit(int, "x")
        with pytest.raises(ValueError):
            fut.result()
        assert pool.submit(int, "7").result() == 7
    with case_reader(2) as pool:
        assert isinstance(pool, ThreadPoolExecutor)
        assert [f.result() for f in prefetch(pool, abs, [-1, -2, -3], window=1)] == [1, 2, 3]


def test_reader_threads_see_the_callers_context(tmp_path):
    """Messages name files relative to the data folder, a context variable: it holds on reader threads."""
    from pipeline.core.paths import data_root, shown

    f = tmp_path / "ct" / "a.nii.gz"
    with data_root(tmp_path), case_reader(2) as pool:
        assert pool.submit(shown, f).result() == "ct/a.nii.gz"
        assert [x.result() for x in prefetch(pool, shown, [f, f], window=1)] == ["ct/a.nii.gz"] * 2
    with case_reader(2) as pool:
        assert pool.submit(shown, f).result() == "a.nii.gz"  # no data folder: the file name


def _folder_case(tmp_path, samples, broken_image: bool = False):
    img = nib.load(str(samples / "totalseg-nifti/ct/example_ct_sm.nii.gz"))
    seg = nib.load(str(samples / "totalseg-nifti/ct/example_seg.nii.gz"))
    s = np.asanyarray(seg.dataobj)
    case = tmp_path / "s01"
    (case / "segmentations").mkdir(parents=True)
    if broken_image:
        (case / "ct.nii.gz").write_bytes(b"\x1f\x8b" + bytes(100))
    else:
        nib.save(img, str(case / "ct.nii.gz"))
    names = load_label_map("totalseg_total")
    for lid in (1, 2, 3, 5, 6):
        m = (s == lid).astype(np.uint8)
        nib.save(nib.Nifti1Image(m, seg.affine), str(case / "segmentations" / f"{names[lid]}.nii.gz"))
    nib.save(nib.Nifti1Image((s == 5).astype(np.uint8), seg.affine), str(case / "segmentations" / "mystery.nii.gz"))
    card = load_card("totalseg-ct").model_copy(update={"layout": {
        "cases": [{"id": "s01", "image": "s01/ct.nii.gz", "labels": "s01/segmentations"}]}})
    return get_adapter(card, tmp_path)


def test_nifti_folder_study_is_the_same_on_one_and_several_threads(samples, tmp_path, monkeypatch):
    adapter = _folder_case(tmp_path, samples)
    ref = adapter.discover()[0]
    studies = {}
    for n in ("1", "2", "4"):
        monkeypatch.setenv("MEDREG_READ_THREADS", n)
        studies[n] = adapter.load(ref)
    one = studies["1"]
    assert any("mystery.nii.gz has no term" in note for note in one.notes)
    for n in ("2", "4"):
        other = studies[n]
        assert other.notes == one.notes
        np.testing.assert_array_equal(other.image, one.image)
        assert len(other.layers) == len(one.layers)
        for a, b in zip(one.layers, other.layers, strict=True):
            assert a.names == b.names
            np.testing.assert_array_equal(a.array, b.array)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_broken_image_is_reported_whatever_the_threads(samples, tmp_path, monkeypatch, threads):
    monkeypatch.setenv("MEDREG_READ_THREADS", threads)
    adapter = _folder_case(tmp_path, samples, broken_image=True)
    with pytest.raises(ReadError, match="ct.nii.gz"):
        adapter.load(adapter.discover()[0])
