"""Validation stage: rule, statistical and model-based validators and the keep/flag/drop policy.

Typical use (docs/validation.md)::

    from pipeline.validate import ValidationItem, VerdictCache, apply_policy, build_validators, run_validators
    validators = build_validators(config)              # schemas.validation.ValidationConfig
    results = run_validators(items, validators, cache=VerdictCache(dir))
    decisions = [apply_policy(r, config.policy) for r in results]

``ClipJudge`` and ``GroundingJudge`` import torch / the openai client only when used.
"""

from __future__ import annotations

from typing import Any

from pipeline.validate.base import (
    RegionFinding,
    ValidationItem,
    Validator,
    apply_policy,
    build_validators,
    result,
    run_validators,
    summarise,
    validation_meta,
    worst,
)
from pipeline.validate.cache import VerdictCache
from pipeline.validate.rules import RulesValidator
from pipeline.validate.stats import StatsValidator, region_features

__all__ = [
    "ClipJudge",
    "GroundingJudge",
    "RegionFinding",
    "RulesValidator",
    "StatsValidator",
    "ValidationItem",
    "Validator",
    "VerdictCache",
    "apply_policy",
    "build_validators",
    "region_features",
    "result",
    "run_validators",
    "summarise",
    "validation_meta",
    "worst",
]


def __getattr__(name: str) -> Any:
    if name == "ClipJudge":
        from pipeline.validate.clip import ClipJudge

        return ClipJudge
    if name == "GroundingJudge":
        from pipeline.validate.grounding import GroundingJudge

        return GroundingJudge
    raise AttributeError(name)
