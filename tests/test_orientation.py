"""Orientation guard (issue 12 A3): anterior/posterior and superior/inferior order of known structures.

Built releases on the real samples: the TotalSegmentator CT example and a copy of it whose voxels are
flipped front-to-back and head-to-foot (same affine: every display image is upside down), and the SA-Med2D
demo with the shipped card (AMOS CT slices flipped back by ``display: flip_ud``) and with that card rule
removed (the raw posterior-up exports).
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import orjson
import pytest
import yaml

from pipeline.language.anatomy import ORIENTATION_FILE, load_orientation_facts
from flows.run import build
from schemas.config import ReleaseConfig

CARDS = Path(__file__).resolve().parents[1] / "sources" / "cards"
ORDER_CODES = {"anterior_posterior", "superior_inferior"}


def _cfg(sources: list[dict], *, keep_fails: bool, axes: tuple[str, ...] = ("axial",)) -> ReleaseConfig:
    policy = {"per_validator": {"rules": {"fail": "flag"}}} if keep_fails else {}
    return ReleaseConfig.model_validate(
        {
            "name": "orient",
            "version": "1",
            "seed": 3,
            "sources": sources,
            "slicing": {"axes": list(axes), "min_spacing_mm": 6, "max_slices_per_case": 6, "min_image_px": 16},
            "validation": {"validators": ["rules"], "policy": policy},
        }
    )


def _rows(release: Path) -> list[dict]:
    rows: list[dict] = []
    for p in sorted((release / "data").rglob("*.jsonl")):
        rows += [orjson.loads(line) for line in p.read_bytes().splitlines()]
    return rows


def _rules(row: dict) -> dict:
    (res,) = [v for v in row["meta"]["validation"] if v["validator"] == "rules"]
    return res


def _order_codes(row: dict) -> set[str]:
    return set(_rules(row)["codes"].split(",")) & ORDER_CODES


# ------------------------------------------------------------------------------------------ the facts


def test_facts_cover_glossary_descendants_and_name_unknown_terms(tmp_path):
    facts = {r.name: r for r in load_orientation_facts()}
    ap = facts["anterior_posterior"]
    # `vertebrae` in the file covers every vertebra term below it in the glossary; the liver is in front
    assert ap.tier("vertebrae_L1") == ap.tier("vertebrae_T9") == ap.tier("spinal_cord") == 1
    assert ap.tier("liver") == ap.tier("heart_ventricle_left") == 0
    assert ap.tier("kidney_left") is None  # kidneys lie beside the spine: not an order fact
    assert facts["anterior_posterior_aorta"].code == "anterior_posterior"
    si = facts["superior_inferior"]
    assert si.tier("brain") < si.tier("lung_lower_lobe_right") < si.tier("liver") < si.tier("femur_left")
    levels = facts["vertebral_levels"]
    assert levels.tier("vertebrae_T12") + 1 == levels.tier("vertebrae_L1")
    bad = tmp_path / "orientation.yaml"
    data = yaml.safe_load(ORIENTATION_FILE.read_text(encoding="utf-8"))
    data["anterior_posterior"]["tiers"][0].append("sternum_bone")
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    msg = r"orientation.yaml: anterior_posterior: terms not in the glossary: \['sternum_bone'\]"
    with pytest.raises(ValueError, match=msg):
        load_orientation_facts(bad)


# ------------------------------------------------------------------------------------------ TotalSegmentator


def _flipped_totalseg_copy(samples: Path, dest: Path) -> Path:
    """The CT example with its voxels flipped along A/P and S/I (RAS file: array axes 1 and 2), affine kept."""
    src = samples / "totalseg-nifti" / "ct"
    (dest / "ct").mkdir(parents=True)
    for name in ("example_ct_sm.nii.gz", "example_seg.nii.gz"):
        img = nib.load(src / name)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        data = np.asarray(img.dataobj)[:, ::-1, ::-1]
        out = nib.Nifti1Image(np.ascontiguousarray(data), img.affine, img.header)
        nib.save(out, dest / "ct" / name)
    return dest


@pytest.fixture(scope="module")
def totalseg_builds(tmp_path_factory, samples):
    tmp = tmp_path_factory.mktemp("orient-ts")
    flipped = _flipped_totalseg_copy(samples, tmp / "flipped-data")
    axes = ("axial", "coronal")
    good = build(_cfg([{"card": "totalseg-ct"}], keep_fails=False, axes=axes), tmp / "good", samples_root=samples)
    bad_cfg = _cfg([{"card": "totalseg-ct", "root": str(flipped)}], keep_fails=True, axes=axes)
    bad = build(bad_cfg, tmp / "bad", samples_root=samples)
    return good, bad


def test_real_totalseg_slices_pass_the_order_rule(totalseg_builds):
    good, _ = totalseg_builds
    rows = _rows(good)
    assert {r["meta"]["axis"] for r in rows} == {"axial", "coronal"}
    m = orjson.loads((good / "manifest.json").read_bytes())
    assert not [k for k in m["dropped"] if k.split(":")[-1] in ORDER_CODES], m["dropped"]
    assert not [r for r in rows if _order_codes(r)]
    # the rule did compare structures on most rows: the pass notes say what it compared
    checked = [r for r in rows if "order_checked" in _rules(r)["codes"].split(",")]
    assert len(checked) > len(rows) // 2
    axial = [_rules(r)["reason"] for r in checked if r["meta"]["axis"] == "axial"]
    pattern = r"anterior_posterior on axial CT: \d+ pairs in order \(.*liver.*\|.*vertebrae_"
    assert any(re.search(pattern, t) for t in axial)


def test_flipped_totalseg_copy_fails_on_every_view_with_the_structures_named(totalseg_builds):
    _, bad = totalseg_builds
    rows = _rows(bad)
    ap = {r.name: r for r in load_orientation_facts()}["anterior_posterior"]
    slices: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        slices.setdefault((r["meta"]["axis"], r["meta"]["slice_index"]), []).append(r)
    assert {axis for axis, _ in slices} == {"axial", "coronal"}
    # nothing the rule compared on the upside-down copy is in order
    assert not [r for r in rows if "order_checked" in _rules(r)["codes"].split(",")]
    failed_axial = 0
    for (axis, _idx), group in sorted(slices.items()):
        tiers = {ap.tier(reg["term"]) for r in group for reg in r["meta"]["regions"]}
        if axis != "axial" or not {0, 1} <= tiers:
            continue
        failed_axial += 1  # an axial slice with a front and a back structure: every row of it fails
        for r in group:
            res = _rules(r)
            assert res["verdict"] == "fail" and "anterior_posterior" in res["codes"].split(","), res
            assert re.search(r"of \d+ pairs? inverted on axial CT, anterior must lie image-above", res["reason"])
    assert failed_axial >= 4
    reasons = " ".join(_rules(r)["reason"] for r in rows if r["meta"]["axis"] == "axial")
    # (the guard sees every region of the slice; the first inverted pairs it spells out name a front organ)
    front = r"(colon|liver|stomach|small_bowel|gallbladder|costal_cartilages)"
    assert re.search(r"(vertebrae_\w+|spinal_cord|autochthon_\w+) \(y=\d+\) lies above " + front + r" \(y=\d+\)", reasons)
    assert re.search(r"compared [a-z_, ]*liver[a-z_, ]* \| [a-zA-Z0-9_, ]*vertebrae_", reasons)
    # a coronal slice that shows a lung and the spleen or liver fails superior/inferior (lung below them), one
    # that shows several vertebrae fails on their levels (L1 above T12)
    coronal_si = [r for r in rows if "superior_inferior" in _rules(r)["codes"].split(",")]
    assert coronal_si and {r["meta"]["axis"] for r in coronal_si} == {"coronal"}
    organs = r"(liver|spleen) \(y=\d+\) lies above lung_\w+ \(y=\d+\)"
    levels = r"vertebrae_\w+ \(y=\d+\) lies above vertebrae_\w+ \(y=\d+\)"
    assert all(re.search(organs, _rules(r)["reason"]) or re.search(levels, _rules(r)["reason"]) for r in coronal_si)
    assert any(re.search(organs, _rules(r)["reason"]) for r in coronal_si)
    # with rules fails kept as flags, review.jsonl lists every one of them with its code
    review = [orjson.loads(line) for line in (bad / "review.jsonl").read_bytes().splitlines()]
    n_order = sum(bool(_order_codes(r)) for r in rows)
    assert n_order >= 4 * 6  # 4+ axial slices x 6 rows (3 tasks x 2 languages)
    codes = ("rules:anterior_posterior", "rules:superior_inferior")
    assert sum(any(c in x["codes"] for c in codes) for x in review) == n_order


# ------------------------------------------------------------------------------------------ SA-Med2D


def _card_without_amos_fix(tmp: Path) -> Path:
    data = yaml.safe_load((CARDS / "sam-med2d.yaml").read_text(encoding="utf-8"))
    rules = data["layout"]["case_rules"]
    data["layout"]["case_rules"] = [r for r in rules if r.get("display") != "flip_ud"]
    assert len(data["layout"]["case_rules"]) == len(rules) - 1
    path = tmp / "sam-med2d-raw.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_sam_med2d_rule_finds_the_upside_down_amos_slices_and_the_card_fix_passes(tmp_path, samples):
    raw = build(
        _cfg([{"card": str(_card_without_amos_fix(tmp_path))}], keep_fails=True), tmp_path / "raw", samples_root=samples
    )
    rows = _rows(raw)
    flagged = {r["meta"]["case_id"] for r in rows if _order_codes(r)}
    # every slice the rule flags: exactly the two AMOS CT exports (spine and aorta at the top)
    assert flagged == {"amos_0004_75", "amos_0006_90"}
    for r in rows:
        if r["meta"]["case_id"] in flagged:
            res = _rules(r)
            assert res["verdict"] == "fail", res
            assert re.search(r"aorta \(y=21\d\) lies above liver \(y=2[67]\d\); compared liver \| aorta", res["reason"])

    fixed = build(_cfg([{"card": "sam-med2d"}], keep_fails=False), tmp_path / "fixed", samples_root=samples)
    rows = _rows(fixed)
    m = orjson.loads((fixed / "manifest.json").read_bytes())
    assert not [k for k in m["dropped"] if k.split(":")[-1] in ORDER_CODES], m["dropped"]
    cases = {r["meta"]["case_id"] for r in rows}
    assert {"amos_0004_75", "amos_0006_90", "s0114_111", "s0619_32"} <= cases
    for r in rows:
        assert not _order_codes(r), _rules(r)
    amos = [r for r in rows if r["meta"]["case_id"] in flagged and r["meta"]["regions"]]
    # the built rows were compared and passed: the aorta now lies below the liver, posterior down
    note = "anterior_posterior_aorta on axial CT: 1 pair in order (liver | aorta)"
    assert any(note in _rules(r)["reason"] for r in amos)
    assert all('"display":"flip_ud"' in r["meta"]["transform"] for r in rows if r["meta"]["case_id"] in flagged)
