"""Nothing is lost silently (issue 12 A1/A2): every region and row that does not reach the release is
counted by reason in the manifest and the run log, and a failing region is removed from its rows
instead of sinking them.

One synthetic 2-D case (a label-value mask folder read by the ``mask_folder_2d`` adapter with a card
only) exercises every reason; the expected counts are worked out from the mask drawn here."""

from __future__ import annotations

import numpy as np
import orjson
import yaml
from PIL import Image

from flows.run import build
from pipeline.release.executors import SerialExecutor
from schemas.config import ReleaseConfig

W = H = 128


def _case(root):
    rng = np.random.default_rng(0)
    img = rng.integers(40, 200, (H, W), dtype=np.uint8)  # textured everywhere ...
    img[96:112, 4:20] = 128                               # ... except one flat patch
    mask = np.zeros((H, W), np.uint8)
    mask[40:60, 8:28] = 2       # kidney_right on image LEFT (correct radiological side)
    mask[40:60, 100:120] = 3    # kidney_left on image RIGHT
    mask[70:72, 30:32] = 1      # dust: a 4-px liver component (min_pixels 10)
    mask[70:90, 40:80] = 1      # the liver itself
    mask[10:40, 60:62] = 1      # a 2-px wide liver sliver: 60 px, survives dust, fails min_box_px 3
    mask[98:110, 6:18] = 4      # spleen on the flat patch: pixel std 0 -> rules: blank
    mask[5:9, 100:104] = 99     # a label id the card does not know
    for i in range(9):          # nine polyps: more boxes than tasks.max_regions_per_sample (8)
        mask[116:121, 4 + 13 * i:9 + 13 * i] = 5
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    Image.fromarray(img).save(root / "images" / "c1.png")
    Image.fromarray(mask).save(root / "masks" / "c1.png")


def test_every_dropped_region_is_counted_by_reason(tmp_path):
    data = tmp_path / "data" / "synthetic"
    _case(data)
    card = {
        "name": "synthetic-drops", "title": "synthetic", "adapter": "mask_folder_2d", "licence": "CC0-1.0",
        "modality": "CT", "body_region": "abdomen", "root": "synthetic",
        "labels": {"1": "liver", "2": "kidney_right", "3": "kidney_left", "4": "spleen", "5": "polyp"},
        "box_policy": {"mode": "component", "min_pixels": 10, "min_box_px": 3},
        "layout": {"images": "images/*.png", "masks": "masks/{stem}.png", "mask_kind": "values"},
    }
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card))
    cfg = ReleaseConfig.model_validate({
        "name": "drops", "version": "1", "seed": 1, "samples_root": str(tmp_path / "data"),
        "sources": [{"card": str(tmp_path / "card.yaml")}],
        "tasks": {"mix": {"text_to_region": 2, "grounded_report": 1}, "langs": ["en"], "negative_ratio": 0.0},
        "validation": {"validators": ["rules"], "rules": {"orientation": False}},
    })
    rel = build(cfg, tmp_path / "out", executor=SerialExecutor())
    m = orjson.loads((rel / "manifest.json").read_bytes())
    d = m["dropped"]
    assert d["region:dust"] == 1                # the 4-px liver component
    assert d["region:min_box"] == 1             # the 2-px wide sliver
    assert d["region:unknown_label"] == 1       # label id 99
    assert d["region:rules:blank"] == 1         # the spleen on the flat patch, removed before any sentence
    assert d["region:over_cap"] == 9            # no detection/report row can hold nine polyp boxes
    rows = [orjson.loads(x) for p in sorted((rel / "data").rglob("*.jsonl")) for x in p.read_bytes().splitlines()]
    assert rows, "the failing regions did not sink the case's rows"
    used = {(r["term"], tuple(r["box"])) for row in rows for r in row["meta"]["regions"]}
    terms = {t for t, _ in used}
    assert "spleen" not in terms and "polyp" not in terms
    assert {"liver", "kidney_right", "kidney_left"} <= terms
    # accounting identity: the 13 regions drawn on the slice (liver x2 + kidneys x2 + spleen + 9 polyps
    # - none lost to dust/min_box/unknown beyond those counted) are either in a row or counted
    kept_regions = 1 + 2 + 9 + 1  # liver, two kidneys, nine polyps, spleen (before the rules)
    unused = d.get("region:unused", 0)
    assert len(used) + d["region:rules:blank"] + d["region:over_cap"] + unused == kept_regions
    log = orjson.loads((tmp_path / "out" / ".medreg-cache" / "runs" / "drops-1.last-run.json").read_bytes())
    assert log["cases"][0]["dropped"] == {k: v for k, v in d.items() if not k.startswith("row:")} | {
        k: v for k, v in d.items() if k.startswith("row:")}
    assert log["totals"]["dropped"] == d


def test_a_laterality_failure_removes_both_sides_not_the_rows(tmp_path):
    data = tmp_path / "data" / "synthetic"
    rng = np.random.default_rng(1)
    img = rng.integers(40, 200, (H, W), dtype=np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[40:60, 100:120] = 2    # kidney_right on image RIGHT: mirrored
    mask[40:60, 8:28] = 3       # kidney_left on image LEFT
    mask[70:90, 40:80] = 1      # liver
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir(parents=True)
    Image.fromarray(img).save(data / "images" / "c1.png")
    Image.fromarray(mask).save(data / "masks" / "c1.png")
    card = {
        "name": "synthetic-mirror", "title": "synthetic", "adapter": "mask_folder_2d", "licence": "CC0-1.0",
        "modality": "CT", "body_region": "abdomen", "root": "synthetic",
        "labels": {"1": "liver", "2": "kidney_right", "3": "kidney_left"},
        "layout": {"images": "images/*.png", "masks": "masks/{stem}.png", "mask_kind": "values"},
    }
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card))
    cfg = ReleaseConfig.model_validate({
        "name": "mirror", "version": "1", "seed": 1, "samples_root": str(tmp_path / "data"),
        "sources": [{"card": str(tmp_path / "card.yaml")}], "tasks": {"langs": ["en"]},
        "validation": {"validators": ["rules"], "rules": {"orientation": False}},
    })
    rel = build(cfg, tmp_path / "out", executor=SerialExecutor())
    m = orjson.loads((rel / "manifest.json").read_bytes())
    assert m["dropped"]["region:rules:laterality"] == 2
    rows = [orjson.loads(x) for p in sorted((rel / "data").rglob("*.jsonl")) for x in p.read_bytes().splitlines()]
    terms = {r["term"] for row in rows for r in row["meta"]["regions"]}
    assert terms == {"liver"} and m["counts"]["rows"] > 0
