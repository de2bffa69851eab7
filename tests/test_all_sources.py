"""A release from every shipped source: template variety and display names in both languages."""

import re

import orjson
import pytest

from pipeline.language.glossary import load_glossary
from flows.run import build
from pipeline.release.verify import verify_release
from schemas.config import ReleaseConfig
from sources.base import builtin_cards

REF = re.compile(r"<ref>(.*?)</ref>")
#: credentialed / gated report-grounded datasets: no sample data can be shipped; tests/test_reports.py builds them
#: from fixtures in their published layouts
REPORT_CARDS = {"ms-cxr", "chest-imagenome", "radgenome-chestct"}


def sample_cards() -> list[str]:
    return sorted(set(builtin_cards()) - REPORT_CARDS)


@pytest.fixture(scope="module")
def release(tmp_path_factory, samples):
    tmp = tmp_path_factory.mktemp("all")
    cards = sample_cards()
    assert {"totalseg-ct", "totalseg-mr", "sam-med2d", "biomedparse-2d", "kvasir-seg", "dcmqi-liver-seg",
            "rtstruct-visible-human", "nih-cxr14", "ibsi-sts-pet-dicom", "ibsi-sts-pet-nifti"} <= set(cards)
    sources = [{"card": c} for c in cards]  # nih-cxr14: its 4 real radiographs
    cfg = ReleaseConfig.model_validate({
        "name": "all", "version": "1", "seed": 11, "sources": sources,
        "slicing": {"axes": ["axial", "coronal", "sagittal"], "min_spacing_mm": 6, "max_slices_per_case": 8},
        # two samples per task, slice and language: enough draws for the template-variety test from the real
        # samples alone (the chest X-ray source has 4 real radiographs, no synthetic stand-ins)
        "tasks": {"mix": {"region_to_text": 2, "text_to_region": 2, "grounded_report": 2}, "negative_ratio": 0.1},
    })
    return build(cfg, tmp / "out", samples_root=samples)


def _rows(release):
    return [orjson.loads(line) for p in sorted((release / "data").rglob("*.jsonl")) for line in p.read_bytes().splitlines()]


def test_every_source_contributes(release):
    m = orjson.loads((release / "manifest.json").read_bytes())
    assert m["counts"]["errors"] == 0, m["errors"]
    assert set(m["counts"]["by_source"]) == set(sample_cards())
    assert verify_release(release) == []


def test_forty_question_templates_per_task_and_language(release):
    used = {}
    for r in _rows(release):
        m = r["meta"]
        used.setdefault((m["task"], m["lang"]), set()).add(m["template_id"])
    assert len(used) == 6
    for key, ids in used.items():
        assert len(ids) >= 40, (key, len(ids))


def test_refs_are_glossary_display_names_in_the_row_language(release):
    gl = load_glossary()
    names = {lang: {gl.display(t, lang) for t in gl.terms} for lang in ("en", "zh")}
    for r in _rows(release):
        lang = r["meta"]["lang"]
        text = "\n".join(t["value"] for t in r["conversations"])
        refs = REF.findall(text)
        assert refs or r["meta"]["task"] == "region_to_text" or r["meta"].get("subtask") == "absent", r["id"]
        for ref in refs:
            assert ref in names[lang], (lang, ref)
        for reg in r["meta"]["regions"]:  # English names may be capitalised at a sentence start
            assert gl.display(reg["term"], lang).lower() in text.lower(), (r["id"], reg["term"])
        if lang == "zh":
            assert not re.search(r"[A-Za-z]{4,}", "".join(refs)), refs  # Chinese rows use Chinese names


# ----------------------------------------------------------------------------------------- consumers
# The release as the tools its users run next read it: HF datasets (every config, streaming too, and the
# default config), polars and pyarrow over all shards with no relaxed option, JSON Schema, the card.


def _manifest(release):
    return orjson.loads((release / "manifest.json").read_bytes())


def _card_header(release):
    import yaml

    text = (release / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


@pytest.fixture(scope="module")
def hf_offline(tmp_path_factory):
    import os

    keys = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_CACHE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
                      HF_DATASETS_CACHE=str(tmp_path_factory.mktemp("hf-cache")))
    yield tmp_path_factory.mktemp("hf-load")
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _split_lines(manifest, task=None, lang=None):
    out: dict = {}
    for s in manifest["shards"]:
        if (task is None or s["task"] == task) and (lang is None or s["lang"] == lang):
            out[s["split"]] = out.get(s["split"], 0) + s["lines"]
    return out


def test_every_config_loads_with_hf_datasets_and_streaming(release, hf_offline):
    import datasets

    from pipeline.release.card import hf_features

    manifest = _manifest(release)
    declared = datasets.Features._from_yaml_list(hf_features())
    names = [c["config_name"] for c in _card_header(release)["configs"]]
    assert names[0] == "default" and len(names) == 1 + len({(s["task"], s["lang"]) for s in manifest["shards"]})
    for name in names:
        ds = datasets.load_dataset(str(release), name, cache_dir=str(hf_offline))
        task, lang = name.split(".") if name != "default" else (None, None)
        assert {k: len(v) for k, v in ds.items()} == _split_lines(manifest, task, lang), name
        for split in ds:
            assert ds[split].features == declared, (name, split)  # declared, not inferred
        streamed = datasets.load_dataset(str(release), name, streaming=True)
        for split, n in _split_lines(manifest, task, lang).items():
            rows = list(streamed[split])
            assert len(rows) == n, (name, split)
            if task:
                assert {(r["meta"]["task"], r["meta"]["lang"]) for r in rows} == {(task, lang)}


def test_default_config_loads_without_a_name(release, hf_offline):
    import datasets

    ds = datasets.load_dataset(str(release), cache_dir=str(hf_offline))
    manifest = _manifest(release)
    assert {k: len(v) for k, v in ds.items()} == _split_lines(manifest)
    assert sum(len(v) for v in ds.values()) == manifest["counts"]["rows"]
    assert {r["meta"]["source"] for split in ds.values() for r in split} == set(manifest["counts"]["by_source"])


def test_polars_and_pyarrow_read_all_shards_without_relaxed_options(release):
    import polars as pl
    import pyarrow.dataset as pads

    manifest = _manifest(release)
    files = [str(release / s["path"]) for s in manifest["shards"]]
    df = pl.scan_ndjson(files).collect()
    assert df.height == manifest["counts"]["rows"]
    meta = df.schema["meta"]
    assert isinstance(meta, pl.Struct) and {f.name for f in meta.fields} >= {"regions", "validation", "transform"}
    assert df.select(pl.col("meta").struct.field("slice_index")).dtypes == [pl.Int64]
    by_task = df.group_by(pl.col("meta").struct.field("task")).len()
    assert dict(by_task.iter_rows()) == manifest["counts"]["by_task"]
    table = pads.dataset(files, format="json").to_table()
    assert table.num_rows == manifest["counts"]["rows"]
    assert pads.dataset(str(release / "data"), format="json").count_rows() == manifest["counts"]["rows"]


def test_schema_json_is_the_row_contract_and_every_row_meets_it(release):
    import jsonschema

    from pipeline.release.card import row_json_schema

    schema = orjson.loads((release / "schema.json").read_bytes())
    assert schema == row_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    rows = _rows(release)
    assert len(rows) == _manifest(release)["counts"]["rows"]
    for r in rows:
        errors = list(validator.iter_errors(r))
        assert not errors, (r["id"], errors[0].message)
    bad = dict(rows[0], width=None)
    assert list(validator.iter_errors(bad))  # a null is refused


def test_card_header_licence_and_sections(release):
    import yaml

    manifest = _manifest(release)
    head = _card_header(release)
    assert head["license"] == "other"
    assert head["license_name"] == "medreginstruct-non-commercial"  # kvasir-seg is research/education only
    assert (release / head["license_link"]).is_file()
    assert head["size_categories"] == ["n<1K"] and manifest["counts"]["rows"] < 1000
    assert head["pretty_name"] == "MedRegInstruct all 1"
    assert {c["config_name"] for c in head["dataset_info"]} == {c["config_name"] for c in head["configs"]}
    card = (release / "README.md").read_text(encoding="utf-8")
    for section in ("## How to load", "## Tasks and subtasks", "## Row format", "## Counts", "### By modality",
                    "## Validation", "review.jsonl", "## Build configuration", "## Limitations", "## Licence"):
        assert section in card, section
    for sub in manifest["counts"]["by_subtask"]:
        assert f"| | `{sub}` | {manifest['counts']['by_subtask'][sub]} |" in card, sub
    assert "(not described by this builder version)" not in card
    for modality, n in manifest["counts"]["by_modality"].items():
        assert f"| {modality} | {n} |" in card
    config_block = card.split("## Build configuration", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(config_block) == manifest["config"]  # the whole build config, not just its hash
    assert "Non-commercial research and education use only" in card and "kvasir-seg" in card
    licence = (release / "LICENSE.md").read_text()
    for s in manifest["sources"]:
        assert f"| {s['name']} | {s['licence']} |" in licence and f"- **{s['name']}**: " in licence


def test_the_release_passes_the_language_lint(release):
    """Issue 12 B11: article/number agreement, Chinese punctuation and lists, no prompt/answer contradiction,
    every <ref> a display name of the row's language -- over every row of a release of every shipped source."""
    from collections import Counter

    from pipeline.language.lint import lint_release

    rows = _rows(release)
    assert len(rows) > 500
    hits = lint_release(release)
    assert hits == [], (Counter(h.rule for h in hits), hits[:20])
