"""Stats and laterality validators on REAL data: the TotalSegmentator example CT and its label map.

Display orientation, worked out from the file (README facts: orientation RAS; liver — patient right —
at high i 41..105, spleen at low i 10..43):

* RAS+: index i grows toward the patient's Right, j toward Anterior, k toward Superior.
* Radiological axial display: column 0 = patient right, row 0 = anterior.  So column = (Ni-1) - i and
  row = (Nj-1) - j, i.e. ``display = flip(vol[:, :, k], axes (0, 1)).T`` -> shape (Nj, Ni) = (101, 122).
* Check: the liver (high i) lands on image LEFT (small columns), the spleen on image right.

Rows: one grounded-report row per axial slice (EN and a ZH copy: the fit must count a region once),
a clean case (all 30 slices) and two corrupted cases a release could really contain:
``mirror`` (2 slices whose label map was flipped left/right: a writer that forgot the display flip for
the labels) and ``swap`` (2 slices with liver and spleen label ids exchanged: a wrong label map).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.regions.coords import format_boxes, normalise_box
from pipeline.validate import RulesValidator, StatsValidator, ValidationItem, run_validators
from schemas.records import Row
from schemas.validation import StatsConfig

import nibabel as nib  # noqa: E402

# Same sample root as tests/conftest.py: MEDREG_SAMPLES, else the shared data folder beside the checkout.
DATA = Path(os.environ.get("MEDREG_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "data")) / "totalseg-nifti" / "ct"

LABELS = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 6: "stomach", 52: "aorta",
    63: "inferior_vena_cava", 79: "spinal_cord", 86: "autochthon_left", 87: "autochthon_right",
    88: "iliopsoas_left", 89: "iliopsoas_right", 110: "rib_right_7", 98: "rib_left_7",
}
MIRROR_SLICES = (8, 14)
SWAP_SLICES = (10, 20)


def display(vol: np.ndarray, k: int) -> np.ndarray:
    """RAS volume -> radiological axial display of slice k (row 0 anterior, column 0 patient right)."""
    return np.ascontiguousarray(np.flip(vol[:, :, k], axis=(0, 1)).T)


def window(hu: np.ndarray, level: float = 40, width: float = 400) -> np.ndarray:
    return (np.clip((hu - (level - width / 2)) / width, 0, 1) * 255).round().astype(np.uint8)


def make_rows(case: str, k: int, labels: np.ndarray, w: int, h: int) -> list[dict[str, Any]]:
    regions = []
    for lid, term in LABELS.items():
        mask = labels == lid
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        bp = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
        regions.append({"term": term, "box": list(normalise_box(bp, w, h)), "box_px": bp,
                        "area": int(mask.sum()), "label_id": lid})
    rows = []
    for lang in ("en", "zh"):
        text = " ".join(f"<ref>{r['term']}</ref><box>{format_boxes([r['box']])}</box>" for r in regions)
        rows.append({
            "id": f"{case}-{k}-{lang}", "image": f"images/{case}-{k}.png", "width": w, "height": h,
            "conversations": [{"from": "human", "value": "<image>\nDescribe the organs."}, {"from": "gpt", "value": text}],
            "meta": {"task": "grounded_report", "lang": lang, "source": "totalseg-example", "licence": "Apache-2.0",
                     "case_id": case, "patient_id": "h" + case, "split": "train", "modality": "CT",
                     "body_region": "abdomen", "axis": "axial", "slice_index": k, "template_id": "t0",
                     "regions": regions, "subtask": "open", "window": "CT abdomen", "transform": "{}",
                     "validation": []},
        })
    return rows


@pytest.fixture(scope="module")
def items(samples) -> list[ValidationItem]:  # the conftest fixture fails loudly when the data is missing
    img = nib.load(DATA / "example_ct_sm.nii.gz")
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    vol = np.asarray(img.dataobj).astype(np.float32)
    lab = np.asarray(nib.load(DATA / "example_seg.nii.gz").dataobj)
    out = []
    for k in range(vol.shape[2]):
        image, labels = window(display(vol, k)), display(lab, k)
        h, w = image.shape
        out += [ValidationItem(r, image) for r in make_rows("clean", k, labels, w, h)]
        if k in MIRROR_SLICES:
            out += [ValidationItem(r, image) for r in make_rows("mirror", k, labels[:, ::-1], w, h)]
        if k in SWAP_SLICES:
            swapped = labels.copy()
            swapped[labels == 5], swapped[labels == 1] = 1, 5
            out += [ValidationItem(r, image) for r in make_rows("swap", k, swapped, w, h)]
    for it in out[:2]:
        Row.model_validate(it.row)
    return out


def test_display_orientation_puts_patient_right_on_image_left(items: list[ValidationItem]) -> None:
    it = next(i for i in items if i.row["id"] == "clean-15-en")
    assert it.image.shape == (101, 122)
    boxes = {r["term"]: r["box_px"] for r in it.regions}
    liver_cx = (boxes["liver"][0] + boxes["liver"][2]) / 2
    spleen_cx = (boxes["spleen"][0] + boxes["spleen"][2]) / 2
    assert liver_cx < 61 < spleen_cx
    # kidneys posterior: lower half of the image (row 0 = anterior)
    assert boxes["kidney_right"][1] > 50 and boxes["kidney_right"][2] < boxes["kidney_left"][0]


def flagged(res, term: str, feature: str | None = None) -> bool:
    return any(
        c.startswith("outlier_") and (feature is None or c == f"outlier_{feature}") for c in res.codes
    ) and any(f"{term} " in part for part in res.reason.split("; ") if part.startswith("outlier_") and
              (feature is None or part.startswith(f"outlier_{feature}:")))


def test_stats_flags_mirrored_and_swapped_regions(items: list[ValidationItem]) -> None:
    stats = StatsValidator(StatsConfig())
    res = stats.validate(items)
    by_id = dict(zip((i.row["id"] for i in items), res, strict=True))
    # the ZH copies did not count twice
    assert stats.groups["CT|axial|abdomen|liver"]["n"] == 30 + len(MIRROR_SLICES) + len(SWAP_SLICES)

    for k in MIRROR_SLICES:
        r = by_id[f"mirror-{k}-en"]
        assert r.verdict == "flag"
        for term in ("liver", "spleen", "kidney_right", "kidney_left"):
            assert flagged(r, term, "cx"), (term, r.reason)
    for k in SWAP_SLICES:
        r = by_id[f"swap-{k}-en"]
        assert r.verdict == "flag"
        for term in ("liver", "spleen"):
            assert flagged(r, term, "cx"), (term, r.reason)
        assert r.score > 10

    # The same terms on the clean case are never off in position (its other flags are real
    # anatomy at the edge of the field of view: tapering kidney poles, the liver dome).
    for k in range(30):
        r = by_id[f"clean-{k}-en"]
        for term in ("liver", "spleen", "kidney_right", "kidney_left"):
            assert not flagged(r, term, "cx") and not flagged(r, term, "cy"), (k, r.reason)
    clean = [by_id[f"clean-{k}-en"] for k in range(30)]
    assert sum(r.verdict == "flag" for r in clean) <= 10


def test_stats_too_few_and_fit_roundtrip(items: list[ValidationItem]) -> None:
    few = [i for i in items if i.row["meta"]["slice_index"] in (3, 4, 5) and i.row["meta"]["case_id"] == "clean"]
    r = StatsValidator(StatsConfig(min_samples=5)).validate(few)[0]
    assert r.verdict == "pass" and r.codes == ["too_few"] and "liver n=3 < 5" in r.reason

    s = StatsValidator().fit(items)
    s2 = StatsValidator.from_dict(s.to_dict())
    assert s2.config_hash == s.config_hash
    assert [x.model_dump() for x in s2.validate(items[:10])] == [x.model_dump() for x in s.validate(items[:10])]


def test_stats_config_hash_follows_the_fit(items: list[ValidationItem]) -> None:
    """The hash is kept between calls (the verdict cache asks once per row) but never outlives the fit or
    the config it was computed from."""
    s = StatsValidator()
    unfitted = s.config_hash
    s.fit(items)
    fitted = s.config_hash
    assert fitted != unfitted and s.config_hash == fitted
    s.fit(items[: len(items) // 2])
    assert s.config_hash not in (fitted, unfitted)
    assert s.config_hash == StatsValidator().fit(items[: len(items) // 2]).config_hash
    s.config = StatsConfig(min_samples=5)
    assert s.config_hash == StatsValidator(StatsConfig(min_samples=5)).fit(items[: len(items) // 2]).config_hash


def test_mirrored_case_fails_laterality_rule(items: list[ValidationItem]) -> None:
    rules = RulesValidator(glossary=None)
    res = run_validators(items, [rules])
    by_id = {i.row["id"]: r[0] for i, r in zip(items, res, strict=True)}
    for k in MIRROR_SLICES:
        r = by_id[f"mirror-{k}-en"]
        assert r.verdict == "fail" and "laterality" in r.codes
        assert "kidney_right centre x=" in r.reason and "is right of kidney_left" in r.reason
    for case, ks in (("clean", range(30)), ("swap", SWAP_SLICES)):
        for k in ks:
            r = by_id[f"{case}-{k}-en"]
            assert "laterality" not in r.codes and "laterality_centre" not in r.codes, (case, k, r.reason)


def test_stats_fit_from_tables_equals_the_in_memory_fit(items: list[ValidationItem], tmp_path: Path) -> None:
    """The build's fit (compact JSONL tables spilled group by group to disk) gives the statistics of the
    in-memory fit exactly, however the files are chunked; a region repeated in EN and ZH rows and across
    chunks counts once; the spill file leaves nothing behind."""
    import orjson

    from pipeline.validate.stats import region_features

    paths = []
    for n, item in enumerate(items):  # one file per row: EN and ZH copies of a region in different files
        path = tmp_path / f"f{n:03d}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in region_features(item)))
        paths.append(path)
    expected = StatsValidator().fit(items).groups
    assert expected and all(g["n"] >= 1 for g in expected.values())
    spill = tmp_path / "spill"
    for chunk in (1 << 10, 1 << 16, 8 << 20):
        assert StatsValidator().fit_tables(paths, chunk_bytes=chunk, spill_dir=spill).groups == expected
    assert StatsValidator().fit_tables(paths + paths[:7], chunk_bytes=1 << 12).groups == expected  # repeats
    assert list(spill.iterdir()) == []
