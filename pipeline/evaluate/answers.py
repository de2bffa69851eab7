"""The one parser for MedRegA-format answers (grounding syntax ``<ref>term</ref><box>[[x1, y1, x2, y2]]</box>``).

Used by the grounding judge (pipeline.validate.grounding), the rule validator (boxes written in the
conversation text) and the evaluation kit.  It reads what models really emit, not only the clean form:

* tagged:            ``<ref>liver</ref><box>[[120, 300, 480, 610]]</box>``
* several boxes:     ``<ref>kidney</ref><box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>``
* several refs in running text (grounded reports), English or Chinese.
* tags dropped:      decoding with ``skip_special_tokens=True`` removes ``<ref>``/``<box>`` from InternVL
  outputs, leaving ``liver[[120, 300, 480, 610]]``; the term is then taken from the text just before
  the box list (``The liver is located at [[...]]`` -> ``liver``; ``肝脏位于[[...]]`` -> ``肝脏``).
* a bare list:       ``[[1,2,3,4]]`` or a single ``[1, 2, 3, 4]`` (term ``None`` when nothing precedes it).
* corner pairs:      ``(1,2),(3,4)`` (Qwen-VL style, also inside ``<|box_start|>...<|box_end|>``).
* Qwen tags:         ``<|object_ref_start|>liver<|object_ref_end|>``.
* full-width punctuation: ``［［１２，３４，５６，７８］］``, ``（１，２），（３，４）``, ``：``, ``，``.

Numbers are returned as written (rounded to int if written with decimals); nothing is clipped,
reordered or validated here — a box with ``x1 > x2`` is the caller's to judge (its IoU is 0).
``term_text`` is the raw display text (``"left kidney"``, ``"左肾"``); resolving it to a canonical term
id is the glossary's job (``Glossary.resolve``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import cast

Box = tuple[int, int, int, int]

__all__ = ["Box", "ParsedRef", "parse_grounded", "parse_boxes", "parse_terms", "strip_grounding", "normalise_text"]


@dataclass
class ParsedRef:
    """One referred structure in an answer: its text (``None`` if the answer gave none) and its boxes."""

    term_text: str | None
    boxes: list[Box] = field(default_factory=list)


# Full-width (and a few look-alike) characters -> ASCII.  Applied before parsing.
_FULLWIDTH = {
    "［": "[", "］": "]", "（": "(", "）": ")", "，": ",", "：": ":", "；": ";", "、": ",",
    "【": "[", "】": "]", "〔": "[", "〕": "]", "＜": "<", "＞": ">", "／": "/", "－": "-", "−": "-",
    "．": ".", "　": " ", "｜": "|",
}
_FULLWIDTH.update({chr(0xFF10 + d): str(d) for d in range(10)})  # ０..９
_TRANS = str.maketrans(_FULLWIDTH)


def normalise_text(text: str) -> str:
    """Full-width punctuation and digits -> ASCII (the rest of the text is left as is)."""
    return text.translate(_TRANS)


_NUM = r"-?\d+(?:\.\d+)?"
_QUAD = rf"\[\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\]"
_PAIR = rf"\(\s*{_NUM}\s*,\s*{_NUM}\s*\)\s*,?\s*\(\s*{_NUM}\s*,\s*{_NUM}\s*\)"

_REF_RE = re.compile(
    r"<ref>(?P<a>.*?)</ref>|<\|object_ref_start\|>(?P<b>.*?)<\|object_ref_end\|>", re.DOTALL
)
_BOX_TAG_RE = re.compile(r"<box>(?P<a>.*?)</box>|<\|box_start\|>(?P<b>.*?)<\|box_end\|>", re.DOTALL)
_UNTAGGED_RE = re.compile(
    rf"\[\s*{_QUAD}(?:\s*,?\s*{_QUAD})*\s*\]"  # [[..], [..]]
    rf"|{_QUAD}"  # [..]
    rf"|{_PAIR}"  # (x1,y1),(x2,y2)
)
_QUAD_RE = re.compile(_QUAD)
_PAIR_RE = re.compile(_PAIR)
_NUM_RE = re.compile(_NUM)
# Any leftover grounding / chat special token, removed from free text.
_SPECIAL_RE = re.compile(r"</?(?:ref|box|quad|img|image)>|<\|[a-z_]+\|>|<image>", re.IGNORECASE)

# Clause boundaries used to find the term in front of an untagged box list.
# ("and"/"和" are not boundaries: display names contain them, e.g. "portal vein and splenic vein".)
_CLAUSE_SPLIT_RE = re.compile(r"(?<!\d)\.(?!\d)|[\n;!?。！？,]")
# Fillers stripped from the end / start of the text in front of an untagged box list.
_TRAIL_FILLERS_EN = re.compile(
    r"(?:\s*(?:\b(?:is|are|was|can be|appears?|seems?)\b)?\s*"
    r"(?:\b(?:located|found|seen|shown|visible|situated|positioned|detected|identified|displayed|present)\b)?\s*"
    r"(?:\b(?:at|in|within|as|by|around)\b)?\s*"
    r"(?:\b(?:the\s+)?(?:region|area|box|bounding box|coordinates?|position|location)s?\b)?"
    r"\s*(?:\b(?:of|at|is|are)\b)?\s*[:=]?\s*)$",
    re.IGNORECASE,
)
_TRAIL_FILLERS_ZH = re.compile(
    r"(?:的)?(?:位置|坐标|边界框|区域|检测框|框)?(?:位于|在|为|是|如下|:)*(?:位置|坐标|区域)?(?:为|是|:)*\s*$"
)
_LEAD_FILLERS = re.compile(
    r"^\s*(?:\d+\s*[.)]\s+|\b(?:and|the|a|an|with|of)\b\s*|以及|和|及|与|其中|另外|还有|:|-|\*"
    r"|\b(?:the\s+)?(?:bounding\s+box(?:es)?|box(?:es)?|coordinates?|location|position|region)\s+(?:of|for)\b\s*)*\s*",
    re.IGNORECASE,
)


def _to_int(s: str) -> int:
    return int(math.floor(float(s) + 0.5))  # half up, as pipeline.regions.coords


def _boxes_in(fragment: str) -> list[Box]:
    """Every box inside a fragment (contents of ``<box>`` or an untagged list)."""
    frag = normalise_text(fragment)
    found: list[tuple[int, Box]] = []
    for m in _QUAD_RE.finditer(frag):
        nums = [_to_int(n) for n in _NUM_RE.findall(m.group(0))]
        found.append((m.start(), (nums[0], nums[1], nums[2], nums[3])))
    if not found:
        for m in _PAIR_RE.finditer(frag):
            nums = [_to_int(n) for n in _NUM_RE.findall(m.group(0))]
            found.append((m.start(), (nums[0], nums[1], nums[2], nums[3])))
    if not found:  # "<box>1, 2, 3, 4</box>" (no brackets at all)
        raw = _NUM_RE.findall(frag)
        if len(raw) >= 4 and len(raw) % 4 == 0:
            vals = [_to_int(n) for n in raw]
            found = [(i, (vals[i], vals[i + 1], vals[i + 2], vals[i + 3])) for i in range(0, len(vals), 4)]
    return [b for _, b in sorted(found, key=lambda t: t[0])]


def _clean_term(text: str) -> str | None:
    t = _SPECIAL_RE.sub("", text).strip()
    t = t.strip(" \t\"'`*_()[]{}:-")
    return t or None


def _term_before(gap: str) -> str | None:
    """The term named just before an untagged box list: the last clause, fillers stripped."""
    gap = _SPECIAL_RE.sub(" ", gap)
    parts = _CLAUSE_SPLIT_RE.split(gap)
    last = ""
    for p in reversed(parts):
        if p.strip(" \t:*-\"'"):
            last = p
            break
    t = last
    for _ in range(3):  # fillers can stack ("is located in the region of:")
        t = _TRAIL_FILLERS_EN.sub("", t)
        t = _TRAIL_FILLERS_ZH.sub("", t)
    t = _LEAD_FILLERS.sub("", t)
    return _clean_term(t)


def _is_separator(gap: str) -> bool:
    return not normalise_text(gap).strip(" \t\n,;:")


def parse_grounded(text: str) -> list[ParsedRef]:
    """All referred structures with their boxes, in order of appearance.

    A ``<ref>`` followed by boxes (before the next ``<ref>``) owns them; a ``<ref>`` with no box yields
    ``ParsedRef(term, [])``.  Boxes with no tag in front take their term from the preceding text; box
    lists separated only by commas/whitespace are merged into one ref.
    """
    if not text:
        return []
    norm = normalise_text(text)
    events: list[tuple[int, int, str, object]] = []  # (start, end, kind, payload)
    for m in _REF_RE.finditer(norm):
        events.append((m.start(), m.end(), "ref", (m.group("a") if m.group("a") is not None else m.group("b"))))
    tagged_spans: list[tuple[int, int]] = []
    for m in _BOX_TAG_RE.finditer(norm):
        inner = m.group("a") if m.group("a") is not None else m.group("b")
        events.append((m.start(), m.end(), "box", _boxes_in(inner)))
        tagged_spans.append((m.start(), m.end()))
    ref_spans = [(s, e) for s, e, k, _ in events if k == "ref"]

    def inside(pos: int, spans: list[tuple[int, int]]) -> bool:
        return any(s <= pos < e for s, e in spans)

    for m in _UNTAGGED_RE.finditer(norm):
        if inside(m.start(), tagged_spans) or inside(m.start(), ref_spans):
            continue
        events.append((m.start(), m.end(), "box", _boxes_in(m.group(0))))
    events.sort(key=lambda e: e[0])

    out: list[ParsedRef] = []
    open_ref: ParsedRef | None = None  # last <ref> that has not received boxes yet
    last_end = 0
    last_kind = ""
    for start, end, kind, payload in events:
        gap = norm[last_end:start]
        if kind == "ref":
            open_ref = ParsedRef(_clean_term(str(payload)), [])
            out.append(open_ref)
        else:
            boxes = list(cast("list[Box]", payload))  # box events carry the boxes of their fragment
            if open_ref is not None:
                open_ref.boxes.extend(boxes)
                open_ref = None
            elif last_kind == "box" and out and _is_separator(gap):
                out[-1].boxes.extend(boxes)
            else:
                out.append(ParsedRef(_term_before(gap), boxes))
        last_end = end
        last_kind = kind
    return out


def parse_boxes(text: str) -> list[Box]:
    """Every box in the text, in order of appearance (whatever term they belong to)."""
    return [b for ref in parse_grounded(text) for b in ref.boxes]


def parse_terms(text: str) -> list[str]:
    """Term texts named in the answer (``<ref>`` contents and terms in front of untagged boxes),
    de-duplicated in order of appearance.  A plain-text answer without refs or boxes gives ``[]``:
    use :func:`strip_grounding` for it."""
    seen: list[str] = []
    for ref in parse_grounded(text):
        if ref.term_text and ref.term_text not in seen:
            seen.append(ref.term_text)
    return seen


def strip_grounding(text: str) -> str:
    """The answer as plain text: ``<ref>`` tags unwrapped, boxes and special tokens removed, outer
    whitespace and final punctuation stripped (``"<ref>Liver</ref>."`` -> ``"Liver"``)."""
    norm = normalise_text(text or "")
    norm = _REF_RE.sub(lambda m: m.group("a") if m.group("a") is not None else m.group("b"), norm)
    norm = _BOX_TAG_RE.sub(" ", norm)
    norm = _UNTAGGED_RE.sub(" ", norm)
    norm = _SPECIAL_RE.sub(" ", norm)
    norm = re.sub(r"\s+", " ", norm).strip()
    return norm.strip(" .。!！?？,;:\"'")
