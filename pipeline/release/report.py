"""Dataset card (HF-style README.md) and the static QA report (report.html)."""

from __future__ import annotations

import html
from collections import defaultdict
from typing import Any

from schemas.config import ReleaseConfig
from schemas.records import Manifest

_PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990"]


def render_card(manifest: Manifest, prepared: list[Any]) -> str:
    configs: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for s in manifest.shards:
        configs[f"{s.task}.{s.lang}"][s.split].append(s.path)
    lines = ["---", "license: other", "language:", "- en", "- zh", "task_categories:", "- visual-question-answering",
             "- object-detection", "tags:", "- medical", "- grounding", "- region-centric", "configs:"]
    for name in sorted(configs):
        lines.append(f"- config_name: {name}")
        lines.append("  data_files:")
        for split in sorted(configs[name]):
            lines.append(f"  - split: {split}")
            lines.append("    path:")
            for p in sorted(configs[name][split]):
                lines.append(f"    - {p}")
    lines += ["---", "", f"# {manifest.name} {manifest.version}", "",
              "Region-centric bilingual (English/Chinese) medical instruction data in the MedRegA/InternVL chat format, "
              "built by the MedRegInstruct builder from public datasets.", "",
              f"- config sha256: `{manifest.config_sha256}`", f"- code version: `{manifest.code_version}`",
              f"- rows: {manifest.counts.get('rows', 0)}, images: {manifest.counts.get('images', 0)}, "
              f"cases: {manifest.counts.get('cases', 0)}, case errors: {manifest.counts.get('errors', 0)}", "",
              "## Sources and licences", "", "Each row carries its source licence in `meta.licence`.", "",
              "| source | title | licence | modality | cases | errors |", "|---|---|---|---|---|---|"]
    for s in manifest.sources:
        lines.append(f"| {s.name} | {s.title} | {s.licence} | {s.modality} | {s.cases} | {s.errors} |")
    notes = [p.card for p in prepared if p.card is not None]
    if notes:
        lines += ["", "### Licence notes and citations", ""]
        for c in notes:
            lines.append(f"- **{c.name}**: {c.licence_note.strip() or c.licence}" + (f" Cite: {c.citation}" if c.citation else ""))
    lines += ["", "## Counts", "", "| split | task | lang | rows |", "|---|---|---|---|"]
    agg: dict[tuple[str, str, str], int] = defaultdict(int)
    for s in manifest.shards:
        agg[(s.split, s.task, s.lang)] += s.lines
    for (split, task, lang), n in sorted(agg.items()):
        lines.append(f"| {split} | {task} | {lang} | {n} |")
    lines += ["", "## Format", "",
              "Each JSONL line: `{id, image, width, height, conversations: [{from: human, value: \"<image>\\n...\"}, "
              "{from: gpt, value}], meta}`. Boxes are `<ref>term</ref><box>[[x1, y1, x2, y2]]</box>` with integers "
              "0-999 (continuous pixel edges scaled by 999/size). `meta.regions` gives every box in 0-999 and in "
              "inclusive pixels. Images are content-addressed PNGs under `images/`. Patient ids are one-way hashes; "
              "splits are by patient. `manifest.json` lists every file with its sha256 (`medreg verify` checks them).", ""]
    return "\n".join(lines)


def _svg_boxes(row: dict[str, Any]) -> str:
    w, h = row["width"], row["height"]
    parts = []
    for i, reg in enumerate(row["meta"]["regions"]):
        x0, y0, x1, y1 = reg["box_px"]
        col = _PALETTE[i % len(_PALETTE)]
        parts.append(
            f'<rect x="{x0}" y="{y0}" width="{x1 - x0 + 1}" height="{y1 - y0 + 1}" fill="none" stroke="{col}" '
            f'stroke-width="{max(1, w // 200)}"/><text x="{x0}" y="{max(y0 - 2, 10)}" fill="{col}" '
            f'font-size="{max(3, w // 35)}">{html.escape(reg["term"])}</text>'
        )
    return (
        f'<svg viewBox="0 0 {w} {h}" width="256" height="{int(256 * h / w)}"><image href="{html.escape(row["image"])}" '
        f'width="{w}" height="{h}"/>{"".join(parts)}</svg>'
    )


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


def render_report(manifest: Manifest, rows: list[dict[str, Any]], validated: Any, cfg: ReleaseConfig) -> str:
    c = manifest.counts
    head = [f"<h1>QA report — {html.escape(manifest.name)} {html.escape(manifest.version)}</h1>",
            f"<p class='sum'><b>{c.get('rows', 0)}</b> rows · <b>{c.get('images', 0)}</b> images · "
            f"<b>{c.get('cases', 0)}</b> cases · <b>{c.get('errors', 0)}</b> case errors · "
            f"<b>{c.get('dropped', 0)}</b> samples dropped · <b>{c.get('flagged', 0)}</b> flagged for review</p>",
            f"<p class='meta'>config sha256 <code>{manifest.config_sha256[:16]}…</code> · code "
            f"<code>{html.escape(manifest.code_version)}</code></p>"]
    body: list[str] = []
    if manifest.errors:
        items = "".join(f"<li><code>{html.escape(e.one_line())}</code></li>" for e in manifest.errors)
        body.append(f"<h2>Case errors</h2><ul class='err'>{items}</ul>")
    # gallery: grounded-report rows (all boxes of a slice), the first ones of each source by id
    seen: set[str] = set()
    per_source: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r["meta"]["source"], r["id"])):
        if r["image"] in seen or r["meta"]["task"] != "grounded_report":
            continue
        seen.add(r["image"])
        per_source[r["meta"]["source"]].append(r)
    n_src = max(1, len(per_source))
    take = max(1, cfg.output.gallery_size // n_src) if cfg.output.gallery_size else 0
    cells = []
    for src in sorted(per_source):
        for r in per_source[src][:take]:
            m = r["meta"]
            cap = f"{m['source']} · {m['case_id']} · {m['axis']} {m['slice_index']} · {m['modality']}"
            cells.append(f"<figure>{_svg_boxes(r)}<figcaption>{html.escape(cap)}</figcaption></figure>")
    body.append(f"<h2>Gallery (boxes drawn on the written images)</h2><div class='g'>{''.join(cells)}</div>")
    if validated.review:
        rev = []
        by_id = {r["id"]: r for r in rows}
        for item in validated.review[:60]:
            r = by_id.get(item["id"])
            pic = _svg_boxes(r) if r else ""
            rev.append(f"<figure>{pic}<figcaption><b>{html.escape(item['source'])}/{html.escape(item['case_id'])}</b> "
                       f"{html.escape('; '.join(item['reasons']))}</figcaption></figure>")
        total = getattr(validated, "review_total", len(validated.review))
        more = f"<p>{total - min(60, len(validated.review))} more in review.jsonl</p>" if total > 60 else ""
        body.append(f"<h2>Flagged for review ({total})</h2><div class='g'>{''.join(rev)}</div>{more}")
    cards = [_table(key.replace("_", " "), c.get(key, {}))
             for key in ("by_source", "by_task", "by_lang", "by_split", "by_modality", "by_subtask")]
    cards.append(_table("dropped (reason → samples)", manifest.dropped))
    if c.get("validation"):
        cards.append(_table("validation (validator:verdict → samples)", c["validation"]))
    body.append(f"<h2>Distributions</h2><div class='grid'>{''.join(cards)}</div>")
    body.append(f"<div class='grid'>{_table('regions by term', c.get('regions_by_term', {}))}</div>")
    style = ("<style>body{font-family:sans-serif;margin:2em;color:#222}h2{margin-top:1.4em;border-bottom:1px solid #ddd}"
             ".sum{font-size:15px}.meta{color:#666;font-size:12px}table{border-collapse:collapse}"
             "td{padding:1px 6px;font-size:12px}td.n{text-align:right}td.b{width:90px}"
             "td.b span{display:block;height:8px;background:#4363d8}"
             ".grid{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}"
             ".card{border:1px solid #ddd;border-radius:4px;padding:4px 8px}.card h3{margin:2px 0 6px;font-size:13px}"
             ".grid .card:only-child table{columns:3}"
             ".g{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;width:260px}figcaption{font-size:11px}"
             "ul.err{color:#a00;font-size:12px}</style>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(manifest.name)} QA</title>{style}"
            f"</head><body>{''.join(head)}{''.join(body)}</body></html>\n")
