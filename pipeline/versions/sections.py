"""The dataset card's and QA report's sections about versions: the licence filter and excluded sources,
"Changes since <previous>", duplicate groups.  Rendered from the manifest alone."""

from __future__ import annotations

import html
from typing import Any

from schemas.records import Manifest


def licence_section(manifest: Manifest) -> list[str]:
    """Markdown for the card's licence section: the config's licence filter and the sources it left out."""
    lic = manifest.licences
    if lic is None or not (lic.allow or lic.deny or lic.excluded):
        return []
    lines = [f"Licence filter of the release config: allow {_list(lic.allow, '(any)')}, deny "
             f"{_list(lic.deny, '(none)')}.", ""]
    if lic.excluded:
        lines += ["Sources left out by the licence filter (not in this release):", "",
                  "| source | licence | reason |", "|---|---|---|"]
        lines += [f"| {e.name} | {e.licence} | {e.reason} |" for e in lic.excluded]
        lines.append("")
    return lines


def _list(items: list[str], empty: str) -> str:
    return ", ".join(f"`{x}`" for x in items) if items else empty


def changes_section(manifest: Manifest) -> list[str]:
    """Markdown "Changes since <previous>" from the manifest's compact diff (empty without a previous)."""
    prev = manifest.previous
    if prev is None:
        return []
    c = prev.changes
    r, im, pa = c.get("rows", {}), c.get("images", {}), c.get("patients", {})
    lines = [f"## Changes since {prev.name} {prev.version}", "",
             f"Previous release manifest sha256: `{prev.manifest_sha256}` (full diff: `changes.json`; "
             f"`medreg diff OLD NEW` recomputes it).", "",
             f"| | {prev.version} | {manifest.version} | added | removed | changed |", "|---|---|---|---|---|---|",
             f"| rows | {r.get('old', 0)} | {r.get('new', 0)} | {r.get('added', 0)} | {r.get('removed', 0)} "
             f"| {r.get('changed', 0)} |",
             f"| images | {im.get('old', 0)} | {im.get('new', 0)} | {im.get('added', 0)} | {im.get('removed', 0)} | |",
             f"| patients | {pa.get('old', 0)} | {pa.get('new', 0)} | {pa.get('added', 0)} | {pa.get('removed', 0)} "
             f"| moved split: {pa.get('moved', 0)} |"]
    lines += _sources_lines(c.get("sources", {}))
    lines += _table("Rows by source", "source", c.get("by_source", []))
    lines += _table("Rows by split", "split", c.get("by_split", []))
    if c.get("changed_fields"):
        lines += ["", "Changed rows by what changed: " + ", ".join(f"{k} {v}" for k, v in c["changed_fields"].items())
                  + "."]
    if c.get("validation_transitions"):
        lines += ["", "Verdict changes: " + ", ".join(f"{t['validator']} {t['old']} -> {t['new']}: {t['rows']}"
                                                      for t in c["validation_transitions"]) + "."]
    if c.get("regions_by_term"):
        more = c.get("terms_changed", 0) - len(c["regions_by_term"])
        lines += ["", "Regions per term (changed terms" + (f", the {len(c['regions_by_term'])} largest changes" if
                                                           more > 0 else "") + "): " +
                  ", ".join(f"{t['key']} {t['old']} -> {t['new']}" for t in c["regions_by_term"]) + "."]
    if c.get("config"):
        lines += ["", "Config changes:", ""]
        lines += [f"- `{e['key']}`: {_val(e, 'old')} -> {_val(e, 'new')}" for e in c["config"]]
    return [*lines, ""]


def _val(entry: dict[str, Any], side: str) -> str:
    return f"`{entry[side]}`" if side in entry else "(absent)"


def _sources_lines(s: dict[str, Any]) -> list[str]:
    out = []
    if s.get("added"):
        out.append(f"- sources added: {', '.join(s['added'])}")
    if s.get("removed"):
        out.append(f"- sources removed: {', '.join(s['removed'])}")
    for ch in s.get("changed", []):
        lic = ch.get("licence") or ["", ""]
        what = ", ".join(ch["changed"])
        extra = f" (licence {lic[0]} -> {lic[1]})" if "licence" in ch["changed"] else ""
        out.append(f"- source {ch['name']} changed: {what}{extra}")
    if s.get("excluded_by_licence"):
        out.append(f"- left out by the licence filter: {', '.join(s['excluded_by_licence'])}")
    return ["", *out] if out else []


def _table(title: str, key: str, rows: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in rows if r.get("added") or r.get("removed") or r.get("changed") or r["old"] != r["new"]]
    if not rows:
        return []
    out = ["", f"{title} (groups with a change):", "", f"| {key} | before | after | added | removed | changed |",
           "|---|---|---|---|---|---|"]
    out += [f"| {r[key]} | {r['old']} | {r['new']} | {r['added']} | {r['removed']} | {r['changed']} |" for r in rows]
    return out


def duplicates_html(manifest: Manifest, limit: int = 50) -> str:
    """QA report section: duplicate groups across patients and sources and what the policy did."""
    d = manifest.duplicates
    if d is None:
        return ""
    head = (f"<h2>Duplicate images across patients ({d.groups})</h2><p>policy <b>{html.escape(d.policy)}</b>, near "
            f"threshold {d.near_threshold} bits (imagehash.phash): {d.exact_groups} exact, {d.near_groups} near "
            f"groups; {d.images} images; {d.patients_moved} patients moved to their group's split; {d.rows_dropped} "
            f"rows dropped. Every group is in <code>duplicates.jsonl</code>.</p>")
    conflicts = "".join(f"<li>{html.escape(c)}</li>" for c in d.conflicts)
    if conflicts:
        head += f"<p>Conflicts (copies left in different splits):</p><ul class='err'>{conflicts}</ul>"
    rows = []
    for g in d.examples[:limit]:
        for i, m in enumerate(g.members):
            kind = f"{g.kind} (d={g.distance})" if i == 0 else ""
            moved = f" (was {html.escape(m.moved_from)})" if m.moved_from else ""
            rows.append(f"<tr><td>{kind}</td><td>{html.escape(m.source)}</td><td>{html.escape(m.case_id)}</td>"
                        f"<td>{html.escape(m.axis)} {m.slice_index}</td><td>{html.escape(m.split)}{moved}</td>"
                        f"<td>{'kept' if m.kept else 'dropped'}</td></tr>")
    table = ("<table><tr><th>group</th><th>source</th><th>case</th><th>slice</th><th>split</th><th>rows</th></tr>"
             + "".join(rows) + "</table>") if rows else ""
    return head + table
