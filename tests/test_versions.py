"""Two versions of a release built from the shared samples (issue 13): the diff checked against a plain
recount of the shards, the card's "Changes" section, duplicates never split across train/test, the licence
filter, and split stability across versions.

v1: sam-med2d + totalseg-ct.
v2 (previous: v1): one source added (``repack-2d``: resized, JPEG re-encoded copies of v1's display images
of the SA-Med2D slice amos_0004_75 and of a TotalSegmentator slice, listed *first*), one card changed (totalseg-ct's
licence Apache-2.0 -> CC-BY-4.0, the TotalSegmentator dataset's own licence), one case removed (sam-med2d
``max_cases: 3`` leaves out s0619_32, the last of its 4 cases), and kvasir-seg (research-only) refused by
``licences.allow``.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from flows.run import build
from pipeline.core.ids import hash_patient
from pipeline.release.case import assign_split
from pipeline.release.executors import SerialExecutor
from pipeline.release.verify import verify_release
from pipeline.versions.diff import diff_releases
from schemas.config import ReleaseConfig
from sources.base import CARDS_DIR

SEED = 7
ALLOW = ["Apache-2.0", "CC-BY-4.0", "CC0-1.0"]


def _cfg(version: str, sources: list[dict], **over) -> ReleaseConfig:
    data = {
        "name": "t", "version": version, "seed": SEED, "sources": sources,
        "slicing": {"axes": ["axial"], "min_spacing_mm": 15, "max_slices_per_case": 3},
        "output": {"rows_per_shard": 40},
        "validation": {"validators": ["rules"]},
    }
    data.update(over)
    return ReleaseConfig.model_validate(data)


def _build(cfg: ReleaseConfig, out: Path, samples: Path) -> Path:
    return build(cfg, out, samples_root=samples, executor=SerialExecutor())


def _lines(release: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted((release / "data").rglob("*.jsonl")):
        for line in p.read_bytes().splitlines():
            out[orjson.loads(line)["id"]] = line
    return out


def _rows(release: Path) -> list[dict]:
    return [orjson.loads(v) for v in _lines(release).values()]


def _manifest(release: Path) -> dict:
    return orjson.loads((release / "manifest.json").read_bytes())


def _jpeg_copy(img: Image.Image, scale: float) -> tuple[bytes, tuple[int, int]]:
    size = (round(img.width * scale), round(img.height * scale))
    buf = io.BytesIO()
    img.convert("L").resize(size, Image.BILINEAR).save(buf, "JPEG", quality=85)
    return buf.getvalue(), size


def _stem_with_other_split(cfg: ReleaseConfig, source: str, avoid: str, prefix: str) -> str:
    """A case name whose own (patient-hash) split is not ``avoid``: the duplicate rule must then move it."""
    for i in range(200):
        stem = f"{prefix}{i:03d}"
        if assign_split(None, hash_patient(source, stem), cfg) != avoid:
            return stem
    raise AssertionError("no case name with another split")


def _copy_source(root: Path, v1: Path, cfg: ReleaseConfig) -> tuple[Path, dict[str, str]]:
    """A 2-D source holding resized JPEG copies of two slices as v1 shows them (SA-Med2D amos_0004_75 and a
    TotalSegmentator slice, as a repackaged set with the orientation fixed would hold them), each with a
    rectangular mask over the slice's liver box."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    v1_rows = _rows(v1)
    ts = next(r for r in v1_rows if r["meta"]["source"] == "totalseg-ct"
              and any(g["term"] == "liver" for g in r["meta"]["regions"]))
    amos = next(r for r in v1_rows if r["meta"]["case_id"] == "amos_0004_75")
    names = {
        "amos": _stem_with_other_split(cfg, "repack-2d", amos["meta"]["split"], "abd_"),
        "totalseg": _stem_with_other_split(cfg, "repack-2d", ts["meta"]["split"], "ct_"),
    }
    for key, row, scale in (("amos", amos, 0.75), ("totalseg", ts, 1.5)):
        img = Image.open(v1 / row["image"])
        data, size = _jpeg_copy(img, scale)
        (root / "images" / f"{names[key]}.jpg").write_bytes(data)
        m = np.zeros((img.height, img.width), np.uint8)
        x0, y0, x1, y1 = next(g["box_px"] for g in row["meta"]["regions"] if g["term"] == "liver")
        m[y0:y1 + 1, x0:x1 + 1] = 255
        Image.fromarray(m).resize(size, Image.NEAREST).save(root / "masks" / f"{names[key]}.png")
    card = {"name": "repack-2d", "title": "A repackaged 2-D set holding copies of public slices (test)",
            "adapter": "mask_folder_2d", "licence": "CC-BY-4.0", "modality": "CT", "body_region": "abdomen",
            "root": str(root), "box_policy": {"mode": "component", "min_pixels": 20},
            "layout": {"images": "images/*.jpg", "masks": "masks/{stem}.png", "mask_kind": "binary",
                       "label": "liver"}, "labels": {"liver": "liver"}}
    path = root / "repack-2d.yaml"
    path.write_text(yaml.safe_dump(card))
    return path, {"amos": names["amos"], "totalseg": names["totalseg"], "ts_case": ts["meta"]["case_id"]}


@pytest.fixture(scope="module")
def versions(tmp_path_factory, samples):
    tmp = tmp_path_factory.mktemp("versions")
    out = tmp / "out"
    cfg1 = _cfg("1", [{"card": "sam-med2d"}, {"card": "totalseg-ct"}])
    v1 = _build(cfg1, out, samples)
    repack, names = _copy_source(tmp / "repack", v1, cfg1)
    ts_card = yaml.safe_load((CARDS_DIR / "totalseg-ct.yaml").read_text())
    ts_card["licence"] = "CC-BY-4.0"
    (tmp / "cards").mkdir()
    ts_path = tmp / "cards" / "totalseg-ct.yaml"
    ts_path.write_text(yaml.safe_dump(ts_card))
    sources2 = [{"card": str(repack)}, {"card": "sam-med2d", "max_cases": 3}, {"card": str(ts_path)},
                {"card": "kvasir-seg"}]
    cfg2 = _cfg("2", sources2, previous="t-1", licences={"allow": ALLOW})
    v2 = _build(cfg2, out, samples)
    return SimpleNamespace(v1=v1, v2=v2, out=out, names=names, cfg1=cfg1, repack=repack, ts_path=ts_path)


def test_diff_numbers_match_a_recount(versions):
    a, b = _lines(versions.v1), _lines(versions.v2)
    meta_a = {i: orjson.loads(v)["meta"] for i, v in a.items()}
    meta_b = {i: orjson.loads(v)["meta"] for i, v in b.items()}
    added, removed = set(b) - set(a), set(a) - set(b)
    changed = {i for i in set(a) & set(b) if a[i] != b[i]}
    # the three edits, and nothing else: the removed case, the added source, the changed card
    assert removed and {meta_a[i]["case_id"] for i in removed} == {"s0619_32"}
    assert removed == {i for i, m in meta_a.items() if m["case_id"] == "s0619_32"}
    assert added and {meta_b[i]["source"] for i in added} == {"repack-2d"}
    assert added == {i for i, m in meta_b.items() if m["source"] == "repack-2d"}
    assert changed == {i for i, m in meta_a.items() if m["source"] == "totalseg-ct"}
    # sample ids are stable: every unchanged case keeps its rows byte for byte
    kept_sam = {i for i, m in meta_a.items() if m["source"] == "sam-med2d" and m["case_id"] != "s0619_32"}
    assert kept_sam and all(a[i] == b[i] for i in kept_sam)

    d = diff_releases(versions.v1, versions.v2)
    assert d["rows"] == {"old": len(a), "new": len(b), "added": len(added), "removed": len(removed),
                         "changed": len(changed), "unchanged": len(a) - len(removed) - len(changed)}
    assert d["changed_fields"] == {"meta.licence": len(changed)}  # the card's licence, nothing else
    by_source = {r["source"]: r for r in d["by"]["source"]}
    assert by_source["sam-med2d"]["removed"] == len(removed) and by_source["sam-med2d"]["changed"] == 0
    assert by_source["repack-2d"] == {"source": "repack-2d", "old": 0, "new": len(added), "added": len(added),
                                      "removed": 0, "changed": 0}
    assert by_source["totalseg-ct"]["changed"] == len(changed) == by_source["totalseg-ct"]["old"]
    for key in ("task", "lang", "split"):  # each dimension recounted by hand
        got = {r[key]: r for r in d["by"][key]}
        want_added = Counter(meta_b[i][key] for i in added)
        want_removed = Counter(meta_a[i][key] for i in removed)
        assert {k: r["added"] for k, r in got.items() if r["added"]} == dict(want_added)
        assert {k: r["removed"] for k, r in got.items() if r["removed"]} == dict(want_removed)
        assert {k: r["new"] for k, r in got.items() if r["new"]} == dict(Counter(m[key] for m in meta_b.values()))
    # images: the two copies are new, the removed case's slice is gone
    imgs = lambda rows: {r["image"] for r in rows}  # noqa: E731
    ia, ib = imgs(_rows(versions.v1)), imgs(_rows(versions.v2))
    assert (d["images"]["added"], d["images"]["removed"]) == (len(ib - ia), len(ia - ib)) == (2, 1)
    # regions per term, before and after, as counted in the rows
    terms = lambda ms: Counter(g["term"] for m in ms for g in m["regions"])  # noqa: E731
    ta, tb = terms(meta_a.values()), terms(meta_b.values())
    assert {e["key"]: (e["old"], e["new"]) for e in d["regions_by_term"]} == {k: (ta[k], tb[k]) for k in ta | tb}
    # sources, config, patients
    assert d["sources"]["added"] == ["repack-2d"] and d["sources"]["removed"] == []
    assert d["sources"]["changed"] == [{"name": "totalseg-ct", "changed": ["licence", "card"],
                                        "licence": ["Apache-2.0", "CC-BY-4.0"]}]
    assert d["sources"]["excluded_by_licence"] == ["kvasir-seg"]
    cfg_keys = {e["key"]: e for e in d["config"]}
    assert cfg_keys["version"] == {"key": "version", "old": "1", "new": "2"}
    assert cfg_keys["previous"] == {"key": "previous", "old": None, "new": "t-1"}
    assert cfg_keys["sources[sam-med2d].max_cases"] == {"key": "sources[sam-med2d].max_cases", "new": 3}
    assert cfg_keys["licences.allow"]["new"] == ALLOW
    assert d["patients"]["moved"] == 0 and d["patients"]["added"] == 2 and d["patients"]["removed"] == 1
    assert d["validation"]["transitions"] == []


def test_diff_cli_json_and_tables(versions):
    runner = CliRunner()
    res = runner.invoke(app, ["diff", str(versions.v1), str(versions.v2), "--json"])
    assert res.exit_code == 0, res.output
    assert orjson.loads(res.stdout) == orjson.loads(orjson.dumps(diff_releases(versions.v1, versions.v2)))
    res = runner.invoke(app, ["diff", str(versions.v1), str(versions.v2)])
    assert res.exit_code == 0, res.output
    assert "rows by source" in res.stdout and "repack-2d" in res.stdout and "meta.licence" in res.stdout
    assert "left out by the licence filter: kvasir-seg" in res.stdout
    res = runner.invoke(app, ["diff", str(versions.v1), str(versions.out / "nope")])
    assert res.exit_code == 2 and "manifest.json" in res.output


def test_card_changes_section_and_manifest(versions):
    m1, m2 = _manifest(versions.v1), _manifest(versions.v2)
    assert m1["previous"] is None
    prev = m2["previous"]
    assert (prev["name"], prev["version"]) == ("t", "1")
    assert prev["manifest_sha256"] == hashlib.sha256((versions.v1 / "manifest.json").read_bytes()).hexdigest()
    d = diff_releases(versions.v1, versions.v2)
    r = d["rows"]
    card = (versions.v2 / "README.md").read_text()
    assert "## Changes since t 1" in card
    assert f"| rows | {r['old']} | {r['new']} | {r['added']} | {r['removed']} | {r['changed']} |" in card
    assert f"| images | {d['images']['old']} | {d['images']['new']} | 2 | 1 | |" in card
    assert "- sources added: repack-2d" in card
    assert "- source totalseg-ct changed: licence, card (licence Apache-2.0 -> CC-BY-4.0)" in card
    assert "- left out by the licence filter: kvasir-seg" in card
    assert f"meta.licence {r['changed']}" in card and "`sources[sam-med2d].max_cases`: (absent) -> `3`" in card
    assert prev["changes"]["rows"] == r
    full = orjson.loads((versions.v2 / "changes.json").read_bytes())
    assert full["rows"] == r and full["new"]["folder"] == "t-2" and full["old"]["folder"] == "t-1"
    assert "Changes since" not in (versions.v1 / "README.md").read_text()
    assert verify_release(versions.v2) == []  # changes.json and duplicates.jsonl are listed in the manifest


def test_licence_filter_shown(versions):
    m2 = _manifest(versions.v2)
    lic = m2["licences"]
    assert [s["name"] for s in m2["sources"]] == ["repack-2d", "sam-med2d", "totalseg-ct"]
    assert lic["excluded"] == [{"name": "kvasir-seg", "licence": "research-and-education-only",
                                "reason": "licence research-and-education-only is not in licences.allow "
                                          "(Apache-2.0, CC-BY-4.0, CC0-1.0)"}]
    # Apache-2.0 (permissive) and CC-BY-4.0 (attribution): the attribution licence decides
    assert (lic["overall"], lic["category"]) == ("CC-BY-4.0", "attribution")
    assert lic["decided_by"] == ["repack-2d", "totalseg-ct"]
    card = (versions.v2 / "README.md").read_text()
    assert "- licence: **attribution** (LICENSE.md)" in card
    assert "The most restrictive source licence decides: repack-2d (CC-BY-4.0), totalseg-ct (CC-BY-4.0)." in card
    assert "| kvasir-seg | research-and-education-only | licence research-and-education-only is not in" in card
    assert {r["meta"]["source"] for r in _rows(versions.v2)} == {"repack-2d", "sam-med2d", "totalseg-ct"}
    assert _manifest(versions.v1)["licences"]["category"] == "permissive"


def _split_by_case(rows: list[dict]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in rows:
        out[(r["meta"]["source"], r["meta"]["case_id"])].add(r["meta"]["split"])
    return out


def test_copies_found_and_never_in_different_splits(versions):
    m2 = _manifest(versions.v2)
    dup = m2["duplicates"]
    assert (dup["policy"], dup["near_threshold"], dup["groups"], dup["near_groups"]) == ("same_split", 4, 2, 2)
    groups = [ln for ln in (versions.v2 / "duplicates.jsonl").read_bytes().splitlines() if ln]
    assert len(groups) == 2
    pairs = {}
    for g in map(orjson.loads, groups):
        assert g["kind"] == "near" and g["distance"] <= 4
        members = {m["source"]: m for m in g["members"]}
        assert set(members) == {"repack-2d", "sam-med2d"} or set(members) == {"repack-2d", "totalseg-ct"}
        old = members.get("sam-med2d") or members["totalseg-ct"]
        pairs[old["case_id"]] = (old, members["repack-2d"])
    names = versions.names
    assert set(pairs) == {"amos_0004_75", names["ts_case"]}
    assert pairs["amos_0004_75"][1]["case_id"] == names["amos"]
    assert pairs[names["ts_case"]][1]["case_id"] == names["totalseg"]
    split_of = _split_by_case(_rows(versions.v2))
    split_v1 = _split_by_case(_rows(versions.v1))
    for old, copy in pairs.values():
        # the copy joins the existing copy's split (it had another split of its own), the old one stays put
        assert copy["moved_from"] and copy["moved_from"] != copy["split"] == old["split"]
        assert old["moved_from"] == ""
        assert split_of[("repack-2d", copy["case_id"])] == split_of[(old["source"], old["case_id"])]
        assert split_of[(old["source"], old["case_id"])] == split_v1[(old["source"], old["case_id"])]
    assert dup["patients_moved"] == 2 and dup["conflicts"] == []
    report = (versions.v2 / "report.html").read_text()
    assert "Duplicate images across patients (2)" in report


def test_split_stability_without_previous(versions, samples):
    """Adding a source (at the end) and cases never moves a patient: patient-hash splits, and the anchor of
    a duplicate group is the earlier-listed source."""
    cfg = _cfg("3", [{"card": "sam-med2d"}, {"card": "totalseg-ct"}, {"card": str(versions.repack)},
                     {"card": "biomedparse-2d"}])
    v3 = _build(cfg, versions.out, samples)
    s1, s3 = _split_by_case(_rows(versions.v1)), _split_by_case(_rows(v3))
    assert all(s3[k] == v for k, v in s1.items())
    assert all(len(v) == 1 for v in s3.values())
    assert s3[("repack-2d", versions.names["amos"])] == s1[("sam-med2d", "amos_0004_75")]
    assert s3[("repack-2d", versions.names["totalseg"])] == s1[("totalseg-ct", versions.names["ts_case"])]
    d = diff_releases(versions.v1, v3)
    assert d["patients"]["moved"] == 0 and d["rows"]["changed"] == 0 and d["rows"]["removed"] == 0


def test_previous_must_exist_and_differ(versions, samples):
    from pipeline.release.publish import BuildRefused

    with pytest.raises(BuildRefused, match="previous: t-9"):
        _build(_cfg("4", [{"card": "totalseg-ct"}], previous="t-9"), versions.out, samples)
    with pytest.raises(BuildRefused, match="is the release being built"):
        _build(_cfg("1", [{"card": "totalseg-ct"}], previous="t-1"), versions.out, samples)
    assert verify_release(versions.v1) == []  # the refused builds left v1 as it was
