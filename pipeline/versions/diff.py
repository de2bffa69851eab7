"""``medreg diff OLD NEW``: what changed between two releases.

Rows are matched by id (:mod:`pipeline.versions.frame` streams the shards; ids are stable across versions,
docs/versions.md says exactly what changes one).  A row is *added* (id only in NEW), *removed* (only in
OLD), *changed* (same id, different line) or unchanged.  Counts are given by source, task, language and
split (added and changed rows count under NEW's values, removed rows under OLD's), and for changed rows by
the part that differs.  The rest comes from the two manifests: images added/removed, region counts per
term, the config key by key, sources (added, removed, card or licence changed), verdict counts; verdict
transitions are read from the changed rows themselves.

The result is a plain JSON-able dict (``medreg diff --json``); :func:`summarise` makes the compact form
that a release's manifest records for its previous release and its card renders.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from pipeline.versions.frame import read_keys, read_parts

GROUP_KEYS = ("source", "task", "lang", "split")
EXAMPLES = 10


def load_manifest(release: Path) -> tuple[dict[str, Any], str]:
    """A release's manifest and the sha256 of its bytes."""
    path = Path(release) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; is {release} a release folder (holding manifest.json)?")
    data = path.read_bytes()
    return orjson.loads(data), hashlib.sha256(data).hexdigest()


def diff_releases(old: Path, new: Path, old_manifest: dict[str, Any] | None = None,
                  new_manifest: dict[str, Any] | None = None, examples: int = EXAMPLES) -> dict[str, Any]:
    """The difference between release folders ``old`` and ``new`` (see the module docstring).  Manifests
    may be passed in (a release being written has its manifest in memory, not yet on disk)."""
    old, new = Path(old), Path(new)
    mo, sha_o = (old_manifest, "") if old_manifest is not None else load_manifest(old)
    mn, sha_n = (new_manifest, "") if new_manifest is not None else load_manifest(new)
    ko = read_keys(old, [s["path"] for s in mo["shards"]])
    kn = read_keys(new, [s["path"] for s in mn["shards"]])
    joined = ko.join(kn, on="id", how="full", suffix="_new", coalesce=True)
    added = joined.filter(pl.col("h").is_null())
    removed = joined.filter(pl.col("h_new").is_null())
    common = joined.filter(pl.col("h").is_not_null() & pl.col("h_new").is_not_null())
    changed = common.filter(pl.col("h") != pl.col("h_new"))
    fields, transitions = _changed_detail(old, new, mo, mn, changed)
    return {
        "old": _identity(mo, sha_o, old),
        "new": _identity(mn, sha_n, new),
        "rows": {"old": ko.height, "new": kn.height, "added": added.height, "removed": removed.height,
                 "changed": changed.height, "unchanged": common.height - changed.height},
        "by": {k: _by(ko, kn, added, removed, changed, [k]) for k in GROUP_KEYS},
        "groups": _by(ko, kn, added, removed, changed, list(GROUP_KEYS)),
        "changed_fields": fields,
        "examples": {"added": _ids(added, examples), "removed": _ids(removed, examples),
                     "changed": _ids(changed, examples)},
        "images": _images(mo, mn, examples),
        "regions_by_term": _counts(mo["counts"].get("regions_by_term", {}), mn["counts"].get("regions_by_term", {})),
        "config": config_changes(mo.get("config", {}), mn.get("config", {})),
        "sources": _sources(mo, mn),
        "validation": {"counts": _counts(mo["counts"].get("validation", {}), mn["counts"].get("validation", {})),
                       "transitions": transitions},
        "dropped": _counts(mo.get("dropped", {}), mn.get("dropped", {})),
        "patients": _patients(ko, kn, examples),
    }


def _identity(m: dict[str, Any], sha: str, path: Path) -> dict[str, Any]:
    return {"name": m["name"], "version": m["version"], "folder": path.name, "manifest_sha256": sha,
            "config_sha256": m.get("config_sha256", ""), "code_version": m.get("code_version", "")}


def _ids(df: pl.DataFrame, n: int) -> list[str]:
    return df.sort("id")["id"].head(n).to_list()


def _group_counts(df: pl.DataFrame, keys: list[str], suffix: str, name: str) -> pl.DataFrame:
    cols = [pl.col(k + suffix).alias(k) for k in keys]
    return df.group_by(cols).agg(pl.len().cast(pl.Int64).alias(name))


def _by(ko: pl.DataFrame, kn: pl.DataFrame, added: pl.DataFrame, removed: pl.DataFrame, changed: pl.DataFrame,
        keys: list[str]) -> list[dict[str, Any]]:
    """Counts per group: rows in OLD and NEW, added / changed (by NEW's keys), removed (by OLD's keys)."""
    parts = [
        _group_counts(ko, keys, "", "old"),
        _group_counts(kn, keys, "", "new"),
        _group_counts(added, keys, "_new", "added"),
        _group_counts(removed, keys, "", "removed"),
        _group_counts(changed, keys, "_new", "changed"),
    ]
    out = parts[0]
    for p in parts[1:]:
        out = out.join(p, on=keys, how="full", coalesce=True)
    out = out.fill_null(0).sort(keys)
    return out.select(*keys, "old", "new", "added", "removed", "changed").to_dicts()


#: parts of a changed row compared through hashes (pass 2) and the key columns compared directly
_HASHED = ("conversations", "regions", "display", "validation")
_KEYED = (("image", "image"), ("width", "size"), ("height", "size"), ("split", "split"), ("patient_id", "patient_id"))


def _changed_detail(old: Path, new: Path, mo: dict[str, Any], mn: dict[str, Any],
                    changed: pl.DataFrame) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """For the changed rows: how many differ in each part / meta field, and the verdict transitions."""
    if changed.is_empty():
        return {}, []
    fields: dict[str, int] = {}
    keyed: dict[str, pl.Series] = {}
    for col, name in _KEYED:
        diff = changed[col] != changed[col + "_new"]
        keyed[name] = keyed[name] | diff if name in keyed else diff
    for name, mask in keyed.items():
        fields[name] = int(mask.sum())
    ids = changed["id"]
    po = read_parts(old, [s["path"] for s in mo["shards"]], ids)
    pn = read_parts(new, [s["path"] for s in mn["shards"]], ids)
    both = po.join(pn, on="id", suffix="_new")
    for name in _HASHED:
        fields[name] = int((both["h_" + name] != both["h_" + name + "_new"]).sum())
    meta_o, meta_n = both["meta"].struct.unnest(), both["meta_new"].struct.unnest()
    for col in meta_o.columns:
        if col in ("split", "patient_id"):
            continue  # counted from the keys
        n = int((meta_o[col].ne_missing(meta_n[col])).sum())
        fields[f"meta.{col}"] = n
    fields = {k: v for k, v in sorted(fields.items()) if v}
    vchanged = both.filter(pl.col("h_validation") != pl.col("h_validation_new"))
    return fields, _transitions(vchanged)


def _transitions(both: pl.DataFrame) -> list[dict[str, Any]]:
    """(validator, verdict in OLD, verdict in NEW) -> rows, "-" where a row had no verdict of that validator."""
    if both.is_empty():
        return []

    def verdicts(col: str) -> pl.DataFrame:
        return (both.select("id", pl.col(col).alias("v")).explode("v").drop_nulls("v")
                .select("id", pl.col("v").struct.field("validator"), pl.col("v").struct.field("verdict")))

    t = verdicts("verdicts").join(verdicts("verdicts_new"), on=["id", "validator"], how="full", coalesce=True,
                                  suffix="_new")
    t = t.with_columns(pl.col("verdict").fill_null("-"), pl.col("verdict_new").fill_null("-"))
    t = t.filter(pl.col("verdict") != pl.col("verdict_new"))
    agg = t.group_by("validator", "verdict", "verdict_new").agg(pl.len().cast(pl.Int64).alias("rows"))
    agg = agg.rename({"verdict": "old", "verdict_new": "new"}).sort("validator", "old", "new")
    return agg.to_dicts()


def _images(mo: dict[str, Any], mn: dict[str, Any], n: int) -> dict[str, Any]:
    a = {i["path"] for i in mo.get("images", [])}
    b = {i["path"] for i in mn.get("images", [])}
    return {"old": len(a), "new": len(b), "added": len(b - a), "removed": len(a - b),
            "examples": {"added": sorted(b - a)[:n], "removed": sorted(a - b)[:n]}}


def _counts(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Per key: count in OLD and NEW (0 when absent) and the change."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = int(a.get(k, 0)), int(b.get(k, 0))
        out.append({"key": k, "old": x, "new": y, "delta": y - x})
    return out


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a config.  A list of sources is keyed by card: ``sources[kvasir-seg]`` ("included")
    and one key per override that is set (``sources[kvasir-seg].max_cases``)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k in sorted(value):
            out.update(flatten(value[k], f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    if isinstance(value, list) and value and all(isinstance(v, dict) and "card" in v for v in value):
        out = {}
        for v in value:
            key = f"{prefix}[{v['card']}]"
            out[key] = "included"
            overrides = {k: x for k, x in v.items() if k != "card" and x is not None}
            if overrides:
                out.update(flatten(overrides, key))
        return out
    return {prefix: value}


def config_changes(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """The config keys whose value differs (``old``/``new`` absent = the key is not in that config)."""
    fa, fb = flatten(a), flatten(b)
    out = []
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k, _MISSING) != fb.get(k, _MISSING):
            entry: dict[str, Any] = {"key": k}
            if k in fa:
                entry["old"] = fa[k]
            if k in fb:
                entry["new"] = fb[k]
            out.append(entry)
    return out


_MISSING = object()


def _sources(mo: dict[str, Any], mn: dict[str, Any]) -> dict[str, Any]:
    a = {s["name"]: s for s in mo.get("sources", [])}
    b = {s["name"]: s for s in mn.get("sources", [])}
    changed = []
    for name in sorted(set(a) & set(b)):
        what = [k for k in ("licence", "title", "modality") if a[name].get(k) != b[name].get(k)]
        ca, cb = a[name].get("card_sha256", ""), b[name].get("card_sha256", "")
        if ca and cb and ca != cb:
            what.append("card")
        if what:
            changed.append({"name": name, "changed": what, "licence": [a[name].get("licence"), b[name].get("licence")]})
    excluded = [e["name"] for e in ((mn.get("licences") or {}).get("excluded") or [])]
    return {"added": sorted(set(b) - set(a)), "removed": sorted(set(a) - set(b)), "changed": changed,
            "excluded_by_licence": excluded}


def _patients(ko: pl.DataFrame, kn: pl.DataFrame, n: int) -> dict[str, Any]:
    """Patients in each release and those whose split differs (split stability)."""
    po = ko.group_by("patient_id").agg(pl.col("split").unique().sort().str.join("+").alias("split"))
    pn = kn.group_by("patient_id").agg(pl.col("split").unique().sort().str.join("+").alias("split"))
    j = po.join(pn, on="patient_id", how="full", coalesce=True, suffix="_new")
    common = j.filter(pl.col("split").is_not_null() & pl.col("split_new").is_not_null())
    moved = common.filter(pl.col("split") != pl.col("split_new")).sort("patient_id")
    return {"old": po.height, "new": pn.height, "added": int(j["split"].null_count()),
            "removed": int(j["split_new"].null_count()), "moved": moved.height,
            "examples": {"moved": moved.head(n).rename({"split": "old", "split_new": "new"}).to_dicts()}}


def summarise(diff: dict[str, Any], terms: int = 20) -> dict[str, Any]:
    """The compact diff a manifest keeps for its previous release (and the card's "Changes since" section):
    no row or image examples, only the terms whose count changed (the ``terms`` largest changes)."""
    moved_terms = sorted((t for t in diff["regions_by_term"] if t["delta"]), key=lambda t: (-abs(t["delta"]), t["key"]))
    return {
        "rows": diff["rows"],
        "images": {k: v for k, v in diff["images"].items() if k != "examples"},
        "by_source": diff["by"]["source"],
        "by_split": diff["by"]["split"],
        "changed_fields": diff["changed_fields"],
        "sources": diff["sources"],
        "config": diff["config"],
        "validation_transitions": diff["validation"]["transitions"],
        "terms_changed": len(moved_terms),
        "regions_by_term": moved_terms[:terms],
        "patients": {k: v for k, v in diff["patients"].items() if k != "examples"},
    }
