"""LLM-assisted expansion: generation -> validation -> review file -> human accept with a diff.

The LLM is a loopback HTTP server (``http.server`` on 127.0.0.1, port 0, in a thread) that speaks the
OpenAI chat-completions wire format (:class:`helpers_llm.FakeLLM`).  It stands for a remote LLM service (any
OpenAI-compatible endpoint: a hosted API, vLLM, llama.cpp server, ...); no test leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from helpers_llm import FakeLLM, loopback_only

from pipeline.evaluate.expand import (
    DEFAULT_DATA_DIR,
    ExpandError,
    copy_language_data,
    load_expand_config,
    plan_accept,
    run_expand,
    validate_template,
)

VALID_1 = "Kindly mark {the_ref} on this {image}."
VALID_2 = "Where in the picture can {the_ref} be found?"
INVALID_MISSING_REF = "Where is the {term}?"  # {term} is not allowed in a question, {ref} is missing
INVALID_UNBALANCED = "Locate {ref} (in this {image}."
INVALID_NO_REF = "Where is it in this {image}?"


def _paraphrases(body: dict) -> str:
    """The loopback model's reply to a template request: two valid paraphrases and three invalid ones."""
    return json.dumps([VALID_1, INVALID_NO_REF, VALID_2, INVALID_MISSING_REF, INVALID_UNBALANCED])


@pytest.fixture
def llm(monkeypatch):
    loopback_only(monkeypatch)
    fake = FakeLLM(_paraphrases)
    yield fake
    fake.close()


def _next_ids(k: int) -> list[str]:
    """The ids expansion gives k new question_single templates of text_to_region.en: after the slot's last."""
    bank = yaml.safe_load((DEFAULT_DATA_DIR / "templates" / "text_to_region.en.yaml").read_text(encoding="utf-8"))
    last = max(int(t["id"][-3:]) for t in bank["templates"] if t["slot"] == "question_single")
    return [f"t2r.en.q{last + i:03d}" for i in range(1, k + 1)]


def _bank_hashes() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(DEFAULT_DATA_DIR.rglob("*.yaml"))}


@pytest.fixture
def workdir(tmp_path):
    """A copy of the language data, so that `accept` never touches the shipped banks."""
    copy_language_data(tmp_path / "langdata")
    return tmp_path


def _config(workdir: Path, llm: FakeLLM, **extra) -> Path:
    cfg = {
        "llm": {"base_url": llm.url, "model": "fake-model", "backoff_s": 0.01, "max_retries": 2, "timeout_s": 10},
        "cache_dir": "cache",
        "data_dir": "langdata",
        "templates": {"banks": ["text_to_region.en"], "slots": ["question_single"], "seeds_per_slot": 1, "per_seed": 4},
        "glossary": {"terms": ["kidney_right", "liver"], "langs": ["en", "zh"]},
    }
    cfg.update(extra)
    path = workdir / "expand.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_templates_are_validated_before_they_are_proposed(llm, workdir):
    before = _bank_hashes()
    cfg = load_expand_config(_config(workdir, llm))
    res = run_expand("templates", cfg)
    assert len(llm.requests) == 1 and res.requests == 1
    req = llm.requests[0]["body"]
    assert req["model"] == "fake-model" and req["messages"][0]["role"] == "system"
    doc = yaml.safe_load(res.review_path.read_text(encoding="utf-8"))
    assert doc["kind"] == "templates"
    texts = [e["text"] for e in doc["entries"]]
    assert texts == [VALID_1, VALID_2]
    assert all(e["accepted"] is False for e in doc["entries"])
    assert [e["id"] for e in doc["entries"]] == _next_ids(2)  # after the slot's last id
    # a paraphrase is drawn for the targets its seed is drawn for (t2r.en.q001)
    assert all(e["fits"] == {"instances": ["one", "several"]} for e in doc["entries"])
    rejected = {r["text"]: r["reason"] for r in doc["rejected"]}
    assert rejected[INVALID_MISSING_REF].startswith("placeholders ['term'] not allowed here")
    assert "unclosed" in rejected[INVALID_UNBALANCED]
    assert rejected[INVALID_NO_REF] == "must name the term with one of ['The_ref', 'ref', 'the_ref']"
    assert _bank_hashes() == before  # generating never writes a bank


def test_second_run_is_served_from_the_cache(llm, workdir):
    cfg = load_expand_config(_config(workdir, llm))
    first = run_expand("templates", cfg)
    text1 = first.review_path.read_text(encoding="utf-8")
    assert len(llm.requests) == 1
    second = run_expand("templates", load_expand_config(_config(workdir, llm)))
    assert len(llm.requests) == 1  # zero requests the second time
    assert second.requests == 0 and second.cache_hits == 1
    assert second.review_path.read_text(encoding="utf-8") == text1
    assert len(list((workdir / "cache").rglob("*.json"))) == 1


def test_server_error_is_retried_with_backoff(llm, workdir):
    llm.fail_next = [500]
    res = run_expand("templates", load_expand_config(_config(workdir, llm)))
    assert len(llm.requests) == 2 and res.requests == 2 and res.proposed == 2
    # persistent failure: a clear error after max_retries + 1 attempts, nothing cached
    llm.fail_next = [503, 500, 502]
    cfg = load_expand_config(_config(workdir, llm, cache_dir="cache2"))
    with pytest.raises(ExpandError, match="failed after 3 attempt"):
        run_expand("templates", cfg)
    assert not list((workdir / "cache2").rglob("*.json"))


def test_client_errors_are_not_retried(llm, workdir):
    llm.fail_next = [401]
    with pytest.raises(ExpandError, match="HTTP 401"):
        run_expand("templates", load_expand_config(_config(workdir, llm)))
    assert len(llm.requests) == 1


def test_endpoint_and_model_from_the_environment(llm, workdir, monkeypatch):
    path = _config(workdir, llm)
    data = yaml.safe_load(path.read_text())
    data["llm"] = {"backoff_s": 0}
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("MEDREG_LLM_BASE_URL", llm.url)
    monkeypatch.setenv("MEDREG_LLM_MODEL", "env-model")
    monkeypatch.setenv("MEDREG_LLM_API_KEY", "sk-test")
    res = run_expand("templates", load_expand_config(path))
    assert res.proposed == 2 and llm.requests[0]["body"]["model"] == "env-model"
    assert "sk-test" not in res.review_path.read_text()
    monkeypatch.delenv("MEDREG_LLM_BASE_URL")
    with pytest.raises(ExpandError, match="MEDREG_LLM_BASE_URL"):
        run_expand("templates", load_expand_config(path))


def test_accept_writes_only_accepted_entries_after_a_diff(llm, workdir):
    from pipeline.language.templates import load_templates

    before = _bank_hashes()
    res = run_expand("templates", load_expand_config(_config(workdir, llm)))
    doc = yaml.safe_load(res.review_path.read_text(encoding="utf-8"))
    doc["entries"][1]["accepted"] = True  # a person accepts the second proposal only
    res.review_path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    plan = plan_accept(res.review_path)
    assert plan.count == 1 and not plan.skipped
    diff = plan.diff()
    assert "--- a/templates/text_to_region.en.yaml" in diff
    added = [ln for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    first, second = _next_ids(2)
    assert added == [
        f"+  - {{id: {second}, slot: question_single, fits: {{instances: [one, several]}}, "
        'text: "Where in the picture can {the_ref} be found?"}'
    ]
    plan.apply()
    bank = load_templates(workdir / "langdata" / "templates").bank("text_to_region", "en")
    assert bank.by_id[second].text == VALID_2
    assert dict(bank.by_id[second].fits) == {"instances": {"one", "several"}}
    assert first not in bank.by_id
    assert _bank_hashes() == before  # the shipped banks were never touched
    # accepting again is a no-op with a reason
    again = plan_accept(res.review_path)
    assert again.count == 0 and "already in" in again.skipped[0]


def test_accept_revalidates_hand_edited_entries(llm, workdir):
    res = run_expand("templates", load_expand_config(_config(workdir, llm)))
    doc = yaml.safe_load(res.review_path.read_text(encoding="utf-8"))
    doc["entries"][0]["accepted"] = True
    doc["entries"][0]["text"] = "Locate <ref>{ref}</ref>."  # edited by hand into something invalid
    res.review_path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    plan = plan_accept(res.review_path)
    assert plan.count == 0 and not plan.changes
    assert "literal tags" in plan.skipped[0]


def test_glossary_drafts_are_checked_against_every_term(llm, workdir):
    from pipeline.language.glossary import load_glossary

    llm.reply = lambda body: json.dumps({
        "kidney_right": {"en": ["dextral kidney", "right kidney"], "zh": ["右侧肾脏", "肾（右）", "右肾区"]},
        "liver": {"en": ["hepar"], "zh": ["右肾"]},
    }, ensure_ascii=False)
    res = run_expand("glossary", load_expand_config(_config(workdir, llm)))
    doc = yaml.safe_load(res.review_path.read_text(encoding="utf-8"))
    got = {(e["term"], e["field"], e["value"]) for e in doc["entries"]}
    assert got == {
        ("kidney_right", "synonyms_en", "dextral kidney"),
        ("kidney_right", "synonyms_zh", "肾（右）"),
        ("kidney_right", "synonyms_zh", "右肾区"),
        ("liver", "synonyms_en", "hepar"),
    }
    reasons = {r["text"]: r["reason"] for r in doc["rejected"]}
    assert reasons["right kidney"] == "already a name of this term"
    assert reasons["右侧肾脏"] == "already a name of this term"
    assert reasons["右肾"] == "already means 'kidney_right'"
    for e in doc["entries"]:
        e["accepted"] = e["value"] in ("dextral kidney", "hepar")
    res.review_path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    plan = plan_accept(res.review_path)
    assert plan.count == 2
    diff = plan.diff()
    assert "+  synonyms_en: [dextral kidney]" in diff or "+  synonyms_en: [\"dextral kidney\"]" in diff
    assert "+  synonyms_en: [hepar]" in diff
    plan.apply()
    g = load_glossary(workdir / "langdata" / "glossary")
    assert g.resolve("dextral kidney") == "kidney_right" and g.resolve("hepar") == "liver"
    assert g.resolve("右肾区") is None  # not accepted


def test_malformed_replies_and_review_entries_are_rejected_not_crashed_on(llm, workdir):
    """A model's names that are not a list (a number) are rejected with a reason; a hand-edited review entry
    whose term / file / bank is not a string is skipped."""
    llm.reply = lambda body: json.dumps({"kidney_right": {"en": 5, "zh": "右肾区"}, "liver": {"en": ["hepar"]}},
                                        ensure_ascii=False)
    res = run_expand("glossary", load_expand_config(_config(workdir, llm)))
    doc = yaml.safe_load(res.review_path.read_text(encoding="utf-8"))
    assert {(e["term"], e["value"]) for e in doc["entries"]} == {("kidney_right", "右肾区"), ("liver", "hepar")}
    assert {"term": "kidney_right", "lang": "en", "text": "5", "reason": "not a list of names"} in doc["rejected"]
    for e in doc["entries"]:
        e["accepted"] = True
    doc["entries"][0]["term"] = ["kidney_right"]
    doc["entries"][1]["file"] = {"a": 1}
    res.review_path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    plan = plan_accept(res.review_path)
    assert plan.count == 0 and len(plan.skipped) == 2 and all("unknown term or file" in s for s in plan.skipped)
    review = workdir / "templates.review.yaml"
    entry = {"bank": ["text_to_region.en"], "id": "x", "slot": "question_single", "text": VALID_1, "accepted": True}
    review.write_text(yaml.safe_dump({"kind": "templates", "data_dir": str(workdir / "langdata"),
                                      "entries": [entry]}), encoding="utf-8")
    plan = plan_accept(review)
    assert plan.count == 0 and "unknown bank" in plan.skipped[0]


def test_validate_template_uses_the_bank_rules():
    bank = yaml.safe_load((DEFAULT_DATA_DIR / "templates" / "region_to_text.zh.yaml").read_text(encoding="utf-8"))
    assert validate_template(bank, "answer_sentence", "图中框出的是{term}。", "r2t.zh.a099") is None
    assert "ASCII punctuation" in validate_template(bank, "answer_sentence", "框内是{term}.", "r2t.zh.a099")
    assert "must name the term" in validate_template(bank, "answer_sentence", "这是一个器官。", "r2t.zh.a099")
    dup = next(t["text"] for t in bank["templates"] if t["slot"] == "answer_sentence")
    assert "same text" in validate_template(bank, "answer_sentence", dup, "r2t.zh.a099")


def test_cli_expand_and_accept(llm, workdir):
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    cfg = _config(workdir, llm)
    review = workdir / "review.yaml"
    res = runner.invoke(app, ["expand", "templates", "--config", str(cfg), "--out", str(review)])
    assert res.exit_code == 0, res.output
    assert "2 proposal(s), 3 rejected" in res.output
    res = runner.invoke(app, ["expand", "accept", str(review), "--yes"])
    assert res.exit_code == 0 and "nothing to apply" in res.output
    doc = yaml.safe_load(review.read_text(encoding="utf-8"))
    for e in doc["entries"]:
        e["accepted"] = True
    review.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    res = runner.invoke(app, ["expand", "accept", str(review)], input="n\n")
    assert res.exit_code == 1 and f"+  - {{id: {_next_ids(1)[0]}" in res.output and "not applied" in res.output
    res = runner.invoke(app, ["expand", "accept", str(review), "--yes"])
    assert res.exit_code == 0, res.output
    text = (workdir / "langdata" / "templates" / "text_to_region.en.yaml").read_text(encoding="utf-8")
    assert VALID_1 in text and VALID_2 in text
