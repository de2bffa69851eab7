"""Language layer: bilingual glossary, template banks and sample generation (see docs/language.md).

* :mod:`pipeline.language.glossary`  -- ``load_glossary()``, ``load_label_map(name)``, term ids.
* :mod:`pipeline.language.templates` -- ``load_templates()``: validated, precompiled template banks.
* :mod:`pipeline.language.tasks`     -- ``generate(ctx, mix, rng)``: conversations for one display slice.
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
