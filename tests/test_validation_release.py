"""Validation inside a real build: a copy of the TotalSegmentator CT with its labels mirrored left/right
must be flagged by the statistical validator and by the laterality rule; every row has meta.validation."""

import nibabel as nib
import numpy as np
import orjson
import yaml

from flows.run import build
from schemas.config import ReleaseConfig


def test_mirrored_labels_flagged_by_stats_and_laterality(tmp_path, samples):
    src = samples / "totalseg-nifti/ct"
    lab = nib.load(str(src / "example_seg.nii.gz"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "ct.nii.gz").write_bytes((src / "example_ct_sm.nii.gz").read_bytes())
    cases = []
    arr = np.asanyarray(lab.dataobj)
    for name, a in [("clean_a", arr), ("clean_b", arr), ("clean_c", arr), ("mirrored", arr[::-1].copy())]:
        nib.save(nib.Nifti1Image(a, lab.affine, lab.header), str(data / f"{name}.nii.gz"))
        cases.append({"id": name, "image": "ct.nii.gz", "labels": f"{name}.nii.gz"})
    card = {
        "name": "totalseg-ct-qa", "title": "QA copy", "adapter": "nifti_labelmap", "licence": "Apache-2.0",
        "modality": "CT", "body_region": "abdomen", "root": str(data), "intensity": {"preset": "abdomen"},
        "label_map": "totalseg_total", "box_policy": {"mode": "label", "min_pixels": 4},
        "layout": {"cases": cases, "patient_regex": "^(.*)$"},
    }
    card_path = tmp_path / "card.yaml"
    card_path.write_text(yaml.safe_dump(card))
    cfg = ReleaseConfig.model_validate({
        "name": "qa", "version": "1", "seed": 1, "sources": [{"card": str(card_path)}],
        "slicing": {"axes": ["axial"], "min_spacing_mm": 0, "max_slices_per_case": 6},
        "tasks": {"mix": {"grounded_report": 1}, "langs": ["en"]},
        "validation": {"validators": ["rules", "stats"], "stats": {"z_flag": 3.5},
                       "policy": {"per_validator": {"rules": {"fail": "flag"}}}},
    })
    rel = build(cfg, tmp_path / "out", samples_root=samples)
    rows = [orjson.loads(line) for p in sorted((rel / "data").rglob("*.jsonl")) for line in p.read_bytes().splitlines()]
    assert rows and all(r["meta"]["validation"] for r in rows)
    review = [orjson.loads(line) for line in (rel / "review.jsonl").read_bytes().splitlines()]
    flagged = {}
    for item in review:
        flagged.setdefault(item["case_id"], set()).update(c.split(":")[0] + ":" + c.split(":")[1] for c in item["codes"])
    mirrored = flagged.get("mirrored", set())
    assert any(c.startswith("stats:") for c in mirrored), mirrored
    assert "rules:laterality" in mirrored or "rules:laterality_centre" in mirrored, mirrored
    # the clean copies never fail the laterality rule
    for case in ("clean_a", "clean_b", "clean_c"):
        assert not any(c.startswith("rules:laterality") for c in flagged.get(case, set()))
    m = orjson.loads((rel / "manifest.json").read_bytes())
    assert m["counts"]["validation_by_source"]["totalseg-ct-qa"]["stats"]["flag"] > 0
    assert "Flagged for review" in (rel / "report.html").read_text()
