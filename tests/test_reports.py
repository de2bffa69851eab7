"""Report-grounded sources from fixtures in their published layouts: every fact each adapter relies on, and a
release of all four with real-sentence grounded rows in English and Chinese (the other language through the
reviewed translation on the loopback server), the text/box laterality guard and the language lint."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import orjson
import pytest
import yaml
from helpers_llm import FakeLLM, good_model
from report_fixtures import IMAGENOME_IDS, MSCXR_IDS, build as build_fixture

from flows.run import build
from flows.translate import translate_source
from pipeline.evaluate.translate import TranslateConfig, accept_translations
from pipeline.ingest.readers import ReadError
from pipeline.language.lint import lint_release
from pipeline.release.verify import verify_release
from schemas.card import SourceCard
from schemas.config import ReleaseConfig
from sources.base import get_adapter, load_card

GENERIC_CARD = "card.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("report-data")
    for name in ("ms-cxr", "chest-imagenome", "radgenome-chestct", "generic"):
        build_fixture(name, dest)
    return dest


def _adapter(card: str, root: Path):
    return get_adapter(load_card(card), root)


# ----------------------------------------------------------------------------------------- MS-CXR


def test_mscxr_csv_boxes_phrases_and_splits(data):
    ad = _adapter("ms-cxr", data / "ms-cxr")
    refs = ad.discover()
    assert [r.case_id for r in refs] == MSCXR_IDS
    assert [r.official_split for r in refs] == ["train", "validation", "test"]  # v1.1.0's split column (val)
    assert [r.patient_id for r in refs] == ["10000001", "10000002", "10000003"]  # files/p10/p<8 digits>/...
    s = ad.load(refs[0])
    assert s.image.shape == (1, 382, 318)  # a 1/8 copy of the 2544 x 3056 original
    by = {b.term: b.box for b in s.boxes}
    # x, y, w, h in original pixels, scaled by 318/2544 = 382/3056 = 1/8, right edge inclusive
    assert by["pneumonia"] == (1500 / 8, 1700 / 8, 2200 / 8 - 1, 2500 / 8 - 1)
    assert by["pleural_effusion"] == (300 / 8, 2200 / 8, 900 / 8 - 1, 2700 / 8 - 1)
    assert [(r.term, r.text["en"]) for r in s.report] == [
        ("pneumonia", "Left lower lobe pneumonia."), ("pleural_effusion", "Small right pleural effusion.")]
    assert any("scaled" in n for n in s.notes)
    two = ad.load(refs[1])  # one phrase, two rows: two boxes of one term, one sentence
    assert sum(b.term == "lung_opacity" for b in two.boxes) == 2
    assert [r.text["en"] for r in two.report if r.term == "lung_opacity"] == ["Patchy opacities in both lower lungs."]


def test_mscxr_needs_its_columns(tmp_path):
    (tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv").write_text("dicom_id,category,label_text\nx,Pneumonia,y\n")
    with pytest.raises(ReadError, match=r"columns \['category_name', 'path'"):
        _adapter("ms-cxr", tmp_path).discover()


# ----------------------------------------------------------------------------------------- Chest ImaGenome


def test_imagenome_scene_graph_boxes_phrases_and_negation(data):
    ad = _adapter("chest-imagenome", data / "chest-imagenome")
    refs = ad.discover()
    assert [r.case_id for r in refs] == IMAGENOME_IDS
    assert [r.official_split for r in refs] == ["train", "test"]  # silver_dataset/splits/{train,test}.csv
    assert refs[0].patient_id == "11000001"
    assert refs[0].paths["image"].endswith(f"mimic-cxr-jpg/files/p11/p11000001/s51000001/{IMAGENOME_IDS[0]}.jpg")
    s = ad.load(refs[0])
    boxes = {b.term: b.box for b in s.boxes}
    assert len(s.boxes) == 17  # 18 objects, the empty carina box skipped with a note
    assert any("'carina'" in n and "empty" in n for n in s.notes)
    assert boxes["lung_right"] == (40, 60, 149, 299)  # original_x1..y2, the far corner exclusive
    assert boxes["abdomen"] == (40, 320, 279, 383)
    report = {r.term: r for r in s.report}
    assert report["lung_right"].negated
    assert report["lung_right"].text["en"] == "Right lung is clear without pneumothorax."
    assert not report["lung_zone_lower_left"].negated  # anatomicalfinding|yes|lung opacity
    assert [r.term for r in s.report].count("cardiac_silhouette") == 1  # the repeated phrase once
    assert "chest wall" not in " ".join(r.text["en"] for r in s.report)  # no box for 'left chest wall'


def test_imagenome_medrega_subset(data):
    card = load_card("chest-imagenome")
    sub = SourceCard.model_validate({**card.model_dump(), "layout": {**card.layout, "regions": "medrega12"}})
    ad = get_adapter(sub, data / "chest-imagenome")
    s = ad.load(ad.discover()[0])
    assert sorted(b.term for b in s.boxes) == sorted([
        "lung_left", "lung_right", "mediastinum", "cardiac_silhouette", "hilum_left", "hilum_right", "clavicula_left",
        "clavicula_right", "hemidiaphragm_left", "hemidiaphragm_right", "heart_atrium_right", "abdomen"])
    assert "lung_zone_lower_left" not in {r.term for r in s.report}


def test_imagenome_29_regions_are_glossary_terms():
    card = load_card("chest-imagenome")
    assert len(card.labels) == 29 and len(set(card.labels.values())) == 29


# ----------------------------------------------------------------------------------------- RadGenome


def test_radgenome_masks_sentences_and_naming(data):
    root = data / "radgenome-chestct"
    ad = _adapter("radgenome-chestct", root)
    refs = ad.discover()
    assert [r.case_id for r in refs] == ["valid_1_a_1", "valid_2_a_1"]
    assert refs[0].patient_id == "valid_1" and refs[0].official_split == "validation"
    assert refs[0].paths["image"] == str(root / "dataset/valid_preprocessed/valid_1/valid_1a/valid_1_a_1.nii.gz")
    s = ad.load(refs[0])
    origins = {Path(layer.origin).name: layer.names[1] for layer in s.layers}
    # anatomy masks by the Anatomy path's last element; the heart falls back to the region mask
    assert origins == {"right lung.nii.gz": "lung_right", "left lung.nii.gz": "lung_left", "heart.nii.gz": "heart",
                       "trachea.nii.gz": "trachea"}
    assert any("valid_region_mask" in layer.origin for layer in s.layers if layer.names[1] == "heart")
    assert {r.term for r in s.report} == {"lung_right", "lung_left", "heart", "trachea"}
    ungrounded = [n for n in s.notes if "not grounded" in n]
    assert len(ungrounded) == 3  # the whole scan, others/thoracic cavity, pleura without a mask
    # patient right is image left: the right lung's voxels lie in the low columns of the canonical volume
    right = next(layer.array for layer in s.layers if layer.names[1] == "lung_right")
    assert right.nonzero()[2].mean() < right.shape[2] / 2


def test_radgenome_csv_columns(data):
    with open(data / "radgenome-chestct/dataset/radgenome_files/validation_region_report.csv", newline="") as f:
        assert next(csv.reader(f)) == ["Volumename", "Anatomy", "Sentence"]


# ----------------------------------------------------------------------------------------- generic


def test_generic_table_boxes_masks_languages_and_a_negated_finding(data):
    root = data / "generic"
    ad = get_adapter(load_card(str(root / GENERIC_CARD)), root)
    refs = ad.discover()
    assert [(r.patient_id, r.official_split) for r in refs] == [("P001", "train"), ("P002", "validation")]
    a, b = (ad.load(r) for r in refs)
    assert [(x.term, x.lang) for x in a.report] == [("lung_right", "zh"), ("lung_left", "zh"), ("heart", "zh")]
    assert a.report[1].negated  # 左肺未见明显实变: stays with the left lung
    assert {x.term for x in b.boxes} == {"lung_right"} and b.layers[0].names == {1: "heart"}
    # "No focal consolidation." negates its own finding: no region, no sentence, a note
    assert "consolidation" not in {x.term for x in b.boxes} | {x.term for x in b.report}
    assert any("negates the finding consolidation" in n for n in b.notes)
    vol = get_adapter(load_card(str(root / "card-volumes.yaml")), root)
    v = vol.load(vol.discover()[0])
    assert v.is_3d and [layer.names[1] for layer in v.layers] == ["liver", "spleen"]
    liver = v.layers[0].array.nonzero()[2].mean()
    assert liver < v.layers[0].array.shape[2] / 2  # the liver on the image left (patient right)


# ----------------------------------------------------------------------------------------- release


SOURCES = ("ms-cxr", "chest-imagenome", "radgenome-chestct", "inhouse-reports", "inhouse-ct-reports")


@pytest.fixture(scope="module")
def release(data, tmp_path_factory):
    """All four sources, their sentences translated on the loopback server, every translation accepted."""
    tmp = tmp_path_factory.mktemp("report-release")
    fake = FakeLLM(good_model)  # stands for the remote LLM service
    cfg = TranslateConfig.model_validate({"llm": {"base_url": fake.url, "model": "fake", "max_retries": 0},
                                          "cache_dir": str(tmp / "cache")})
    accepted = tmp / "accepted.yaml"
    uses = [("ms-cxr", data / "ms-cxr"), ("chest-imagenome", data / "chest-imagenome"),
            ("radgenome-chestct", data / "radgenome-chestct"), (str(data / "generic" / GENERIC_CARD), data / "generic"),
            (str(data / "generic" / "card-volumes.yaml"), data / "generic")]
    try:
        for card, root in uses:
            review = tmp / f"{Path(card).stem}.review.yaml"
            translate_source(card, cfg, root=root, review_path=review)
            doc = yaml.safe_load(review.read_text(encoding="utf-8"))
            assert not doc["rejected"], doc["rejected"]
            for e in doc["entries"]:
                e["accepted"] = True
            review.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
            accept_translations(review, accepted)
    finally:
        fake.close()
    config = ReleaseConfig.model_validate({
        "name": "reports", "version": "1", "seed": 3, "runner": {"kind": "serial"},
        "sources": [{"card": c, "root": str(r), "translations": str(accepted)} for c, r in uses],
        "slicing": {"min_spacing_mm": 5},
        "tasks": {"mix": {"region_to_text": 1, "text_to_region": 1, "grounded_report": 2}},
    })
    return build(config, tmp / "out", samples_root=data)


def _rows(rel: Path) -> list[dict]:
    return [orjson.loads(x) for p in sorted((rel / "data").rglob("*.jsonl")) for x in p.read_bytes().splitlines()]


def test_every_source_has_report_rows_in_both_languages(release):
    rows = _rows(release)
    report = {(r["meta"]["source"], r["meta"]["lang"]) for r in rows if r["meta"]["text_source"] == "report"}
    assert report == {(s, lang) for s in SOURCES for lang in ("en", "zh")}
    assert all(r["meta"]["task"] == "grounded_report" for r in rows if r["meta"]["text_source"] == "report")
    assert {r["meta"]["text_source"] for r in rows if r["meta"]["task"] != "grounded_report"} == {"template"}
    m = orjson.loads((release / "manifest.json").read_bytes())
    assert m["counts"]["errors"] == 0 and not any(k.startswith("row:report_untranslated") for k in m["dropped"])
    assert verify_release(release) == []


def test_report_lines_are_the_sentences_and_their_reviewed_translations(release):
    lines = {}
    for r in _rows(release):
        if r["meta"]["text_source"] == "report":
            for line in r["conversations"][-1]["value"].split("\n"):
                m = re.fullmatch(r"<ref>[^<]+</ref><box>[^<]+</box>[:：] ?(.+)", line)
                assert m, line
                lines.setdefault(r["meta"]["lang"], set()).add(m.group(1))
    assert "Right lung is clear without pneumothorax." in lines["en"]
    assert "右肺清晰，未见气胸。" in lines["zh"]  # the placeholders became the glossary's display names
    assert "A 5 mm nodule is seen in the right lung upper lobe." in lines["en"]
    assert "右肺上叶见一5 mm结节。" in lines["zh"]
    assert "右肺上叶见一结节影，直径约8mm。" in lines["zh"]  # an in-house Chinese report as written
    assert "A nodule about 8 mm across is seen in the right upper lobe." in lines["en"]  # ... and translated


def test_text_laterality_contradiction_fails(release):
    """MS-CXR's third image says "Right upper lobe consolidation" of a box on the image right (patient left)."""
    m = orjson.loads((release / "manifest.json").read_bytes())
    assert m["dropped"].get("row:rules:text_laterality", 0) >= 1
    for r in _rows(release):
        assert "Right upper lobe consolidation" not in r["conversations"][-1]["value"]
        assert "右肺上叶实变" not in r["conversations"][-1]["value"]


def test_negated_findings_are_never_targets(release):
    for r in _rows(release):
        if r["meta"]["source"] == "inhouse-reports":
            assert "consolidation" not in {g["term"] for g in r["meta"]["regions"]}
            if r["meta"]["task"] == "text_to_region" and r["meta"]["subtask"] != "absent":
                assert "consolidation" not in r["conversations"][0]["value"]


def test_language_lint_passes_on_report_rows(release):
    assert lint_release(release) == []


def _report_row(lang: str, answer: str, source: str = "report", term: str = "lung_right") -> dict:
    q = "Describe the findings in this image." if lang == "en" else "请描述这张图像中的所见。"
    turns = [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": answer}]
    return {"id": "r1", "conversations": turns,
            "meta": {"task": "grounded_report", "subtask": "open", "lang": lang, "text_source": source,
                     "regions": [{"term": term, "box": [100, 200, 400, 700]}]}}


def test_lint_reads_report_sentences_as_written_and_checks_their_language():
    from pipeline.language.lint import lint_rows

    box = "<box>[[100, 200, 400, 700]]</box>"
    head_en, head_zh = "<ref>right lung</ref>" + box, "<ref>右肺</ref>" + box
    # a reporter's "a 1.5 cm nodules" and digits in Chinese are the report's own text: not our grammar to correct
    assert lint_rows([_report_row("en", head_en + ": There is a 1.5 cm nodules.")]) == []
    assert lint_rows([_report_row("zh", head_zh + "：见3个结节，最大约1.5 cm。")]) == []
    # ... while the same Chinese text written by a template would be flagged
    template = lint_rows([_report_row("zh", head_zh + "：见3个结节，最大约1.5 cm。", source="template")])
    assert {h.rule for h in template} >= {"zh-numeral"}
    untranslated = lint_rows([_report_row("zh", head_zh + "：Small right pleural effusion.")])
    assert [h.rule for h in untranslated] == ["report-text"] and "untranslated" in untranslated[0].detail
    assert [h.rule for h in lint_rows([_report_row("en", head_en + ": 右肺清晰。")])] == ["report-text"]
    wrong_head = lint_rows([_report_row("en", "<ref>right lungs</ref><box>[[100, 200, 400, 700]]</box>: Clear.")])
    assert {"ref", "contradiction"} <= {h.rule for h in wrong_head}


def test_eval_scores_report_and_template_grounded_rows_with_bleu_rouge_meteor(data, tmp_path):
    """`medreg eval` on a release holding both kinds of grounded rows (tasks.grounded_text: both): boxes as
    text->region, text by BLEU-1..4 / ROUGE-L / METEOR per language, report and template rows side by side."""
    from pipeline.evaluate.report_metrics import DEBIAN_WORDNET, load_wordnet
    from pipeline.evaluate.run import evaluate
    from pipeline.release.export import iter_release_rows

    config = ReleaseConfig.model_validate({
        "name": "both", "version": "1", "seed": 5, "runner": {"kind": "serial"},
        "sources": [{"card": "ms-cxr", "root": str(data / "ms-cxr")},
                    {"card": str(data / "generic" / GENERIC_CARD), "root": str(data / "generic")}],
        "tasks": {"mix": {"grounded_report": 2}, "grounded_text": "both"},
    })
    rel = build(config, tmp_path / "out", samples_root=data)
    rows = list(iter_release_rows(rel))
    assert {r["meta"]["text_source"] for r in rows} == {"report", "template"}
    # template rows answered perfectly; report rows with their first line's sentence cut to its first word
    answers = {}
    for r in rows:
        ref = r["conversations"][-1]["value"]
        if r["meta"]["text_source"] == "report":
            head, sep, sentence = ref.split("\n")[0].partition("</box>")
            ref = "\n".join([head + sep + sentence[:3], *ref.split("\n")[1:]])
        answers[r["id"]] = ref
    for protocol in ("default", "medrega"):
        rep = evaluate(rel, answers, protocol=protocol)
        groups = rep.groups
        assert {"grounded_report.report/en", "grounded_report.template/en", "grounded_report.report/zh"} <= set(groups)
        for key in ("grounded_report.template/en", "grounded_report.template/zh"):
            assert groups[key]["BLEU-4"] == 1.0 and groups[key]["ROUGE-L"] == 1.0, key
        report = groups["grounded_report.report/en"]
        assert 0.0 < report["BLEU-1"] < 1.0 and report["BLEU-4"] < report["BLEU-1"] and report["ROUGE-L"] < 1.0
        assert 0.0 < report["METEOR"] < groups["grounded_report.template/en"]["METEOR"]
        # boxes are scored as text->region: the cut sentences keep every box
        box = "box_f1" if protocol == "medrega" else "mean_iou"
        assert (report[box]["f1"] if isinstance(report[box], dict) else report[box]) == 1.0
    assert report["METEOR_wordnet"] == load_wordnet()[1]
    if (DEBIAN_WORDNET / "data.noun").is_file():  # Debian's wordnet-base (installed by `make test` where apt works)
        wn, where = load_wordnet()
        assert where != "none" and [s.name() for s in wn.synsets("opacity")][:1] == ["opacity.n.01"]
