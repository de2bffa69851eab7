"""Reading a model's predictions for ``medreg eval``: our JSONL and MedRegA's native answer files.

Accepted layouts (one file; detected from its first non-blank character):

* **JSONL**, one object per line: ``{"id": <row id>, "answer": <model text>}``.  ``question_id`` (MedRegA's
  ``demo.py``) is accepted for ``id``; ``pred_answer`` (MedRegA), ``prediction``, ``response``, ``output``
  or ``text`` for ``answer``.  Read with :mod:`jsonlines`, so every problem has its line number.
* **A JSON list** of such objects -- what MedRegA's inference scripts write (``json.dump(outputs)``):
  ``[{"question_id", "pred_answer", "gt_answer", ...}]`` or its detection evaluators' ``[{"answer", "gt",
  "hw"}]``.  An entry without an id is matched to the release row whose reference answer (its ``gpt``
  turn) is exactly ``gt`` / ``gt_answer`` (and, with ``hw`` = ``[height, width]``, whose image has that
  size); an entry matching no row or several rows is reported, not guessed.

A later entry for the same id wins (counted as a duplicate).  Unreadable entries are listed with their
line (JSONL) or entry number (JSON list) and the reason; they are not fatal unless nothing usable is left,
then :class:`PredictionFileError` says what was wrong with the first ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonlines
import orjson

__all__ = ["ANSWER_KEYS", "ID_KEYS", "PredictionFileError", "Predictions", "load_predictions", "resolve_by_reference"]

ID_KEYS = ("id", "question_id")
ANSWER_KEYS = ("answer", "pred_answer", "prediction", "response", "output", "text")
REFERENCE_KEYS = ("gt", "gt_answer")


class PredictionFileError(ValueError):
    """A predictions file with nothing usable in it (the message names the file and the first problems)."""


@dataclass
class Pending:
    """An entry without an id, to be matched to a release row by its reference answer."""

    where: str  # "line 3" / "entry 3"
    answer: str
    reference: str
    hw: tuple[int, int] | None


@dataclass
class Predictions:
    answers: dict[str, str]
    duplicates: int = 0
    invalid: list[str] = field(default_factory=list)  # "line 3: not JSON (...)", in file order
    lines: int = 0  # entries read (non-blank lines / list entries)
    pending: list[Pending] = field(default_factory=list)
    source: str = ""

    @property
    def invalid_lines(self) -> list[str]:  # the report's historical name
        return self.invalid

    def add(self, rid: str, answer: str) -> None:
        if rid in self.answers:
            self.duplicates += 1
        self.answers[rid] = answer


def _first_char(path: Path) -> str:
    with open(path, "rb") as fh:
        while chunk := fh.read(4096):
            text = chunk.lstrip(b"\xef\xbb\xbf \t\r\n")
            if text:
                return chr(text[0])
    return ""


def _entry(obj: Any, where: str, preds: Predictions) -> None:
    """File one decoded entry: an answer by id, a pending match by reference, or a reason it is unusable."""
    if not isinstance(obj, dict):
        preds.invalid.append(f"{where}: a {type(obj).__name__}, expected an object {{\"id\", \"answer\"}}")
        return
    ans = next((obj[k] for k in ANSWER_KEYS if k in obj), None)
    if not isinstance(ans, str):
        what = "has no answer field" if ans is None else f"answer is a {type(ans).__name__}, expected text"
        preds.invalid.append(f"{where}: {what} (accepted: {', '.join(ANSWER_KEYS)})")
        return
    rid = next((obj[k] for k in ID_KEYS if obj.get(k) is not None), None)
    if rid is not None:
        preds.add(str(rid), ans)
        return
    ref = next((obj[k] for k in REFERENCE_KEYS if isinstance(obj.get(k), str)), None)
    if ref is None:
        preds.invalid.append(
            f"{where}: no id field (accepted: {', '.join(ID_KEYS)}) and no reference answer "
            f"({', '.join(REFERENCE_KEYS)}) to find the row by"
        )
        return
    hw = obj.get("hw")
    size = (int(hw[0]), int(hw[1])) if isinstance(hw, list | tuple) and len(hw) == 2 else None
    preds.pending.append(Pending(where, ans, ref, size))


class _Counted:
    """The file's lines, remembering the number of the last one handed out (jsonlines reports line
    numbers only for invalid lines)."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.n = 0

    def __iter__(self) -> Any:
        for line in self.fh:
            self.n += 1
            yield line


def _read_jsonl(path: Path, preds: Predictions) -> None:
    with open(path, "rb") as fh:
        lines = _Counted(fh)
        reader = jsonlines.Reader(lines, loads=orjson.loads)
        while True:
            try:
                obj = reader.read(skip_empty=True, allow_none=True)
            except EOFError:
                return
            except jsonlines.InvalidLineError as exc:
                preds.lines += 1
                reason = "not valid JSON" if "invalid json" in str(exc) else str(exc).split(" (line", 1)[0]
                preds.invalid.append(f"line {exc.lineno}: {reason}: {exc.line.strip()[:80]!r}")
                continue
            preds.lines += 1
            _entry(obj, f"line {lines.n}", preds)


def _read_json_list(path: Path, preds: Predictions) -> None:
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise PredictionFileError(
            f"{path}: starts with '[' but is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "write a JSON list of {\"id\", \"answer\"} objects or one object per line (JSONL)"
        ) from None
    if not isinstance(data, list):
        raise PredictionFileError(f"{path}: expected a JSON list of predictions, got a {type(data).__name__}")
    for i, obj in enumerate(data, 1):
        preds.lines += 1
        _entry(obj, f"entry {i}", preds)


def load_predictions(path: str | Path) -> Predictions:
    """Read a predictions file (JSONL or a JSON list, see the module docstring).

    Raises :class:`PredictionFileError` when the file holds no usable entry at all, naming the first
    problems by line; otherwise unusable entries are listed in ``invalid``.
    """
    path = Path(path)
    preds = Predictions(answers={}, source=str(path))
    if _first_char(path) == "[":
        _read_json_list(path, preds)
    else:
        _read_jsonl(path, preds)
    if not preds.answers and not preds.pending:
        if not preds.lines:
            raise PredictionFileError(f"{path}: empty file, no predictions in it")
        more = len(preds.invalid) - 5
        shown = "; ".join(preds.invalid[:5]) + (f"; ... ({more} more)" if more > 0 else "")
        raise PredictionFileError(
            f"{path}: none of its {preds.lines} entries is a usable prediction: {shown}. "
            'Each needs an id ("id" or "question_id") and an answer ("answer" or "pred_answer").'
        )
    return preds


def _reference(row: dict[str, Any]) -> str:
    for t in reversed(row.get("conversations", [])):
        if t.get("from") == "gpt":
            return str(t.get("value", ""))
    return ""


def resolve_by_reference(preds: Predictions, rows: Iterable[dict[str, Any]]) -> None:
    """Give each pending entry (no id) the id of the one release row whose reference answer is its
    ``gt`` (and whose size is its ``hw`` when given); entries matching no row or several are listed in
    ``preds.invalid`` with the reason."""
    if not preds.pending:
        return
    index: dict[str, list[tuple[str, tuple[int, int]]]] = defaultdict(list)
    for r in rows:
        index[_reference(r).strip()].append((r["id"], (int(r.get("height", 0)), int(r.get("width", 0)))))
    for p in preds.pending:
        cands = index.get(p.reference.strip(), [])
        if p.hw is not None:
            cands = [c for c in cands if c[1] == p.hw]
        if len(cands) == 1:
            preds.add(cands[0][0], p.answer)
        elif not cands:
            preds.invalid.append(f"{p.where}: its reference answer (gt) is not the answer of any release row")
        else:
            preds.invalid.append(
                f"{p.where}: its reference answer (gt) is the answer of {len(cands)} release rows; add "
                "\"question_id\" (the row id) to tell them apart"
            )
    preds.pending = []
