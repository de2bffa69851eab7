"""The sparse gzip inflater for masks (pipeline/ingest/readers/_inflate.py): the segments it hands back
put together are exactly the decompressed file (every non-zero byte, each segment one row's stretch from
its first to its last non-zero voxel), on every kind of deflate stream, and anything it does not take
(corrupt, truncated, several members) goes back to the general reader."""

from __future__ import annotations

import gzip
import zlib

import nibabel as nib
import numpy as np
import pytest

from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers._inflate import gzip_payload_start, sparse_inflate_on, sparse_segments
from pipeline.ingest.readers.nifti import read_mask_runs


def _check(buf: bytes, raw: bytes, off: int, row: int, item: int = 1) -> None:
    nbytes = (len(raw) - off) // row * row
    got = sparse_segments(buf, off, nbytes, row, item)
    assert got is not None
    starts, offs, data = got
    assert offs[0] == 0 and offs[-1] == data.size and starts.size + 1 == offs.size
    want = np.frombuffer(raw, np.uint8)[off : off + nbytes]
    rebuilt = np.zeros(nbytes, np.uint8)
    ends = starts + np.diff(offs)
    assert np.all(starts[1:] >= ends[:-1])  # in file order, not overlapping
    assert np.all(starts // row == (ends - 1) // row)  # each inside one row
    assert np.all(starts % item == 0) and np.all(offs % item == 0)
    for k in range(starts.size):
        seg = data[offs[k] : offs[k + 1]]
        assert seg.size and seg[:item].any() and seg[-item:].any()  # trimmed to non-zero voxels
        rebuilt[starts[k] : ends[k]] = seg
    np.testing.assert_array_equal(rebuilt, want)


def _mask_like(seed: int) -> bytes:
    """A header of non-zero bytes, then a mostly-empty volume with blobs, runs and noise patches."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2_000, 600_000))
    a = np.zeros(n, np.uint8)
    for _ in range(int(rng.integers(0, 40))):
        s, ln = int(rng.integers(0, n)), int(rng.integers(1, 6000))
        a[s : s + ln] = rng.integers(1, 4) if rng.random() < 0.6 else rng.integers(0, 256, size=a[s : s + ln].size)
    return bytes(rng.integers(1, 256, size=352, dtype=np.uint8)) + a.tobytes()


@pytest.mark.parametrize("seed", range(12))
def test_rows_equal_the_decompressed_file_at_every_level_and_strategy(seed):
    raw = _mask_like(seed)
    row = [64, 100, 512, 1024, 8][seed % 5]
    for level in (0, 1, 6, 9):  # 0: stored blocks; 1: nibabel's default (TotalSegmentator's files)
        _check(gzip.compress(raw, compresslevel=level, mtime=0), raw, 352, row)
    for strategy in (zlib.Z_FIXED, zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE, zlib.Z_FILTERED):
        c = zlib.compressobj(6, zlib.DEFLATED, 31, 9, strategy)
        _check(c.compress(raw) + c.flush(), raw, 352, row)


def test_two_byte_voxels_are_trimmed_whole():
    """uint16 masks: a voxel whose low byte is zero and high byte is not still starts or ends a segment."""
    vol = np.zeros((64, 40, 6), np.uint16, order="F")
    vol[10:20, 3:30, 1] = 1
    vol[5, 7, 2] = 0x0100  # low byte zero
    vol[63, 39, 5] = 0x0200
    raw = bytes(352) + vol.tobytes(order="F")
    _check(gzip.compress(raw, 1), raw, 352, 64 * 2, 2)
    with pytest.raises(ValueError, match="2-byte voxels"):
        sparse_segments(gzip.compress(raw, 1), 352, vol.nbytes, 127, 2)


def test_outputs_grow_past_their_first_size():
    """Many rows (each a segment) make the kernel stop for larger outputs several times."""
    rng = np.random.default_rng(3)
    a = (rng.random(200_000 * 8) < 0.05).astype(np.uint8)
    raw = bytes(352) + a.tobytes()
    for level in (1, 6):
        _check(gzip.compress(raw, level), raw, 352, 8)


def test_a_structure_that_fills_whole_rows():
    """No row ever ends in zeros, so no pending row is ever the last complete one: the rows are handed back
    as each completes, while the window still holds them (changing values: stale bytes would show)."""
    for n in (100_000, 300_000):
        raw = bytes(352) + np.repeat(np.arange(1, 251, dtype=np.uint8), n // 250).tobytes()
        for level in (1, 6, 9):
            _check(gzip.compress(raw, level), raw, 352, 512)
            _check(gzip.compress(raw, level), raw, 352, 8)


@pytest.mark.parametrize("level", [1, 6, 9])
def test_long_zero_stretches_end_where_the_stream_says(level):
    """Megabytes of zeros between short structures: the kernel skips most of each stretch bytewise (the
    repeated zero match repeats its bytes) and must stop at the exact match where the structure begins,
    whatever the bit phase there; a stretch that runs into the end of a block or of the file too."""
    rng = np.random.default_rng(level)
    raw = bytearray(rng.integers(1, 256, size=352, dtype=np.uint8).tobytes())
    for gap in (3_000_000, 1_048_576 + 1, 700_001, 65_536 * 3 + 7, 40_000, 2_500_000):
        raw += bytes(gap)
        k = int(rng.integers(1, 300))
        raw += rng.integers(0, 4, size=k, dtype=np.uint8).tobytes()
    raw += bytes(1_500_000)
    raw = bytes(raw)
    for row in (512, 640):
        _check(gzip.compress(raw, level, mtime=0), raw, 352, row)
    c = zlib.compressobj(level, zlib.DEFLATED, 31, 9, zlib.Z_RLE)
    _check(c.compress(raw) + c.flush(), raw, 352, 512)


def test_empty_and_full_volumes():
    for raw in (bytes(400_000), b"\x01" * 100_000, bytes(352) + b"\x01" + bytes(99_999)):
        _check(gzip.compress(raw, 1), raw, 352 if len(raw) != 100_000 else 0, 512)


def test_gzip_header_fields_are_skipped():
    raw = bytes(1000) + b"\x05" * 10 + bytes(5000)
    body = zlib.compressobj(1, zlib.DEFLATED, -15)
    deflate = body.compress(raw) + body.flush()
    trailer = zlib.crc32(raw).to_bytes(4, "little") + len(raw).to_bytes(4, "little")
    extra, fname, comment = b"\x04\x00abcd", b"seg.nii\x00", b"made here\x00"
    head = b"\x1f\x8b\x08" + bytes([4 | 8 | 16 | 2]) + bytes(6) + extra + fname + comment + b"\x00\x00"
    buf = head + deflate + trailer
    assert gzip.decompress(buf) == raw and gzip_payload_start(buf) == len(head)
    _check(buf, raw, 0, 100)
    assert sparse_segments(buf + bytes(64), 0, 6000, 100) is not None  # zero padding after the member is fine


def test_what_it_does_not_take_is_reported_as_none():
    raw = b"\x01" * 1000 + bytes(60_000)
    buf = gzip.compress(raw, 1)
    bad_crc = bytearray(buf)
    bad_crc[-6] ^= 1
    bad_len = bytearray(buf)
    bad_len[-2] ^= 1
    middle = bytearray(buf)
    middle[len(buf) // 2] ^= 0xFF
    cases = {"crc": bytes(bad_crc), "length": bytes(bad_len), "truncated": buf[:-10], "cut": buf[: len(buf) // 2],
             "two members": buf + gzip.compress(raw, 1), "not gzip": b"hello world" * 10, "corrupt": bytes(middle)}
    for name, data in cases.items():
        assert sparse_segments(data, 0, 61_000 // 8 * 8, 8) is None, name
    assert sparse_segments(buf, 0, 61_000, 100_000) is None  # rows wider than a quarter of the window


def test_real_label_map_rows_equal_nibabel(samples):
    """The TotalSegmentator sample's combined label map (not a binary mask: any non-zero byte counts)."""
    path = samples / "totalseg-nifti/ct/example_seg.nii.gz"
    img = nib.load(str(path))
    arr = np.asanyarray(img.dataobj)
    raw = gzip.decompress(path.read_bytes())
    off = int(img.dataobj.offset)  # after the header's extensions
    assert raw[off:] == arr.tobytes(order="F")
    _check(path.read_bytes(), raw, off, arr.shape[0] * arr.dtype.itemsize)


def test_sparse_and_stream_readers_give_the_same_runs(samples, tmp_path, monkeypatch):
    img = nib.load(str(samples / "totalseg-nifti/ct/example_seg.nii.gz"))
    seg = np.asanyarray(img.dataobj)
    for lid in (1, 5, 13, 117):
        f = tmp_path / f"m{lid}.nii.gz"
        nib.save(nib.Nifti1Image((seg == lid).astype(np.uint8), img.affine), str(f))
        sparse, aff = read_mask_runs(f)
        stream, aff2 = read_mask_runs(f, backend_name="isal")
        np.testing.assert_array_equal(sparse.to_array(), stream.to_array())
        np.testing.assert_array_equal(aff, aff2)
        assert sparse.count() == int((seg == lid).sum())
    # a uint16 mask whose foreground voxels have a zero low byte: segments in whole voxels, starts in voxels
    f = tmp_path / "m16.nii.gz"
    want = seg == 13
    nib.save(nib.Nifti1Image(want.astype(np.uint16) * 256, img.affine), str(f))
    sparse, _ = read_mask_runs(f)
    assert sparse.packed is not None and sparse.packed[2].dtype == np.uint16
    np.testing.assert_array_equal(sparse.to_array(), want)
    np.testing.assert_array_equal(read_mask_runs(f, backend_name="isal")[0].to_array(), want)
    monkeypatch.setenv("MEDREG_MASK_INFLATE", "stream")
    assert not sparse_inflate_on()
    monkeypatch.setenv("MEDREG_MASK_INFLATE", "fast")
    with pytest.raises(ValueError, match="MEDREG_MASK_INFLATE='fast'"):
        read_mask_runs(tmp_path / "m1.nii.gz")


def test_a_mask_the_sparse_reader_leaves_still_reads(samples, tmp_path):
    """Two gzip members (some tools append): the general reader reads both; a damaged one is a ReadError."""
    img = nib.load(str(samples / "totalseg-nifti/ct/example_seg.nii.gz"))
    seg = (np.asanyarray(img.dataobj) == 5).astype(np.uint8)
    one = tmp_path / "one.nii"
    nib.save(nib.Nifti1Image(seg, img.affine), str(one))
    raw = one.read_bytes()
    two = tmp_path / "two.nii.gz"
    two.write_bytes(gzip.compress(raw[:1000], 1) + gzip.compress(raw[1000:], 1))
    runs, _ = read_mask_runs(two)
    np.testing.assert_array_equal(runs.to_array(), seg > 0)
    bad = tmp_path / "bad.nii.gz"
    data = bytearray(gzip.compress(raw, 1))
    data[-6] ^= 1  # the CRC
    bad.write_bytes(bytes(data))
    with pytest.raises(ReadError, match="bad.nii.gz"):
        read_mask_runs(bad)


def test_a_shared_header_is_checked_for_every_file(tmp_path):
    """The masks of a case share one header, parsed and checked once: each file's own size is still checked
    against it (a truncated one fails with its name), and a header whose checks note something (no voxel size,
    geometry from the sform) notes it for every file."""
    vol = np.zeros((64, 64, 64), np.uint8, order="F")
    vol[10:20, 10:20, 10:20] = 1
    img = nib.Nifti1Image(vol, np.diag([1.5, 1.5, 2.0, 1.0]))
    good = tmp_path / "a.nii.gz"
    nib.save(img, str(good))
    cut = tmp_path / "b.nii.gz"
    cut.write_bytes(good.read_bytes()[:200])  # the same header, 262 KB claimed from 200 bytes
    runs, _ = read_mask_runs(good)
    assert runs.count() == 1000
    with pytest.raises(ReadError, match="b.nii.gz: header claims"):
        read_mask_runs(cut)
    noted = nib.Nifti1Image(vol, np.diag([1.5, 1.5, 2.0, 1.0]))
    noted.header["pixdim"][1:4] = 0  # the sform still gives the geometry
    for name in ("c.nii.gz", "d.nii.gz"):
        nib.save(noted, str(tmp_path / name))
    for name in ("c.nii.gz", "d.nii.gz"):
        notes: list[str] = []
        runs, _ = read_mask_runs(tmp_path / name, notes=notes)
        assert runs.count() == 1000 and len(notes) == 1 and notes[0].startswith(f"{name}: header voxel size")
