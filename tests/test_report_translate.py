"""Glossary-safe translation of report sentences on a loopback OpenAI-compatible server (a test double for a remote
LLM service, tests/helpers_llm.py): placeholders for glossary terms, replies checked (a model that
re-translates or drops a term is rejected), the cache, the review file and `accept`."""

from __future__ import annotations

import json

import pytest
import yaml
from report_fixtures import build as build_fixture
from helpers_llm import FakeLLM, good_model, loopback_only

from flows.translate import source_sentences, translate_source
from pipeline.evaluate.translate import (
    TranslateConfig,
    accept_translations,
    check_reply,
    load_accepted,
    protect,
)
from pipeline.language.glossary import load_glossary


def mistranslating_model(body: dict) -> str:
    """Translates the terms itself: right lung becomes 右侧肺 (placeholder gone), or kept but repeated as 右侧肺."""
    text = good_model(body)
    if "清晰，未见" in text:
        return text.replace("⟦T1⟧", "右侧肺")  # the placeholder dropped, the term re-translated
    if text == "⟦T1⟧清晰。":
        return "⟦T1⟧（右侧肺）清晰。"  # kept, but translated once more beside it
    return text


@pytest.fixture
def server(monkeypatch):
    loopback_only(monkeypatch)
    fake = FakeLLM(good_model)
    yield fake
    fake.close()


def _cfg(server: FakeLLM, tmp_path) -> TranslateConfig:
    return TranslateConfig.model_validate({
        "llm": {"base_url": server.url, "model": "fake-translator", "backoff_s": 0.01, "max_retries": 1},
        "cache_dir": str(tmp_path / "cache"),
    })


def test_terms_become_placeholders_and_come_back_as_display_names():
    g = load_glossary()
    p = protect("No focal consolidation is seen in the left lung.", g, "en", "zh")
    assert p.text == "No focal ⟦T1⟧ is seen in the ⟦T2⟧."
    assert [(t["term"], t["target"]) for t in p.terms] == [("consolidation", "实变"), ("lung_left", "左肺")]
    # "effusion" alone is not fixed: in "pericardial effusion" it is not the pleural effusion
    assert protect("There is no pericardial effusion.", g, "en", "zh").terms == []
    text, why = check_reply("⟦T2⟧未见局灶性⟦T1⟧。", p, g, "zh")
    assert (text, why) == ("左肺未见局灶性实变。", "")
    missing = check_reply("左侧肺未见局灶性⟦T1⟧。", p, g, "zh")[1]
    assert missing.startswith("placeholder ⟦T2⟧ (left lung -> 左肺) missing")
    assert "re-translated" in check_reply("⟦T2⟧（左侧肺）未见局灶性⟦T1⟧。", p, g, "zh")[1]
    assert "repeated" in check_reply("⟦T2⟧⟦T2⟧未见⟦T1⟧。", p, g, "zh")[1]
    assert "not Chinese" in check_reply("Nothing ⟦T1⟧ ⟦T2⟧.", p, g, "zh")[1]
    zh = protect("左肺未见明显实变。", g, "zh", "en")
    assert zh.text == "⟦T1⟧未见明显⟦T2⟧。" and [t["target"] for t in zh.terms] == ["left lung", "consolidation"]


def test_review_file_cache_and_accept(server, tmp_path):
    root = build_fixture("chest-imagenome", tmp_path / "data")
    cfg = _cfg(server, tmp_path)
    review = tmp_path / "review.yaml"
    res = translate_source("chest-imagenome", cfg, root=root, review_path=review)
    _, sentences = source_sentences("chest-imagenome", root)
    assert res.proposed == len(sentences) == 6 and res.rejected == 0 and res.requests == 6
    doc = yaml.safe_load(review.read_text(encoding="utf-8"))
    by_source = {e["source"]: e for e in doc["entries"]}
    assert by_source["Right lung is clear without pneumothorax."]["translation"] == "右肺清晰，未见气胸。"
    assert all(e["accepted"] is False for e in doc["entries"])
    # a second run asks nothing: every reply comes from the cache
    again = translate_source("chest-imagenome", cfg, root=root, review_path=tmp_path / "again.yaml")
    assert again.requests == 0 and again.cache_hits == 6 and len(server.requests) == 6
    # accept: only entries marked accepted; an edit that loses a fixed term is refused
    for e in doc["entries"]:
        e["accepted"] = e["source"] != "Mediastinal contours are unremarkable."
        if e["source"] == "The heart size is normal.":
            e["translation"] = "心大小正常。"  # 心脏 (the fixed term) edited away
    review.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    accepted = tmp_path / "accepted.yaml"
    changed, skipped = accept_translations(review, accepted)
    assert changed == 4 and len(skipped) == 1 and "心脏" in skipped[0]
    table = load_accepted(accepted)
    assert table[("en", "zh", "Small right pleural effusion.")] == "少量右侧胸腔积液。"
    assert ("en", "zh", "Mediastinal contours are unremarkable.") not in table
    # accepted sentences are not asked again
    third = translate_source("chest-imagenome", cfg, root=root, review_path=tmp_path / "third.yaml",
                             translations=accepted)
    assert third.proposed == 2  # the one not accepted and the one refused


def test_a_model_that_translates_terms_itself_is_rejected(server, tmp_path):
    server.reply = mistranslating_model
    root = build_fixture("chest-imagenome", tmp_path / "data")
    review = tmp_path / "review.yaml"
    res = translate_source("chest-imagenome", _cfg(server, tmp_path), root=root, review_path=review)
    doc = yaml.safe_load(review.read_text(encoding="utf-8"))
    rejected = {r["source"]: r["reason"] for r in doc["rejected"]}
    assert res.rejected == 1 and set(rejected) == {"Right lung is clear without pneumothorax."}
    reason = rejected["Right lung is clear without pneumothorax."]
    assert reason.startswith("placeholder ⟦T1⟧ (Right lung -> 右肺) missing")
    assert all("右侧肺" not in e["translation"] for e in doc["entries"])


def test_a_reply_that_repeats_the_term_beside_its_placeholder_is_rejected(server, tmp_path):
    server.reply = mistranslating_model
    root = build_fixture("radgenome-chestct", tmp_path / "data")
    review = tmp_path / "review.yaml"
    translate_source("radgenome-chestct", _cfg(server, tmp_path), root=root, review_path=review)
    doc = yaml.safe_load(review.read_text(encoding="utf-8"))
    reasons = {r["source"]: r["reason"] for r in doc["rejected"]}
    assert "re-translated" in reasons["The right lung is clear."]
    assert "右侧肺" not in json.dumps(doc["entries"], ensure_ascii=False)
    assert {e["source"] for e in doc["entries"]} >= {"Trachea and both main bronchi are open."}  # 主支气管 is fine
