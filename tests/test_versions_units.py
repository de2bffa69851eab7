"""Parts of the versions layer on small inputs with known answers: the Row-derived polars schema and the
line layout, a diff of two hand-written releases, duplicate detection and split decisions, licence
classes and the plan-time filter, what changes a sample id, and the two PET cards as exact duplicates."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest
from PIL import Image

from flows.run import build
from pipeline.core.types import CaseRef, DisplaySlice, Region
from pipeline.release.case import rows_for_slice, task_mix
from pipeline.release.executors import SerialExecutor
from pipeline.release.writer import canonical_row
from pipeline.versions.diff import diff_releases
from pipeline.versions.duplicates import (
    Member,
    _max_distance,
    find_groups,
    image_fingerprint,
    iter_near_pairs,
    near_pairs,
)
from pipeline.versions.frame import KEYS, ROW_SCHEMA, read_keys
from pipeline.versions.licences import exclusion_reason, licence_id, licence_summary
from pipeline.versions.splits import SplitContext, decide
from schemas.config import DuplicateConfig, LicenceFilter, ReleaseConfig
from schemas.records import CaseSummary, ImageInfo
from sources.base import load_card
from sources.plan import make_plan

# ------------------------------------------------------------------------------------------ schema, layout


def test_row_schema_is_derived_from_the_row_model():
    assert list(ROW_SCHEMA) == ["id", "image", "width", "height", "conversations", "meta"]
    assert ROW_SCHEMA["conversations"] == pl.List(pl.Struct({"from": pl.String, "value": pl.String}))
    meta = dict(ROW_SCHEMA["meta"].to_schema())
    assert meta["slice_index"] == pl.Int64 and meta["task"] == pl.String
    assert meta["regions"] == pl.List(pl.Struct({"term": pl.String, "box": pl.List(pl.Int64),
                                                 "box_px": pl.List(pl.Int64), "area": pl.Int64,
                                                 "label_id": pl.Int64}))
    assert dict(meta["validation"].inner.to_schema())["score"] == pl.Float64


def _row(i: int, *, source="src-a", case="c1", split="train", task="region_to_text", lang="en", term="liver",
         box=(100, 100, 300, 300), verdicts=(("rules", "pass"),), licence="Apache-2.0", image=None) -> dict:
    return {
        "id": f"{i:020x}", "image": image or f"images/ab/{i:064x}.png", "width": 512, "height": 512,
        "conversations": [{"from": "human", "value": "<image>\nWhere is the \"liver\"?"},
                          {"from": "gpt", "value": f"<ref>{term}</ref><box>[[{', '.join(map(str, box))}]]</box> 中文"}],
        "meta": {"task": task, "subtask": "single", "lang": lang, "source": source, "licence": licence,
                 "case_id": case, "patient_id": "p" + case.rjust(16, "0"), "split": split, "modality": "CT",
                 "body_region": "abdomen", "axis": "2d", "slice_index": 0, "template_id": "r2t.en.q001",
                 "regions": [{"term": term, "box": list(box), "box_px": [51, 51, 153, 153], "area": 900,
                              "label_id": 1}],
                 "window": "none", "transform": orjson.dumps({"display": "none", "position_mm": None}).decode(),
                 "validation": [{"validator": v, "version": "1", "verdict": verdict, "score": 1.0, "reason": "",
                                 "codes": ""} for v, verdict in verdicts]},
    }


def _release(root: Path, version: str, rows: list[dict], config: dict | None = None) -> Path:
    rel = root / f"t-{version}"
    shards = []
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["meta"]["split"], r["meta"]["task"], r["meta"]["lang"]), []).append(r)
    for (split, task, lang), rs in sorted(groups.items()):
        path = f"data/{split}/{task}.{lang}.00000-of-00001.jsonl"
        (rel / path).parent.mkdir(parents=True, exist_ok=True)
        (rel / path).write_bytes(b"".join(canonical_row(r) for r in rs))
        shards.append({"path": path, "split": split, "task": task, "lang": lang, "lines": len(rs)})
    terms: dict[str, int] = {}
    for r in rows:
        for g in r["meta"]["regions"]:
            terms[g["term"]] = terms.get(g["term"], 0) + 1
    manifest = {"name": "t", "version": version, "config": config or {"name": "t", "version": version},
                "shards": shards, "images": [{"path": p} for p in sorted({r["image"] for r in rows})],
                "counts": {"rows": len(rows), "regions_by_term": terms}, "sources": [], "dropped": {}}
    (rel / "manifest.json").write_bytes(orjson.dumps(manifest))
    return rel


def test_diff_of_hand_written_releases(tmp_path):
    old = [_row(i) for i in range(10)]
    new = [dict(_row(i)) for i in range(2, 10)] + [_row(20, source="src-b", case="c9", lang="zh")]
    new[0] = _row(2, box=(110, 100, 300, 300))  # a region moved: conversation and regions differ
    new[1] = _row(3, verdicts=(("rules", "pass"), ("stats", "flag")))  # a validator added its verdict
    new[2] = _row(4, verdicts=(("rules", "fail"),))  # pass -> fail
    new[3] = _row(5, split="test")  # the patient moved split
    new[4] = _row(6, licence="CC-BY-4.0")
    a = _release(tmp_path, "1", old, {"name": "t", "seed": 1, "sources": [{"card": "src-a", "max_cases": None}]})
    b = _release(tmp_path, "2", new, {"name": "t", "seed": 2, "sources": [{"card": "src-a", "max_cases": None},
                                                                        {"card": "src-b", "max_cases": 5}]})
    d = diff_releases(a, b)
    assert d["rows"] == {"old": 10, "new": 9, "added": 1, "removed": 2, "changed": 5, "unchanged": 3}
    assert d["changed_fields"] == {"conversations": 1, "meta.licence": 1, "regions": 1, "split": 1, "validation": 2}
    assert d["validation"]["transitions"] == [
        {"validator": "rules", "old": "pass", "new": "fail", "rows": 1},
        {"validator": "stats", "old": "-", "new": "flag", "rows": 1},
    ]
    assert d["by"]["split"] == [
        {"split": "test", "old": 0, "new": 1, "added": 0, "removed": 0, "changed": 1},
        {"split": "train", "old": 10, "new": 8, "added": 1, "removed": 2, "changed": 4},
    ]
    assert d["by"]["lang"][1] == {"lang": "zh", "old": 0, "new": 1, "added": 1, "removed": 0, "changed": 0}
    assert d["examples"]["removed"] == [f"{0:020x}", f"{1:020x}"]
    assert d["images"]["added"] == 1 and d["images"]["removed"] == 2
    assert {e["key"]: (e.get("old"), e.get("new")) for e in d["config"]} == {
        "seed": (1, 2), "sources[src-b]": (None, "included"),
        "sources[src-b].max_cases": (None, 5)}
    # patients: c1 was in train only; in NEW it is in train and test (one row moved)
    assert d["patients"]["moved"] == 1 and d["patients"]["added"] == 1


def test_a_hand_edited_line_is_named(tmp_path):
    rel = _release(tmp_path, "1", [_row(i) for i in range(3)])
    shard = rel / "data/train/region_to_text.en.00000-of-00001.jsonl"
    lines = shard.read_bytes().splitlines()
    lines[1] = orjson.dumps(orjson.loads(lines[1]), option=orjson.OPT_SORT_KEYS)  # same row, other key order
    shard.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match=r"t-1/data/train/region_to_text.en.00000-of-00001.jsonl line 2: not a "):
        read_keys(rel, ["data/train/region_to_text.en.00000-of-00001.jsonl"])
    good = _release(tmp_path / "b", "1", [_row(i) for i in range(3)])
    keys = read_keys(good, ["data/train/region_to_text.en.00000-of-00001.jsonl"])
    assert keys.columns[: len(KEYS)] == list(KEYS) and keys["source"].to_list() == ["src-a"] * 3


# ------------------------------------------------------------------------------------------ duplicates


def test_fingerprint_normalises_display_pixels():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (64, 80), dtype=np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    assert image_fingerprint(grey) == image_fingerprint(rgb)
    other = grey.copy()
    other[0, 0] ^= 1
    assert image_fingerprint(other)[0] != image_fingerprint(grey)[0]
    # a resized JPEG copy is near (phash), never exact
    buf = io.BytesIO()
    Image.fromarray(grey).resize((120, 96)).save(buf, "JPEG", quality=80)
    copy = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    assert image_fingerprint(copy)[0] != image_fingerprint(grey)[0]


def test_near_pairs_equal_brute_force():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**63, 60, dtype=np.uint64)
    flips = [base[i % 60] ^ np.uint64(sum(1 << int(b) for b in rng.choice(64, k, replace=False)))
             for i, k in enumerate(rng.integers(0, 7, 140))]
    hashes = np.unique(np.concatenate([base, np.array(flips, dtype=np.uint64)]))
    for t in (0, 2, 4, 6):
        brute = {(i, j) for i, j in itertools.combinations(range(len(hashes)), 2)
                 if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= t}
        assert near_pairs(hashes, t) == brute
        # the streaming form with a tiny distance budget (one row at a time) finds the same pairs
        small = {(int(a), int(b)) for aa, bb in iter_near_pairs(hashes, t, budget=7) for a, b in zip(aa, bb)}
        assert small == brute
    assert near_pairs(hashes, -1) == set()
    # a group's reported distance: the largest bit distance of any two of its hashes
    some = [int(h) for h in hashes[:37]] + [int(hashes[0])]
    brute_max = max(bin(a ^ b).count("1") for a in some for b in some)
    assert _max_distance(some, budget=5) == _max_distance(some) == brute_max > 0


def _m(source, case, patient, image, pixel, phash, **kw):
    return Member(source, case, patient, image, "2d", 0, pixel, phash)


def test_groups_need_two_patients():
    ms = [_m("a", "c1", "p1", "i1", "x", 0b1111), _m("a", "c1", "p1", "i2", "y", 0b1110),  # one patient
          _m("a", "c2", "p2", "i3", "z", 1 << 40), _m("b", "d1", "q1", "i3", "z", 1 << 40),  # exact
          _m("b", "d2", "q2", "i4", "w", (1 << 40) | 0b11)]  # 2 bits from i3
    groups = find_groups(ms, near_threshold=2)
    assert len(groups) == 1 and groups[0].kind == "near" and groups[0].distance == 2
    assert [m.patient for m in groups[0].members] == ["p2", "q1", "q2"]
    exact = find_groups(ms, near_threshold=-1)
    assert len(exact) == 1 and exact[0].kind == "exact" and [m.patient for m in exact[0].members] == ["p2", "q1"]


def _summary(source, case, patient, split, images):
    return CaseSummary(source=source, case_id=case, key=f"{source}/{case}", patient=patient, split=split, rows=6,
                       images=[ImageInfo(rel=rel, width=8, height=8, axis="2d", slice_index=0, pixel_sha256=px,
                                         phash=f"{ph:016x}") for rel, px, ph in images])


def test_split_decisions():
    s = [_summary("old", "a", "pa", "train", [("i1", "x1", 0xFF00)]),
         _summary("old", "b", "pb", "test", [("i2", "x2", 0xF0F0F0F0)]),
         _summary("new", "c", "pc", "validation", [("i3", "x3", 0xFF01)]),  # near copy of i1
         _summary("new", "d", "pd", "train", [("i4", "x2", 0xF0F0F0F0)])]  # exact copy of i2
    order = {"old": 0, "new": 1}
    cfg = DuplicateConfig()
    d = decide(s, SplitContext(order, set()), cfg)
    assert d.split_overrides == {"pc": "train", "pd": "test"}  # copies join the earlier source
    assert d.drop_images == set() and d.summary.groups == 2 and d.summary.patients_moved == 2
    # the new source listed first: its patients would anchor ... unless the old ones were in the previous release
    first = {"new": 0, "old": 1}
    assert decide(s, SplitContext(first, set()), cfg).split_overrides == {"pa": "validation", "pb": "train"}
    prev = {"pa": "train", "pb": "test"}
    d = decide(s, SplitContext(first, set(), prev), cfg)
    assert d.split_overrides == {"pc": "train", "pd": "test"}
    # an official split anchors over source order
    assert decide(s, SplitContext(first, {("old", "a")}), cfg).split_overrides["pc"] == "train"
    # previous patients never move, even when their own split now differs (new seed): pinned
    d = decide(s, SplitContext(order, set(), {"pa": "test"}), cfg)
    assert d.split_overrides == {"pa": "test", "pc": "test", "pd": "test"} and d.pinned == 1
    # two previous patients linked by a new copy in different splits: both stay, reported as a conflict
    s2 = [*s, _summary("new", "e", "pe", "train", [("i5", "x5", 0xFF00), ("i6", "x2", 0xF0F0F0F0)])]
    d = decide(s2, SplitContext(order, set(), prev), cfg)
    assert "pa" not in d.split_overrides and "pb" not in d.split_overrides
    assert len(d.summary.conflicts) == 1 and "pa" in d.summary.conflicts[0] and "pb" in d.summary.conflicts[0]
    # keep_one drops the later copies' rows; report changes nothing
    d = decide(s, SplitContext(order, set()), DuplicateConfig(policy="keep_one"))
    assert d.drop_images == {("new", "c", "i3"), ("new", "d", "i4")}
    assert [m.kept for g in d.groups for m in g.members] == [False, True, False, True]
    d = decide(s, SplitContext(order, set()), DuplicateConfig(policy="report"))
    assert d.split_overrides == {} and d.drop_images == set() and d.summary.groups == 2


# ------------------------------------------------------------------------------------------ licences


def test_licence_ids_filters_and_summary():
    shipped = {c: load_card(c).licence for c in ("kvasir-seg", "nih-cxr14", "totalseg-ct", "rtstruct-visible-human")}
    assert licence_id(shipped["nih-cxr14"]) == "CC0-1.0" and licence_id(shipped["kvasir-seg"]) == shipped["kvasir-seg"]
    rules = LicenceFilter(allow=["Apache-2.0", "CC-BY-*", "cc0-1.0"], deny=["CC-BY-NC*"])
    assert exclusion_reason(shipped["nih-cxr14"], rules) is None and exclusion_reason("CC-BY-3.0", rules) is None
    assert "licences.deny 'CC-BY-NC*'" in exclusion_reason("CC-BY-NC-4.0", rules)
    assert "not in licences.allow" in exclusion_reason(shipped["kvasir-seg"], rules)
    assert exclusion_reason("anything", LicenceFilter()) is None
    # the manifest's summary follows the card's classes: the most restrictive source decides
    s = licence_summary([("a", "Apache-2.0"), ("b", "CC-BY-3.0"), ("c", "CC-BY-4.0")], LicenceFilter(), [])
    assert (s.overall, s.category, s.decided_by) == ("CC-BY-3.0 + CC-BY-4.0", "attribution", ["b", "c"])
    s = licence_summary([("k", shipped["kvasir-seg"]), ("t", shipped["totalseg-ct"])], rules, [])
    assert (s.category, s.decided_by, s.allow) == ("non-commercial", ["k"], rules.allow)
    assert licence_summary([("v", shipped["rtstruct-visible-human"])], rules, []).category == "custom"


def test_licence_filter_at_plan_time(samples):
    cfg = ReleaseConfig.model_validate({
        "name": "t", "version": "1", "sources": [{"card": "kvasir-seg"}, {"card": "sam-med2d"}],
        "licences": {"allow": ["Apache-2.0", "CC-BY-4.0", "CC0-1.0"]}})
    plan = make_plan(cfg, samples)
    assert [sp.name for sp in plan.sources] == ["sam-med2d"]
    assert [(e.name, e.licence) for e in plan.excluded] == [("kvasir-seg", "research-and-education-only")]
    assert {j.ref.source for j in plan.jobs} == {"sam-med2d"}  # the excluded source was never discovered
    deny = cfg.model_copy(update={"licences": LicenceFilter(deny=["research-*"])})
    assert [e.reason for e in make_plan(deny, samples).excluded] == [
        "licence research-and-education-only matches licences.deny 'research-*'"]


def test_all_sources_excluded_refuses_the_build(tmp_path, samples):
    from pipeline.release.publish import BuildRefused

    cfg = ReleaseConfig.model_validate({"name": "t", "version": "1", "sources": [{"card": "kvasir-seg"}],
                                        "licences": {"deny": ["research-*"]}})
    with pytest.raises(BuildRefused, match=r"every source was excluded .*kvasir-seg \(research-and-education-only\)"):
        build(cfg, tmp_path, samples_root=samples, executor=SerialExecutor())
    assert not (tmp_path / "t-1").exists()


# ------------------------------------------------------------------------------------------ sample ids


def _slice(regions: list[Region], index: int = 4) -> DisplaySlice:
    return DisplaySlice(case_id="c", axis="axial", index=index, position_mm=12.0,
                        image=np.zeros((200, 200), np.uint8), regions=regions, window="w")


def _ids(sl: DisplaySlice, cfg: ReleaseConfig, *, source="src", case="c", split="train", patient="p1",
         image="images/aa/x.png", licence="Apache-2.0") -> list[str]:
    card = load_card("totalseg-ct").model_copy(update={"name": source, "licence": licence})
    ref = CaseRef(source=source, case_id=case, patient_id="raw", paths={})
    rows = rows_for_slice(sl, ref=ref, card=card, cfg=cfg, mix=task_mix(cfg, None), modality="CT",
                          body_region="abdomen", image_rel=image, split=split, patient=patient,
                          vocabulary=["liver", "spleen", "kidney_left"], transform={})
    return [r["id"] for r in rows]


def test_what_changes_a_sample_id():
    cfg = ReleaseConfig.model_validate({"name": "a", "version": "1", "seed": 5, "sources": [{"card": "sam-med2d"}]})
    regs = [Region("liver", (20, 30, 90, 120), (100, 150, 452, 603), 3000),
            Region("spleen", (120, 40, 160, 90), (603, 200, 804, 452), 900)]
    ids = _ids(_slice(regs), cfg)
    assert len(ids) == len(set(ids)) == 6
    # not in the id: split, patient, image (pixels), licence, release name/version, other cases
    other_release = cfg.model_copy(update={"name": "b", "version": "9"})
    assert _ids(_slice(regs), other_release, split="test", patient="p2", image="images/bb/y.png",
                licence="CC-BY-4.0") == ids
    # in the id: source, case, slice index (each gives other ids)
    for kw in ({"source": "src2"}, {"case": "c2"}):
        assert not set(_ids(_slice(regs), cfg, **kw)) & set(ids)
    assert not set(_ids(_slice(regs, index=5), cfg)) & set(ids)
    # through the template draws: the seed and the regions on the slice (some ids change, never all need to)
    assert _ids(_slice(regs), cfg.model_copy(update={"seed": 6})) != ids
    assert _ids(_slice(regs[:1]), cfg) != ids


# ------------------------------------------------------------------------------------------ real-data duplicates


def test_the_two_pet_cards_are_exact_duplicates(tmp_path, samples):
    base = {"name": "pet", "seed": 3, "sources": [{"card": "ibsi-sts-pet-dicom"}, {"card": "ibsi-sts-pet-nifti"}],
            "slicing": {"axes": ["axial", "coronal"], "min_spacing_mm": 15, "max_slices_per_case": 3},
            "validation": {"validators": ["rules"]}}
    both = build(ReleaseConfig.model_validate({**base, "version": "1"}), tmp_path, samples_root=samples,
                 executor=SerialExecutor())
    m = orjson.loads((both / "manifest.json").read_bytes())
    groups = [orjson.loads(ln) for ln in (both / "duplicates.jsonl").read_bytes().splitlines()]
    per_source = {s["name"]: s for s in m["sources"]}
    assert per_source["ibsi-sts-pet-dicom"]["cases"] == per_source["ibsi-sts-pet-nifti"]["cases"] == 1
    n_images = m["counts"]["images"]
    assert n_images >= 4 and m["duplicates"]["exact_groups"] == m["duplicates"]["groups"] == n_images
    for g in groups:  # every written PET slice: the DICOM and the NIfTI form, same pixels, same split
        assert g["kind"] == "exact" and g["distance"] == 0
        assert sorted(x["source"] for x in g["members"]) == ["ibsi-sts-pet-dicom", "ibsi-sts-pet-nifti"]
        assert {x["split"] for x in g["members"]} == {"validation"} and len({x["image"] for x in g["members"]}) == 1
    keep_one = build(ReleaseConfig.model_validate({**base, "version": "2", "duplicates": {"policy": "keep_one"}}),
                     tmp_path, samples_root=samples, executor=SerialExecutor())
    m2 = orjson.loads((keep_one / "manifest.json").read_bytes())
    nifti_rows = m["counts"]["by_source"]["ibsi-sts-pet-nifti"]
    assert m2["dropped"]["row:duplicate_image"] == m2["duplicates"]["rows_dropped"] == nifti_rows
    assert m2["counts"]["by_source"] == {"ibsi-sts-pet-dicom": m["counts"]["by_source"]["ibsi-sts-pet-dicom"]}
    assert m2["counts"]["images"] == n_images


def _brute_groups(ms, t):
    """Reference: link every pair of members of different patients with equal pixels or phashes at most
    ``t`` bits apart (none when t < 0 except equal pixels), transitively; components of >= 2 patients."""
    parent = list(range(len(ms)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in itertools.combinations(range(len(ms)), 2):
        a, b = ms[i], ms[j]
        near = t >= 0 and bin(a.phash ^ b.phash).count("1") <= t
        if a.patient != b.patient and (a.pixel == b.pixel or near):
            parent[find(j)] = find(i)
    comps = {}
    for i, m in enumerate(ms):
        comps.setdefault(find(i), []).append(m.case_id)
    return sorted(sorted(c) for c in comps.values() if len({ms[int(x[1:])].patient for x in c}) >= 2)


@pytest.mark.parametrize("seed", range(12))
def test_find_groups_equal_linking_every_cross_patient_pair(seed):
    """The component shortcut (whole buckets, one edge per qualifying bucket pair) gives the groups of linking
    every cross-patient pair: repeated patients, shared phashes within one patient, exact pixel copies."""
    rng = np.random.default_rng(seed)
    centres = [int(c) for c in rng.integers(0, 2**63, 4, dtype=np.uint64)]
    ms = []
    for i in range(int(rng.integers(2, 40))):
        h = centres[int(rng.integers(0, 4))]
        for b in rng.choice(64, int(rng.integers(0, 4)), replace=False):
            h ^= 1 << int(b)
        pixel = f"px{int(rng.integers(0, 6))}" if rng.random() < 0.3 else f"u{i}"
        ms.append(Member("s", f"c{i}", f"p{int(rng.integers(0, 5))}", f"im{i}", "axial", i, pixel, h))
    for t in (-1, 0, 2, 4):
        got = sorted(sorted(m.case_id for m in g.members) for g in find_groups(ms, t))
        assert got == _brute_groups(ms, t), (seed, t)
