"""The fast .nii.gz path (ISA-L or zlib, chunked) gives exactly nibabel's arrays; masks read as runs."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.gz import HAVE_ISAL, GzipError, backend, gunzip_chunks
from pipeline.ingest.readers.nifti import read_mask_runs, read_nifti

SAMPLE_NIFTI = [
    "totalseg-nifti/ct/example_ct_sm.nii.gz",
    "totalseg-nifti/ct/example_seg.nii.gz",
    "totalseg-nifti/mr/example_mr_sm.nii.gz",
    "totalseg-nifti/mr/example_seg_mr.nii.gz",
    "mricron-atlases/aal.nii.gz",
    "mricron-atlases/JHU-WhiteMatter-labels-2mm.nii.gz",
    "ibsi-sts-pet/nifti/PET_image.nii.gz",
    "ibsi-sts-pet/nifti/PET_mask.nii.gz",
    "rtstruct-visible-human/AnonDICOM/Image.nii.gz",
]
BACKENDS = ["isal", "zlib"]
MASK_READERS = [None, "isal", "zlib"]  # None: the sparse inflater (the default for masks)


def _nibabel(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    arr = np.asanyarray(img.dataobj)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    return arr, img.affine


def _same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()  # bitwise, NaNs included


def test_isal_is_installed_and_the_default():
    assert HAVE_ISAL and backend().__name__.startswith("isal")
    with pytest.raises(ValueError, match="unknown gzip backend"):
        backend("lz4")


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("rel", SAMPLE_NIFTI)
def test_sample_volumes_identical_to_nibabel(samples, rel, backend_name):
    path = samples / rel
    want, want_aff = _nibabel(path)
    got, aff = read_nifti(path, backend_name=backend_name)
    _same(got, want)
    np.testing.assert_array_equal(aff, want_aff)
    assert got.flags.writeable and got.flags.f_contiguous


def test_readme_facts_through_the_fast_path(samples):
    ct, aff = read_nifti(samples / "totalseg-nifti/ct/example_ct_sm.nii.gz")
    seg, _ = read_nifti(samples / "totalseg-nifti/ct/example_seg.nii.gz", integer_labels=True)
    assert ct.shape == (122, 101, 30) and ct.dtype == np.int16 and (int(ct.min()), int(ct.max())) == (-1100, 1207)
    assert np.allclose(np.diag(aff)[:3], 3.0)
    liver = np.argwhere(seg == 5)
    assert liver.min(0).tolist() == [41, 25, 0] and liver.max(0).tolist() == [105, 86, 29]
    assert np.argwhere(seg == 13).tolist() == [[91, 78, 29]]  # lung_middle_lobe_right: one voxel


def _write(path: Path, img: nib.Nifti1Image, *, members: int = 1, pad: bytes = b"") -> Path:
    raw = img.to_bytes()
    cut = np.linspace(0, len(raw), members + 1).astype(int)
    path.write_bytes(b"".join(gzip.compress(raw[a:b], mtime=0) for a, b in zip(cut[:-1], cut[1:], strict=True)) + pad)
    return path


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_scaled_big_endian_4d_multimember_and_padded_files(tmp_path, backend_name):
    rng = np.random.default_rng(0)
    aff = np.diag([0.7, -0.7, 2.5, 1.0])
    scaled = nib.Nifti1Image(rng.integers(-300, 3000, (20, 17, 9)).astype(np.int16), aff)
    scaled.header.set_slope_inter(0.5, -1024.0)
    big = nib.Nifti1Image(rng.normal(size=(11, 13, 7)).astype(np.float32), aff, nib.Nifti1Header(endianness=">"))
    four = nib.Nifti1Image(rng.integers(0, 9, (8, 9, 10, 1)).astype(np.uint8), aff)
    files = [
        _write(tmp_path / "scaled.nii.gz", scaled),
        _write(tmp_path / "big.nii.gz", big),
        _write(tmp_path / "four.nii.gz", four),
        _write(tmp_path / "multi.nii.gz", scaled, members=3),
        _write(tmp_path / "padded.nii.gz", big, pad=bytes(512)),
    ]
    for f in files:
        want, want_aff = _nibabel(f)
        got, got_aff = read_nifti(f, backend_name=backend_name)
        _same(got, want)
        np.testing.assert_array_equal(got_aff, want_aff)
    raw = np.asanyarray(scaled.dataobj).astype(np.float64)
    np.testing.assert_array_equal(read_nifti(files[0])[0], raw * 0.5 - 1024.0)  # scaling applied as nibabel does
    assert read_nifti(files[1])[0].dtype == np.dtype(">f4")


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_broken_gzip_is_a_clear_error(samples, tmp_path, backend_name):
    src = (samples / "totalseg-nifti/ct/example_seg.nii.gz").read_bytes()
    bad = {"truncated": src[: len(src) // 2], "corrupt": src[:200] + bytes(b ^ 0xFF for b in src[200:400]) + src[400:],
           "garbage-after": src + b"not gzip", "empty": b""}
    for name, data in bad.items():
        path = tmp_path / f"{name}.nii.gz"
        path.write_bytes(data)
        with pytest.raises(ReadError) as ei:
            read_nifti(path, backend_name=backend_name)
        assert ei.value.file == str(path) and "re-download" in ei.value.hint, name
        for mask_reader in (backend_name, None):  # the sparse inflater hands a broken file to the general reader
            with pytest.raises(ReadError) as ei:
                read_mask_runs(path, backend_name=mask_reader)
            assert ei.value.file == str(path) and "re-download" in ei.value.hint, name


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_chunks_are_the_gzip_bytes(samples, backend_name):
    path = samples / "mricron-atlases/aal.nii.gz"
    want = gzip.decompress(path.read_bytes())
    pieces = list(gunzip_chunks(path, chunk=1 << 16, backend_name=backend_name))
    assert b"".join(pieces) == want and max(len(p) for p in pieces) <= 1 << 16 and len(pieces) > 10
    with pytest.raises(GzipError, match="not a gzip file"):
        list(gunzip_chunks(Path(__file__), backend_name=backend_name))
    assert isinstance(zlib.error(), Exception)


@pytest.mark.parametrize("backend_name", MASK_READERS)
def test_mask_runs_equal_the_masks(samples, tmp_path, backend_name):
    seg_img = nib.load(str(samples / "totalseg-nifti/ct/example_seg.nii.gz"))
    seg = np.asanyarray(seg_img.dataobj)
    for lid in (1, 5, 13, 117, 200):  # spleen, liver, a one-voxel structure, costal cartilages, absent
        f = _write(tmp_path / f"m{lid}.nii.gz", nib.Nifti1Image((seg == lid).astype(np.uint8), seg_img.affine))
        runs, aff = read_mask_runs(f, backend_name=backend_name)
        assert runs.order == "F" and runs.shape == seg.shape
        np.testing.assert_array_equal(runs.to_array(), seg == lid)
        assert runs.count() == int((seg == lid).sum()) and bool(runs) == bool((seg == lid).any())
        np.testing.assert_array_equal(aff, seg_img.affine)
    # masks the run reader leaves to read_nifti: scaled, float, signed, uncompressed
    m = (seg == 5).astype(np.uint8)
    scaled = nib.Nifti1Image(m, seg_img.affine)
    scaled.header.set_slope_inter(2.0, 0.0)
    assert read_mask_runs(_write(tmp_path / "s.nii.gz", scaled)) is None
    assert read_mask_runs(_write(tmp_path / "f.nii.gz", nib.Nifti1Image(m.astype(np.float32), seg_img.affine))) is None
    assert read_mask_runs(_write(tmp_path / "i.nii.gz", nib.Nifti1Image(m.astype(np.int16), seg_img.affine))) is None
    nib.save(nib.Nifti1Image(m, seg_img.affine), str(tmp_path / "plain.nii"))
    assert read_mask_runs(tmp_path / "plain.nii") is None
