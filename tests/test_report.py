"""The QA report (report.html) of a release built from the real samples, parsed (issue 12 C12).

Facts asserted: box labels are the glossary display names, at least 11 CSS px on screen and inside the image;
each gallery item shows its question and answer in English and Chinese; a subtask legend; one card per
flagged image; and the stats validator groups by body region, so the neck-level spinal cord of the Visible
Human slices is not judged against abdominal slices.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from bs4 import BeautifulSoup

from pipeline.language.glossary import load_glossary
from flows.run import build
from pipeline.release.report import SUBTASKS
from schemas.config import ReleaseConfig

SOURCES = ["totalseg-ct", "totalseg-mr", "sam-med2d", "rtstruct-visible-human", "biomedparse-2d"]
TAG = re.compile(r"</?(?:ref|box)>")


def _cfg(sources: list[str], **stats) -> ReleaseConfig:
    return ReleaseConfig.model_validate(
        {
            "name": "rep",
            "version": "1",
            "seed": 11,
            "sources": [{"card": c} for c in sources],
            "slicing": {"axes": ["axial"], "min_spacing_mm": 3, "max_slices_per_case": 12},
            "validation": {"validators": ["rules", "stats"], "stats": stats},
        }
    )


def _rows(release: Path) -> list[dict]:
    return [orjson.loads(x) for p in sorted((release / "data").rglob("*.jsonl")) for x in p.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def release(tmp_path_factory, samples):
    return build(_cfg(SOURCES), tmp_path_factory.mktemp("report"), samples_root=samples)


@pytest.fixture(scope="module")
def page(release):
    return BeautifulSoup((release / "report.html").read_text(encoding="utf-8"), "html.parser")


def _turn(row: dict, who: str) -> str:
    text = next(t["value"] for t in row["conversations"] if t["from"] == who)
    return TAG.sub("", text.removeprefix("<image>\n"))


def test_box_labels_are_display_names_readable_and_inside_the_image(page, release):
    gl = load_glossary()
    svgs = page.select("figure svg")
    assert len(svgs) >= 10
    n_labels = 0
    for svg in svgs:
        _, _, w, h = (float(v) for v in svg["viewbox"].split())
        scale = float(svg["width"]) / w
        labels, rects = svg.select("text.lbl"), svg.select("rect")
        assert labels and len(labels) == len(rects)
        for t in labels:
            n_labels += 1
            assert t.get_text() == gl.display(t["data-term"], "en")  # the display name, never the term id
            fs, x, y, length = (float(t[k]) for k in ("font-size", "x", "y", "textlength"))
            assert fs * scale >= 11.0, (t.get_text(), fs * scale)  # readable on screen (CSS px)
            # textLength with spacingAndGlyphs fixes the drawn width: the label box lies inside the image
            assert t["lengthadjust"] == "spacingAndGlyphs"
            assert x >= 0 and x + length <= w + 1e-6, (t.get_text(), x, length, w)
            assert y - fs >= -1e-6 and y + 0.25 * fs <= h + 1e-6, (t.get_text(), y, fs, h)
    assert n_labels >= 50
    # e.g. the SA-Med2D s0114 slice: heart and lung structures labelled by name, no label is a term id
    labels = page.select("text.lbl")
    assert {"heart_ventricle_left", "lung_lower_lobe_right"} <= {t["data-term"] for t in labels}
    assert not [t.get_text() for t in labels if "_" in t.get_text()]


def test_gallery_items_show_question_and_answer_in_both_languages(page, release):
    rows = {r["id"]: r for r in _rows(release)}
    items = page.select("figure.item")
    assert len(items) >= 10
    assert {r["meta"]["source"] for r in rows.values()} == set(SOURCES)
    for fig in items:
        image = fig.select_one("svg image")["href"]
        qa = {d["lang"]: d for d in fig.select("div.qa")}
        assert set(qa) == {"en", "zh"}, fig.figcaption.get_text()
        for lang, div in qa.items():
            row = rows[div["data-row"]]
            assert row["image"] == image and row["meta"]["lang"] == lang
            assert div.select_one("p.q").get_text() == _turn(row, "human")
            assert div.select_one("p.a").get_text() == _turn(row, "gpt")
        # Chinese answers are written in Chinese; the ref names are the row language's display names
        assert re.search(r"[\u4e00-\u9fff]", qa["zh"].select_one("p.a").get_text())
        gl = load_glossary()
        for ref in qa["zh"].select("b.ref"):
            assert gl.resolve(ref.get_text(), "zh") is not None, ref.get_text()


def test_subtask_legend_explains_every_subtask_with_its_count(page, release):
    m = orjson.loads((release / "manifest.json").read_bytes())
    legend = page.select_one("div.legend")
    rows = {tr.select("td")[0].get_text(): [td.get_text() for td in tr.select("td")] for tr in legend.select("tr")[1:]}
    assert set(m["counts"]["by_subtask"]) <= set(rows)
    for sub, n in m["counts"]["by_subtask"].items():
        code, task, meaning, count = rows[sub]
        assert (task, meaning) == SUBTASKS[sub] and int(count) == n


def test_one_card_per_flagged_image(page, release):
    rows = {r["id"]: r for r in _rows(release)}
    review = [orjson.loads(x) for x in (release / "review.jsonl").read_bytes().splitlines()]
    per_image: dict[tuple, list[dict]] = {}
    for item in review:
        m = rows[item["id"]]["meta"]
        per_image.setdefault((item["image"], m["source"], m["case_id"], m["axis"], m["slice_index"]), []).append(item)
    assert len(per_image) < len(review)  # several rows of one image are flagged: the case the cards group
    cards = page.select("figure.flag")
    assert len(cards) == len(per_image)
    seen = set()
    for card in cards:
        image = card.select_one("svg image")["href"]
        caption = card.figcaption.b.get_text()
        key = next(k for k in per_image if k[0] == image and f"{k[1]} · {k[2]} · {k[3]} {k[4]}" in caption)
        assert key not in seen
        seen.add(key)
        items = per_image[key]
        assert card.select_one(".rows").get_text().startswith(f"{len(items)} flagged rows")
        reasons = [li.get_text() for li in card.select("li")]
        assert len(reasons) == len(set(reasons)) and set(reasons) == {x for it in items for x in it["reasons"]}
    assert f"{len(review)} rows flagged for review" in page.select_one("p.sum").get_text()
    heading = page.select_one("h2#review").get_text()
    assert heading == f"Flagged for review ({len(review)} rows on {len(per_image)} images)"


def test_stats_judge_the_neck_level_spinal_cord_only_with_neck_slices(release, tmp_path, samples):
    rows = _rows(release)
    cord = [r for r in rows if r["meta"]["source"] == "rtstruct-visible-human"]
    assert cord and {r["meta"]["body_region"] for r in cord} == {"neck"}
    review = [orjson.loads(x) for x in (release / "review.jsonl").read_bytes().splitlines()]
    assert not [x for x in review if x["source"] == "rtstruct-visible-human"]
    stats = [v for r in cord for v in r["meta"]["validation"] if v["validator"] == "stats"]
    assert stats and all(v["verdict"] == "pass" for v in stats)
    # grouped without the body region, the same neck-level cord is an outlier among the abdominal slices
    old = build(_cfg(["totalseg-ct", "rtstruct-visible-human"], group_by=["modality", "axis", "term"]), tmp_path,
                samples_root=samples)
    flagged = [orjson.loads(x) for x in (old / "review.jsonl").read_bytes().splitlines()]
    neck = [x for x in flagged if x["source"] == "rtstruct-visible-human"]
    assert neck and all(re.search(r"outlier_\w+: spinal_cord", " ".join(x["reasons"])) for x in neck)


def test_labels_of_boxes_at_the_image_corners_stay_inside():
    """Boxes touching each corner of a small (225 x 155, SA-Med2D s0619 size) image, long display names."""
    from pipeline.release.report import _display_names, _svg

    w, h = 225, 155
    boxes = [[0, 0, 20, 15], [200, 0, 224, 12], [0, 140, 30, 154], [190, 130, 224, 154], [100, 70, 110, 80]]
    terms = ["autochthon_right", "lung_middle_lobe_right", "portal_vein_and_splenic_vein", "gluteus_maximus_left",
             "liver"]
    regions = [{"term": t, "box_px": b} for t, b in zip(terms, boxes, strict=True)]
    svg = BeautifulSoup(_svg("images/x.png", w, h, regions, _display_names("en")), "html.parser")
    labels = svg.select("text.lbl")
    gl = load_glossary()
    assert [t.get_text() for t in labels] == [gl.display(t, "en") for t in terms]
    for t in labels:
        fs, x, y, length = (float(t[k]) for k in ("font-size", "x", "y", "textlength"))
        assert fs * float(svg.svg["width"]) / w >= 11.0
        assert x >= 0 and x + length <= w + 1e-6 and y - fs >= -1e-6 and y + 0.25 * fs <= h + 1e-6, t.get_text()


def test_a_bounded_review_sample_says_how_many_more(release):
    """The build keeps the first review entries for the report; the heading and the footer say so."""
    from pipeline.release.report import render_report
    from pipeline.release.shards import ReportInputs
    from schemas.records import Manifest

    manifest = Manifest.model_validate(orjson.loads((release / "manifest.json").read_bytes()))
    rows = _rows(release)
    review = [orjson.loads(x) for x in (release / "review.jsonl").read_bytes().splitlines()]
    first = review[:3]
    cfg = ReleaseConfig.model_validate(manifest.config)
    page = BeautifulSoup(render_report(manifest, rows, ReportInputs(first, len(review)), cfg), "html.parser")
    by_id = {r["id"]: r for r in rows}
    images = {(by_id[x["id"]]["image"], by_id[x["id"]]["meta"]["slice_index"]) for x in first}
    assert page.select_one("h2#review").get_text() == (
        f"Flagged for review ({len(review)} rows; the first 3 on {len(images)} images)")
    assert len(page.select("figure.flag")) == len(images)
    assert f"{len(review) - 3} more flagged rows in review.jsonl" in page.get_text()
