"""The controlled bilingual vocabulary: canonical term ids, display names, synonyms, mirrors, label maps.

Data lives beside this module (``data/glossary/*.yaml``, ``data/<label-map>.yaml``) and is validated at
load by the pydantic models in :mod:`schemas.language`.  Everything here is read-only after loading and
cached per process: :func:`load_glossary` and :func:`load_label_map` are cheap to call repeatedly.

Resolution (:meth:`Glossary.resolve`) matches a free-text label against term ids, display names, synonyms
and dataset aliases.  Matching ignores case, punctuation, underscores, ``+`` and camel case
(``SpinalCord`` == ``spinal cord`` == ``spinal_cord``) and, for multi-word English names, word order
(``kidney, right`` == ``right kidney``).  Two different terms may never share a matching key: that is a
load-time error, so a label resolves to at most one term.

User terms (a card's ``terms:``, the glossary files a release config names) join the shipped glossary of
this process through :func:`pipeline.language.user_terms.add_terms`; :func:`load_glossary` then returns the
merged glossary, validated by the same rules, and a clash names both places.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from schemas.language import (
    CATEGORY_FAMILY,
    GlossaryFileSpec,
    GlossarySpec,
    LabelMapSpec,
    TermSpec,
)
from schemas.yamlio import load_yaml

DATA_DIR = Path(__file__).resolve().parent / "data"
GLOSSARY_DIR = DATA_DIR / "glossary"

__all__ = [
    "DATA_DIR",
    "Glossary",
    "Term",
    "english_plural",
    "shipped_term_file",
    "list_label_maps",
    "load_glossary",
    "load_label_map",
    "normalise_name",
]


# ----------------------------------------------------------------------------------------- normalising

_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


def normalise_name(text: str) -> str:
    """Matching key of a name: NFKC, camel case split, case-folded, punctuation -> single spaces.

    Spaces next to CJK characters are dropped (``左 肾`` == ``左肾``).
    """
    s = unicodedata.normalize("NFKC", text)
    s = _CAMEL.sub(" ", s)
    s = _NON_WORD.sub(" ", s.casefold()).strip()
    if _CJK.search(s):
        s = re.sub(r"\s*([\u3400-\u4dbf\u4e00-\u9fff])\s*", r"\1", s)
    return s


_SIDES = {"l": "left", "r": "right", "lt": "left", "rt": "right"}
_SIBILANT = re.compile(r"(s|x|z|ch|sh)$")
_CONSONANT_Y = re.compile(r"[^aeiou]y$")


def english_plural(name: str) -> str:
    """The regular English plural of a name's last word ("polyp" -> "polyps", "mass" -> "masses",
    "right kidney cyst" -> "right kidney cysts"); irregular plurals go in the glossary (``plural_en``)."""
    if _SIBILANT.search(name):
        return name + "es"
    if _CONSONANT_Y.search(name):
        return name[:-1] + "ies"
    return name + "s"


def _order_free(key: str) -> str | None:
    """Word-order-free key for multi-word Latin names (``kidney right`` -> ``kidney right``)."""
    words = key.split(" ")
    if len(words) < 2 or _CJK.search(key):
        return None
    return " ".join(sorted(words))


# ----------------------------------------------------------------------------------------- terms


@dataclass(frozen=True, slots=True)
class Term:
    """A glossary term, flattened for fast lookups."""

    id: str
    names: dict[str, str]  # lang -> display name
    synonyms: dict[str, tuple[str, ...]]  # lang -> synonyms
    category: str
    family: str
    laterality: str | None
    mirror: str | None
    parent: str | None
    body_regions: tuple[str, ...]
    codes: dict[str, str]
    aliases: tuple[str, ...]
    # English grammar of the display name (see TermSpec): resolved defaults, never None
    countable: bool = True
    number: str = "singular"  # singular | plural
    article: str = "the"  # the | none: the definite article written before the name
    plural_en: str = ""  # for several instances of a countable singular term ("" otherwise)
    kind: str = "anatomy"  # anatomy | finding (lesion/finding family) | device: what templates may call it

    @property
    def en(self) -> str:
        return self.names["en"]

    @property
    def zh(self) -> str:
        return self.names["zh"]

    @classmethod
    def from_spec(cls, tid: str, spec: TermSpec) -> Term:
        """The one way a validated :class:`TermSpec` becomes a term (shipped and user-defined terms alike):
        the grammar defaults are resolved here."""
        family = CATEGORY_FAMILY[spec.category]
        article = spec.article or ("none" if family == "abnormality" and not spec.countable else "the")
        plural = ""
        if spec.countable and spec.number == "singular":
            plural = spec.plural_en or english_plural(spec.en)
        return cls(
            id=tid,
            names=spec.display_names(),
            synonyms={k: tuple(v) for k, v in spec.synonym_lists().items()},
            category=spec.category,
            family=family,
            laterality=spec.laterality,
            mirror=spec.mirror,
            parent=spec.parent,
            body_regions=tuple(spec.body_region),
            codes=dict(spec.codes),
            aliases=tuple(spec.aliases),
            countable=spec.countable,
            number=spec.number,
            article=article,
            plural_en=plural,
            kind="finding" if family == "abnormality" else "device" if family == "device" else "anatomy",
        )


class Glossary:
    """Read-only view of the validated glossary."""

    def __init__(self, spec: GlossarySpec, origin: str = "") -> None:
        self.origin = origin
        self.spec = spec
        self.terms: dict[str, Term] = {tid: Term.from_spec(tid, t) for tid, t in spec.terms.items()}
        self.languages: tuple[str, ...] = tuple(
            sorted(set.intersection(*(set(t.names) for t in self.terms.values())))
        ) if self.terms else ("en", "zh")
        # display cache: (id, lang) -> name
        self._display: dict[tuple[str, str], str] = {
            (tid, lang): name for tid, t in self.terms.items() for lang, name in t.names.items()
        }
        self._build_index()
        self._same_region: dict[str, tuple[str, ...]] = {}

    # ---------------------------------------------------------------- index

    def _build_index(self) -> None:
        # per language: key -> term; "*" holds language-neutral keys (ids, aliases)
        exact: dict[str, dict[str, str]] = {}
        loose: dict[str, dict[str, set[str]]] = {}
        clashes: list[str] = []

        def put(lang: str, name: str, tid: str, what: str) -> None:
            key = normalise_name(name)
            if not key:
                clashes.append(f"{tid}: {what} {name!r} is empty after normalising")
                return
            table = exact.setdefault(lang, {})
            other = table.get(key)
            if other is not None and other != tid:
                clashes.append(f"{what} {name!r} of {tid!r} matches {other!r} too (key {key!r})")
                return
            table[key] = tid
            of = _order_free(key)
            if of is not None:
                loose.setdefault(lang, {}).setdefault(of, set()).add(tid)

        for tid, t in self.terms.items():
            put("*", tid, tid, "term id")
            for a in t.aliases:
                put("*", a, tid, "alias")
            for lang, name in t.names.items():
                put(lang, name, tid, f"{lang} display name")
            for lang, syns in t.synonyms.items():
                for s in syns:
                    put(lang, s, tid, f"{lang} synonym")
        self._finish_index(exact, loose, clashes)

    def _finish_index(
        self, exact: dict[str, dict[str, str]], loose: dict[str, dict[str, set[str]]], clashes: list[str]
    ) -> None:
        # a key of one language must not point to another term through another language's table
        keys_to_terms: dict[str, set[str]] = {}
        for table in exact.values():
            for k, tid in table.items():
                keys_to_terms.setdefault(k, set()).add(tid)
        shared = sorted((k, sorted(tids)) for k, tids in keys_to_terms.items() if len(tids) > 1)
        clashes.extend(f"key {k!r} matches several terms: {tids}" for k, tids in shared)
        if clashes:
            raise ValueError("glossary names are ambiguous:\n  " + "\n  ".join(clashes))
        self._exact_any: dict[str, str] = {k: next(iter(v)) for k, v in keys_to_terms.items()}
        self._exact = exact
        # order-free keys are used only when they are unambiguous
        merged: dict[str, set[str]] = {}
        for loose_table in loose.values():
            for k, tid_set in loose_table.items():
                merged.setdefault(k, set()).update(tid_set)
        self._loose_any: dict[str, str] = {k: next(iter(v)) for k, v in merged.items() if len(v) == 1}
        self._loose = {
            lang: {k: next(iter(v)) for k, v in table.items() if len(v) == 1 and len(merged[k]) == 1}
            for lang, table in loose.items()
        }

    # ---------------------------------------------------------------- lookups

    def __contains__(self, tid: object) -> bool:
        return tid in self.terms

    def __len__(self) -> int:
        return len(self.terms)

    def __iter__(self) -> Iterator[str]:
        return iter(self.terms)

    def term(self, tid: str) -> Term:
        try:
            return self.terms[tid]
        except KeyError:
            hint = self.resolve(tid)
            extra = f" (did you mean {hint!r}?)" if hint else ""
            raise KeyError(f"{tid!r} is not a glossary term id{extra}; see pipeline/language/data/glossary/") from None

    def display(self, tid: str, lang: str) -> str:
        """Display name of ``tid`` in ``lang`` (the text written inside ``<ref>``)."""
        try:
            return self._display[(tid, lang)]
        except KeyError:
            self.term(tid)  # raises the helpful error for an unknown id
            raise KeyError(f"term {tid!r} has no {lang!r} display name") from None

    def resolve(self, text: str, lang: str | None = None) -> str | None:
        """Term id for a label / name / synonym / alias, or ``None``.

        With ``lang`` only that language's names (plus ids and aliases) are matched.
        """
        if not text:
            return None
        if text in self.terms:
            return text
        key = normalise_name(text)
        if not key:
            return None
        tid = self._resolve_key(key, lang)
        if tid is None:
            # RT structure-set style side suffixes/prefixes (AAPM TG-263: Lung_L, Kidney_R, L_Lung)
            words = key.split(" ")
            if len(words) >= 2 and (words[-1] in _SIDES or words[0] in _SIDES):
                if words[-1] in _SIDES:
                    words[-1] = _SIDES[words[-1]]
                else:
                    words[0] = _SIDES[words[0]]
                tid = self._resolve_key(" ".join(words), lang)
        return tid

    def _resolve_key(self, key: str, lang: str | None) -> str | None:
        if lang is None:
            tid = self._exact_any.get(key)
            if tid is not None:
                return tid
            of = _order_free(key)
            return self._loose_any.get(of) if of is not None else None
        for table in (self._exact.get(lang, {}), self._exact.get("*", {})):
            tid = table.get(key)
            if tid is not None:
                return tid
        of = _order_free(key)
        if of is None:
            return None
        return self._loose.get(lang, {}).get(of) or self._loose.get("*", {}).get(of)

    def mirror(self, tid: str) -> str | None:
        return self.term(tid).mirror

    def laterality(self, tid: str) -> str | None:
        return self.term(tid).laterality

    def category(self, tid: str) -> str:
        return self.term(tid).category

    def family(self, tid: str) -> str:
        """Category family (soft_anatomy, skeleton, vessel, muscle, abnormality, device)."""
        return self.term(tid).family

    def ancestors(self, tid: str) -> list[str]:
        """Parent, grand-parent, ... of ``tid`` (nearest first)."""
        out: list[str] = []
        p = self.term(tid).parent
        while p is not None:
            out.append(p)
            p = self.terms[p].parent
        return out

    def related(self, a: str, b: str) -> bool:
        """True when one term contains the other (same term, ancestor or descendant)."""
        return a == b or a in self.ancestors(b) or b in self.ancestors(a)

    def same_region_terms(self, tid: str) -> list[str]:
        """Other terms sharing a body region and the category family with ``tid`` (sorted ids).

        These are a term's plausible confusions: hard absent-target negatives, distractors for judges.
        Ancestors and descendants of ``tid`` are left out (they are not confusions but containment).
        """
        cached = self._same_region.get(tid)
        if cached is None:
            t = self.term(tid)
            regions = set(t.body_regions)
            cached = tuple(
                sorted(
                    o.id
                    for o in self.terms.values()
                    if o.id != tid
                    and o.family == t.family
                    and regions.intersection(o.body_regions)
                    and not self.related(tid, o.id)
                )
            )
            self._same_region[tid] = cached
        return list(cached)


# ----------------------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> object:
    return load_yaml(path)  # alias expansion and size limited; errors name the file (a ValueError)


def _load_spec(directory: Path) -> GlossarySpec:
    merged: dict[str, TermSpec] = {}
    where = _WHERE.setdefault(str(directory), {})
    where.clear()
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no glossary files (*.yaml) in {directory}")
    for path in files:
        data = _read_yaml(path) or {}
        try:
            part = GlossaryFileSpec.model_validate(data).root
        except ValueError as exc:
            raise ValueError(f"glossary file {path.name}: {exc}") from exc
        for tid, spec in part.items():
            if tid in merged:
                raise ValueError(f"term {tid!r} is defined in both {where[tid]} and {path.name}")
            merged[tid] = spec
            where[tid] = path.name
    return GlossarySpec(terms=merged)


_WHERE: dict[str, dict[str, str]] = {}  # glossary directory -> term id -> file name


@lru_cache(maxsize=4)
def _load_glossary_cached(directory: str) -> Glossary:
    return Glossary(_load_spec(Path(directory)), origin=directory)


def load_glossary(directory: str | Path | None = None) -> Glossary:
    """The validated glossary (cached per directory).  By default the shipped one, merged with the user
    terms added in this process (:func:`pipeline.language.user_terms.add_terms`)."""
    from pipeline.language import user_terms  # the merge lives there; it imports this module

    if directory is None or str(directory) == user_terms.merged_origin():
        return user_terms.user_glossary()
    return _load_glossary_cached(str(Path(directory)))


def shipped_term_file(tid: str) -> str | None:
    """``pipeline/language/data/glossary/<file>.yaml`` of a shipped term, or None."""
    _load_glossary_cached(str(GLOSSARY_DIR))
    name = _WHERE.get(str(GLOSSARY_DIR), {}).get(tid)
    return f"pipeline/language/data/glossary/{name}" if name else None


def list_label_maps(data_dir: str | Path | None = None) -> list[str]:
    """Names of the label maps (``<data_dir>/<name>.yaml``; the shipped ones by default)."""
    return sorted(p.stem for p in Path(data_dir or DATA_DIR).glob("*.yaml"))


@lru_cache(maxsize=32)
def _load_label_map_cached(name: str, data_dir: str) -> tuple[tuple[int, str], ...]:
    path = Path(data_dir) / f"{name}.yaml"
    if not path.is_file() or "/" in name or "\\" in name:
        raise FileNotFoundError(f"no label map {name!r}; label maps: {', '.join(list_label_maps(data_dir))}")
    data = _read_yaml(path)
    try:
        mapping = LabelMapSpec.model_validate(data).root
    except ValueError as exc:
        raise ValueError(f"label map {name}: {exc}") from exc
    glossary = load_glossary(Path(data_dir) / "glossary")
    unknown = sorted({t for t in mapping.values() if t not in glossary})
    if unknown:
        raise ValueError(f"label map {name}: terms not in the glossary: {unknown}")
    return tuple(sorted(mapping.items()))


def load_label_map(name: str, data_dir: str | Path | None = None) -> dict[int, str]:
    """A ``label id -> term id`` map by name (e.g. ``totalseg_total``, ``totalseg_total_mr``).

    ``data_dir``: a language data folder (``glossary/`` beside the maps); the shipped one by default.
    """
    return dict(_load_label_map_cached(name, str(Path(data_dir or DATA_DIR))))
