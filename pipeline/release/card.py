"""The release's self-description: the dataset card (README.md), LICENSE.md and the row schema (schema.json).

* ``schema.json`` -- the JSON Schema of :class:`schemas.records.Row`, the contract every row was validated
  against before writing.
* ``README.md`` -- a Hugging Face dataset card: YAML header (``license: other`` with ``license_name`` /
  ``license_link``, ``pretty_name``, ``size_categories``, one config per task x language plus a ``default``
  config with every row, and ``dataset_info.features`` generated from ``Row`` so ``datasets`` never infers
  types), then how to load the release (HF, polars, pyarrow, InternVL/MedRegA meta file, LLaVA), what
  each task and subtask means, counts (by split/task/language, modality, source), the validation summary
  and what ``review.jsonl`` is for, the whole build configuration, limitations and the licence.
* ``LICENSE.md`` -- one overall licence statement (the most restrictive source decides) and every source's
  licence, note and citation.

Pure functions of the manifest and the source cards (:func:`release_files`); nothing here imports Prefect.
"""

from __future__ import annotations

import re
import types
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin

import orjson
import yaml
from pydantic import BaseModel

from pipeline.release.card_text import (
    LIMITATIONS,
    REVIEW_TEXT,
    SUBTASKS,
    TASKS,
    loading_section,
)
from pipeline.versions.sections import changes_section, licence_section
from schemas.records import Manifest, Row

__all__ = [
    "hf_features",
    "licence_class",
    "overall_licence",
    "release_files",
    "render_card",
    "render_licence",
    "row_json_schema",
    "schema_json",
    "size_category",
]

# ----------------------------------------------------------------------------------------- schema


def row_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one release row, with the title and id of this project."""
    schema = Row.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = (
        "One row of a MedRegInstruct release (data/<split>/<task>.<lang>.*.jsonl): an InternVL chat row plus "
        "provenance. Every key is present in every row; no value is null."
    )
    return schema


def schema_json() -> bytes:
    return orjson.dumps(row_json_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


_SCALARS = {str: "string", int: "int64", float: "float64", bool: "bool"}


def _feature(ann: Any) -> dict[str, Any]:
    """One HF ``datasets`` feature (YAML form) for a pydantic field annotation."""
    origin = get_origin(ann)
    if origin is Literal:
        kinds = {type(a) for a in get_args(ann)}
        if len(kinds) != 1:
            raise TypeError(f"mixed Literal {ann} has no single HF dtype")
        return {"dtype": _SCALARS[kinds.pop()]}
    if origin in (Union, types.UnionType):
        raise TypeError(f"{ann}: a row field must have one non-null type (no unions, no Optional)")
    if origin is list:
        (inner,) = get_args(ann)
        f = _feature(inner)
        return {"list": f["dtype"] if "dtype" in f else f.get("struct", f)}
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return {"struct": hf_features(ann)}
    if ann in _SCALARS:
        return {"dtype": _SCALARS[ann]}
    raise TypeError(f"no HF dtype for {ann!r}")


def hf_features(model: type[BaseModel] = Row) -> list[dict[str, Any]]:
    """``dataset_info.features`` of a model, in the YAML form HF ``datasets`` reads from a card."""
    return [{"name": f.alias or name, **_feature(f.annotation)} for name, f in model.model_fields.items()]


# ----------------------------------------------------------------------------------------- licence

LicenceClass = Literal["permissive", "attribution", "share-alike", "non-commercial", "custom"]
_CLASS_RULES: tuple[tuple[LicenceClass, re.Pattern[str]], ...] = (
    ("non-commercial", re.compile(r"\bnc\b|non-?commercial|research|education|academic", re.I)),
    ("share-alike", re.compile(r"\bsa\b|share-?alike|\bodbl\b|\bgpl", re.I)),
    ("attribution", re.compile(r"\bcc[- ]?by\b|attribution", re.I)),
    ("permissive", re.compile(r"\bcc0\b|public[- ]domain|apache|\bmit\b|\bbsd\b|\bisc\b|unrestricted", re.I)),
)
_RANK: dict[str, int] = {"permissive": 0, "attribution": 1, "share-alike": 2, "non-commercial": 3}
_USE = {
    "permissive": "Use is free (keep the licence notices and cite every source).",
    "attribution": "Use is free with attribution: cite every source listed below.",
    "share-alike": "Derived data must be shared under the same terms (share-alike), with attribution.",
    "non-commercial": "Non-commercial research and education use only.",
}


def licence_class(licence: str) -> LicenceClass:
    """A licence string's class: ``non-commercial`` > ``share-alike`` > ``attribution`` > ``permissive``
    (first rule that matches); anything unrecognised is ``custom`` (its own terms, to be read)."""
    for cls, pat in _CLASS_RULES:
        if pat.search(licence):
            return cls
    return "custom"


def overall_licence(sources: Sequence[Any]) -> tuple[str, str]:
    """``(class, statement)`` for a release: the most restrictive classified source licence decides;
    sources under custom terms are named as also applying."""
    classes = {s.name: licence_class(s.licence) for s in sources}
    ranked = [c for c in classes.values() if c in _RANK]
    top = max(ranked, key=_RANK.__getitem__) if ranked else "custom"
    parts = []
    if top != "custom":
        deciders = [f"{s.name} ({s.licence})" for s in sources if classes[s.name] == top]
        parts.append(f"{_USE[top]} The most restrictive source licence decides: {', '.join(deciders)}.")
    custom = [f"{s.name} ({s.licence})" for s in sources if classes[s.name] == "custom"]
    if custom:
        parts.append(f"Also subject to the terms of: {', '.join(custom)}; read them before redistributing.")
    parts.append("Each row carries its source licence in `meta.licence`: a subset of sources is usable under "
                 "their licences alone.")
    return top, " ".join(parts)


def _cards(prepared: Sequence[Any]) -> list[Any]:
    return [p.card for p in prepared if getattr(p, "card", None) is not None]


def render_licence(manifest: Manifest, prepared: Sequence[Any]) -> str:
    """LICENSE.md: the overall statement and every source's licence, note and citation."""
    top, statement = overall_licence(manifest.sources)
    lines = [f"# Licence of {manifest.name} {manifest.version}", "", f"**{top}**. {statement}", "",
             "The builder's code is Apache-2.0; the data keep the licences of their sources:", "",
             "| source | licence | class | homepage |", "|---|---|---|---|"]
    cards = {c.name: c for c in _cards(prepared)}
    for s in manifest.sources:
        home = getattr(cards.get(s.name), "homepage", "") or ""
        lines.append(f"| {s.name} | {s.licence} | {licence_class(s.licence)} | {home} |")
    lines += ["", "## Notes and citations", ""]
    for s in manifest.sources:
        c = cards.get(s.name)
        note = (c.licence_note.strip() if c else "") or s.licence
        cite = f" Cite: {c.citation}" if c and c.citation else ""
        lines.append(f"- **{s.name}**: {note}{cite}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- card

_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


def size_category(rows: int) -> str:
    """HF ``size_categories`` value for a number of rows."""
    return next((name for bound, name in _SIZES if rows < bound), "n>1B")


def _configs(manifest: Manifest) -> list[dict[str, Any]]:
    per: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for s in manifest.shards:
        per[f"{s.task}.{s.lang}"][s.split].append(s.path)
        per["default"][s.split].append(s.path)
    out = []
    for name in ["default", *sorted(n for n in per if n != "default")]:
        if name not in per:
            continue
        entry: dict[str, Any] = {"config_name": name}
        if name == "default":
            entry["default"] = True
        entry["data_files"] = [{"split": sp, "path": sorted(paths)} for sp, paths in sorted(per[name].items())]
        out.append(entry)
    return out


def _header(manifest: Manifest) -> str:
    top, _ = overall_licence(manifest.sources)
    configs = _configs(manifest)
    features = hf_features()
    langs = sorted({s.lang for s in manifest.shards}) or ["en", "zh"]
    head: dict[str, Any] = {
        "license": "other",
        "license_name": f"medreginstruct-{top}",
        "license_link": "LICENSE.md",
        "pretty_name": f"MedRegInstruct {manifest.name} {manifest.version}",
        "language": langs,
        "size_categories": [size_category(int(manifest.counts.get("rows", 0)))],
        "task_categories": ["visual-question-answering", "object-detection", "image-to-text"],
        "tags": ["medical", "grounding", "region-centric", "bilingual", "medrega", "internvl"],
        "configs": configs,
        "dataset_info": [{"config_name": c["config_name"], "features": features} for c in configs],
    }
    text = yaml.safe_dump(head, sort_keys=False, allow_unicode=True, width=1000, default_flow_style=False)
    return "---\n" + text + "---\n"


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return [*out, ""]


def _counts_section(manifest: Manifest) -> list[str]:
    c = manifest.counts
    agg: dict[tuple[str, str, str], int] = defaultdict(int)
    for s in manifest.shards:
        agg[(s.split, s.task, s.lang)] += s.lines
    out = ["## Counts", "",
           f"{c.get('rows', 0)} rows on {c.get('images', 0)} images from {c.get('cases', 0)} cases; "
           f"{c.get('errors', 0)} case errors (errors.jsonl), {c.get('dropped', 0)} samples dropped by validation, "
           f"{c.get('flagged', 0)} flagged for review.", ""]
    out += _table("By split, task and language", ["split", "task", "lang", "rows"],
                  [(*k, n) for k, n in sorted(agg.items())])
    out += _table("By modality", ["modality", "rows"], sorted(c.get("by_modality", {}).items()))
    by_src = c.get("by_source", {})
    out += _table("By source", ["source", "title", "modality", "cases", "case errors", "rows"],
                  [(s.name, s.title, s.modality, s.cases, s.errors, by_src.get(s.name, 0)) for s in manifest.sources])
    return out


def _tasks_section(manifest: Manifest) -> list[str]:
    present = manifest.counts.get("by_subtask", {})
    out = ["## Tasks and subtasks", "", "| task | subtask | rows | meaning |", "|---|---|---|---|"]
    for task, meaning in TASKS.items():
        out.append(f"| **{task}** | | {manifest.counts.get('by_task', {}).get(task, 0)} | {meaning} |")
        for sub, text in SUBTASKS.get(task, {}).items():
            out.append(f"| | `{sub}` | {present.get(sub, 0)} | {text} |")
    unknown = sorted(set(present) - {s for subs in SUBTASKS.values() for s in subs})
    for sub in unknown:
        out.append(f"| | `{sub}` | {present[sub]} | (not described by this builder version) |")
    return [*out, ""]


def _validation_section(manifest: Manifest) -> list[str]:
    c = manifest.counts
    out = ["## Validation", "", "Every row was validated against the row contract (`schema.json`) and by the "
           "validators of the build configuration (docs/validation.md of the builder). "
           "`meta.validation` holds each validator's verdict, score, reason and codes.", ""]
    out += _table("Verdicts (validator:verdict -> rows)", ["validator:verdict", "rows"],
                  sorted(c.get("validation", {}).items()))
    if manifest.dropped:
        out += _table("Dropped samples (reason -> samples)", ["reason", "samples"], sorted(manifest.dropped.items()))
    else:
        out += ["No sample was dropped.", ""]
    out += [REVIEW_TEXT.format(flagged=c.get("flagged", 0)), ""]
    return out


def render_card(manifest: Manifest, prepared: Sequence[Any]) -> str:
    """README.md of a release (see the module docstring)."""
    c = manifest.counts
    top, statement = overall_licence(manifest.sources)
    release = f"{manifest.name}-{manifest.version}"
    llava = "llava" in manifest.config.get("output", {}).get("formats", [])
    lines = [
        _header(manifest), f"# MedRegInstruct {manifest.name} {manifest.version}", "",
        "Region-centric bilingual (English/Chinese) medical instruction data in the MedRegA / InternVL chat format "
        "(region-to-text identification, text-to-region detection, grounded reports), built by the MedRegInstruct "
        "builder from public datasets. Boxes are `<ref>term</ref><box>[[x1, y1, x2, y2]]</box>` with integers 0-999 "
        "(continuous pixel edges scaled by 999 / width or height).", "",
        f"- rows: {c.get('rows', 0)}, images: {c.get('images', 0)}, cases: {c.get('cases', 0)}",
        f"- licence: **{top}** (LICENSE.md)",
        f"- config sha256: `{manifest.config_sha256}`, code version: `{manifest.code_version}`", "",
        *loading_section(release, [s.split for s in manifest.shards], llava),
        *_tasks_section(manifest),
        "## Row format", "",
        "Each JSONL line is one `schemas.records.Row` (JSON Schema: `schema.json`): `{id, image, width, height, "
        "conversations: [{from, value}], meta}`. `meta` = `{task, subtask, lang, source, licence, case_id, "
        "patient_id, split, modality, body_region, axis, slice_index, template_id, regions: [{term, box, box_px, "
        "area, label_id}], window, transform, validation: [{validator, version, verdict, score, reason, codes}]}`. "
        "Every key is in every row and nothing is null: values that do not apply are neutral (`body_region` "
        "\"unknown\", `axis` \"2d\" with `slice_index` 0 for 2-D images, `label_id` 0 when not from a label map, "
        "`score` 0.0 when a validator has none); `transform` is a JSON object encoded as text; `codes` is "
        "comma-joined. `regions` gives every box of the text in 0-999 (`box`) and in inclusive pixels of the "
        "written image (`box_px`). Images are content-addressed PNGs under `images/`; patient ids are one-way "
        "hashes and splits are by patient. `manifest.json` lists every file with its sha256 (`medreg verify`).", "",
        *_counts_section(manifest),
        *changes_section(manifest),  # with `previous:` (pipeline.versions.sections)
        *_validation_section(manifest),
        "## Build configuration", "",
        f"config sha256 `{manifest.config_sha256}`; code `{manifest.code_version}`. The whole configuration:", "",
        "```yaml", yaml.safe_dump(manifest.config, sort_keys=True, allow_unicode=True).rstrip(), "```", "",
        "## Limitations", "", *(f"- {x}" for x in LIMITATIONS), "",
        "## Licence", "", f"**{top}**. {statement}", "",
        "| source | licence | class |", "|---|---|---|",
        *(f"| {s.name} | {s.licence} | {licence_class(s.licence)} |" for s in manifest.sources), "",
        *licence_section(manifest),  # the config's licence filter and the sources it left out
        "Notes and citations: LICENSE.md.", "",
    ]
    return "\n".join(lines)


def release_files(manifest: Manifest, prepared: Sequence[Any]) -> dict[str, bytes]:
    """The card, the licence and the row schema, by release-relative path."""
    return {
        "README.md": render_card(manifest, prepared).encode("utf-8"),
        "LICENSE.md": render_licence(manifest, prepared).encode("utf-8"),
        "schema.json": schema_json(),
    }
