"""The one YAML loader of the tool: safe tags only, alias expansion and size limited.

Every YAML file the tool reads (source cards, release configs, glossary and template banks, label maps,
review files, the samples manifest) goes through :func:`load_yaml`.  ``yaml.safe_load`` alone is not
enough: a few aliases of aliases (the "billion laughs" pattern) compose into a tiny node graph that
expands into 10^9 nodes when any code walks, copies, validates or prints the loaded value.  Here the
node graph is measured before anything is built:

* the file may hold at most ``MEDREG_MAX_YAML_MB`` (default 16) MiB;
* aliases may add at most ``MEDREG_MAX_YAML_ALIAS_NODES`` (default 1,000,000) nodes beyond those the
  file writes out (a file without aliases is never refused by this rule, a bomb always is);
* a recursive alias (a node that contains itself) and nesting deeper than 1,000 levels are refused.

Errors are :class:`YamlError` (a ``ValueError``) naming the file and the line/column, never quoting the
file's content: a config pointed at the wrong file (a secrets file, say) must not copy it into a report.
:func:`validation_lines` formats pydantic errors the same way (offending keys and the rule, no values).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

try:  # libyaml when installed (faster), the pure-Python loader otherwise: same results
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader

MAX_DEPTH = 1000
_DEFAULT_MAX_MB = 16
_DEFAULT_MAX_ALIAS_NODES = 1_000_000


class YamlError(ValueError):
    """A YAML file could not be loaded (syntax, size, alias expansion).  The message names the file."""


def max_yaml_bytes() -> int:
    return int(float(os.environ.get("MEDREG_MAX_YAML_MB", _DEFAULT_MAX_MB)) * 2**20)


def max_alias_nodes() -> int:
    return int(os.environ.get("MEDREG_MAX_YAML_ALIAS_NODES", _DEFAULT_MAX_ALIAS_NODES))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _measure(root: yaml.Node, where: str) -> tuple[int, int]:
    """(nodes written in the file, nodes after alias expansion) of a composed document.

    Iterative post-order walk with memoised subtree sizes: an alias is the same node object as its
    anchor, so its expanded size is looked up, not re-walked (a bomb is measured in microseconds).
    """
    expanded: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        key = id(node)
        if key in expanded:
            continue
        if depth > MAX_DEPTH:
            raise YamlError(f"{where}: YAML nested deeper than {MAX_DEPTH} levels; refused")
        kids = _children(node)
        if key not in on_path:
            on_path.add(key)
            stack.append((node, depth))
            for kid in kids:
                if id(kid) in on_path:
                    raise YamlError(f"{where}: recursive YAML alias (a node that contains itself); refused")
                stack.append((kid, depth + 1))
        else:
            on_path.discard(key)
            expanded[key] = 1 + sum(expanded[id(k)] for k in kids)
    return len(expanded), expanded[id(root)]


def _mark(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    if mark is None:
        return str(problem)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def load_yaml_text(text: str, where: str = "YAML text") -> Any:
    """Parse one YAML document with the limits above; ``where`` names the source in errors."""
    if len(text.encode("utf-8", "surrogatepass")) > max_yaml_bytes():
        raise YamlError(f"{where}: larger than {max_yaml_bytes() // 2**20} MiB (MEDREG_MAX_YAML_MB); refused")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        written, total = _measure(node, where)
        if total - written > max_alias_nodes():
            raise YamlError(
                f"{where}: YAML aliases expand {written} written nodes to {total} (limit: "
                f"{max_alias_nodes()} added by aliases, MEDREG_MAX_YAML_ALIAS_NODES); refused as an alias bomb"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YamlError(f"{where}: not valid YAML: {_mark(exc)}") from None
    except RecursionError:
        raise YamlError(f"{where}: YAML nested too deeply; refused") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path, *, what: str = "YAML file", name: str | None = None) -> Any:
    """Read and parse a YAML file (UTF-8) with the limits above.

    ``what`` says what the file is for (``source card``, ``release config`` ...); ``name`` is how errors
    name the file (default: its file name, never the machine's absolute path).
    """
    path = Path(path)
    where = f"{what} {name or path.name}"
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise YamlError(f"{where}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if size > max_yaml_bytes():
        raise YamlError(f"{where}: {size} bytes, larger than {max_yaml_bytes() // 2**20} MiB (MEDREG_MAX_YAML_MB); "
                        "refused")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise YamlError(f"{where}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except OSError as exc:
        raise YamlError(f"{where}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    return load_yaml_text(text, where)


def validation_lines(exc: Any) -> list[str]:
    """A pydantic ``ValidationError`` as ``key.path: rule`` lines: the offending keys and what is wrong,
    never the offending values (a value can be anything the file held)."""
    out = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        out.append(f"{loc}: {err['msg']}")
    return out
