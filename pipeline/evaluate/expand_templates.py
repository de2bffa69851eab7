"""``medreg expand templates``: paraphrases of the shipped instruction templates, drafted by the LLM and
validated by the bank's own load-time rules before they are proposed in the review file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.evaluate.expand_config import ExpandConfig
from pipeline.evaluate.llm import ExpandError, LLMClient, json_from_reply
from schemas.language import NAME_REQUIRED, SLOTS, TASK_ABBR, TemplateBankSpec
from schemas.yamlio import load_yaml

__all__ = ["bank_files", "expand_templates", "validate_template"]


def _read_bank(path: Path) -> dict[str, Any]:
    data = load_yaml(path, what="template bank")
    TemplateBankSpec.model_validate(data)  # the shipped bank must be valid to start with
    return data


def bank_files(data_dir: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted((data_dir / "templates").glob("*.yaml"))}


def validate_template(
    bank: dict[str, Any], slot: str, text: str, new_id: str, fits: dict[str, Any] | None = None
) -> str | None:
    """Why ``text`` cannot join ``bank`` in ``slot`` under ``new_id`` (``None`` when it can).

    Runs the bank's own load-time validation (:class:`schemas.language.TemplateBankSpec`) on the bank
    with the template added (with ``fits``: the targets it is drawn for, a paraphrase's being its seed's),
    then renders it with sample values and checks the ``<ref>``/``<box>`` markup of the result
    (:func:`pipeline.language.templates.check_grounding`).
    """
    from pipeline.language.templates import check_grounding, sample_values

    if not isinstance(text, str) or not text.strip():
        return "empty template"
    if text != text.strip():
        return "leading or trailing whitespace"
    if "\n" in text:
        return "a template is one line"
    trial = dict(bank)
    template = {"id": new_id, "slot": slot, "text": text, **({"fits": fits} if fits else {})}
    trial["templates"] = [*bank["templates"], template]
    try:
        TemplateBankSpec.model_validate(trial)
    except ValidationError as exc:
        msgs = []
        for e in exc.errors():
            for line in str(e.get("msg", "")).splitlines():
                line = line.strip()
                if new_id in line:
                    prefix = f"{new_id} [{slot}]: "
                    msgs.append(line[len(prefix):] if line.startswith(prefix) else line)
        return "; ".join(msgs) or str(exc).splitlines()[-1]
    try:
        rendered = text.format_map(sample_values(bank.get("lang", "en")))
    except (KeyError, ValueError, IndexError) as exc:
        return f"cannot be rendered: {exc}"
    problems = check_grounding(rendered)
    if problems:
        return "rendered markup: " + "; ".join(problems)
    return None


def _next_id(bank: dict[str, Any], slot: str) -> str:
    """A fresh id for ``slot``: one above the highest number the slot uses (ids are never reused), staying
    out of the hundreds blocks that other slots number in (``q001..`` single, ``q101..`` multi)."""
    letter = "q" if slot.startswith("question") else "a"
    prefix = f"{TASK_ABBR[bank['task']]}.{bank['lang']}.{letter}"
    mine = [int(t["id"][-3:]) for t in bank["templates"] if t["slot"] == slot and t["id"].startswith(prefix)]
    others = {
        int(t["id"][-3:]) // 100 for t in bank["templates"] if t["slot"] != slot and t["id"].startswith(prefix)
    }
    used = {t["id"] for t in bank["templates"]}
    if mine:
        n = max(mine) + 1
    else:
        block = next(b for b in range(10) if b not in others) if len(others) < 10 else 10
        n = block * 100 + 1
    while True:
        if n > 999:
            raise ExpandError(f"no free template id left for {prefix} ({slot})")
        if n // 100 in others and not (mine and n // 100 == max(mine) // 100):
            n = (n // 100 + 1) * 100 + 1
            continue
        cand = f"{prefix}{n:03d}"
        if cand not in used:
            return cand
        n += 1



_TASK_DESCRIPTIONS = {
    "region_to_text": (
        "region-to-text identification: the question gives bounding boxes, the answer names what is inside"
    ),
    "text_to_region": "text-to-region detection: the question names structures, the answer gives their bounding boxes",
    "grounded_report": "grounded report generation: describe structures one by one, each with its bounding boxes",
}
_PLACEHOLDER_HELP = {
    "image": "noun phrase for the image, e.g. 'CT image'",
    "modality": "imaging modality, e.g. 'CT'",
    "body_region": "body region word, e.g. 'abdomen'",
    "box": "one bounding box (already formatted)",
    "boxes": "several bounding boxes (already formatted)",
    "n": "a number",
    "term": "the structure's name",
    "Term": "the structure's name, capitalised (sentence start)",
    "ref": "the structure's name with its tags (already formatted)",
    "refs": "several names with tags, joined as a list",
    "grounded": "names with their boxes (already formatted)",
    "position": "where in the image, e.g. 'upper left part of the image'",
    "size": "'small', 'moderate' or 'large'",
}


_SYSTEM = (
    "You write paraphrases of instruction templates for a bilingual (English/Chinese) medical imaging dataset. "
    "You reply with JSON only."
)


def _template_messages(bank: dict[str, Any], slot: str, seed: str, existing: list[str], n: int) -> list[dict[str, str]]:
    task, lang = bank["task"], bank["lang"]
    required, optional = SLOTS[task][slot]
    need_one = NAME_REQUIRED.get((task, slot))
    kind = "question" if slot.startswith("question") else "answer"
    allowed = sorted(required | optional)
    language = "Chinese" if lang == "zh" else "English" if lang == "en" else lang
    lines = [
        f"Dataset task: {_TASK_DESCRIPTIONS[task]}.",
        f"Template slot: {slot} (a {kind} template). Language: {language}.",
        "Placeholders are written in curly braces and are filled in by a program. Allowed placeholders:",
        *[f"  {{{p}}}: {_PLACEHOLDER_HELP.get(p, '')}" for p in allowed],
    ]
    if required:
        lines.append("Every template must contain: " + ", ".join(f"{{{p}}}" for p in sorted(required)) + ".")
    if need_one:
        lines.append("Every template must contain one of: " + ", ".join(f"{{{p}}}" for p in sorted(need_one)) + ".")
    lines += [
        "Use {box}, {boxes}, {ref}, {refs} and {grounded} at most once each. "
        "No other curly braces, no tags such as <ref> or <box>, one line each.",
        (
            "Write natural Chinese with full-width punctuation (，。？：), no ASCII punctuation."
            if lang == "zh"
            else "Write natural English with ASCII punctuation only."
        ),
        "Templates that already exist (do not repeat them):",
        *[f"  - {t}" for t in existing],
        f'Write {n} new, varied paraphrases of this template, keeping its meaning: "{seed}"',
        f"Reply with a JSON array of {n} strings and nothing else.",
    ]
    return [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": "\n".join(lines)},
    ]


def expand_templates(cfg: ExpandConfig, client: LLMClient) -> tuple[list[dict], list[dict]]:
    data_dir = cfg.language_dir()
    files = bank_files(data_dir)
    names = cfg.templates.banks or list(files)
    unknown = [b for b in names if b not in files]
    if unknown:
        raise ExpandError(f"unknown template bank(s) {unknown}; have {sorted(files)}")
    entries: list[dict] = []
    rejected: list[dict] = []
    for name in names:
        bank = _read_bank(files[name])
        slots = [s for s in SLOTS[bank["task"]] if cfg.templates.slots is None or s in cfg.templates.slots]
        working = dict(bank)
        working["templates"] = list(bank["templates"])
        for slot in slots:
            in_slot = sorted((t for t in bank["templates"] if t["slot"] == slot), key=lambda t: t["id"])
            existing = [t["text"] for t in in_slot]
            for seed in in_slot[: cfg.templates.seeds_per_slot]:
                msgs = _template_messages(bank, slot, seed["text"], existing, cfg.templates.per_seed)
                reply = client.chat(msgs)
                try:
                    cands = json_from_reply(reply)
                    if not isinstance(cands, list):
                        raise ValueError("the reply is not a JSON array")
                except ValueError as exc:
                    rejected.append({"bank": name, "slot": slot, "seed": seed["id"], "text": reply[:500],
                                     "reason": f"unreadable reply: {exc}"})
                    continue
                for text in cands:
                    if not isinstance(text, str):
                        rejected.append({"bank": name, "slot": slot, "seed": seed["id"],
                                         "text": json.dumps(text, ensure_ascii=False), "reason": "not a string"})
                        continue
                    text = text.strip()
                    new_id = _next_id(working, slot)
                    fits = seed.get("fits") or {}  # a paraphrase fits the targets its seed fits
                    why = validate_template(working, slot, text, new_id, fits)
                    if why is not None:
                        rejected.append({"bank": name, "slot": slot, "seed": seed["id"], "text": text, "reason": why})
                        continue
                    template = {"id": new_id, "slot": slot, "text": text, **({"fits": fits} if fits else {})}
                    working["templates"].append(template)
                    existing.append(text)
                    origin = {"seed": seed["id"], "seed_text": seed["text"], "accepted": False}
                    entries.append({"bank": name, **template, **origin})
    return entries, rejected
