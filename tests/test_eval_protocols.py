"""Both evaluation protocols on hand-made predictions whose values are computed by hand, and MedRegA's
native prediction files (JSON list of {answer, gt, hw} / {question_id, pred_answer}, JSONL) with
line-numbered errors for malformed ones.

Boxes (0..999): A = [100, 100, 300, 300] (200 x 200), B = [500, 500, 700, 700], C = [800, 800, 900, 900].
A shifted right by half its width overlaps it by 100 x 200: IoU = 20000 / 60000 = 1/3.
[100, 100, 300, 200] covers the top half of A: IoU = 20000 / 40000 = 0.5 exactly.
"""

from __future__ import annotations

import orjson
import pytest

from pipeline.evaluate.medrega import aggregate_medrega, score_row_medrega
from pipeline.evaluate.predictions import PredictionFileError, load_predictions
from pipeline.evaluate.run import evaluate, evaluate_rows
from pipeline.evaluate.scoring import aggregate, score_row
from pipeline.language.glossary import load_glossary

G = load_glossary()
A, B, C = (100, 100, 300, 300), (500, 500, 700, 700), (800, 800, 900, 900)
HALF_SHIFT = (200, 100, 400, 300)
TOP_HALF = (100, 100, 300, 200)


def _b(*boxes):
    return "[" + ", ".join("[" + ", ".join(str(v) for v in b) + "]" for b in boxes) + "]"


def _g(term, *boxes):
    return f"<ref>{term}</ref><box>{_b(*boxes)}</box>"


def _row(rid, task, subtask, regions, reference, *, lang="en", question="<image>\nQ"):
    return {
        "id": rid, "image": "images/aa/x.png", "width": 640, "height": 480,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": reference}],
        "meta": {
            "task": task, "subtask": subtask, "lang": lang, "split": "test", "source": "s", "case_id": "c",
            "axis": "2d", "slice_index": 0, "body_region": "abdomen",
            "regions": [{"term": t, "box": list(b), "box_px": [0, 0, 1, 1], "area": 1, "label_id": 0} for t, b in regions],
        },
    }


# (row, prediction) per case; the reference answer of each row is its ground truth written as MedRegA does
CASES = {
    "perfect": (_row("perfect", "text_to_region", "sr_so", [("liver", A)], _g("liver", A)), _g("liver", A)),
    "half_shift": (_row("half_shift", "text_to_region", "sr_so", [("liver", A)], _g("liver", A)), _g("liver", HALF_SHIFT)),
    "wrong_term": (_row("wrong_term", "text_to_region", "sr_so", [("liver", A)], _g("liver", A)), _g("spleen", A)),
    "iou_half": (_row("iou_half", "text_to_region", "sr_so", [("liver", A)], _g("liver", A)), _g("liver", TOP_HALF)),
    "dropped": (_row("dropped", "text_to_region", "sr_mo", [("liver", A), ("liver", B)], _g("liver", A, B)),
                _g("liver", A)),
    "extra": (_row("extra", "text_to_region", "sr_mo", [("liver", A), ("liver", B)], _g("liver", A, B)),
              _g("liver", A, B, C)),
    "swapped": (_row("swapped", "text_to_region", "mr_so", [("liver", A), ("spleen", B)], _g("liver", A) + _g("spleen", B)),
                _g("liver", B) + _g("spleen", A)),
    "one_wrong_term": (_row("one_wrong_term", "text_to_region", "mr_so", [("liver", A), ("spleen", B)],
                            _g("liver", A) + _g("spleen", B)), _g("liver", A) + _g("kidney", B)),
}


def _default(case):
    row, pred = CASES[case]
    return aggregate([score_row(row, pred, G)])


def _medrega(*cases):
    return aggregate_medrega([score_row_medrega(CASES[c][0], CASES[c][1], G) for c in cases])


def test_default_protocol_by_hand():
    # per ground-truth box: IoU of its Hungarian partner of the same term; acc@t counts IoU >= t
    p = _default("perfect")
    assert p["mean_iou"] == 1.0 and p["acc@0.5"] == 1.0 and p["box"]["f1"] == 1.0
    s = _default("half_shift")
    assert s["mean_iou"] == pytest.approx(1 / 3)
    assert (s["acc@0.25"], s["acc@0.5"], s["acc@0.75"]) == (1.0, 0.0, 0.0)
    w = _default("wrong_term")  # a box named "spleen" never matches the liver
    assert w["mean_iou"] == 0.0 and w["acc@0.25"] == 0.0 and w["box"]["precision"] == 0.0
    assert w["per_term"]["spleen"]["fp"] == 1 and w["per_term"]["liver"]["fn"] == 1
    h = _default("iou_half")  # IoU exactly 0.5 counts at 0.5 (>=)
    assert h["mean_iou"] == 0.5 and h["acc@0.5"] == 1.0 and h["acc@0.75"] == 0.0
    d = _default("dropped")  # per box: IoUs 1 and 0
    assert d["mean_iou"] == 0.5 and d["acc@0.5"] == 0.5
    assert d["box"]["precision"] == 1.0 and d["box"]["recall"] == 0.5 and d["box"]["f1"] == pytest.approx(2 / 3)
    e = _default("extra")
    assert e["mean_iou"] == 1.0 and e["acc@0.5"] == 1.0
    assert e["box"]["precision"] == pytest.approx(2 / 3) and e["box"]["recall"] == 1.0 and e["box"]["f1"] == pytest.approx(0.8)
    sw = _default("swapped")
    assert sw["mean_iou"] == 0.0 and sw["box"]["f1"] == 0.0
    # pooled over every case: 12 ground-truth and 12 predicted boxes, IoU sum 1 + 1/3 + 0 + .5 + 1 + 2 + 0 + 1
    rows = [CASES[c][0] for c in CASES]
    rep = evaluate_rows(rows, {c: CASES[c][1] for c in CASES}, protocol="default")
    g = rep.groups["text_to_region/en"]
    assert g["boxes_gt"] == 12 and g["boxes_pred"] == 12
    assert g["mean_iou"] == pytest.approx((1 + 1 / 3 + 0 + 0.5 + 1 + 2 + 0 + 1) / 12)
    assert g["acc@0.5"] == pytest.approx(6 / 12) and g["acc@0.75"] == pytest.approx(5 / 12)


def test_medrega_ss_ignores_terms_and_counts_iou_strictly_above_t():
    one = {c: _medrega(c) for c in ("perfect", "half_shift", "wrong_term", "iou_half")}
    assert {c: m["iou"] for c, m in one.items()} == pytest.approx(
        {"perfect": 1.0, "half_shift": 1 / 3, "wrong_term": 1.0, "iou_half": 0.5})
    assert one["wrong_term"]["acc@0.5"] == 1.0  # the box is right, the term is not compared
    assert one["iou_half"]["acc@0.5"] == 0.0 and one["iou_half"]["acc@0.25"] == 1.0  # IoU > t, not >=
    ss = _medrega("perfect", "half_shift", "wrong_term", "iou_half")
    assert ss["evaluator"] == "SS" and ss["samples"] == 4
    assert ss["iou"] == pytest.approx((1 + 1 / 3 + 1 + 0.5) / 4)  # mean over samples
    assert (ss["acc@0.25"], ss["acc@0.5"], ss["acc@0.75"]) == (1.0, 0.5, 0.5)
    assert ss["paper_keys"] == {"acc25": 1.0, "acc50": 0.5, "acc75": 0.5, "iou": ss["iou"]}


def test_medrega_sm_per_sample_means_at_iou_075():
    d, e = _medrega("dropped"), _medrega("extra")
    assert (d["recall"], d["precision"], d["f1"], d["iou"]) == pytest.approx((0.5, 1.0, 2 / 3, 1.0))
    assert (e["recall"], e["precision"], e["f1"], e["iou"]) == pytest.approx((1.0, 2 / 3, 0.8, 1.0))
    sm = _medrega("dropped", "extra")
    assert sm["evaluator"] == "SM"
    assert sm["recall"] == pytest.approx(0.75) and sm["precision"] == pytest.approx(5 / 6)
    assert sm["f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert sm["iou"] == pytest.approx(1.0)  # (1 + 2) IoU over 1 + 2 assigned pairs
    # MedRegA's code prints matches / ground truth as "precision": the paper keys keep its names
    assert sm["paper_keys"]["precision"] == sm["recall"] and sm["paper_keys"]["recall"] == sm["precision"]


def test_medrega_ms_boxes_without_terms_then_object_alignment():
    sw = _medrega("swapped")  # both boxes found, both named wrong
    assert sw["evaluator"] == "MS"
    assert sw["box_recall"] == 1.0 and sw["box_precision"] == 1.0 and sw["box_iou"] == 1.0
    assert sw["object_recall"] == 0.0 and sw["object_box_recall"] == 0.0 and sw["object_box_alignment"] == 0.0
    assert sw["object_iou"] is None  # MedRegA: 2.0 / 0 -> inf
    ow = _medrega("one_wrong_term")  # "kidney" is neither in "spleen" nor contains it
    assert ow["object_recall"] == 0.5 and ow["object_box_recall"] == 0.5 and ow["object_box_alignment"] == 0.5
    assert ow["object_iou"] == 1.0  # MedRegA's MS sums the IoU of every pair over aligned pairs: 2.0
    assert ow["object_box_detection"] == 1.0


def test_region_to_text_both_protocols():
    row = _row("r", "region_to_text", "single", [("liver", A)], "liver", question=f"<image>\nWhat is in {_b(A)}?")
    for pred, default_acc, medrega in [
        ("liver", 1.0, {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0, "bleu1": 1.0}),
        ("the liver", 1.0, {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "accuracy": 1.0, "bleu1": 0.5}),
        # MedRegA splits on whitespace only: "liver." is not the token "liver"
        ("The box marks the liver.", 1.0, {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0, "bleu1": 0.0}),
        ("spleen", 0.0, {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0, "bleu1": 0.0}),
    ]:
        assert aggregate([score_row(row, pred, G)])["accuracy"] == default_acc, pred
        got = aggregate_medrega([score_row_medrega(row, pred, G)])
        assert {k: got[k] for k in medrega} == pytest.approx(medrega), pred


def test_grounded_report_and_negatives_under_medrega():
    ref = _g("liver", A) + ": the liver is large.\n" + _g("spleen", B) + ": the spleen is small."
    row = _row("gr", "grounded_report", "open", [("liver", A), ("spleen", B)], ref)
    gr = aggregate_medrega([score_row_medrega(row, ref, G)])
    assert gr["evaluator"] == "GR" and gr["box_f1"] == 1.0 and gr["object_box_f1"] == 1.0 and gr["bleu1"] == 1.0
    neg = _row("neg", "text_to_region", "absent", [], "The liver is not present in this image.",
               question="<image>\nPlease locate <ref>liver</ref>.")
    # MedRegA's SS evaluator raises IndexError on a row without a target box answered with a box
    boxed = aggregate_medrega([score_row_medrega(neg, _g("liver", A), G)])
    assert boxed["evaluator"] == "negative" and boxed["absent_acc"] == 0.0
    said = aggregate_medrega([score_row_medrega(neg, "The liver is not present in this image.", G)])
    assert said["absent_acc"] == 1.0


def test_evaluate_groups_medrega_by_evaluator(tmp_path, write_rows_release):
    rows = [CASES[c][0] for c in CASES]
    rel = write_rows_release(tmp_path / "rel", rows)
    rep = evaluate(rel, {c: CASES[c][1] for c in CASES}, protocol="medrega")
    assert rep.protocol == "medrega"
    assert set(rep.groups) == {f"text_to_region.{s}/{lang}" for s in ("sr_so", "sr_mo", "mr_so") for lang in ("en", "all")}
    assert rep.groups["text_to_region.sr_so/en"]["acc@0.5"] == 0.5
    assert rep.groups["text_to_region.sr_mo/all"]["evaluator"] == "SM"
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate(rel, {"perfect": "x"}, protocol="paper")


# ----------------------------------------------------------------------------------------- prediction files


def test_medrega_native_files(tmp_path, write_rows_release):
    rows = [CASES[c][0] for c in ("perfect", "dropped", "swapped")]
    rel = write_rows_release(tmp_path / "rel", rows)
    # demo.py: a JSON list of {question, question_id, pred_answer, gt_answer}
    demo = tmp_path / "demo.json"
    demo.write_bytes(orjson.dumps([
        {"question": "q", "question_id": r["id"], "pred_answer": CASES[r["id"]][1], "gt_answer": "x"} for r in rows]))
    # the detection evaluators: a JSON list of {answer, gt, hw}, no id: found by the reference answer
    t2r = tmp_path / "regt2r.json"
    t2r.write_bytes(orjson.dumps([{"answer": CASES[r["id"]][1], "gt": r["conversations"][-1]["value"], "hw": [480, 640]}
                                  for r in rows]))
    # JSONL with question_id / pred_answer
    jl = tmp_path / "preds.jsonl"
    jl.write_bytes(b"".join(orjson.dumps({"question_id": r["id"], "pred_answer": CASES[r["id"]][1]}) + b"\n" for r in rows))
    reports = [evaluate(rel, f, protocol="medrega") for f in (demo, t2r, jl)]
    for rep in reports:
        assert rep.counts["evaluated"] == 3 and rep.counts["missing"] == 0 and rep.counts["invalid"] == 0
        assert rep.groups["text_to_region.sr_mo/en"]["recall"] == 0.5
        assert rep.groups == reports[0].groups


def test_unmatched_and_ambiguous_references_are_reported(tmp_path, write_rows_release):
    rows = [CASES[c][0] for c in ("perfect", "half_shift")]  # both rows have the reference <ref>liver</ref> A
    rel = write_rows_release(tmp_path / "rel", rows)
    f = tmp_path / "regt2r.json"
    f.write_bytes(orjson.dumps([
        {"question_id": "perfect", "answer": _g("liver", A)},
        {"answer": _g("liver", A), "gt": _g("liver", A), "hw": [480, 640]},
        {"answer": _g("liver", A), "gt": "something else", "hw": [480, 640]},
    ]))
    rep = evaluate(rel, f)
    assert rep.counts["invalid_lines"] == [
        "entry 2: its reference answer (gt) is the answer of 2 release rows; add \"question_id\" (the row id) to tell them apart",
        "entry 3: its reference answer (gt) is not the answer of any release row",
    ]
    assert rep.counts["evaluated"] == 2 and rep.counts["missing"] == 1


def test_malformed_files_name_their_lines(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "answer": "x"\n\n{"answer": "x"}\n{"id": "b", "answer": 3}\n[1, 2]\n')
    with pytest.raises(PredictionFileError) as exc:
        load_predictions(bad)
    msg = str(exc.value)
    assert "none of its 4 entries is a usable prediction" in msg
    assert "line 1: not valid JSON" in msg
    assert "line 3: no id field" in msg
    assert "line 4: answer is a int, expected text" in msg
    assert "line 5: a list, expected an object" in msg
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "a", "answer": "x"},\n {"id": "b" "answer": "y"}]\n')
    with pytest.raises(PredictionFileError, match=r"not valid JSON \(line 2, column"):
        load_predictions(broken)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(PredictionFileError, match="empty file"):
        load_predictions(empty)
    # some good lines: the bad ones are listed, not fatal
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"id": "a", "answer": "x"}\nnope\n{"id": "a", "answer": "y"}\n')
    p = load_predictions(mixed)
    assert p.answers == {"a": "y"} and p.duplicates == 1 and p.invalid == ["line 2: not valid JSON: 'nope'"]


def test_cli_eval_medrega_and_malformed(tmp_path, write_rows_release):
    from typer.testing import CliRunner

    from flows.cli import app

    rows = [CASES[c][0] for c in CASES]
    rel = write_rows_release(tmp_path / "rel", rows)
    preds = tmp_path / "p.json"
    preds.write_bytes(orjson.dumps([{"question_id": c, "pred_answer": CASES[c][1]} for c in CASES]))
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["eval", str(preds), "-r", str(rel), "--protocol", "medrega", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "text_to_region.sr_so" in res.output and "protocol: medrega" in res.output
    assert orjson.loads(out.read_bytes())["groups"]["text_to_region.sr_so/en"]["acc@0.5"] == 0.5
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{'id': 1}\n")
    res = CliRunner().invoke(app, ["eval", str(bad), "-r", str(rel)])
    assert res.exit_code == 2 and "line 1: not valid JSON" in res.output
