"""Fault injection: damaged and hostile inputs (issue 9, items 4-7).

Each test derives a small bad input from the real sample data next to good cases, runs the case pipeline
(adapter + ``process_case``) or the in-process ``build``, and asserts: the bad case gives an error record
whose message names the file (relative to the data folder) and whose hint says what to do; the good
cases are built; messages carry no absolute path; nothing is written outside the output folder.  Resource
bombs are also measured for peak memory in a subprocess (tests/fault_bombs.py).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import orjson
import pydicom
import yaml
from PIL import Image

from pipeline.core.limits import decode_limit
from pipeline.ingest.guard import discover_cases
from pipeline.ingest.readers.image2d import read_mask
from flows.run import build
from pipeline.release.case import process_case
from pipeline.release.executors import SerialExecutor
from pipeline.release.images import ImageStore
from schemas.card import SourceCard
from schemas.config import ReleaseConfig
from sources.base import get_adapter, load_card

REPO = Path(__file__).resolve().parents[1]
CFG = ReleaseConfig.model_validate({"name": "faults", "version": "1", "seed": 3, "sources": [{"card": "x"}],
                                    "tasks": {"langs": ["en"]}})
ABS = re.compile(r"(?<![\w.])/(?:[\w.@+-]+/)+[\w.@+-]*")  # an absolute POSIX path


@dataclass
class Outcome:
    rows: dict[str, int] = field(default_factory=dict)  # case id -> rows built
    errors: dict[str, object] = field(default_factory=dict)  # case id -> ErrorRecord
    notes: list[str] = field(default_factory=list)


def _snapshot(folder: Path, skip: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in folder.rglob("*") if skip not in p.parents and p != skip}


def run_cases(card: SourceCard, root: Path, tmp_path: Path) -> Outcome:
    """Every case of ``card`` under ``root`` through process_case; checks nothing is written beside out/."""
    out = tmp_path / "out"
    before = _snapshot(tmp_path, out)
    adapter = get_adapter(card, root)
    res = Outcome()
    for ref in discover_cases(adapter):
        r = process_case(card, adapter, ref, CFG, ImageStore(out / ".medreg-cache"))
        res.rows[ref.case_id] = len(r.rows)
        res.notes += r.notes
        for e in r.errors:
            res.errors[ref.case_id] = e
    assert _snapshot(tmp_path, out) == before, "a build wrote outside its output folder"
    for text in res.notes + [f"{e.error} {e.hint}" for e in res.errors.values()]:
        assert not ABS.search(text), text
    return res


def assert_clear(err, relpath: str, *fix_words: str) -> None:
    """The error (an ErrorRecord or its errors.jsonl dict) names the file relative to the data folder,
    carries no absolute path and says what to do."""
    error, hint = (err["error"], err["hint"]) if isinstance(err, dict) else (err.error, err.hint)
    assert relpath in error, error
    assert not ABS.search(error) and not ABS.search(hint), (error, hint)
    assert hint
    for w in fix_words:
        assert w in error or w in hint, (w, error, hint)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copyfile)  # plain copies: the samples are read-only
    return dst


# --- item 4: truncated or damaged inputs are errors ------------------------------------------------------

def test_damaged_dicom_slices_and_seg_fail_their_case(samples, tmp_path):
    src = samples / "dcmqi-ct-liver-seg"
    data = tmp_path / "data"
    for case in ("good", "seg_half", "no_pixels", "pixels_cut", "header_cut"):
        copy_tree(src / "ct-3slice", data / case / "ct-3slice")
        shutil.copyfile(src / "liver.dcm", data / case / "liver.dcm")
    seg = data / "seg_half" / "liver.dcm"
    seg.write_bytes(seg.read_bytes()[: seg.stat().st_size // 2])  # today: wrong boxes, no note
    ds = pydicom.dcmread(data / "no_pixels" / "ct-3slice" / "02.dcm")
    del ds.PixelData  # today: the slice vanishes, "1 of 3 frame(s) match no slice"
    ds.save_as(data / "no_pixels" / "ct-3slice" / "02.dcm")
    for case, keep in (("pixels_cut", 0.5), ("header_cut", 600 / 526474)):
        f = data / case / "ct-3slice" / "02.dcm"
        f.write_bytes(f.read_bytes()[: int(f.stat().st_size * keep)])
    card = load_card("dcmqi-liver-seg")  # explicit cases: the copies share their UIDs
    cases = [{"id": c, "series": f"{c}/ct-3slice", "seg": f"{c}/liver.dcm"}
             for c in ("good", "seg_half", "no_pixels", "pixels_cut", "header_cut")]
    res = run_cases(card.model_copy(update={"layout": {"cases": cases}}), data, tmp_path)
    assert res.rows["good"] > 0 and set(res.errors) == {"seg_half", "no_pixels", "pixels_cut", "header_cut"}
    assert_clear(res.errors["seg_half"], "seg_half/liver.dcm", "truncated", "re-download")
    assert_clear(res.errors["no_pixels"], "no_pixels/ct-3slice/02.dcm", "no PixelData", "re-download")
    assert_clear(res.errors["pixels_cut"], "pixels_cut/ct-3slice/02.dcm", "truncated")
    assert_clear(res.errors["header_cut"], "header_cut/ct-3slice/02.dcm", "re-download")
    assert not any("match no slice" in n for n in res.notes)


def test_scan_mode_reports_unreadable_dicom_files(samples, tmp_path):
    """In scan mode an unreadable file fails the case whose series folder holds it; one in no case's
    folder (a SEG cut inside its header) becomes a failing case of its own: nothing vanishes."""
    data = copy_tree(samples / "dcmqi-ct-liver-seg", tmp_path / "data")
    f = data / "ct-3slice" / "03.dcm"
    f.write_bytes(f.read_bytes()[:600])
    (data / "extra").mkdir()
    (data / "extra" / "seg-copy.dcm").write_bytes((data / "liver.dcm").read_bytes()[:300])
    res = run_cases(load_card("dcmqi-liver-seg"), data, tmp_path)
    assert set(res.errors) == {"liver", "extra__seg-copy"} and not any(res.rows.values())
    assert_clear(res.errors["liver"], "ct-3slice/03.dcm", "cannot be read", "re-download")
    assert_clear(res.errors["extra__seg-copy"], "extra/seg-copy.dcm", "cannot be read")


def test_rtstruct_points_far_away_are_refused(samples, tmp_path):
    data = tmp_path / "data"
    for case in ("good", "far", "off_image"):
        copy_tree(samples / "rtstruct-visible-human" / "AnonDICOM", data / case)
    for case, value in (("far", 1e15), ("off_image", 5000.0)):  # today: whole-image boxes
        rs = data / case / "RS_Body_SpinalCord.dcm"
        ds = pydicom.dcmread(rs)
        contour = ds.ROIContourSequence[0].ContourSequence[0]
        pts = [float(v) for v in contour.ContourData]
        pts[0], pts[4] = value, -value  # x of the first point, y of the second
        contour.ContourData = pts
        ds.save_as(rs)
    cases = [{"id": c, "series": c, "rtstruct": f"{c}/RS_Body_SpinalCord.dcm"} for c in ("good", "far", "off_image")]
    card = load_card("rtstruct-visible-human")
    res = run_cases(card.model_copy(update={"layout": {"cases": cases}}), data, tmp_path)
    assert res.rows["good"] > 0 and set(res.errors) == {"far", "off_image"}
    assert_clear(res.errors["far"], "far/RS_Body_SpinalCord.dcm", "1e+15 mm", "re-export")
    assert_clear(res.errors["off_image"], "off_image/RS_Body_SpinalCord.dcm", "outside the", "ContourData")


def _nii_bytes(src: Path) -> bytearray:
    return bytearray(gzip.decompress(src.read_bytes()))


def test_nifti_nan_zero_pixdim_and_size_bomb(samples, tmp_path):
    src = samples / "totalseg-nifti" / "ct"
    data = tmp_path / "data"
    (data / "ct").mkdir(parents=True)
    shutil.copyfile(src / "example_seg.nii.gz", data / "ct" / "seg.nii.gz")
    raw = _nii_bytes(src / "example_ct_sm.nii.gz")  # sform_code 2, qform_code 0, pixdim 3 mm
    (data / "ct" / "good.nii").write_bytes(bytes(raw))
    (data / "ct" / "pixdim0_sform.nii").write_bytes(bytes(raw[:80] + struct.pack("<f", 0.0) + raw[84:]))
    nosform = raw[:80] + struct.pack("<f", 0.0) + raw[84:254] + struct.pack("<h", 0) + raw[256:]
    (data / "ct" / "pixdim0_nosform.nii").write_bytes(bytes(nosform))
    bomb = raw[:40] + struct.pack("<8h", 3, 2000, 2000, 800, 1, 1, 1, 1) + raw[56:]
    (data / "ct" / "bomb.nii").write_bytes(bytes(bomb[:720]))  # 720 bytes claiming 6.4 GB
    img = nib.load(src / "example_ct_sm.nii.gz")
    vol = np.asarray(img.dataobj, dtype=np.float32)
    vol[:, :, 15] = np.nan
    nib.save(nib.Nifti1Image(vol, img.affine), data / "ct" / "nan.nii.gz")
    seg = nib.load(src / "example_seg.nii.gz")
    labels = np.asarray(seg.dataobj, dtype=np.float32)
    labels[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(labels, seg.affine), data / "ct" / "nan_seg.nii.gz")
    cases = [{"id": n, "image": f"ct/{n}.nii", "labels": "ct/seg.nii.gz"}
             for n in ("good", "pixdim0_sform", "pixdim0_nosform", "bomb")]
    cases += [{"id": "nan", "image": "ct/nan.nii.gz", "labels": "ct/seg.nii.gz"},
              {"id": "nan_labels", "image": "ct/good.nii", "labels": "ct/nan_seg.nii.gz"}]
    card = load_card("totalseg-ct")
    card = card.model_copy(update={"layout": {**card.layout, "cases": cases}})
    res = run_cases(card, data, tmp_path)
    assert {c for c, n in res.rows.items() if n > 0} == {"good", "pixdim0_sform", "nan"}
    assert any("ct/nan.nii.gz: 12322 NaN/inf voxel(s)" in n for n in res.notes), res.notes
    assert any("ct/pixdim0_sform.nii: header voxel size (pixdim) is [0.0, 3.0, 3.0]" in n for n in res.notes)
    assert_clear(res.errors["pixdim0_nosform"], "ct/pixdim0_nosform.nii", "no sform", "pixdim")
    assert_clear(res.errors["bomb"], "ct/bomb.nii", "6.0 GiB", "holds only 368 bytes", "re-download")
    assert_clear(res.errors["nan_labels"], "ct/nan_seg.nii.gz", "1 NaN/inf", "label map")
    assert res.rows["good"] == res.rows["pixdim0_sform"]  # the sform gives the same geometry


def test_the_decode_limit_is_configurable(samples, tmp_path, monkeypatch):
    """The same 0.7 MiB CT is read under the default limit and refused under a 0.5 MiB one (env or driver)."""
    data = copy_tree(samples / "totalseg-nifti" / "ct", tmp_path / "data" / "ct").parent
    card = load_card("totalseg-ct")
    assert run_cases(card, data, tmp_path / "a").rows["example_ct_sm"] > 0
    monkeypatch.setenv("MEDREG_MAX_DECODED_MB", "0.5")
    err = run_cases(card, data, tmp_path / "b").errors["example_ct_sm"]
    assert_clear(err, "ct/example_ct_sm.nii.gz", "over the decode limit of 524,288 bytes", "MEDREG_MAX_DECODED_MB")
    monkeypatch.delenv("MEDREG_MAX_DECODED_MB")
    with decode_limit(0.5):
        assert "over the decode limit" in run_cases(card, data, tmp_path / "c").errors["example_ct_sm"].error


def _mask_card(name: str) -> SourceCard:
    card = load_card("kvasir-seg")  # the same card (box policy, labels) with PNG masks
    return card.model_copy(update={"name": name, "layout": {**card.layout, "masks": "masks/{stem}.png"}})


def test_masks_stored_as_0_1_and_empty_masks(samples, tmp_path):
    src = samples / "kvasir-seg-sample"
    reference = run_cases(load_card("kvasir-seg"), src, tmp_path / "ref")
    data = tmp_path / "data"
    copy_tree(src / "images", data / "images")
    (data / "masks").mkdir()
    stems = sorted(p.stem for p in (src / "images").glob("*.jpg"))
    for stem in stems:  # 0/1 PNG masks: today every region is lost with a misleading min_pixels hint
        Image.fromarray(read_mask(src / "masks" / f"{stem}.jpg")).save(data / "masks" / f"{stem}.png")
    small = read_mask(src / "masks" / f"{stems[3]}.jpg") * 5  # label value 5 under the threshold 127
    Image.fromarray(small.astype(np.uint8)).save(data / "masks" / f"{stems[3]}.png")
    blank = np.zeros_like(read_mask(src / "masks" / f"{stems[4]}.jpg"))
    Image.fromarray(blank).save(data / "masks" / f"{stems[4]}.png")
    res = run_cases(_mask_card("masks01"), data, tmp_path)
    for stem in stems[:3]:
        assert res.rows[stem] == reference.rows[stem] > 0
    assert_clear(res.errors[stems[3]], f"masks/{stems[3]}.png", "threshold 127", "layout.threshold")
    assert_clear(res.errors[stems[4]], f"masks/{stems[4]}.png", "every mask", "empty")
    assert "min_pixels" not in res.errors[stems[4]].hint


# --- item 5: one bad record does not sink a source --------------------------------------------------------

def _cxr_rows(samples: Path) -> list[str]:
    lines = (samples / "nih-cxr14-images" / "box_annotation.csv").read_text().splitlines()
    names = sorted(p.name for p in (samples / "nih-cxr14-images" / "images").glob("*.png"))
    return [ln for ln in lines[1:] if ln.split(",")[0] in names]


def _cxr_card(**layout) -> SourceCard:
    card = load_card("nih-cxr14")
    return card.model_copy(update={"layout": {**card.layout, "csv": "boxes.csv", **layout}})


def test_one_latin1_byte_fails_one_line_not_the_csv(samples, tmp_path):
    data = copy_tree(samples / "nih-cxr14-images" / "images", tmp_path / "data" / "images").parent
    rows = _cxr_rows(samples)
    assert len(rows) == 4
    body = "Image Index,Finding Label,Bbox [x,y,w,h]\n" + "\n".join(rows[:2]) + "\n"
    bad = rows[2].encode() + ",r\xe9vis\xe9 par le radiologue".encode("latin-1")  # one latin-1 line (line 4)
    (data / "boxes.csv").write_bytes(body.encode() + bad + b"\n" + rows[3].encode() + b"\n")
    res = run_cases(_cxr_card(), data, tmp_path / "a")
    bad_case = rows[2].split(",")[0][:-4]
    assert [c for c, n in res.rows.items() if n > 0] == sorted(r.split(",")[0][:-4] for r in rows if r != rows[2])
    assert_clear(res.errors[bad_case], "boxes.csv", "line 4", "byte 0xe9", "layout.encoding")
    declared = run_cases(_cxr_card(encoding="latin-1"), data, tmp_path / "b")  # the declared encoding reads it
    assert not declared.errors and all(n > 0 for n in declared.rows.values()) and len(declared.rows) == 4


def test_coco_width_abc_fails_only_that_image(samples, tmp_path):
    src = samples / "kvasir-seg-sample"
    data = copy_tree(src / "images", tmp_path / "data" / "images").parent
    boxes = json.loads((src / "kavsir_bboxes.json").read_text())
    coco: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "polyp"}]}
    for i, (stem, entry) in enumerate(sorted(boxes.items()), start=1):
        coco["images"].append({"id": i, "file_name": f"{stem}.jpg", "width": entry["width"], "height": entry["height"]})
        for b in entry["bbox"]:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "category_id": 1,
                                        "bbox": [b["xmin"], b["ymin"], b["xmax"] - b["xmin"], b["ymax"] - b["ymin"]]})
    coco["images"][1]["width"] = "abc"  # today: every image fails, no file named
    (data / "instances.json").write_text(json.dumps(coco))
    card = SourceCard(name="coco-faults", title="coco", adapter="coco_json", licence="CC-BY-4.0", modality="endoscopy",
                      labels={"polyp": "polyp"}, layout={"annotations": "instances.json", "images": "images"})
    res = run_cases(card, data, tmp_path)
    stems = sorted(boxes)
    assert set(res.errors) == {stems[1]} and all(res.rows[s] > 0 for s in stems if s != stems[1])
    assert_clear(res.errors[stems[1]], "instances.json", "images entry 2", "width not a whole number")


# --- items 4 and 7 through the whole build: discover errors, secrets, paths, symlinks -----------------------

def _write_card(card: SourceCard, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{card.name}.yaml"
    path.write_text(yaml.safe_dump(card.model_dump(mode="json"), sort_keys=True))
    return path


def _published(release: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(release.rglob("*"))
                     if p.is_file() and p.suffix in (".json", ".jsonl", ".txt", ".html", ".md"))


def _build(tmp_path: Path, samples: Path, sources: list[dict]) -> tuple[Path, list[dict]]:
    # allow_shrink: a source that fails discovery is an error record here, not a refused build
    cfg = ReleaseConfig.model_validate({**CFG.model_dump(), "sources": sources,
                                        "output": {**CFG.output.model_dump(), "allow_shrink": True}})
    out = tmp_path / "out"
    before = _snapshot(tmp_path, out)
    release = build(cfg, out, samples_root=samples, executor=SerialExecutor())
    assert _snapshot(tmp_path, out) == before, "the build wrote outside its output folder"
    errors = [orjson.loads(line) for line in (release / "errors.jsonl").read_bytes().splitlines()]
    return release, errors


def test_non_card_yaml_and_empty_csv_leak_nothing(samples, tmp_path):
    secrets = tmp_path / "conf" / "secrets.yaml"
    secrets.parent.mkdir()
    secrets.write_text("api_key: s3cr3t-KEY-4711\npassword: hunter2-pw\n")  # a config pointing at the wrong file
    broken = tmp_path / "conf" / "broken.yaml"
    broken.write_text("token: tok-SECRET-99: oops\n")  # not even YAML: the parser error must not quote the line
    data = copy_tree(samples / "nih-cxr14-images" / "images", tmp_path / "cxr" / "images").parent
    (data / "boxes.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h]\n")  # today: 0 cases, no error
    card = _write_card(_cxr_card().model_copy(update={"name": "cxr-empty"}), tmp_path / "conf")
    release, errors = _build(tmp_path, samples, [{"card": str(secrets)}, {"card": str(broken)},
                                                 {"card": str(card), "root": str(data)}, {"card": "kvasir-seg"}])
    text = _published(release)
    for secret in ("s3cr3t-KEY-4711", "hunter2-pw", "tok-SECRET-99"):
        assert secret not in text
    by_source = {Path(e["source"]).name: e for e in errors}
    assert "api_key: Extra inputs are not permitted" in by_source["secrets.yaml"]["error"]  # the key, not the value
    assert "line 1, column" in by_source["broken.yaml"]["error"]
    assert_clear(by_source["cxr-empty"], "boxes.csv", "no box rows", "layout.csv")
    manifest = orjson.loads((release / "manifest.json").read_bytes())
    assert manifest["counts"]["rows"] > 0  # the good source is built


def test_symlinks_out_of_the_data_folder_are_refused(samples, tmp_path):
    src = samples / "kvasir-seg-sample"
    data = tmp_path / "data"
    copy_tree(src, data)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    stems = sorted(p.stem for p in (data / "images").glob("*.jpg"))
    shutil.move(data / "images" / f"{stems[0]}.jpg", outside / "private-scan-name.jpg")
    (data / "images" / f"{stems[0]}.jpg").symlink_to(outside / "private-scan-name.jpg")
    shutil.move(data / "masks" / f"{stems[1]}.jpg", outside / "private-mask-name.jpg")
    (data / "masks" / f"{stems[1]}.jpg").symlink_to(outside / "private-mask-name.jpg")
    shutil.move(data / "masks" / f"{stems[2]}.jpg", data / "masks" / "kept.jpg")  # a link inside the folder is fine
    (data / "masks" / f"{stems[2]}.jpg").symlink_to(data / "masks" / "kept.jpg")
    release, errors = _build(tmp_path, samples, [{"card": "kvasir-seg", "root": str(data)}])
    by_case = {e["case_id"]: e for e in errors}
    assert set(by_case) == {stems[0], stems[1]}
    for stem, rel in ((stems[0], f"images/{stems[0]}.jpg"), (stems[1], f"masks/{stems[1]}.jpg")):
        assert_clear(by_case[stem], rel, "symbolic link", "outside the data folder", "copy the file")
        assert by_case[stem]["file"] == rel  # the link, relative to the data folder
    text = _published(release)
    assert "private-scan-name" not in text and "private-mask-name" not in text
    rows = [orjson.loads(line) for p in (release / "data").rglob("*.jsonl") for line in p.read_bytes().splitlines()]
    assert {r["meta"]["case_id"] for r in rows} == set(stems[2:])


def test_messages_and_notes_name_files_relative_to_the_data_folder(samples, tmp_path):
    data = tmp_path / "data"
    copy_tree(samples / "totalseg-nifti" / "ct", data / "ct")
    img = nib.load(data / "ct" / "example_ct_sm.nii.gz")
    vol = np.asarray(img.dataobj, dtype=np.float32)
    vol[0] = np.inf
    nib.save(nib.Nifti1Image(vol, img.affine), data / "ct" / "inf.nii.gz")
    card = load_card("totalseg-ct")
    cases = [{"id": "missing", "image": "ct/example_ct_sm.nii.gz", "labels": "ct/nowhere/seg.nii.gz"},
             {"id": "inf", "image": "ct/inf.nii.gz", "labels": "ct/example_seg.nii.gz"}]
    card = _write_card(card.model_copy(update={"name": "ts-paths", "layout": {**card.layout, "cases": cases}}),
                       tmp_path / "conf")
    release, errors = _build(tmp_path, samples, [{"card": str(card), "root": str(data)}])
    (err,) = errors
    assert_clear(err, "ct/nowhere/seg.nii.gz", "file not found")
    notes = (release / "notes.txt").read_text()
    assert "ct/inf.nii.gz: 3030 NaN/inf voxel(s)" in notes and str(tmp_path) not in notes and not ABS.search(notes)
    assert str(tmp_path) not in err["error"] + err["hint"]


# --- item 6: resource bombs, with peak memory measured in a fresh process ------------------------------------

def test_resource_bombs_are_refused_before_allocating(samples, tmp_path):
    """YAML alias bombs (card labels/layout, release config, glossary file), a 720-byte NIfTI claiming 6.4 GB
    (plain and gzip), a SEG claiming 10^7 frames (with and without per-frame groups), a CT slice claiming
    65535 x 65535 pixels and a PNG claiming 10^10 pixels: each is refused with a message naming the file,
    and the whole run's peak memory grows by less than 150 MiB (the bombs claim up to 6.4 GB)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "fault_bombs.py"), str(samples), str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {
        "card-labels": ("bomb-labels.yaml", "alias bomb"), "card-layout": ("bomb-layout.yaml", "alias bomb"),
        "config": ("bomb-config.yaml", "alias bomb"), "glossary": ("bomb-glossary.yaml", "alias bomb"),
        "nifti": ("bomb.nii", "6.0 GiB"), "nifti-gz": ("bomb.nii.gz", "1032x"),
        "seg-frames": ("liver.dcm", "NumberOfFrames is 10000000"), "seg-pixels": ("liver.dcm", "PixelData holds"),
        "ct-rows": ("02.dcm", "PixelData holds"), "png": ("bomb.png", "more than 1032x"),
        "png-huge": ("huge.png", "Pillow's limit"),
    }
    assert set(report["errors"]) == set(expected)
    for kind, (name, words) in expected.items():
        msg = report["errors"][kind]
        assert name in msg and words in msg, (kind, msg)
        assert kind == "config" or str(tmp_path) not in msg, msg  # the config is named as the user gave it
    assert report["peak_growth_mib"] < 150, report
