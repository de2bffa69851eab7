"""The config of ``medreg expand`` (YAML): the LLM endpoint, the cache, which template banks / glossary terms
to expand and how much."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.evaluate.llm import ExpandError, LLMConfig
from schemas.yamlio import YamlError, load_yaml

__all__ = [
    "DEFAULT_DATA_DIR",
    "ExpandConfig",
    "GlossaryExpandConfig",
    "TemplateExpandConfig",
    "load_expand_config",
]

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "language" / "data"


class TemplateExpandConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    banks: list[str] | None = None  # "<task>.<lang>" names; default: every bank
    slots: list[str] | None = None  # default: every slot
    seeds_per_slot: int = Field(4, ge=1)  # existing templates paraphrased per slot (first ones by id)
    per_seed: int = Field(3, ge=1)  # paraphrases asked for per seed


class GlossaryExpandConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    terms: list[str] | None = None  # term ids; default: every term
    langs: list[str] = ["en", "zh"]  # languages to draft names for
    batch_size: int = Field(20, ge=1)  # terms per request
    max_per_term: int = Field(3, ge=1)  # new names kept per term and language


class ExpandConfig(BaseModel):
    """The expansion config (YAML).  Relative paths are relative to the config file."""

    model_config = ConfigDict(extra="forbid")

    llm: LLMConfig = Field(default_factory=LLMConfig)
    cache_dir: str = ".medreg-cache/llm"
    review_file: str | None = None  # default: expand-<kind>.review.yaml beside the config
    data_dir: str | None = None  # language data folder; default: pipeline/language/data
    templates: TemplateExpandConfig = Field(default_factory=TemplateExpandConfig)
    glossary: GlossaryExpandConfig = Field(default_factory=GlossaryExpandConfig)
    base_dir: str = Field(".", exclude=True)  # folder of the config file (set by load_expand_config)

    def path(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(self.base_dir) / q

    def language_dir(self) -> Path:
        return self.path(self.data_dir) if self.data_dir else DEFAULT_DATA_DIR


def load_expand_config(path: str | Path) -> ExpandConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expansion config {path} not found (docs/evaluation.md has an example)")
    try:
        data = load_yaml(path, what="expansion config", name=str(path)) or {}
    except YamlError as exc:
        raise ExpandError(str(exc)) from None
    if not isinstance(data, dict):
        raise ExpandError(f"{path}: must be a mapping")
    try:
        cfg = ExpandConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: invalid expansion config:"]
        for e in exc.errors():
            lines.append(f"  {'.'.join(str(x) for x in e['loc'])}: {e['msg']}")
        raise ExpandError("\n".join(lines)) from None
    cfg.base_dir = str(path.resolve().parent)
    return cfg
