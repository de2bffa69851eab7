"""Typed card layouts: each adapter declares a pydantic model of its ``layout:`` block.

``SourceAdapter.layout_model`` is that model; it is checked when the card loads (``sources.base.load_card``)
and again when an adapter is made (``get_adapter``), so a typo in ``layout`` is an error naming the card
file, the key and the closest known key, never silently ignored.  :func:`layout_markdown` renders a
model as the table docs/adding-a-source.md shows (tests/test_cards.py keeps the page in step), and
``medreg sources --layout ADAPTER`` prints it.

Keys every adapter understands (:class:`LayoutBase`): ``patient_regex`` and ``case_rules``.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DisplayOp = Literal["none", "rot180", "flip_lr", "flip_ud"]


class CaseRule(BaseModel):
    """Per-case overrides: the first rule whose ``regex`` matches the case id (``re.search``) wins."""

    model_config = ConfigDict(extra="forbid")

    regex: str = Field(description="tested on the case id")
    modality: str | None = Field(None, description="modality of the matching cases")
    body_region: str | None = Field(None, description="body region of the matching cases")
    display: DisplayOp = Field(
        "none", description="2-D only: fix an export stored off the radiological convention (image, masks and boxes)"
    )


class LayoutBase(BaseModel):
    """What every adapter's layout understands; adapters subclass it with their own keys."""

    model_config = ConfigDict(extra="forbid")

    patient_regex: str | None = Field(
        None, description="first group (tested on the case id, then the path) = patient id; splits are by patient"
    )
    case_rules: list[CaseRule] = Field(
        default_factory=list, description="per-case overrides; the first rule whose regex matches the case id wins"
    )


class Layout3D(LayoutBase):
    """Base of the 3-D adapters' layouts: a volume is oriented from its geometry, so no ``display`` fix."""

    @model_validator(mode="after")
    def _no_display(self) -> Layout3D:
        for rule in self.case_rules:
            if rule.display != "none":
                raise ValueError(
                    f"case_rules display {rule.display!r} (regex {rule.regex!r}): display fixes are for 2-D exports; "
                    "3-D volumes are brought to the radiological display from their geometry; remove it"
                )
        return self


def parse_layout(model: type[BaseModel], layout: dict[str, Any], where: str, adapter: str) -> Any:
    """``model`` validated from a card's ``layout`` dict; errors name ``where`` (the card), each bad key and
    the closest known key."""
    try:
        return model.model_validate(layout or {})
    except ValidationError as exc:
        lines = [_explain(model, err, adapter) for err in exc.errors()]
        raise ValueError(f"{where}: invalid layout for adapter {adapter}:\n  " + "\n  ".join(lines)
                         + f"\n  (the layout keys of {adapter}: `medreg sources --layout {adapter}`, "
                         "docs/adding-a-source.md)") from None


def _explain(model: type[BaseModel], err: Any, adapter: str) -> str:
    loc = [p for p in err["loc"]]
    dotted = "layout." + ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        known = sorted(_fields_at(model, loc[:-1]))
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.5)
        hint = f"did you mean `{guess[0]}`? " if guess else ""
        return f"{dotted}: unknown key; {hint}known keys here: {', '.join(known)}"
    return f"{dotted}: {str(err['msg']).removeprefix('Value error, ')}"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models inside an annotation (``X``, ``list[X]``, ``X | None``, ``dict[str, X]`` ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out.extend(_models_in(arg))
    return out


def _fields_at(model: type[BaseModel], path: list[Any]) -> set[str]:
    """Field names of the model found by following ``path`` (field names; list indexes skipped)."""
    current = [model]
    for part in path:
        if isinstance(part, int):
            continue
        nxt: list[type[BaseModel]] = []
        for m in current:
            field = m.model_fields.get(str(part))
            if field is not None:
                nxt.extend(_models_in(field.annotation))
        current = nxt or current
    return {name for m in current for name in m.model_fields}


# ----------------------------------------------------------------------------------------- documentation


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        text = " \\| ".join(_type_text(a) for a in args if a is not type(None))
        return text + " (optional)" if type(None) in args else text
    if origin in (list, tuple):
        inner = ", ".join(_type_text(a) for a in args if a is not Ellipsis)
        return f"[{inner}]"
    if origin is dict:
        return "{" + ": ".join(_type_text(a) for a in args) + "}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "{" + ", ".join(annotation.model_fields) + "}"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None or value == [] or value == {}:
        return ""
    return f"`{value}`"


def layout_rows(model: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of every key of ``model``, adapter keys first."""
    rows = []
    base = set(LayoutBase.model_fields)
    names = [n for n in model.model_fields if n not in base] + [n for n in model.model_fields if n in base]
    for name in names:
        f = model.model_fields[name]
        rows.append((name, _type_text(f.annotation), _default_text(f), (f.description or "").replace("|", "\\|")))
    return rows


def layout_markdown(adapter: str, model: type[BaseModel]) -> str:
    """The markdown table of an adapter's layout keys (docs/adding-a-source.md is generated from this)."""
    lines = [f"#### `{adapter}`", ""]
    doc = (model.__doc__ or "").strip().splitlines()
    if doc:
        lines += [doc[0], ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, typ, default, desc in layout_rows(model):
        lines.append(f"| `{key}` | {typ} | {default} | {desc} |")
    return "\n".join(lines)


DOC_START = "<!-- layout-keys: generated by sources.layouts.layout_markdown; do not edit by hand -->"
DOC_END = "<!-- layout-keys: end -->"


def regenerate_doc(text: str, tables: list[str]) -> str:
    """``text`` with the block between :data:`DOC_START` and :data:`DOC_END` replaced by ``tables``."""
    head, _, rest = text.partition(DOC_START)
    _, _, tail = rest.partition(DOC_END)
    if not rest:
        raise ValueError(f"no {DOC_START} marker in the page")
    return head + DOC_START + "\n\n" + "\n\n".join(tables) + "\n\n" + DOC_END + tail


def _main(argv: list[str]) -> None:
    """``python -m sources.layouts docs/adding-a-source.md``: rewrite the generated tables of the page."""
    from pathlib import Path

    import sources.base

    table: dict[str, Any] = sources.base.adapters()
    page = Path(argv[0])
    tables = [layout_markdown(n, c.layout_model) for n, c in sorted(table.items())]
    page.write_text(regenerate_doc(page.read_text(encoding="utf-8"), tables), encoding="utf-8")


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
