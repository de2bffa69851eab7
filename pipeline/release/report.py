"""The static QA report (report.html).  The dataset card is :mod:`pipeline.release.card`."""

from __future__ import annotations

import html
import re
from collections import defaultdict
from typing import Any

from pipeline.versions.sections import duplicates_html
from schemas.config import ReleaseConfig
from schemas.records import Manifest

_PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
            "#469990"]


# ------------------------------------------------------------------------------------------ QA report
#
# Images are drawn at _SHOW_W CSS pixels wide, so a label's on-screen size is font-size x _SHOW_W / width.
# Every label is a glossary display name, _LABEL_PX on screen, and stays inside the image: its width is fixed
# with SVG textLength (glyphs are fitted to it), so x + textLength <= width holds exactly.

_SHOW_W = 360  # CSS px of a drawn image
_LABEL_PX = 12.0  # on-screen label size
_MIN_LABEL_PX = 9.0  # a label this small at most, before it would not fit the image width
_GLYPH_EM = 0.6  # textLength per character, in font sizes (a sans-serif's mean advance)
_REVIEW_IMAGES = 60

#: subtask -> (task, meaning) for the legend (pipeline/language/tasks.py defines the subtasks)
SUBTASKS: dict[str, tuple[str, str]] = {
    "single": ("region_to_text", "one box given; the answer names its structure"),
    "multi": ("region_to_text", "several boxes given; the answer names and grounds each structure"),
    "sr_so": ("text_to_region", "one structure asked; it has one box"),
    "sr_mo": ("text_to_region", "one structure asked; it has several boxes"),
    "mr_so": ("text_to_region", "several structures asked; one box each"),
    "mr_mo": ("text_to_region", "several structures asked; at least one has several boxes"),
    "absent": ("text_to_region", "a structure that is not on the image; the answer says so"),
    "open": ("grounded_report", "describe everything visible; one grounded line per structure"),
    "targeted": ("grounded_report", "the question names the structures to report"),
}


def _display_names(lang: str = "en") -> Any:
    """term -> glossary display name in ``lang`` (the term id, spaced, for a term the glossary lacks)."""
    from pipeline.language.glossary import load_glossary

    gl = load_glossary()

    def name(term: str) -> str:
        return gl.display(term, lang) if term in gl else term.replace("_", " ")

    return name


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _place(box: list[int], tw: float, th: float, w: int, h: int, taken: list[tuple[float, float, float, float]]):
    """Top-left corner of a tw x th label near ``box`` inside the image, overlapping placed labels least:
    above the box, inside its top, below it, inside its bottom (in that order of preference)."""
    x0, y0, x1, y1 = box
    x = min(max(float(x0), 0.0), max(w - tw, 0.0))
    best: tuple[float, float, float] | None = None
    for y in (y0 - th, float(y0), y1 + 1.0, y1 + 1.0 - th):
        y = min(max(y, 0.0), max(h - th, 0.0))
        cost = sum(_overlap((x, y, x + tw, y + th), t) for t in taken)
        if best is None or cost < best[0]:
            best = (cost, x, y)
        if cost == 0:
            break
    assert best is not None
    return best[1], best[2]


def _svg(image: str, w: int, h: int, regions: list[dict[str, Any]], name: Any) -> str:
    """The image with its boxes and display-name labels, drawn _SHOW_W px wide."""
    scale = _SHOW_W / w
    stroke = max(1.0, 2.0 / scale)
    boxes, labels = [], []
    taken: list[tuple[float, float, float, float]] = []
    for i, reg in enumerate(regions):
        x0, y0, x1, y1 = (int(v) for v in reg["box_px"])
        col = _PALETTE[i % len(_PALETTE)]
        boxes.append(f'<rect x="{x0}" y="{y0}" width="{x1 - x0 + 1}" height="{y1 - y0 + 1}" fill="none" '
                     f'stroke="{col}" stroke-width="{stroke:.2f}"/>')
        text = name(reg["term"])
        fs = min(_LABEL_PX / scale, w / (_GLYPH_EM * max(len(text), 1)))
        tw, th = _GLYPH_EM * fs * len(text), 1.25 * fs  # baseline at fs, descent below it
        lx, ly = _place([x0, y0, x1, y1], tw, th, w, h, taken)
        taken.append((lx, ly, lx + tw, ly + th))
        labels.append(
            f'<text class="lbl" x="{lx:.2f}" y="{ly + fs:.2f}" font-size="{fs:.2f}" textLength="{tw:.2f}" '
            f'lengthAdjust="spacingAndGlyphs" fill="{col}" stroke="#000" stroke-width="{fs / 6:.2f}" '
            f'paint-order="stroke" data-term="{html.escape(reg["term"])}">{html.escape(text)}</text>'
        )
    return (f'<svg viewBox="0 0 {w} {h}" width="{_SHOW_W}" height="{round(_SHOW_W * h / w)}">'
            f'<image href="{html.escape(image)}" width="{w}" height="{h}"/>{"".join(boxes)}{"".join(labels)}</svg>')


_REF = re.compile(r"&lt;ref&gt;(.*?)&lt;/ref&gt;")
_BOX = re.compile(r"&lt;box&gt;(.*?)&lt;/box&gt;")


def _turn_html(text: str) -> str:
    """A conversation turn as HTML: ``<ref>`` names bold, ``<box>`` lists small; the text stays the same."""
    text = text.removeprefix("<image>\n").replace("<image>", "")
    out = _REF.sub(r'<b class="ref">\1</b>', html.escape(text, quote=False))
    return _BOX.sub(r'<span class="box">\1</span>', out)


def _qa(row: dict[str, Any]) -> str:
    turns = [t for t in row["conversations"] if t["from"] != "system"]
    q = next((t["value"] for t in turns if t["from"] == "human"), "")
    a = next((t["value"] for t in turns if t["from"] == "gpt"), "")
    m = row["meta"]
    return (f'<div class="qa" lang="{html.escape(m["lang"])}" data-row="{html.escape(row["id"])}">'
            f'<span class="tag">{html.escape(m["lang"])} · {html.escape(m["task"])} · '
            f'{html.escape(m.get("subtask") or "")}</span><p class="q">{_turn_html(q)}</p>'
            f'<p class="a">{_turn_html(a)}</p></div>')


def _union_regions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Regions of several rows of one image, each (term, box) once, in first-seen order."""
    seen: set[tuple[str, tuple[int, ...]]] = set()
    out = []
    for r in rows:
        for reg in r["meta"]["regions"]:
            key = (reg["term"], tuple(reg["box_px"]))
            if key not in seen:
                seen.add(key)
                out.append(reg)
    return out


def _picture(rows: list[dict[str, Any]], name: Any) -> str:
    """The image of ``rows`` (all of one slice) with the boxes of all of them."""
    r0 = rows[0]
    return _svg(r0["image"], int(r0["width"]), int(r0["height"]), _union_regions(rows), name)


def _slice_key(row: dict[str, Any]) -> tuple[str, str, str, str, int]:
    m = row["meta"]
    return (m["source"], m["case_id"], m["axis"], row["image"], int(m["slice_index"]))


def _caption(row: dict[str, Any]) -> str:
    m = row["meta"]
    return (f"{m['source']} · {m['case_id']} · {m['axis']} {m['slice_index']} · {m['modality']} · "
            f"{m['body_region']}")


def _gallery(rows: list[dict[str, Any]], size: int, name: Any) -> str:
    """Per source its first images with a grounded report (those with the most languages first, then by row
    id); each shows the boxes of the shown rows and the question and answer in every language."""
    slices: dict[tuple[str, str, str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["id"]):
        if r["meta"]["task"] == "grounded_report":
            slices[_slice_key(r)].append(r)

    def order(k: tuple[str, str, str, str, int]) -> tuple[str, int, str]:
        return (k[0], -len({r["meta"]["lang"] for r in slices[k]}), slices[k][0]["id"])

    per_source: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for key in sorted(slices, key=order):
        per_source[key[0]].append(slices[key])
    take = max(1, size // max(1, len(per_source))) if size else 0
    cells = []
    for src in sorted(per_source):
        for group in per_source[src][:take]:
            shown = [next(r for r in group if r["meta"]["lang"] == lang)
                     for lang in sorted({r["meta"]["lang"] for r in group})]
            pic = _picture(shown, name)
            cap = html.escape(_caption(shown[0]))
            qa = "".join(_qa(r) for r in shown)
            cells.append(f'<figure class="item">{pic}<figcaption>{cap}</figcaption>{qa}</figure>')
    return f"<h2>Gallery (boxes drawn on the written images)</h2><div class='g'>{''.join(cells)}</div>"


def _review(rows: list[dict[str, Any]], review: list[dict[str, Any]], total: int, name: Any) -> str:
    """One card per flagged image (all its flagged rows), with the distinct reasons and the rows' tasks.
    ``review`` may be the first entries of ``total`` (the build keeps a bounded number for the report)."""
    by_id = {r["id"]: r for r in rows}
    cards: dict[tuple[str, str, str, str, int], list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for item in review:
        r = by_id.get(item["id"])
        if r is not None:
            cards[_slice_key(r)].append((item, r))
    out = []
    for key in sorted(cards)[:_REVIEW_IMAGES]:
        pairs = cards[key]
        distinct = dict.fromkeys(x for it, _ in pairs for x in it["reasons"])
        reasons = "".join(f"<li>{html.escape(x)}</li>" for x in distinct)
        which = ", ".join(sorted(f"{it['task']} {it['lang']}" for it, _ in pairs))
        out.append(
            f'<figure class="flag">{_picture([r for _, r in pairs], name)}<figcaption>'
            f'<b>{html.escape(_caption(pairs[0][1]))}</b><ul>{reasons}</ul>'
            f'<span class="rows">{len(pairs)} flagged rows: {html.escape(which)}</span></figcaption></figure>'
        )
    shown_rows = sum(len(cards[k]) for k in sorted(cards)[:_REVIEW_IMAGES])
    more = f"<p>{total - shown_rows} more flagged rows in review.jsonl</p>" if total > shown_rows else ""
    scope = f"{total} rows on {len(cards)} images" if total == len(review) else (
        f"{total} rows; the first {len(review)} on {len(cards)} images")
    return f"<h2 id='review'>Flagged for review ({scope})</h2><div class='g'>{''.join(out)}</div>{more}"


def _subtask_legend(counts: dict[str, Any]) -> str:
    """What each subtask code means, with its row count (every subtask in the release, known or not)."""
    subs = dict(counts.get("by_subtask", {}))
    rows = []
    for sub in [*SUBTASKS, *sorted(set(subs) - set(SUBTASKS))]:
        task, meaning = SUBTASKS.get(sub, ("?", "not described in the report legend"))
        rows.append(f"<tr><td><code>{html.escape(sub)}</code></td><td>{html.escape(task)}</td>"
                    f"<td>{html.escape(meaning)}</td><td class='n'>{subs.get(sub, 0)}</td></tr>")
    return ("<div class='card legend'><h3>subtasks</h3><table><tr><th>code</th><th>task</th><th>meaning</th>"
            f"<th>rows</th></tr>{''.join(rows)}</table></div>")


def _table(title: str, data: dict[str, Any]) -> str:
    """A small card: one row per key with a proportional bar."""
    if not data:
        return ""
    top = max((v for v in data.values() if isinstance(v, (int, float))), default=1) or 1
    rows = []
    for k, v in data.items():
        width = int(100 * v / top) if isinstance(v, (int, float)) else 0
        rows.append(
            f"<tr><td>{html.escape(str(k))}</td><td class='n'>{html.escape(str(v))}</td>"
            f"<td class='b'><span style='width:{width}%'></span></td></tr>"
        )
    return f"<div class='card'><h3>{html.escape(title)}</h3><table>{''.join(rows)}</table></div>"


_STYLE = (
    "<style>body{font-family:sans-serif;margin:2em;color:#222}h2{margin-top:1.4em;border-bottom:1px solid #ddd}"
    ".sum{font-size:15px}.meta{color:#666;font-size:12px}table{border-collapse:collapse}"
    "td,th{padding:1px 6px;font-size:12px;text-align:left}td.n{text-align:right}td.b{width:90px}"
    "td.b span{display:block;height:8px;background:#4363d8}"
    ".grid{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}"
    ".card{border:1px solid #ddd;border-radius:4px;padding:4px 8px}.card h3{margin:2px 0 6px;font-size:13px}"
    ".grid .card:only-child table{columns:3}"
    f".g{{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}}figure{{margin:0;width:{_SHOW_W}px}}"
    "figure svg{display:block;background:#000}figcaption{font-size:12px;margin:3px 0}"
    "text.lbl{font-family:sans-serif}"
    ".qa{font-size:12px;border-top:1px solid #eee;margin-top:4px}.qa p{margin:2px 0;white-space:pre-wrap}"
    ".qa p.q{color:#335}.qa .tag{color:#888;font-size:11px}.ref{color:#a0522d}.box{color:#999;font-size:10px}"
    "figure.flag ul{margin:2px 0;padding-left:16px}.rows{color:#666}"
    "ul.err{color:#a00;font-size:12px}</style>"
)


def render_report(manifest: Manifest, rows: list[dict[str, Any]], validated: Any, cfg: ReleaseConfig) -> str:
    c = manifest.counts
    head = [f"<h1>QA report — {html.escape(manifest.name)} {html.escape(manifest.version)}</h1>",
            f"<p class='sum'><b>{c.get('rows', 0)}</b> rows · <b>{c.get('images', 0)}</b> images · "
            f"<b>{c.get('cases', 0)}</b> cases · <b>{c.get('errors', 0)}</b> case errors · "
            f"<b>{c.get('dropped', 0)}</b> samples dropped · <b>{c.get('flagged', 0)}</b> rows flagged for review</p>",
            f"<p class='meta'>config sha256 <code>{manifest.config_sha256[:16]}…</code> · code "
            f"<code>{html.escape(manifest.code_version)}</code></p>"]
    body: list[str] = []
    if manifest.errors:
        items = "".join(f"<li><code>{html.escape(e.one_line())}</code></li>" for e in manifest.errors)
        body.append(f"<h2>Case errors</h2><ul class='err'>{items}</ul>")
    name = _display_names("en")
    body.append(_gallery(rows, cfg.output.gallery_size, name))
    if validated.review:
        total = int(getattr(validated, "review_total", len(validated.review)))
        body.append(_review(rows, validated.review, total, name))
    cards = [_table(key.replace("_", " "), c.get(key, {}))
             for key in ("by_source", "by_task", "by_lang", "by_split", "by_modality")]
    cards.append(_subtask_legend(c))
    cards.append(_table("dropped (reason → samples)", manifest.dropped))
    if c.get("validation"):
        cards.append(_table("validation (validator:verdict → samples)", c["validation"]))
    body.append(duplicates_html(manifest))
    body.append(f"<h2>Distributions</h2><div class='grid'>{''.join(cards)}</div>")
    body.append(f"<div class='grid'>{_table('regions by term', c.get('regions_by_term', {}))}</div>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(manifest.name)} QA</title>{_STYLE}"
            f"</head><body>{''.join(head)}{''.join(body)}</body></html>\n")
