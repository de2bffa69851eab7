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
            f'font-size="{max(10, w // 30)}">{html.escape(reg["term"])}</text>'
        )
    return (
        f'<svg viewBox="0 0 {w} {h}" width="256" height="{int(256 * h / w)}"><image href="{html.escape(row["image"])}" '
        f'width="{w}" height="{h}"/>{"".join(parts)}</svg>'
    )


def _table(title: str, data: dict[str, Any]) -> str:
    if not data:
        return ""
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in data.items())
    return f"<h3>{html.escape(title)}</h3><table>{rows}</table>"


def render_report(manifest: Manifest, rows: list[dict[str, Any]], validated: Any, cfg: ReleaseConfig) -> str:
    c = manifest.counts
    body = [f"<h1>QA report — {html.escape(manifest.name)} {html.escape(manifest.version)}</h1>",
            f"<p>{c.get('rows', 0)} rows, {c.get('images', 0)} images, {c.get('cases', 0)} cases, "
            f"{c.get('errors', 0)} case errors, {c.get('dropped', 0)} samples dropped, {c.get('flagged', 0)} flagged.</p>"]
    for key in ("by_source", "by_task", "by_lang", "by_split", "by_modality", "by_subtask", "regions_by_term"):
        body.append(_table(key.replace("_", " "), c.get(key, {})))
    body.append(_table("dropped (reason → samples)", manifest.dropped))
    if c.get("validation"):
        body.append(_table("validation (validator:verdict → samples)", c["validation"]))
    if manifest.errors:
        items = "".join(f"<li><code>{html.escape(e.one_line())}</code></li>" for e in manifest.errors)
        body.append(f"<h2>Case errors</h2><ul>{items}</ul>")
    # gallery: the first rows of each source (deterministic order), one per image
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
    body.append(f"<h2>Gallery (boxes drawn)</h2><div class='g'>{''.join(cells)}</div>")
    if validated.review:
        rev = []
        by_id = {r["id"]: r for r in rows}
        for item in validated.review[:60]:
            r = by_id.get(item["id"])
            pic = _svg_boxes(r) if r else ""
            rev.append(f"<figure>{pic}<figcaption>{html.escape(item['id'])}: {html.escape('; '.join(item['reasons']))}</figcaption></figure>")
        body.append(f"<h2>Flagged for review</h2><div class='g'>{''.join(rev)}</div>")
    style = ("<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:.5em 0}"
             "td{border:1px solid #ccc;padding:2px 8px}.g{display:flex;flex-wrap:wrap;gap:8px}"
             "figure{margin:0;width:260px}figcaption{font-size:11px}</style>")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(manifest.name)} QA</title>{style}</head><body>{''.join(body)}</body></html>\n"
