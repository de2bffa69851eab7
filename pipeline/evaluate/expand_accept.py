"""``medreg expand accept``: the review file's ``accepted: true`` entries, validated again against the
current bank / glossary files, become edits of those files (shown as a unified diff, written only on
``apply``), keeping the files' layout and comments."""

from __future__ import annotations

import difflib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.atomic import write_bytes_atomic
from pipeline.evaluate.expand_config import DEFAULT_DATA_DIR
from pipeline.evaluate.expand_glossary import validate_name
from pipeline.evaluate.expand_templates import bank_files, validate_template
from pipeline.evaluate.llm import ExpandError
from schemas.language import TemplateBankSpec
from schemas.yamlio import YamlError, load_yaml, load_yaml_text

__all__ = ["AcceptPlan", "copy_language_data", "plan_accept"]


def _yaml_flow_item(s: str) -> str:
    """One item of a YAML flow list, quoted only when needed."""
    plain_ok = re.fullmatch(r"[^\s,\[\]{}#&*!|>'\"%@`:?-][^,\[\]{}#:]*(?<!\s)", s) is not None
    if plain_ok:
        try:
            plain_ok = yaml.safe_load(s) == s
        except yaml.YAMLError:
            plain_ok = False
    return s if plain_ok else json.dumps(s, ensure_ascii=False)


def _add_template_line(text: str, entry: dict[str, Any]) -> str:
    """Insert ``- {id, slot, fits, text}`` after the last template of the entry's slot (or at the end)."""
    fits = entry.get("fits") or {}
    fits_text = ", ".join(f"{k}: [{', '.join(v)}]" if isinstance(v, list) else f"{k}: {v}" for k, v in fits.items())
    head = f"{entry['id']}, slot: {entry['slot']}" + (f", fits: {{{fits_text}}}" if fits_text else "")
    line = f"  - {{id: {head}, text: {json.dumps(entry['text'], ensure_ascii=False)}}}"
    lines = text.splitlines()
    last = None
    for i, ln in enumerate(lines):
        if re.search(rf"\bslot:\s*{re.escape(entry['slot'])}\b", ln):
            last = i
    if last is None:
        lines.append(line)
    else:
        lines.insert(last + 1, line)
    return "\n".join(lines) + "\n"


def _add_glossary_name(text: str, entry: dict[str, Any]) -> str:
    """Add a display name or synonym to a term's block, keeping the file's layout and comments."""
    tid, fld, value = entry["term"], entry["field"], entry["value"]
    lines = text.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if re.fullmatch(rf"{re.escape(tid)}:\s*", ln))
    except StopIteration:
        raise ExpandError(f"term {tid!r} is not defined in {entry.get('file')}") from None
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith((" ", "\t"))),
               len(lines))
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    for i in range(start + 1, end):
        m = re.fullmatch(rf"(\s+){re.escape(fld)}:\s*(.*)", lines[i])
        if m:
            if not fld.startswith("synonyms_"):
                raise ExpandError(f"{tid}: {fld} is already set")
            current = load_yaml_text(m.group(2), f"glossary entry {tid}") if m.group(2).strip() else []
            if not isinstance(current, list) or not m.group(2).strip().startswith("["):
                raise ExpandError(f"{tid}: {fld} is not a one-line [..] list; add {value!r} by hand")
            items = [*current, value]
            lines[i] = f"{m.group(1)}{fld}: [" + ", ".join(_yaml_flow_item(str(x)) for x in items) + "]"
            return "\n".join(lines) + "\n"
    # not there yet: after the display names / existing synonyms
    anchor = start
    for i in range(start + 1, end):
        if re.match(r"\s+(?:[a-z]{2}|synonyms_[a-z]{2}):", lines[i]):
            anchor = i
    new = f"  {fld}: " + (f"[{_yaml_flow_item(value)}]" if fld.startswith("synonyms_") else _yaml_flow_item(value))
    lines.insert(anchor + 1, new)
    return "\n".join(lines) + "\n"


@dataclass
class AcceptPlan:
    """What ``accept`` would write: file -> (old text, new text)."""

    changes: dict[Path, tuple[str, str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    count: int = 0
    base: Path = DEFAULT_DATA_DIR

    def diff(self) -> str:
        out: list[str] = []
        for path, (old, new) in sorted(self.changes.items()):
            rel = path.relative_to(self.base).as_posix() if path.is_relative_to(self.base) else path.name
            out.extend(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                            f"a/{rel}", f"b/{rel}"))
        return "".join(out)

    def changed_names(self) -> list[str]:
        return [p.name for p in self.changes]

    def apply(self) -> None:
        for path, (old, _new) in self.changes.items():
            if path.read_text(encoding="utf-8") != old:
                raise ExpandError(f"{path} changed since the diff was made; run accept again")
        for path, (_old, new) in self.changes.items():
            write_bytes_atomic(path, new.encode("utf-8"))
        try:  # the banks are cached per process
            from pipeline.language import glossary as _g
            from pipeline.language import templates as _t

            _g._load_glossary_cached.cache_clear()
            _t._load_templates_cached.cache_clear()
        except AttributeError:  # pragma: no cover
            pass


def _load_review(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"review file {path} not found")
    try:
        doc = load_yaml(path, what="review file", name=str(path))
    except YamlError as exc:
        raise ExpandError(f"{exc} (was it edited by hand?)") from None
    if (not isinstance(doc, dict) or doc.get("kind") not in ("templates", "glossary")
            or not isinstance(doc.get("entries"), list)):
        raise ExpandError(f"{path}: not a review file (needs kind: templates|glossary and an entries list)")
    return doc


def _plan_templates(plan: AcceptPlan, accepted: list[dict[str, Any]]) -> None:
    files = bank_files(plan.base)
    banks: dict[str, dict[str, Any]] = {}
    texts: dict[str, str] = {}
    for e in accepted:
        name = e.get("bank")
        if not isinstance(name, str) or name not in files:
            plan.skipped.append(f"{e.get('id')}: unknown bank {name!r}")
            continue
        if name not in banks:
            texts[name] = files[name].read_text(encoding="utf-8")
            banks[name] = load_yaml_text(texts[name], f"template bank {files[name].name}")
        bank = banks[name]
        missing = [k for k in ("id", "slot", "text") if not isinstance(e.get(k), str)]
        if missing:
            plan.skipped.append(f"{e.get('id')}: missing {missing}")
            continue
        if any(t["id"] == e["id"] for t in bank["templates"]):
            plan.skipped.append(f"{e['id']}: id already in {name} (accepted twice?)")
            continue
        fits = e.get("fits") or {}
        why = validate_template(bank, e["slot"], e["text"], e["id"], fits)
        if why is not None:
            plan.skipped.append(f"{e['id']}: {why}")
            continue
        added = {"id": e["id"], "slot": e["slot"], "text": e["text"], **({"fits": fits} if fits else {})}
        bank["templates"].append(added)
        texts[name] = _add_template_line(texts[name], e)
        plan.count += 1
    for name, new in texts.items():
        old = files[name].read_text(encoding="utf-8")
        if new != old:
            # the edited file as a whole
            TemplateBankSpec.model_validate(load_yaml_text(new, f"template bank {files[name].name}"))
            plan.changes[files[name]] = (old, new)


def _plan_glossary(plan: AcceptPlan, accepted: list[dict[str, Any]]) -> None:
    from pipeline.language.glossary import Glossary, _load_spec

    gdir = plan.base / "glossary"
    texts = {p.name: p.read_text(encoding="utf-8") for p in sorted(gdir.glob("*.yaml"))}
    current = Glossary(_load_spec(gdir), origin="")
    for e in accepted:
        tid, fld, value, fname = e.get("term"), e.get("field"), e.get("value"), e.get("file")
        if not isinstance(fname, str) or not isinstance(tid, str) or fname not in texts or tid not in current:
            plan.skipped.append(f"{tid}: unknown term or file {fname!r}")
            continue
        if not isinstance(fld, str) or not re.fullmatch(r"(?:synonyms_)?[a-z]{2}", fld) or not isinstance(value, str):
            plan.skipped.append(f"{tid}: bad field/value {fld!r}: {value!r}")
            continue
        lang = fld.removeprefix("synonyms_")
        why = validate_name(current, tid, lang, value)
        if why is not None:
            plan.skipped.append(f"{tid} {fld} {value!r}: {why}")
            continue
        try:
            new_text = _add_glossary_name(texts[fname], e)
        except ExpandError as exc:
            plan.skipped.append(str(exc))
            continue
        # the whole glossary with this edit must still load (no clash with any other name)
        with tempfile.TemporaryDirectory() as tmp:
            for n, t in texts.items():
                (Path(tmp) / n).write_text(new_text if n == fname else t, encoding="utf-8")
            try:
                current = Glossary(_load_spec(Path(tmp)), origin="")
            except ValueError as exc:
                why = str(exc).splitlines()[-1].strip()
                plan.skipped.append(f"{tid} {fld} {value!r}: the glossary would not load: {why}")
                continue
        texts[fname] = new_text
        plan.count += 1
    for name, new in texts.items():
        path = gdir / name
        old = path.read_text(encoding="utf-8")
        if new != old:
            plan.changes[path] = (old, new)


def plan_accept(review_file: str | Path, *, data_dir: str | Path | None = None) -> AcceptPlan:
    """The edits that ``accept`` makes for the entries marked ``accepted: true``, re-validated against
    the current bank files (an entry that no longer fits is skipped, with the reason)."""
    review_file = Path(review_file)
    doc = _load_review(review_file)
    base = Path(data_dir) if data_dir else Path(doc["data_dir"]) if doc.get("data_dir") else DEFAULT_DATA_DIR
    plan = AcceptPlan(base=base)
    accepted = [e for e in doc["entries"] if isinstance(e, dict) and e.get("accepted") is True]
    if doc["kind"] == "templates":
        _plan_templates(plan, accepted)
    else:
        _plan_glossary(plan, accepted)
    return plan


def copy_language_data(dest: str | Path) -> Path:
    """A copy of the shipped language data folder (for trying ``accept`` without touching the repo)."""
    dest = Path(dest)
    shutil.copytree(DEFAULT_DATA_DIR, dest, dirs_exist_ok=True)
    return dest
