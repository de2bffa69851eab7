"""The wording side of generation: one folder of language data (:class:`Language`), the noun phrases of
every term in one language (:class:`Phrases`) and everything a renderer needs for one (modality, body
region, language) context (:class:`Voice`).

English grammar comes from the glossary (``countable``, ``number``, ``article``, ``plural_en``):

* ``{the_term}`` / ``{the_ref}``: the definite phrase -- "the liver", "the costal cartilages", "atelectasis"
  (a mass noun of the finding family takes no article); a countable finding with several boxes is "the
  <ref>polyp</ref> regions" (plural), never "the polyp".
* ``{subject}`` (report sentences): anatomy as above; a finding is "atelectasis", "a polyp" or "two polyps".
* ``{refs}``: the definite phrases joined as a list.

Chinese has no articles and no number: every form is the display name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.language.glossary import DATA_DIR, Glossary, Term, load_glossary
from pipeline.language.templates import (
    TASKS,
    Fill,
    TemplateSet,
    Vocab,
    _load_templates_cached,
    _load_vocab_cached,
    load_templates,
    load_vocab,
)
from schemas.language import TRAITS

if TYPE_CHECKING:
    from pipeline.language.tasks import TaskMix

#: a template as the hot loops see it: (template id, fill)
Choice = tuple[str, Fill]
#: the answer styles of region -> text: the display name alone (MedRegA's references) or a sentence
R2T_ANSWER_STYLES = ("name", "sentence")
#: where the task prompt goes (docs/language.md, "System prompt")
SYSTEM_PROMPT_MODES = ("none", "inline", "turn")
#: grounded reports of slices with report sentences: the report's own text, template text, or both
GROUNDED_TEXT = ("report", "template", "both")

_VOWEL_WORD = re.compile(r"^(?:[aeiou]|hour|honest|heir)", re.IGNORECASE)
_CONSONANT_SOUND = re.compile(r"^(?:uni|use|usu|ura|ure|uri|uro|eu|one\b|once)", re.IGNORECASE)
_ACRONYM = re.compile(r"^([A-Z][A-Z0-9]*)(?=[\s-]|$)")


def indefinite(phrase: str) -> str:
    """``a`` or ``an`` for a phrase, by its first sound: "an atelectasis", "a polyp", "a unit", "an MR
    image", "a CT image", "a COVID-19 lesion" (an acronym of four or more letters is read as a word)."""
    m = _ACRONYM.match(phrase)
    if m and (len(m.group(1)) < 4 or not re.search(r"[AEIOU]", m.group(1))):
        return "an" if m.group(1)[0] in "AEFHILMNORSX" else "a"
    return "an" if _VOWEL_WORD.match(phrase) and not _CONSONANT_SOUND.match(phrase) else "a"


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


class Phrases:
    """Every term's phrases in one language (built once per language)."""

    def __init__(self, glossary: Glossary, lang: str, numbers: list[str]) -> None:
        en = lang == "en"
        self.lang = lang
        self.name: dict[str, str] = {}
        self.the: dict[str, str] = {}
        self.ref: dict[str, str] = {}
        self.the_ref: dict[str, str] = {}
        self.regions_ref: dict[str, str] = {}  # a countable finding with several boxes
        self.plural: dict[str, str] = {}
        # the same with a capital first letter (sentence starts): "Liver", "The liver", "The <ref>liver</ref>"
        self.Name: dict[str, str] = {}
        self.The: dict[str, str] = {}
        self.The_ref: dict[str, str] = {}
        self.The_regions_ref: dict[str, str] = {}
        self._numbers = numbers
        for tid, t in glossary.terms.items():
            if lang not in t.names:
                continue
            name = t.names[lang]
            ref = "<ref>" + name + "</ref>"
            definite = en and t.article == "the"
            self.name[tid] = name
            self.ref[tid] = ref
            self.the[tid] = "the " + name if definite else name
            self.the_ref[tid] = "the " + ref if definite else ref
            self.regions_ref[tid] = "the " + ref + " regions" if en else ref
            self.plural[tid] = t.plural_en if en else name
            for low, cap in ((self.name, self.Name), (self.the, self.The), (self.the_ref, self.The_ref),
                             (self.regions_ref, self.The_regions_ref)):  # fmt: skip
                cap[tid] = capitalise(low[tid])
        self._subject: dict[tuple[str, int], tuple[str, str]] = {}
        self._terms = glossary.terms

    def subject(self, tid: str, boxes: int) -> tuple[str, str]:
        """A report sentence's subject and its capitalised form: anatomy definite ("the right kidney"); a
        finding bare when it is a mass noun ("atelectasis"), else "a polyp" or "two polyps"."""
        got = self._subject.get((tid, boxes))
        if got is None:
            t: Term = self._terms[tid]
            if self.lang != "en" or t.kind != "finding" or not t.countable:
                text = self.the[tid]
            elif boxes >= 2:
                n = self._numbers[boxes] if boxes < len(self._numbers) else str(boxes)
                text = n + " " + self.plural[tid]
            else:
                name = self.name[tid]
                text = indefinite(name) + " " + name
            got = self._subject[(tid, boxes)] = (text, capitalise(text))
        return got


def phrase_traits(term: Term, boxes: int) -> tuple[str, str]:
    """(number, instances) of the phrase that names ``term`` with ``boxes`` boxes (0: an absent target)."""
    if term.kind == "finding" and term.countable:
        if boxes >= 2:
            return "plural", "several"
        if boxes == 0:
            return "singular", "any"
    return term.number, "one"


class Voice:
    """One language in one (modality, body region) context: context words, phrases, punctuation, system
    prompts and the compiled template choices per (task, slot, traits) (made on first use)."""

    __slots__ = (
        "_has_region", "_system", "_templates", "choice_cache", "colon", "item_sep", "lang", "last_sep", "line_sep",
        "list_sep", "numbers", "phrases", "position_cache", "sizes", "vocab", "words",
    )  # fmt: skip

    def __init__(self, language: Language, lang: str, words: dict[str, Any]) -> None:
        self.lang = lang
        self.words = words  # {modality}, {image}, {body_region} (None when unknown or implied)
        self.phrases = language.phrases(lang)
        self.vocab = language.vocab
        p = language.vocab.punctuation[lang]
        self.list_sep, self.last_sep, self.item_sep, self.colon, self.line_sep = (
            p.list_sep, p.last_sep, p.item_sep, p.colon, p.line_sep,
        )  # fmt: skip
        self.numbers = language.vocab.spec.numbers.get(lang, [])
        self.sizes = {k: w.get(lang) for k, w in language.vocab.spec.sizes.items()}
        self._has_region = words["body_region"] is not None
        self._templates = language.templates
        #: (task, slot, traits) -> choices; renderers read it directly and call :meth:`choices` on a miss
        self.choice_cache: dict[tuple[str, str, tuple[str, ...]], tuple[Choice, ...]] = {}
        self.position_cache: dict[tuple[str, ...], str] = {}
        self._system: dict[tuple[str, str], tuple[str, str]] = {}

    def choices(self, task: str, slot: str, traits: tuple[str, ...] = ()) -> tuple[Choice, ...]:
        """The templates of a slot that fit a target; ``traits`` are the slot's trait values in
        :data:`schemas.language.TRAITS` order."""
        key = (task, slot, traits)
        got = self.choice_cache.get(key)
        if got is None:
            names = tuple(TRAITS.get((task, slot), {}))
            bank = self._templates.bank(task, self.lang)
            found = bank.choices(slot, self._has_region, tuple(zip(names, traits, strict=True)))
            got = self.choice_cache[key] = tuple((t.id, t.fill) for t in found)
        return got

    def system(self, task: str, style: str) -> tuple[str, str]:
        got = self._system.get((task, style))
        if got is None:
            got = self._system[(task, style)] = self._templates.bank(task, self.lang).system_prompt(style)
        return got

    def positions(self, keys: tuple[str, ...]) -> str:
        got = self.position_cache.get(keys)
        if got is None:
            got = self.position_cache[keys] = self.vocab.positions_phrase(keys, self.lang)
        return got

    def number(self, n: int) -> str:
        return self.numbers[n] if n < len(self.numbers) else str(n)

    def join(self, items: list[str]) -> str:
        """A list in this language: "a, b and c" / "a、b和c"."""
        if len(items) <= 1:
            return "".join(items)
        return self.list_sep.join(items[:-1]) + self.last_sep + items[-1]


class Language:
    """One folder of language data -- glossary, template banks, vocab -- prepared for generation.

    :meth:`load` reads a folder (``glossary/``, ``templates/``, ``vocab/``; the shipped
    ``pipeline/language/data`` by default); the constructor takes loaded parts (e.g. a glossary with a
    card's own terms).  Per-language phrases and per-context voices are made on first use.
    """

    def __init__(self, glossary: Glossary, templates: TemplateSet, vocab: Vocab) -> None:
        self.glossary = glossary
        self.templates = templates
        self.vocab = vocab
        self.lineage: dict[str, frozenset[str]] = {tid: frozenset(glossary.ancestors(tid)) for tid in glossary.terms}
        #: countable lesions/findings: several boxes are several instances ("the <ref>polyp</ref> regions")
        self.countable_findings = frozenset(
            t for t, term in glossary.terms.items() if term.kind == "finding" and term.countable
        )
        self._phrases: dict[str, Phrases] = {}
        self._voices: dict[tuple[str, str | None, str], Voice] = {}
        self._mixes: dict[tuple[Any, ...], list[tuple[str, float]]] = {}

    @classmethod
    def load(cls, data_dir: str | Path | None = None) -> Language:
        """The language data of a folder (cached per folder; the shipped data by default)."""
        if data_dir is None:
            return _shipped()
        return _load_language(str(Path(data_dir)))

    def phrases(self, lang: str) -> Phrases:
        got = self._phrases.get(lang)
        if got is None:
            got = self._phrases[lang] = Phrases(self.glossary, lang, self.vocab.spec.numbers.get(lang, []))
        return got

    def voice(self, modality: str, body_region: str | None, lang: str) -> Voice:
        key = (modality, body_region, lang)
        got = self._voices.get(key)
        if got is None:
            mod, image = self.vocab.modality_words(modality, lang, body_region)
            region = self.vocab.body_region_word(body_region, lang, modality)
            got = self._voices[key] = Voice(self, lang, {"modality": mod, "image": image, "body_region": region})
        return got

    def rates(self, mix: TaskMix) -> list[tuple[str, float]]:
        """Validated ``[(task, rate), ...]`` in canonical task order (cached per mix content)."""
        key = (tuple(mix.tasks.items()), tuple(mix.langs), mix.system_prompt, mix.region_to_text_answer,
               mix.grounded_text)
        got = self._mixes.get(key)
        if got is None:
            self._check(mix)
            got = self._mixes[key] = [(t, float(mix.tasks[t])) for t in TASKS if mix.tasks.get(t, 0.0) > 0]
        return got

    def _check(self, mix: TaskMix) -> None:
        unknown = [t for t in mix.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {list(TASKS)}")
        if mix.system_prompt not in SYSTEM_PROMPT_MODES:
            raise ValueError(f"system_prompt must be one of {SYSTEM_PROMPT_MODES}, got {mix.system_prompt!r}")
        if mix.region_to_text_answer not in R2T_ANSWER_STYLES:
            raise ValueError(
                f"region_to_text_answer must be one of {R2T_ANSWER_STYLES}, got {mix.region_to_text_answer!r}"
            )
        if mix.grounded_text not in GROUNDED_TEXT:
            raise ValueError(f"grounded_text must be one of {GROUNDED_TEXT}, got {mix.grounded_text!r}")
        if mix.region_to_text_answer == "sentence" and mix.system_prompt == "none":
            raise ValueError(
                "region_to_text_answer 'sentence' needs its own prompt in the row: use system_prompt inline or turn "
                "(with 'none' the InternVL meta file's base_prompt asks for the name alone)"
            )
        for lang in mix.langs:
            if lang not in self.glossary.languages:
                raise ValueError(f"language {lang!r} has no glossary names (have {list(self.glossary.languages)})")
            for task in TASKS:
                bank = self.templates.bank(task, lang)  # KeyError with the list of banks when one is missing
                if task == "region_to_text":
                    bank.system_prompt("sentence" if mix.region_to_text_answer == "sentence" else "default")


#: Language per (glossary, banks, vocab) objects: the loaders cache those per folder (and drop them when an
#: accepted expansion rewrites a file), so a Language always wraps the current data
_BY_PARTS: dict[tuple[int, int, int], Language] = {}
_SHIPPED_DIRS = (str(DATA_DIR / "glossary"), str(DATA_DIR / "templates"), str(DATA_DIR / "vocab"))


def _wrap(glossary: Glossary, templates: TemplateSet, vocab: Vocab) -> Language:
    key = (id(glossary), id(templates), id(vocab))
    got = _BY_PARTS.get(key)
    if got is None or got.glossary is not glossary or got.templates is not templates or got.vocab is not vocab:
        got = _BY_PARTS[key] = Language(glossary, templates, vocab)
    return got


def _shipped() -> Language:
    _g, t, v = _SHIPPED_DIRS  # the loaders' per-folder caches, called with their keys (no Path work per slice)
    # the glossary of this process: the shipped one plus the user terms of cards and glossary files
    return _wrap(load_glossary(), _load_templates_cached(t), _load_vocab_cached(v))


def _load_language(data_dir: str) -> Language:
    base = Path(data_dir)
    return _wrap(load_glossary(base / "glossary"), load_templates(base / "templates"), load_vocab(base / "vocab"))
