"""Language layer: bilingual glossary, template banks, sample generation and the language lint
(see docs/language.md).

* :mod:`pipeline.language.glossary`  -- ``load_glossary()``, ``load_label_map(name)``, term ids and grammar.
* :mod:`pipeline.language.templates` -- ``load_templates()``: validated, compiled template banks; vocab.
* :mod:`pipeline.language.tasks`     -- ``generate(ctx, mix, rng)``: conversations for one display slice
  (built from :mod:`~pipeline.language.slices`, :mod:`~pipeline.language.planner`,
  :mod:`~pipeline.language.render` and :mod:`~pipeline.language.voice`).
* :mod:`pipeline.language.lint`      -- ``lint_release(dir)``: article/number agreement, Chinese punctuation,
  prompt/answer contradictions, ``<ref>`` display names.
"""

from pipeline.language.glossary import (
    Glossary,
    Term,
    list_label_maps,
    load_glossary,
    load_label_map,
    normalise_name,
)

__all__ = ["Glossary", "Term", "list_label_maps", "load_glossary", "load_label_map", "normalise_name"]
