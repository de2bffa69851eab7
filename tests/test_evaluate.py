"""The evaluation kit: answer parsing through the glossary, Hungarian box matching, negatives, missing
predictions, and the release round trip (perfect answers score 1.0; half-box shifts score IoU 1/3)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import orjson
import pytest

from pipeline.evaluate.run import evaluate
from pipeline.evaluate.scoring import aggregate, match_boxes, score_row
from pipeline.evaluate.text import says_absent, spot_terms, text_f1, tokenize
from pipeline.release.export import iter_release_rows
from pipeline.language.glossary import load_glossary

G = load_glossary()


def _row(task, regions, answer, *, lang="en", subtask=None, question="<image>\nQ", rid="r1", split="test"):
    return {
        "id": rid,
        "image": "images/aa/x.png",
        "width": 512,
        "height": 512,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
        "meta": {
            "task": task,
            "subtask": subtask,
            "lang": lang,
            "split": split,
            "source": "s",
            "case_id": "c",
            "axis": "axial",
            "slice_index": 0,
            "body_region": "abdomen",
            "regions": [{"term": t, "box": list(b), "box_px": [0, 0, 1, 1]} for t, b in regions],
        },
    }


def _floats(d, path=""):
    """Every float metric in a nested report dict, with its path."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _floats(v, f"{path}.{k}" if path else str(k))
    elif isinstance(d, float):
        yield path, d


# ----------------------------------------------------------------------------------------- terms


@pytest.mark.parametrize(
    "text",
    ["right kidney", "Right Kidney.", "kidney, right", "The region shows the right kidney.", "右肾", "该区域显示的是右肾。", "右侧肾脏"],
)
def test_term_spotting_goes_through_glossary_synonyms(text):
    assert spot_terms(text, G) == ["kidney_right"]


def test_chinese_spotting_uses_word_boundaries_not_characters():
    # 心 (heart) is a synonym, but 中心 ("centre") is one jieba word: no heart here
    assert spot_terms("肝位于图像中心。", G) == ["liver"]
    # the longest glossary name wins: right adrenal gland, not right kidney + something
    assert spot_terms("右肾上腺位于图像左上部", G) == ["adrenal_gland_right"]
    assert spot_terms("upper lobe of left lung and the left kidney cyst", G) == ["lung_upper_lobe_left", "kidney_cyst_left"]


def test_chinese_tokenisation_is_jieba_not_whitespace():
    toks = tokenize("肝位于图像左上部，占据较大范围。", "zh", G)
    assert "肝" in toks and "位于" in toks and "，" not in toks
    assert len(toks) > 3  # a whitespace split would give one token
    assert tokenize("The Liver, is large.", "en") == ["the", "liver", "is", "large"]
    assert text_f1("肝位于图像左上部", "肝位于图像右上部", "zh", G) < 1.0
    assert text_f1("肝位于图像左上部。", "肝 位于 图像 左上部", "zh", G) == 1.0


def test_every_absent_template_reads_as_absent_and_no_grounded_one_does():
    from pipeline.language.templates import load_templates, load_vocab

    ts = load_templates()
    v = load_vocab()
    for lang in ("en", "zh"):
        bank = ts.bank("text_to_region", lang)
        mod, image = v.modality_words("CT", lang)
        values = {"term": G.display("liver", lang), "Term": G.display("liver", lang).capitalize(), "image": image, "modality": mod,
                  "body_region": v.body_region_word("abdomen", lang),
                  "grounded": f"<ref>{G.display('liver', lang)}</ref><box>[[1, 2, 3, 4]]</box>"}
        for t in bank.slot("answer_absent"):
            assert says_absent(t.render(values)), t.id
        for t in bank.slot("answer_grounded"):
            assert not says_absent(t.render(values)), t.id


# ----------------------------------------------------------------------------------------- boxes


def test_hungarian_matching_beats_greedy():
    g1, g2 = (0, 0, 100, 100), (40, 0, 140, 100)
    p1, p2 = (25, 0, 125, 100), (60, 0, 160, 100)
    # greedy would pair p1-g2 (IoU .74) and leave p2-g1 (.25): one hit at 0.5; the optimum has two
    m = match_boxes([g1, g2], [p1, p2])
    assert m.hits[0.5] == 2
    assert m.ious == pytest.approx([0.6, 80 / 120])


def test_shift_by_half_width_gives_one_third():
    row = _row("text_to_region", [("liver", (100, 100, 300, 400))], "")
    s = score_row(row, "<ref>liver</ref><box>[[200, 100, 400, 400]]</box>", G)
    agg = aggregate([s])
    assert agg["mean_iou"] == pytest.approx(1 / 3)
    assert agg["acc@0.25"] == 1.0 and agg["acc@0.5"] == 0.0 and agg["acc@0.75"] == 0.0
    assert agg["box"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_tagged_stripped_bare_and_fullwidth_answers_score_alike():
    row = _row("text_to_region", [("kidney_right", (100, 100, 300, 300)), ("liver", (500, 100, 900, 600))], "", subtask="mr_so")
    answers = [
        "<ref>right kidney</ref><box>[[100, 100, 300, 300]]</box>, <ref>liver</ref><box>[[500, 100, 900, 600]]</box>",
        "right kidney[[100, 100, 300, 300]], liver[[500, 100, 900, 600]]",
        "The kidney, right is at [[100,100,300,300]]; the liver is located at [[500,100,900,600]].",
        "右肾［［１００，１００，３００，３００］］，肝［［５００，１００，９００，６００］］",
        "Detected: liver[[500, 100, 900, 600]], right kidney[[100, 100, 300, 300]]",
    ]
    for a in answers:
        agg = aggregate([score_row(row, a, G)])
        assert agg["acc@0.75"] == 1.0 and agg["box"]["f1"] == 1.0 and agg["object"]["f1"] == 1.0, a


def test_boxes_are_matched_per_term():
    row = _row("text_to_region", [("kidney_right", (100, 100, 300, 300)), ("kidney_left", (600, 100, 800, 300))], "")
    swapped = "<ref>right kidney</ref><box>[[600, 100, 800, 300]]</box><ref>left kidney</ref><box>[[100, 100, 300, 300]]</box>"
    agg = aggregate([score_row(row, swapped, G)])
    assert agg["acc@0.5"] == 0.0
    assert agg["per_term"]["kidney_right"]["fp"] == 1 and agg["per_term"]["kidney_right"]["fn"] == 1
    # an unnamed box goes to the ground-truth term it overlaps most
    agg = aggregate([score_row(row, "[[100, 100, 300, 300]] [[600, 100, 800, 300]]", G)])
    assert agg["acc@0.5"] == 1.0


def test_absent_negatives():
    row = _row("text_to_region", [], "The liver is not present in this image.", subtask="absent",
               question="<image>\nPlease locate <ref>liver</ref> in this CT image.")
    ok = aggregate([score_row(row, "The liver is not present in this image.", G)])
    assert ok["absent_acc"] == 1.0 and ok["boxes_pred"] == 0
    assert aggregate([score_row(row, "这张图像中没有肝。", G)])["absent_acc"] == 1.0
    bad = aggregate([score_row(row, "<ref>liver</ref><box>[[1, 2, 30, 40]]</box>", G)])
    assert bad["absent_acc"] == 0.0 and bad["box"]["precision"] == 0.0
    assert bad["per_term"]["liver"]["fp"] == 1  # the unnamed/named box is charged to the requested term
    assert aggregate([score_row(row, "", G)])["absent_acc"] == 0.0  # silence is not an answer


def test_region_to_text_metrics():
    row = _row("region_to_text", [("kidney_right", (100, 100, 300, 300))], "right kidney", subtask="single")
    assert aggregate([score_row(row, "This is the kidney, right.", G)])["accuracy"] == 1.0
    assert aggregate([score_row(row, "右肾", G)])["exact_match"] == 1.0
    wrong_side = aggregate([score_row(row, "left kidney", G)])
    assert wrong_side["accuracy"] == 0.0 and wrong_side["accuracy_lenient"] == 0.0
    parent = aggregate([score_row(row, "kidney", G)])
    assert parent["accuracy"] == 0.0 and parent["accuracy_lenient"] == 1.0
    extra = aggregate([score_row(row, "right kidney and liver", G)])
    assert extra["accuracy"] == 1.0 and extra["term_precision"] == 0.5 and extra["exact_match"] == 0.0


def test_missing_unknown_and_unreadable_predictions(tmp_path, write_rows_release):
    rel = tmp_path / "rel"
    rows = [
        _row("region_to_text", [("liver", (1, 2, 30, 40))], "liver", rid="a"),
        _row("region_to_text", [("spleen", (1, 2, 30, 40))], "spleen", rid="b"),
    ]
    write_rows_release(rel, rows)
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"id": "a", "answer": "liver"}\n{"id": "zzz", "answer": "x"}\nnot json\n{"id": "a", "answer": "liver"}\n')
    rep = evaluate(rel, preds)
    c = rep.counts
    assert c["missing"] == 1 and c["missing_ids"] == ["b"]
    assert c["unknown_ids"] == 1 and c["duplicates"] == 1 and c["invalid_lines"] == ["line 3: not valid JSON: 'not json'"]
    assert rep.groups["region_to_text/en"]["accuracy"] == 0.5  # the missing one is scored as an empty answer
    assert rep.groups["region_to_text/en"]["missing"] == 1
    rep = evaluate(rel, preds, ignore_missing=True)
    assert rep.groups["region_to_text/en"]["accuracy"] == 1.0 and rep.counts["evaluated"] == 1
    with pytest.raises(ValueError, match="none of the"):
        evaluate(rel, {"nope": "liver"})


# ----------------------------------------------------------------------------------------- release round trip


@pytest.fixture(scope="module")
def release(tmp_path_factory, samples) -> Path:
    from flows.run import build
    from schemas.config import ReleaseConfig

    cfg = ReleaseConfig.model_validate(
        {
            "name": "t",
            "version": "1",
            "sources": [{"card": "kvasir-seg"}, {"card": "biomedparse-2d"}, {"card": "totalseg-ct"}],
            "slicing": {"max_slices_per_case": 2},
            # more rows than the default and plenty of absent-target negatives
            "tasks": {"negative_ratio": 0.4, "mix": {"region_to_text": 2, "text_to_region": 2, "grounded_report": 1}},
        }
    )
    return build(cfg, tmp_path_factory.mktemp("eval-release"), samples_root=samples)


def _answers(release: Path) -> dict[str, str]:
    return {r["id"]: r["conversations"][-1]["value"] for r in iter_release_rows(release)}


def _strip_tags(text: str) -> str:
    return re.sub(r"</?(?:ref|box)>", "", text)


def test_release_has_every_task_language_and_negatives(release):
    rows = list(iter_release_rows(release))
    kinds = {(r["meta"]["task"], r["meta"]["lang"]) for r in rows}
    assert len(kinds) == 6
    assert any(r["meta"]["subtask"] == "absent" for r in rows)
    assert any(len(r["meta"]["regions"]) > 1 for r in rows if r["meta"]["task"] == "text_to_region")


@pytest.mark.parametrize("variant", ["tagged", "tags_stripped"])
def test_perfect_predictions_score_one_everywhere(release, variant):
    answers = _answers(release)
    if variant == "tags_stripped":
        answers = {k: _strip_tags(v) for k, v in answers.items()}
        assert not any("<ref>" in v for v in answers.values())
    rep = evaluate(release, answers, splits=None)
    assert rep.counts["missing"] == 0 and rep.counts["evaluated"] == len(answers)
    # 3 tasks x (en, zh, all), and the grounded reports by text source (all template here)
    assert len(rep.groups) == 12 and {k for k in rep.groups if k.startswith("grounded_report.template/")} == {
        "grounded_report.template/en", "grounded_report.template/zh", "grounded_report.template/all"}
    metrics = [(k + "." + p, v) for k, grp in rep.groups.items() for p, v in _floats(grp)]
    assert metrics
    # METEOR is below 1 even for an identical answer: its fragmentation penalty 0.5 * (1 / matches) ** 3
    bad = [(p, v) for p, v in metrics if v != 1.0 and not p.endswith(".METEOR")]
    assert not bad, bad[:10]
    meteor = [v for p, v in metrics if p.endswith(".METEOR")]
    assert meteor and all(0.9 < v < 1.0 for v in meteor)
    for lang in ("en", "zh"):
        assert {rep.groups[f"grounded_report/{lang}"][k] for k in ("BLEU-1", "BLEU-4", "ROUGE-L")} == {1.0}
    for key, grp in rep.groups.items():
        if key.startswith("text_to_region"):
            assert grp["absent_acc"] == 1.0 and grp["negatives"] > 0


def _shift(answer: str) -> tuple[str, list[float]]:
    """Shift every box right by ceil(w/2) (left when that would leave 0..999): IoU = (w-s)/(w+s)."""
    expected: list[float] = []

    def one(m: re.Match) -> str:
        x1, y1, x2, y2 = (int(v) for v in m.groups())
        w = x2 - x1
        s = math.ceil(w / 2)
        d = s if x2 + s <= 999 or x1 - s < 0 else -s
        expected.append((w - s) / (w + s))
        return f"[{x1 + d}, {y1}, {x2 + d}, {y2}]"

    return re.sub(r"\[(\d+), (\d+), (\d+), (\d+)\]", one, answer), expected


def test_half_box_shift_scores_as_iou_says(release):
    rows = {r["id"]: r for r in iter_release_rows(release)}
    shifted = {}
    expected_sum = 0.0
    n_boxes = 0
    for rid, r in rows.items():
        ans = r["conversations"][-1]["value"]
        if r["meta"]["task"] in ("text_to_region", "grounded_report"):
            ans, exp = _shift(ans)
            expected_sum += sum(exp)
            n_boxes += len(exp)
            single = all(len(v) == 1 for v in _terms(r).values())
            if single and exp:
                s = score_row(r, ans, G)
                got = sorted(x for b in s.boxes.values() for x in b.ious)
                assert got == pytest.approx(sorted(exp)), rid
                for e, reg in zip(exp, r["meta"]["regions"]):
                    w = reg["box"][2] - reg["box"][0]
                    if w % 2 == 0:
                        assert e == pytest.approx(1 / 3)
        shifted[rid] = ans
    rep = evaluate(release, shifted, splits=None)
    for key in ("text_to_region/all", "grounded_report/all"):
        g = rep.groups[key]
        assert g["acc@0.5"] == 0.0 and g["acc@0.75"] == 0.0, key
        assert g["box"]["recall"] == 0.0
    total_gt = rep.groups["text_to_region/all"]["boxes_gt"] + rep.groups["grounded_report/all"]["boxes_gt"]
    assert total_gt == n_boxes
    got_sum = sum(rep.groups[k]["mean_iou"] * rep.groups[k]["boxes_gt"] for k in ("text_to_region/all", "grounded_report/all"))
    assert got_sum >= expected_sum - 1e-9  # Hungarian can only do as well or better than the shifted pairing
    assert got_sum / n_boxes < 0.5
    # region -> text answers were untouched, so they still score 1.0, and so does the text of the reports
    assert rep.groups["region_to_text/all"]["accuracy"] == 1.0
    assert rep.groups["grounded_report/all"]["text_f1"] == 1.0


def _terms(row):
    out: dict = {}
    for reg in row["meta"]["regions"]:
        out.setdefault(reg["term"], []).append(reg["box"])
    return out


def test_missing_predictions_on_release(release):
    answers = _answers(release)
    some = dict(list(sorted(answers.items()))[::2])
    rep = evaluate(release, some, splits=None)
    assert rep.counts["missing"] == len(answers) - len(some)
    # (grounded_report.<text source> groups break grounded_report down: not counted twice)
    tasks = [g for k, g in rep.groups.items() if k.endswith("/all") and not k.startswith("grounded_report.")]
    assert sum(g["missing"] for g in tasks) == rep.counts["missing"]


def test_cli_eval_writes_json(release, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    preds = tmp_path / "preds.jsonl"
    answers = _answers(release)
    preds.write_bytes(b"".join(orjson.dumps({"id": k, "answer": v}) + b"\n" for k, v in answers.items()))
    out = tmp_path / "report.json"
    details = tmp_path / "details.jsonl"
    res = CliRunner().invoke(app, ["eval", str(preds), "--release", str(release), "--json", str(out), "--details", str(details), "--split", "train", "--split", "validation", "--split", "test"])
    assert res.exit_code == 0, res.output
    assert "text_to_region" in res.output and "missing predictions: 0" in res.output
    rep = orjson.loads(out.read_bytes())
    assert rep["groups"]["text_to_region/all"]["acc@0.5"] == 1.0
    assert len(details.read_bytes().splitlines()) == len(answers)
