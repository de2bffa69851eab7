"""Benchmark B13: reading DICOM-SEG, our reader vs highdicom (issue 15 item 5: "measure first").

For each SEG, both readers produce per-segment masks on the grid of the image series (series sorted
order), and the masks are checked to be equal voxel for voxel:

* ours -- ``pipeline.ingest.readers.dicom_seg.read_seg(path, series)`` (header checks, frame placement by
  referenced SOP Instance UID or position, packing into non-overlapping layers);
* highdicom -- ``highdicom.seg.segread(path)`` then
  ``Segmentation.get_pixels_by_source_instance(source_sop_instance_uids=<series order>, combine_segments=False)``.

Cases: the real dcmqi liver SEG (3 frames, stored in reverse slice order), and a synthetic BINARY SEG
written with highdicom over a ``K``-slice 512x512 CT made from the dcmqi CT slices (5 segments, frames
only where a segment is present). Times are best of ``--repeats`` after one warm-up (warm page cache).

It also records what each reader does where the other does not (see docs/benchmarks.md, B13).

Run: ``python -m benchmarks.b13_seg_reader [--slices 120] [--repeats 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom

from benchmarks.b7_dicom_series import time_best
from pipeline.ingest.readers.dicom import read_series
from pipeline.ingest.readers.dicom_seg import read_seg

SAMPLES = Path(os.environ.get("MEDREG_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _ours(seg_path: Path, series) -> dict[int, np.ndarray]:
    vol = read_seg(seg_path, series)
    return {n: vol.mask(n) for segs in vol.layer_segments for n in segs}


def _highdicom(seg_path: Path, series) -> dict[int, np.ndarray]:
    import highdicom as hd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.segread(seg_path)
        numbers = [int(n) for n in seg.segment_numbers]
        px = seg.get_pixels_by_source_instance(source_sop_instance_uids=list(series.sop_uids),
                                               segment_numbers=numbers, combine_segments=False,
                                               ignore_spatial_locations=True)
    return {n: px[..., i] > 0 for i, n in enumerate(numbers)}


def _compare(name: str, seg_path: Path, ct_dir: Path, repeats: int) -> dict[str, object]:
    series = read_series(ct_dir)
    t_ours, ours = time_best(lambda: _ours(seg_path, series), repeats)
    t_hd, theirs = time_best(lambda: _highdicom(seg_path, series), repeats)
    ours_d = ours if isinstance(ours, dict) else {}
    theirs_d = theirs if isinstance(theirs, dict) else {}
    equal = set(ours_d) == set(theirs_d) and all(np.array_equal(ours_d[n], theirs_d[n]) for n in ours_d)
    voxels = sum(int(m.sum()) for m in ours_d.values())
    return {"case": name, "segments": len(ours_d), "slices": len(series.sop_uids), "voxels": voxels,
            "ours_s": t_ours, "highdicom_s": t_hd, "ratio": t_ours / t_hd, "equal": equal}


def _big_case(root: Path, slices: int) -> tuple[Path, Path]:
    """A ``slices``-slice CT (the dcmqi CT slice repeated at 1 mm steps, new UIDs) and a 5-segment BINARY
    SEG over it written by highdicom."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    src = pydicom.dcmread(SAMPLES / "dcmqi-ct-liver-seg" / "ct-3slice" / "01.dcm")
    ct_dir = root / "ct"
    ct_dir.mkdir()
    series_uid = pydicom.uid.generate_uid()
    sources = []
    for k in range(slices):
        ds = copy.deepcopy(src)
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # highdicom rejects the sample's empty value
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = k + 1
        x, y, z = (float(v) for v in src.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z - k]
        ds.SliceLocation = z - k
        ds.save_as(ct_dir / f"{k:04d}.dcm")
        sources.append(ds)
    r, c = int(src.Rows), int(src.Columns)
    rr, cc = np.mgrid[:r, :c]
    masks = np.zeros((slices, r, c, 5), np.uint8)
    for k in range(slices):
        t = k / max(slices - 1, 1)
        masks[k, ..., 0] = (rr - 250) ** 2 / 80**2 + (cc - 180) ** 2 / 100**2 <= 1 + 0.2 * np.sin(6 * t)
        if 0.2 < t < 0.7:
            masks[k, 300:360, 300:420, 1] = 1
        masks[k, 100:140, 240:270, 2] = 1
        if t > 0.5:
            masks[k, ..., 3] = (rr - 200) ** 2 + (cc - 380) ** 2 <= (30 * t) ** 2
        masks[k, 380:400, 100:200, 4] = k % 3 == 0
    descs = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=f"s{i + 1}", algorithm_type="MANUAL",
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Liver) for i in range(5)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=masks, segmentation_type="BINARY", segment_descriptions=descs,
            series_instance_uid=hd.UID(), series_number=9, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="bench", manufacturer_model_name="bench", software_versions="1",
            device_serial_number="1", omit_empty_frames=True)
    seg.save_as(root / "seg.dcm")
    return root / "seg.dcm", ct_dir


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="30 slices, one repeat")
    args = ap.parse_args(argv)
    if args.quick:
        args.slices, args.repeats = 30, 1
    rows = [_compare("dcmqi liver (real, 3 frames, reversed)", SAMPLES / "dcmqi-ct-liver-seg" / "liver.dcm",
                     SAMPLES / "dcmqi-ct-liver-seg" / "ct-3slice", args.repeats)]
    with tempfile.TemporaryDirectory() as tmp:
        seg_path, ct_dir = _big_case(Path(tmp), args.slices)
        rows.append(_compare(f"synthetic BINARY, 5 segments, {args.slices} slices", seg_path, ct_dir, args.repeats))
    print(f"B13: DICOM-SEG onto the series grid, ours vs highdicom (best of {args.repeats}, warm)")
    print(f"{'case':45s} {'segs':>4s} {'slices':>6s} {'voxels':>9s} {'ours s':>8s} {'hd s':>8s} {'ratio':>6s}  equal")
    for r in rows:
        print(f"{r['case']:45s} {r['segments']:4d} {r['slices']:6d} {r['voxels']:9d} {r['ours_s']:8.3f} "
              f"{r['highdicom_s']:8.3f} {r['ratio']:5.2f}x  {r['equal']}")
    if not all(r["equal"] for r in rows):
        raise SystemExit("B13: the two readers disagree on some mask (see the table)")


if __name__ == "__main__":
    main()
