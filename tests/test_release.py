"""End-to-end build on the real sample data (in-process, no Prefect): determinism, errors, verify."""

import shutil
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from flows.run import build
from pipeline.release.verify import verify_release
from schemas.config import ReleaseConfig

SOURCES_2D_3D = ["totalseg-ct", "totalseg-mr", "sam-med2d", "biomedparse-2d", "kvasir-seg"]


def _cfg(**over):
    data = {
        "name": "t",
        "version": "1",
        "seed": 7,
        "sources": [{"card": c} for c in SOURCES_2D_3D],
        "slicing": {"axes": ["axial", "coronal"], "min_spacing_mm": 15, "max_slices_per_case": 3},
        "output": {"rows_per_shard": 25},
        "validation": {"validators": ["rules", "stats"]},
    }
    data.update(over)
    return ReleaseConfig.model_validate(data)


@pytest.fixture(scope="module")
def release(tmp_path_factory, samples):
    out = tmp_path_factory.mktemp("rel-a")
    return build(_cfg(), out, samples_root=samples)


def _rows(release):
    rows = []
    for p in sorted((release / "data").rglob("*.jsonl")):
        rows += [orjson.loads(line) for line in p.read_bytes().splitlines()]
    return rows


def test_release_layout_and_meta(release):
    m = orjson.loads((release / "manifest.json").read_bytes())
    assert m["counts"]["errors"] == 0, m["errors"]
    rows = _rows(release)
    assert len(rows) == m["counts"]["rows"] > 100
    tasks = {r["meta"]["task"] for r in rows}
    assert tasks == {"region_to_text", "text_to_region", "grounded_report"}
    assert {r["meta"]["lang"] for r in rows} == {"en", "zh"}
    assert {r["meta"]["source"] for r in rows} == set(SOURCES_2D_3D)
    for r in rows:
        meta = r["meta"]
        for key in ("task", "lang", "source", "licence", "case_id", "patient_id", "split", "modality", "template_id", "regions"):
            assert meta[key] is not None, key
        assert meta["patient_id"].startswith("p") and len(meta["patient_id"]) == 17
        turns = [t for t in r["conversations"] if t["from"] != "system"]  # optional system prompt first
        assert [t["from"] for t in turns[:2]] == ["human", "gpt"] and turns[0]["value"].startswith("<image>\n")
        assert (release / r["image"]).is_file()
        assert r["image"] == f"images/{Path(r['image']).stem[:2]}/{Path(r['image']).stem}.png"
        for reg in meta["regions"]:
            x0, y0, x1, y1 = reg["box_px"]
            assert 0 <= x0 <= x1 < r["width"] and 0 <= y0 <= y1 < r["height"]
        assert meta["validation"], "every row carries its validation results"
    # shard naming and counts
    for s in m["shards"]:
        name = Path(s["path"]).name
        assert name.startswith(f"{s['task']}.{s['lang']}.") and "-of-" in name and s["path"].startswith(f"data/{s['split']}/")
    # licences per source are carried on every row
    lic = {r["meta"]["source"]: r["meta"]["licence"] for r in rows}
    assert lic["kvasir-seg"] == "research-and-education-only" and lic["totalseg-ct"] == "Apache-2.0"
    # one patient never spans two splits; SA-Med2D keeps its official split
    split_of = {}
    for r in rows:
        split_of.setdefault(r["meta"]["patient_id"], set()).add(r["meta"]["split"])
        if r["meta"]["case_id"] == "amos_0004_75":
            assert r["meta"]["split"] == "test"
    assert all(len(s) == 1 for s in split_of.values())
    assert (release / "README.md").read_text().startswith("---\n")
    run_log = orjson.loads((release.parent / ".medreg-cache/runs/t-1.last-run.json").read_bytes())
    assert len(run_log["cases"]) == m["counts"]["cases"] and all(c["seconds"] > 0 for c in run_log["cases"])
    assert "<svg" in (release / "report.html").read_text()


def test_two_builds_are_byte_identical(release, tmp_path, samples):
    other = build(_cfg(), tmp_path, samples_root=samples)
    a = {p.relative_to(release).as_posix(): p.read_bytes() for p in release.rglob("*") if p.is_file()}
    b = {p.relative_to(other).as_posix(): p.read_bytes() for p in other.rglob("*") if p.is_file()}
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_verify_detects_tampering(release, tmp_path):
    assert verify_release(release) == []
    copy = tmp_path / "copy"
    shutil.copytree(release, copy)
    shard = next((copy / "data").rglob("*.jsonl"))
    shard.write_bytes(shard.read_bytes().replace(b'"gpt"', b'"GPT"', 1))
    problems = verify_release(copy)
    assert any(shard.name in p and "sha256" in p for p in problems)
    from flows.cli import app

    res = CliRunner().invoke(app, ["verify", str(copy)])
    assert res.exit_code == 1
    res = CliRunner().invoke(app, ["verify", str(release)])
    assert res.exit_code == 0, res.output


def test_corrupt_cases_become_error_records_and_the_rest_is_built(tmp_path, samples):
    data = tmp_path / "data"
    shutil.copytree(samples / "totalseg-nifti", data / "totalseg-nifti")
    shutil.copytree(samples / "kvasir-seg-sample", data / "kvasir-seg-sample")
    ct = data / "totalseg-nifti/ct/example_ct_sm.nii.gz"
    ct.write_bytes(ct.read_bytes()[:4000])  # truncated .nii.gz
    from PIL import Image

    bad_mask = data / "kvasir-seg-sample/masks/cju0qkwl35piu0993l0dewei2.jpg"
    Image.new("L", (100, 80), 255).save(bad_mask)  # mask/image shape mismatch
    cfg = _cfg(sources=[{"card": "totalseg-ct"}, {"card": "totalseg-mr"}, {"card": "kvasir-seg"}])
    rel = build(cfg, tmp_path / "out", samples_root=data)
    m = orjson.loads((rel / "manifest.json").read_bytes())
    errs = {e["case_id"]: e for e in m["errors"]}
    assert set(errs) == {"example_ct_sm", "cju0qkwl35piu0993l0dewei2"}
    assert errs["example_ct_sm"]["file"].endswith("example_ct_sm.nii.gz") and errs["example_ct_sm"]["hint"]
    assert "100x80" in errs["cju0qkwl35piu0993l0dewei2"]["error"]
    assert (rel / "errors.jsonl").read_bytes().count(b"\n") == 2
    sources = {r["meta"]["source"] for r in _rows(rel)}
    cases = {r["meta"]["case_id"] for r in _rows(rel)}
    assert sources == {"totalseg-mr", "kvasir-seg"} and len(cases) == 5
    assert verify_release(rel) == []


def test_a_failed_write_leaves_no_partial_release(tmp_path, samples, monkeypatch):
    import pipeline.release.shards as shards

    cfg = _cfg(sources=[{"card": "kvasir-seg"}])
    good = build(cfg, tmp_path, samples_root=samples)
    before = {p.relative_to(good).as_posix(): p.read_bytes() for p in good.rglob("*") if p.is_file()}
    real = shards.write_bytes_atomic
    calls = {"n": 0}

    def dying(path, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed mid-write")
        real(path, data)

    monkeypatch.setattr(shards, "write_bytes_atomic", dying)
    with pytest.raises(KeyboardInterrupt):
        build(cfg.model_copy(update={"seed": 8}), tmp_path, samples_root=samples)
    # the previous release is untouched and no staging folder or temp file is left
    after = {p.relative_to(good).as_posix(): p.read_bytes() for p in good.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".t-1")] == []


def test_release_verdicts_are_reused_per_part_and_cpu_verdicts_are_not_cached(tmp_path, samples):
    """Release-level verdicts: the per-part sidecars make an unchanged rerun validate nothing; the stats
    validator's verdicts are not cached row by row (recomputing them costs less than a file a row: the
    model judges' row cache is tested in test_validate_core); with the sidecars gone, a rerun validates
    every part again and writes the same verdicts."""
    from pipeline.release.store import Store
    from pipeline.validate.stage import release_validation

    cfg = _cfg(sources=[{"card": "totalseg-ct"}, {"card": "biomedparse-2d"}])
    build(cfg, tmp_path, samples_root=samples)
    store = Store.for_output(tmp_path)
    keys = sorted(p.name for p in (store.root / "parts").glob("*/*") if (p / "rows.jsonl").stat().st_size)
    again = release_validation(store, keys, cfg.validation, store.verdict_cache)
    assert (again.parts_reused, again.parts_validated, again.computed) == (len(keys), 0, 0)
    assert sorted(store.verdict_cache.glob("*/*.json")) == []
    sidecars = {p: p.read_bytes() for p in (store.root / "parts").glob("*/*/verdicts-*.jsonl")}
    assert len(sidecars) == len(keys)
    for p in sidecars:
        p.unlink()
    third = release_validation(store, keys, cfg.validation, store.verdict_cache)
    assert (third.parts_reused, third.parts_validated) == (0, len(keys))
    assert {p: p.read_bytes() for p in sidecars} == sidecars


def test_split_assignment_ignores_the_order_of_ratio_keys():
    from pipeline.release.case import assign_split

    a = _cfg(splits={"ratios": {"train": 0.5, "validation": 0.25, "test": 0.25}})
    b = _cfg(splits={"ratios": {"test": 0.25, "validation": 0.25, "train": 0.5}})
    assert a.config_hash() == b.config_hash()
    got = [assign_split(None, f"p{i:04d}", a) for i in range(400)]
    assert got == [assign_split(None, f"p{i:04d}", b) for i in range(400)]
    assert 0.4 < got.count("train") / 400 < 0.6  # ratios are honoured
    assert assign_split("test", "p0001", a) == "test"  # an official split is kept
