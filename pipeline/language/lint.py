"""A language lint over release rows: what a bilingual editor would mark, as checks a test can run on
every built release (``lint_rows`` / ``lint_release``; an empty list means clean).

Rules (``LintHit.rule``):

* ``ref``           a ``<ref>`` that is not a glossary display name in the row's language.
* ``contradiction`` the answer does not give what the prompt and question ask for: a region -> text single
  answer that is not the display name alone (or, with sentence answers, not a sentence naming it);
  grounded terms or boxes that differ from the question's and the row's regions; an absent-target answer
  with boxes, without the term, without a negation or presupposing the term ("the liver is not ...");
  "all instances" / "所有的" asked of a target with one box; a system prompt that is not the bank's.
* ``en-article``    a countable singular name without a determiner ("Locate <ref>liver</ref>"), "a"/"every"
  before a mass or plural name, "the" before a name the glossary says takes none, doubled determiners,
  "a" where "an" belongs and vice versa.
* ``en-number``     a verb that does not agree with its subject ("the costal cartilages is", "where are the
  liver", "Two polyps is").
* ``en-script``     Chinese characters or full-width punctuation in an English row.
* ``zh-punct``      ASCII punctuation in a Chinese row (outside boxes and the quoted box format).
* ``zh-list``       list items joined by anything but "、" (or "和") in a Chinese row.
* ``zh-numeral``    a count written in digits ("2个区域" instead of "两个区域").
* ``report-text``   a line of a report row (``meta.text_source: report``) whose sentence is empty, holds grounding
  markup, is not Chinese in a Chinese row (an untranslated sentence) or holds Chinese in an English row.

Report rows carry a radiology report's own sentences (or their reviewed translation), which this lint does not
correct: their answer lines are checked for the ``ref`` and ``contradiction`` rules (every head is a display name;
the grounded items are exactly the row's regions, in order) and for ``report-text``; the English article/number
rules and the Chinese punctuation/list/numeral rules apply to the question (ours) and to the line heads, not to
the report's sentences ("1.5 cm", "3个结节" and a reporter's grammar stay as written).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipeline.language.voice import Language, indefinite
from schemas.language import BOX_FORMAT

__all__ = ["LintHit", "lint_release", "lint_rows"]

_REF = re.compile(r"<ref>(.*?)</ref>")
_BOX_TAG = re.compile(r"<box>.*?</box>")
_BOX = re.compile(r"\[(\d+), (\d+), (\d+), (\d+)\]")
_GROUNDED = re.compile(r"<ref>(.*?)</ref><box>(.*?)</box>")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_FULLWIDTH = re.compile(r"[，。？！：；（）、]")
_ASCII_PUNCT = re.compile(r"[,.?!:;()]")
_TAG_GAP = re.compile(r"</(?:ref|box)>([^<]*)<(?:ref|box)>")
_ZH_DIGIT_COUNT = re.compile(r"(?<![第\dA-Za-z])\d+个")
_EN_NEGATION = re.compile(r"\b(?:no|not|none|absent)\b", re.IGNORECASE)
_ZH_NEGATION = re.compile(r"没有|未|不|无")
_DETERMINERS = {"the", "every", "each", "any", "no", "a", "an", "all"}
_DOUBLED = re.compile(r"\b(?:the|a|an)\s+(?:the|a|an|every|each)\b", re.IGNORECASE)
_A_AN = re.compile(r"\b(a|an|A|An)\s+(?:<ref>)?([A-Za-z][\w-]*)")
_VERB_NUMBER = {"is": "singular", "are": "plural", "does": "singular", "do": "plural", "lies": "singular",
                "lie": "plural", "occupies": "singular", "occupy": "plural", "appears": "singular",
                "appear": "plural", "involves": "singular", "involve": "plural", "was": "singular",
                "were": "plural"}  # fmt: skip
_ALL_INSTANCES = re.compile(r"all instances of|所有的")
_REPORT_LINE = re.compile(r"(<ref>.*?</ref><box>.*?</box>)([:：])(.*)")


@dataclass(frozen=True)
class LintHit:
    row_id: str
    rule: str
    detail: str


class _Row:
    """The parts of a row the rules read."""

    def __init__(self, row: dict[str, Any]) -> None:
        meta = row.get("meta", {})
        self.id = str(row.get("id", ""))
        self.task = str(meta.get("task", ""))
        self.report = meta.get("text_source") == "report"
        self.subtask = str(meta.get("subtask", ""))
        self.lang = str(meta.get("lang", ""))
        self.regions = [(r["term"], tuple(int(v) for v in r["box"])) for r in meta.get("regions", [])]
        turns = row.get("conversations", [])
        self.system = next((t["value"] for t in turns if t.get("from") == "system"), None)
        humans = [t["value"] for t in turns if t.get("from") == "human"]
        answers = [t["value"] for t in turns if t.get("from") == "gpt"]
        self.question = humans[0] if humans else ""
        self.answer = answers[0] if answers else ""
        if self.question.startswith("<image>\n"):
            self.question = self.question[len("<image>\n") :]
        self.texts = [t["value"] for t in turns]


class _Linter:
    def __init__(self, language: Language, region_to_text_answer: str) -> None:
        self.lang_data = language
        self.g = language.glossary
        terms = self.g.terms
        self.by_name = {
            lang: {t.names[lang]: tid for tid, t in terms.items() if lang in t.names} for lang in self.g.languages
        }
        self.sentence = region_to_text_answer == "sentence"
        self.prompts = {
            (task, lang, style): bank.system_styles[style][1]
            for (task, lang), bank in language.templates.banks.items()
            for style in bank.system_styles
        }

    def row(self, raw: dict[str, Any]) -> list[LintHit]:
        r = _Row(raw)
        found: list[tuple[str, str]] = []
        found += self._refs(r)
        found += self._prompt(r)
        found += getattr(self, "_" + r.task, lambda _r: [])(r)
        texts = r.texts
        if r.report:  # the report's sentences are not ours to correct: only the heads are linted as our text
            texts = [t for t in r.texts if t != r.answer] + [m.group(1) + m.group(2) for m in self._lines(r)]
            found += self._report_text(r)
        if r.lang == "en":
            for text in texts:
                found += self._english(text)
        elif r.lang == "zh":
            for text in texts:
                found += self._chinese(text)
        return [LintHit(r.id, rule, detail) for rule, detail in found]

    @staticmethod
    def _lines(r: _Row) -> list[re.Match[str]]:
        return [m for line in r.answer.split("\n") if (m := _REPORT_LINE.fullmatch(line))]

    def _report_text(self, r: _Row) -> Iterator[tuple[str, str]]:
        lines = r.answer.split("\n")
        matched = self._lines(r)
        if len(matched) != len(lines):
            yield "report-text", f"{len(lines) - len(matched)} line(s) are not '<ref>..</ref><box>..</box>: sentence'"
        for m in matched:
            colon, sentence = m.group(2), m.group(3).strip()
            if colon != (":" if r.lang == "en" else "："):
                yield "report-text", f"line head ends with {colon!r} in a {r.lang} row"
            if not sentence or re.search(r"[<>]|\[\[", sentence):
                yield "report-text", f"empty sentence or grounding markup: {sentence[:60]!r}"
            elif r.lang == "zh" and not _CJK.search(sentence):
                yield "report-text", f"a Chinese row with an untranslated sentence: {sentence[:60]!r}"
            elif r.lang == "en" and _CJK.search(sentence):
                yield "report-text", f"an English row with Chinese text: {sentence[:60]!r}"

    # ---------------------------------------------------------------- refs and prompts

    def _refs(self, r: _Row) -> Iterator[tuple[str, str]]:
        names = self.by_name.get(r.lang, {})
        for text in r.texts:
            for ref in _REF.findall(text):
                if ref not in names:
                    yield "ref", f"<ref>{ref}</ref> is not a {r.lang} display name"

    def _prompt(self, r: _Row) -> Iterator[tuple[str, str]]:
        style = "sentence" if self.sentence and r.task == "region_to_text" else "default"
        want = self.prompts.get((r.task, r.lang, style))
        if r.system is not None and r.system != want:
            yield "contradiction", f"system turn is not the {r.task}.{r.lang} {style} prompt"
        if want and want in r.question and not r.question.startswith(want + " "):
            yield "contradiction", "an inline prompt must follow <image>\\n and precede the question"
        for (task, lang, other), text in self.prompts.items():
            if other != style and (task, lang) == (r.task, r.lang) and text in r.question:
                yield "contradiction", f"the {other} prompt in a row with {style} answers"

    # ---------------------------------------------------------------- tasks

    def _region_to_text(self, r: _Row) -> Iterator[tuple[str, str]]:
        if r.subtask == "single" and r.regions:
            name = self.g.display(r.regions[0][0], r.lang)
            if not self.sentence and r.answer != name:
                yield "contradiction", f"region->text answer {r.answer!r} is not the name alone ({name!r})"
            if self.sentence and (name not in r.answer or r.answer[-1:] not in ".。"):
                yield "contradiction", f"sentence answer {r.answer!r} does not name {name!r} in a sentence"
        elif r.subtask == "multi":
            yield from self._grounded_match(r, r.answer, ordered=False)

    def _text_to_region(self, r: _Row) -> Iterator[tuple[str, str]]:
        asked = _REF.findall(r.question)
        if r.subtask == "absent":
            yield from self._absent(r, asked)
            return
        got = [ref for ref, _b in _GROUNDED.findall(r.answer)]
        if got != asked:
            yield "contradiction", f"asked for {asked}, answered {got}"
        yield from self._grounded_match(r, r.answer, ordered=True)
        yield from self._instances(r, asked)
        boxes = len(r.regions)
        if r.lang == "en" and (
            (boxes == 1 and re.search(r"\bbounding boxes are\b", r.answer))
            or (boxes > 1 and re.search(r"\bbounding box is\b", r.answer))
        ):
            yield "en-number", f"{r.answer[:40]!r} for {boxes} box(es)"

    def _grounded_report(self, r: _Row) -> Iterator[tuple[str, str]]:
        asked = _REF.findall(r.question)
        heads = [ref for ref, _b in _GROUNDED.findall(r.answer)]
        if r.subtask == "open" and asked:
            yield "contradiction", "an open report question names terms"
        if r.subtask == "targeted" and asked != heads:
            yield "contradiction", f"asked about {asked}, reported {heads}"
        yield from self._grounded_match(r, r.answer, ordered=True)
        if r.lang == "en" and not r.report:
            for line in r.answer.split("\n"):
                yield from self._report_agreement(r, line)

    def _absent(self, r: _Row, asked: list[str]) -> Iterator[tuple[str, str]]:
        if len(asked) != 1:
            yield "contradiction", f"an absent-target question names {len(asked)} terms"
            return
        name = asked[0]
        if "<ref>" in r.answer or "<box>" in r.answer or name not in r.answer:
            yield "contradiction", f"absent answer {r.answer!r} must name {name!r} without tags"
        negation = _EN_NEGATION if r.lang == "en" else _ZH_NEGATION
        if not negation.search(r.answer):
            yield "contradiction", f"absent answer {r.answer!r} does not say the target is absent"
        if r.lang == "en" and re.search(r"\bthe " + re.escape(name) + r"\b", r.answer, re.IGNORECASE):
            yield "contradiction", f"absent answer presupposes the target: {r.answer!r}"

    def _grounded_match(self, r: _Row, text: str, ordered: bool) -> Iterator[tuple[str, str]]:
        """The grounded items of the answer are exactly the row's regions (by display name and box)."""
        want: dict[str, list[tuple[int, ...]]] = {}
        for term, box in r.regions:
            want.setdefault(self.g.display(term, r.lang), []).append(box)
        got = [(ref, [tuple(int(v) for v in b) for b in _BOX.findall(boxes)]) for ref, boxes in _GROUNDED.findall(text)]
        if ordered:
            same = got == list(want.items())
        else:
            same = sorted((k, sorted(v)) for k, v in got) == sorted((k, sorted(v)) for k, v in want.items())
        if not same:
            yield "contradiction", f"grounded answer {[k for k, _v in got]} differs from the row's regions {list(want)}"

    def _instances(self, r: _Row, asked: list[str]) -> Iterator[tuple[str, str]]:
        if len(asked) == 1 and _ALL_INSTANCES.search(r.question) and len(r.regions) < 2:
            yield "contradiction", f"'all instances' asked of {asked[0]!r} with {len(r.regions)} box(es)"

    # ---------------------------------------------------------------- English

    def _term_of(self, ref: str) -> Any:
        tid = self.by_name["en"].get(ref)
        return self.g.terms[tid] if tid else None

    def _english(self, text: str) -> Iterator[tuple[str, str]]:
        if _CJK.search(text) or _FULLWIDTH.search(text):
            yield "en-script", f"Chinese text or punctuation in an English row: {text[:60]!r}"
        plain = text.replace(BOX_FORMAT, "")
        for m in _DOUBLED.finditer(plain):
            yield "en-article", f"doubled determiner {m.group(0)!r}"
        for m in _A_AN.finditer(plain):
            want = indefinite(m.group(2))
            if m.group(1).lower() != want:
                yield "en-article", f"{m.group(1)!r} before {m.group(2)!r} (want {want!r})"
        for m in re.finditer(r"<ref>(.*?)</ref>(?!<box>)", text):
            yield from self._determiner(text, m)

    def _determiner(self, text: str, m: re.Match[str]) -> Iterator[tuple[str, str]]:
        t = self._term_of(m.group(1))
        if t is None:
            return
        before = re.findall(r"[A-Za-z]+", text[: m.start()][-40:])
        prev = before[-1].lower() if before else ""
        after = text[m.end() :]
        regions = after.startswith(" regions")
        if regions:
            number = "plural"
            if not (t.kind == "finding" and t.countable):
                yield "en-article", f"'{t.en} regions' is only said of a countable finding"
        else:
            number = t.number
            if t.countable and t.number == "singular" and prev not in _DETERMINERS and not text[: m.start()].endswith(
                "instances of "
            ):
                yield "en-article", f"bare countable noun: ...{prev} <ref>{t.en}</ref>"
            if (not t.countable or t.number == "plural") and prev in ("a", "an", "every", "each"):
                yield "en-article", f"{prev!r} before the mass or plural noun {t.en!r}"
            if t.article == "none" and prev == "the":
                yield "en-article", f"'the' before {t.en!r}, which takes no article"
        yield from self._agreement_around(text, m, number)

    def _agreement_around(self, text: str, m: re.Match[str], number: str) -> Iterator[tuple[str, str]]:
        """``is/are ... <ref>`` (a question about one term) and ``<ref> ... is/are`` (the term as subject)."""
        head = text[: m.start()]
        lead = re.search(r"\b(is|are|does|do)\s+(?:the |each |every |any )?$", head)
        listed = re.match(r"(?: regions)?(?:, | and )(?:the |every )?<ref>", text[m.end() :]) or re.search(
            r"</ref>(?: regions)?(?:, | and )(?:the |every )?$", head
        )
        if lead and not listed and _VERB_NUMBER[lead.group(1)] != number:
            yield "en-number", f"{lead.group(1)!r} with the {number} phrase <ref>{m.group(1)}</ref>"
        tail = re.match(r"(?: regions)? (is|are)\b", text[m.end() :])
        if tail and not listed and _VERB_NUMBER[tail.group(1)] != number:
            yield "en-number", f"<ref>{m.group(1)}</ref> ({number}) {tail.group(1)}"

    def _report_agreement(self, r: _Row, line: str) -> Iterator[tuple[str, str]]:
        """``<ref>X</ref><box>..</box>: Subject verb ...``: the verb agrees with the subject."""
        head = _GROUNDED.match(line)
        t = self._term_of(head.group(1)) if head else None
        if t is None or head is None:
            return
        sentence = line[head.end() :].lstrip(": ")
        k = len(_BOX.findall(head.group(2)))
        plural = t.number == "plural" or (t.kind == "finding" and t.countable and k >= 2)
        for name in (t.en, t.plural_en):
            # the subject: the name (or its plural) at the start of a clause, after at most one determiner
            subject = r"(?:^|, )(?:\w+ )?" + re.escape(name) + r" (\w+)\b"
            m = re.search(subject, sentence, re.IGNORECASE) if name else None
            if m and m.group(1).lower() in _VERB_NUMBER:
                want = "plural" if plural else "singular"
                if _VERB_NUMBER[m.group(1).lower()] != want:
                    yield "en-number", f"{name!r} ({want}) {m.group(1)!r} in {sentence!r}"
                if plural and name == t.en and t.number == "singular":
                    yield "en-number", f"several {t.en!r} said in the singular: {sentence!r}"
                return

    # ---------------------------------------------------------------- Chinese

    def _chinese(self, text: str) -> Iterator[tuple[str, str]]:
        plain = _BOX_TAG.sub("", text.replace(BOX_FORMAT, ""))
        bad = set(_ASCII_PUNCT.findall(plain))
        if bad:
            yield "zh-punct", f"ASCII punctuation {''.join(sorted(bad))!r} in {plain[:60]!r}"
        for gap in _TAG_GAP.findall(text):
            if gap not in ("", "、", "和", "\n") and not _CJK.search(gap.replace("和", "")):
                yield "zh-list", f"list items joined with {gap!r}"
        for m in _ZH_DIGIT_COUNT.finditer(_REF.sub("", plain)):
            yield "zh-numeral", f"count in digits {m.group(0)!r}"


def lint_rows(
    rows: Iterable[dict[str, Any]], language: Language | None = None, *, region_to_text_answer: str = "name"
) -> list[LintHit]:
    """Every rule hit in ``rows`` (release rows: conversations + meta task/subtask/lang/regions)."""
    linter = _Linter(language or Language.load(), region_to_text_answer)
    return [hit for row in rows for hit in linter.row(row)]


def _release_rows(release_dir: Path) -> Iterator[dict[str, Any]]:
    for path in sorted((release_dir / "data").rglob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            if line.strip():
                yield orjson.loads(line)


def lint_release(release_dir: str | Path, language: Language | None = None) -> list[LintHit]:
    """Lint every row of a release's ``data/`` shards (the answer style is read from the manifest's config)."""
    release_dir = Path(release_dir)
    style = "name"
    manifest = release_dir / "manifest.json"
    if manifest.is_file():
        config = orjson.loads(manifest.read_bytes()).get("config", {})
        style = config.get("tasks", {}).get("region_to_text_answer", "name") if isinstance(config, dict) else "name"
    return lint_rows(_release_rows(release_dir), language, region_to_text_answer=style)
