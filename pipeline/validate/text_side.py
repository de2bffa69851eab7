"""The laterality guard extended to text: a report sentence's side words against its boxes (``text_laterality``).

A grounded report whose lines are a report's own sentences (``meta.text_source: report``) says which side a
finding is on ("Left lower lobe pneumonia", "右肺上叶结节").  In the radiological display the patient's right
lies on the image's left, so a line whose sentence names only one side must have its boxes on the other half of
the image, and its region's own side (a ``*_left`` / ``*_right`` term) must be the side named:

* a box whose centre lies more than ``margin`` x width on the wrong half -> ``fail``;
* a region term of the other side ("<ref>right lung</ref>: Left lower lobe ...") -> ``fail``.

Sentences naming both sides or neither (bilateral words count as both) are not checked, nor are template rows
(their "left part of the image" describes the image, not the patient), sagittal images, or modalities outside
``text_laterality_modalities``.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.language.report_text import sides
from pipeline.validate.base import RegionFinding

_LINE = re.compile(r"<ref>(.*?)</ref><box>(.*?)</box>\s*[:：]\s*(.*)")
_BOX = re.compile(r"\[(\d+), (\d+), (\d+), (\d+)\]")


def text_laterality_findings(meta: dict[str, Any], answer: str, terms: Any, *, margin: float,
                             axes: list[str], modalities: list[str]) -> list[RegionFinding]:
    """Findings of one report row (``answer``: its gpt turn); ``terms``: a TermInfo (display -> term, side)."""
    if meta.get("text_source") != "report" or str(meta.get("axis", "")) not in axes:
        return []
    if str(meta.get("modality", "")) not in modalities:
        return []
    lang = str(meta.get("lang", "en"))
    centre, tol = 499.5, margin * 999
    out: list[RegionFinding] = []
    for line in answer.split("\n"):
        m = _LINE.match(line.strip())
        if m is None:
            continue
        named = sides(m.group(3), lang)
        if len(named) != 1:
            continue
        side = named.pop()
        term = terms.resolve(m.group(1), lang)
        own = terms.laterality(term) if term else None
        if own in ("left", "right") and own != side:
            out.append(RegionFinding("fail", "text_laterality",
                                     f"{m.group(1)} ({own}) is described as {side}: {m.group(3)[:60]!r}"))
        for b in _BOX.findall(m.group(2)):
            cx = (int(b[0]) + int(b[2])) / 2.0
            wrong = cx < centre - tol if side == "left" else cx > centre + tol  # patient left = image right
            if wrong:
                half = "left" if cx < centre else "right"
                patient = "right" if half == "left" else "left"
                out.append(RegionFinding(
                    "fail", "text_laterality",
                    f"{m.group(1)} box [{', '.join(b)}] lies on the image {half} (patient {patient}) "
                    f"but the sentence says {side}: {m.group(3)[:60]!r}"))
    return out
