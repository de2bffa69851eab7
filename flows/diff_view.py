"""Terminal tables of a release diff (``medreg diff``; the diff itself is pipeline.versions.diff)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def _count_table(title: str, key: str | list[str], rows: list[dict[str, Any]], only_changed: bool = False) -> Table:
    keys = [key] if isinstance(key, str) else key
    t = Table(title=title)
    for k in keys:
        t.add_column(k)
    for col in ("before", "after", "added", "removed", "changed"):
        t.add_column(col, justify="right")
    for r in rows:
        if only_changed and not (r["added"] or r["removed"] or r["changed"]):
            continue
        t.add_row(*(Text(str(r[k])) for k in keys), *(str(r[c]) for c in ("old", "new", "added", "removed", "changed")))
    return t


def _before_after(title: str, entries: list[dict[str, Any]], only_changed: bool = True) -> Table | None:
    rows = [e for e in entries if e["delta"] or not only_changed]
    if not rows:
        return None
    t = Table(title=title)
    t.add_column("key")
    for col in ("before", "after", "change"):
        t.add_column(col, justify="right")
    for e in rows:
        t.add_row(Text(e["key"]), str(e["old"]), str(e["new"]), f"{e['delta']:+d}")
    return t


def print_diff(d: dict[str, Any], console: Console, full: bool = False) -> None:
    """Human tables: totals, per source/task/lang/split, fields, images, terms, config, verdicts."""
    o, n, r = d["old"], d["new"], d["rows"]
    console.print(f"{o['name']} {o['version']} -> {n['name']} {n['version']}: "
                  f"{r['old']} -> {r['new']} rows; added {r['added']}, removed {r['removed']}, "
                  f"changed {r['changed']}, unchanged {r['unchanged']}", markup=False, highlight=False)
    for key in ("source", "task", "lang", "split"):
        console.print(_count_table(f"rows by {key}", key, d["by"][key]))
    if full:
        console.print(_count_table("rows by source / task / lang / split (groups with a change)",
                                   ["source", "task", "lang", "split"], d["groups"], only_changed=True))
    if d["changed_fields"]:
        t = Table(title="changed rows: what differs")
        t.add_column("part")
        t.add_column("rows", justify="right")
        for k, v in d["changed_fields"].items():
            t.add_row(Text(k), str(v))
        console.print(t)
    im, pa = d["images"], d["patients"]
    console.print(f"images: {im['old']} -> {im['new']} (added {im['added']}, removed {im['removed']}); "
                  f"patients: {pa['old']} -> {pa['new']} (added {pa['added']}, removed {pa['removed']}, "
                  f"moved to another split {pa['moved']})", markup=False, highlight=False)
    _sources(d["sources"], console)
    for title, entries in (("regions per term (changed terms)", d["regions_by_term"]),
                           ("validation verdict counts (changed)", d["validation"]["counts"]),
                           ("dropped by reason (changed)", d["dropped"])):
        table = _before_after(title, entries)
        if table is not None:
            console.print(table)
    if d["validation"]["transitions"]:
        t = Table(title="verdict transitions (rows present in both)")
        for col in ("validator", "before", "after", "rows"):
            t.add_column(col)
        for e in d["validation"]["transitions"]:
            t.add_row(*(Text(str(e[k])) for k in ("validator", "old", "new", "rows")))
        console.print(t)
    if d["config"]:
        t = Table(title="config changes")
        for col in ("key", "before", "after"):
            t.add_column(col)
        for e in d["config"]:
            t.add_row(Text(e["key"]), *(Text(repr(e[side]) if side in e else "(absent)") for side in ("old", "new")))
        console.print(t)


def _sources(s: dict[str, Any], console: Console) -> None:
    if s["added"]:
        console.print("sources added: " + ", ".join(s["added"]), markup=False)
    if s["removed"]:
        console.print("sources removed: " + ", ".join(s["removed"]), markup=False)
    for ch in s["changed"]:
        console.print(f"source {ch['name']} changed: {', '.join(ch['changed'])} (licence {ch['licence'][0]} -> "
                      f"{ch['licence'][1]})", markup=False)
    if s["excluded_by_licence"]:
        console.print("left out by the licence filter: " + ", ".join(s["excluded_by_licence"]), markup=False)
