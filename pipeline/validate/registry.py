"""Validators are registered like source adapters: built-ins plus the ``medreg.validators`` entry point group.

A validator is a class that declares what the build needs to know about it::

    class MyCheck:
        name = "my_check"            # what `validation.validators` lists
        version = "1"                # enters verdict cache keys
        level = "case"               # "case": each case's rows, inside the case task (cheap, CPU);
                                     # "release": all rows of the release, in the validation stage
        needs_model = False          # True: loads a model / wants a GPU (the build takes the GPU limit)
        config_model = MyCheckConfig # pydantic model of its section `validation.my_check` in the config
        description = "one line for `medreg validators`"

        def __init__(self, config: MyCheckConfig, *, glossary=None): ...
        def validate(self, items: list[ValidationItem]) -> list[ValidationResult]: ...

(``needs_fit`` / ``fit(items)`` optionally, for release statistics; ``config_hash`` optionally.)  From your
own package, without touching this repository::

    [project.entry-points."medreg.validators"]
    my_check = "my_package.checks:MyCheck"

A plugin that fails to load is a warning, not a broken tool.  The build never names a validator: it asks
this registry which to run per case (:func:`build_validators` with ``level="case"``), which per release, and
whether any needs a model.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import Any, Literal, cast

from pydantic import BaseModel, ValidationError

from schemas.validation import ValidationConfig

ENTRY_POINT_GROUP = "medreg.validators"
Level = Literal["case", "release"]

_BUILTIN: dict[str, str] = {
    "rules": "pipeline.validate.rules:RulesValidator",
    "stats": "pipeline.validate.stats:StatsValidator",
    "clip": "pipeline.validate.clip:ClipJudge",
    "grounding": "pipeline.validate.grounding:GroundingJudge",
}


@dataclass(frozen=True)
class ValidatorInfo:
    """What the registry knows about one validator class."""

    name: str
    cls: type
    level: Level
    needs_model: bool
    config_model: type[BaseModel]
    description: str
    origin: str  # "built-in" or "entry point <dist>"


def describe(name: str, cls: Any, origin: str) -> ValidatorInfo:
    """Check a validator class against the contract above; TypeError naming what is missing."""
    problems = []
    level = getattr(cls, "level", None)
    if level not in ("case", "release"):
        problems.append(f"level must be 'case' or 'release' (got {level!r})")
    config_model = getattr(cls, "config_model", None)
    if not (isinstance(config_model, type) and issubclass(config_model, BaseModel)):
        problems.append("config_model must be a pydantic model class")
    if not callable(getattr(cls, "validate", None)):
        problems.append("it needs a validate(items) method")
    if not isinstance(getattr(cls, "needs_model", None), bool):
        problems.append("needs_model must be True or False")
    if getattr(cls, "name", None) != name:
        problems.append(f"its name attribute ({getattr(cls, 'name', None)!r}) must be the registered name {name!r}")
    if problems:
        raise TypeError(f"validator {name!r} ({origin}): " + "; ".join(problems))
    return ValidatorInfo(name, cls, cast(Level, level), cls.needs_model, cast(type[BaseModel], config_model),
                         str(getattr(cls, "description", "")), origin)


def _load_target(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(__import__(module, fromlist=[attr]), attr)


@lru_cache(maxsize=1)
def registered() -> dict[str, ValidatorInfo]:
    """Every validator: built-ins, then those of installed packages (entry points); sorted by name."""
    out = {name: describe(name, _load_target(target), "built-in") for name, target in _BUILTIN.items()}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            if ep.name in out:
                raise TypeError(f"the name {ep.name!r} is taken by a {out[ep.name].origin} validator")
            dist = ep.dist.name if ep.dist is not None else "?"
            out[ep.name] = describe(ep.name, ep.load(), f"entry point of {dist}")
        except Exception as exc:  # a broken plugin must not break the tool
            warnings.warn(f"entry point {ENTRY_POINT_GROUP}:{ep.name} failed to load: {exc}", stacklevel=2)
    return dict(sorted(out.items()))


def validator_info(name: str) -> ValidatorInfo:
    """The registered validator ``name``; ValueError with the closest names when there is none."""
    table = registered()
    if name not in table:
        guess = difflib.get_close_matches(name, list(table), n=1)
        raise ValueError(
            f"validation.validators: {name!r} is not a registered validator"
            + (f" (did you mean {guess[0]!r}?)" if guess else "")
            + f"; registered: {', '.join(table)} (`medreg validators`; plugins register under the "
            f"{ENTRY_POINT_GROUP} entry point group)"
        )
    return table[name]


def validator_config(name: str, config: ValidationConfig) -> BaseModel:
    """The section ``validation.<name>`` validated by the validator's ``config_model``."""
    info = validator_info(name)
    section = getattr(config, name, None) if name in ValidationConfig.model_fields else None
    if section is None:
        section = (config.model_extra or {}).get(name) or {}
    if isinstance(section, info.config_model):
        return section
    if isinstance(section, BaseModel):
        section = section.model_dump()
    try:
        return info.config_model.model_validate(section)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"validation.{name}: {msgs} (the fields of {info.config_model.__name__})") from None


def check_config(config: ValidationConfig | dict[str, Any] | None) -> ValidationConfig:
    """Every named validator is registered and every section fits its model (before any case runs)."""
    vc = config if isinstance(config, ValidationConfig) else ValidationConfig.model_validate(config or {})
    for name in vc.validators:
        validator_config(name, vc)
    for extra in vc.model_extra or {}:
        if extra not in vc.validators:
            validator_info(extra)  # an unregistered section name: the error names the closest validators
    return vc


def build_validators(config: ValidationConfig, *, glossary: Any | None = None, level: Level | None = None) -> list[Any]:
    """The validators named in ``config.validators`` (in that order; only those of ``level`` when given),
    each made from its own config section."""
    out = []
    for name in config.validators:
        info = validator_info(name)
        if level is None or info.level == level:
            out.append(info.cls(validator_config(name, config), glossary=glossary))
    return out


def uses_model(config: ValidationConfig) -> bool:
    """Whether any named validator needs a model / GPU."""
    return any(validator_info(name).needs_model for name in config.validators)
