"""Fixed prose of the release card: task and subtask meanings, how to load a release, limitations."""

from __future__ import annotations

from collections.abc import Sequence

TASKS: dict[str, str] = {
    "region_to_text": "Region-to-text identification: the question gives box(es); the answer names what they mark.",
    "text_to_region": "Text-to-region detection: the question names structure(s); the answer gives their boxes.",
    "grounded_report": "Grounded report: a report with one line per structure, `<ref>name</ref><box>[[...]]</box>: "
                       "sentence`.",
}
SUBTASKS: dict[str, dict[str, str]] = {
    "region_to_text": {
        "single": "one box; the answer is the display name of its structure",
        "multi": "several boxes; the answer grounds each structure as `<ref>name</ref><box>[[...]]</box>`",
    },
    "text_to_region": {
        "sr_so": "one structure with one box (MedRegA's SS evaluator)",
        "sr_mo": "one structure with several boxes (SM)",
        "mr_so": "several structures, one box each (MS)",
        "mr_mo": "several structures, at least one with several boxes (MM)",
        "absent": "the named structure is not in the image; the answer says so and gives no box",
    },
    "grounded_report": {
        "open": "describe everything visible (only when every structure fits in one sample)",
        "targeted": "the question names the structures to report",
    },
}

REVIEW_TEXT = (
    "`review.jsonl` lists the {flagged} rows a validator flagged (kept in the release) with their reasons and "
    "codes, one object per line. It is for people, not for training: look at them beside `report.html`'s gallery, "
    "then tighten or loosen the validation policy, fix a source card, or drop the rows by id. `errors.jsonl` lists "
    "cases that could not be read (file, error, hint); `notes.txt` non-fatal findings (skipped axes, unknown labels)."
)

LIMITATIONS: tuple[str, ...] = (
    "Boxes come from segmentation masks and detection labels of the sources, not from reading the images; a "
    "source's label errors are in the boxes too. A 2-D slice of a 3-D structure may show only part of it.",
    "Questions, answers and report sentences are rendered from template banks and a glossary of structure names; "
    "they carry no clinical findings beyond the source labels. English and Chinese rows with the same key are "
    "parallel renderings of one plan, not independent translations.",
    "Images are 8-bit renderings with one display window per source (recorded in `meta.window`); CT values in "
    "HU are not recoverable from them. 3-D volumes are shown in the radiological convention (patient right on "
    "image left); 2-D sources keep their own orientation unless their card declares a display fix.",
    "Validation is automatic (the validators listed under Validation); flagged rows are kept, and no row was "
    "reviewed by a clinician unless a reviewer went through review.jsonl.",
    "Counts per source follow the build configuration (case limits, slices per case), not the sources' "
    "prevalence; a model trained on the release inherits that mix.",
    "Not for clinical use.",
)


def loading_section(release: str, splits: Sequence[str], llava: bool) -> list[str]:
    """"How to load": HF datasets, polars, pyarrow, InternVL/MedRegA meta file, LLaVA."""
    split = "train" if "train" in splits else (sorted(splits)[0] if splits else "train")
    llava_lines = (
        ["`data_llava/<split>.json` holds each split as one JSON list in LLaVA's format (what `train.py` "
         "`json.load`s):", "", "```bash",
         f"python llava/train/train.py --data_path {release}/data_llava/{split}.json --image_folder {release} ...",
         "```"]
        if llava else
        ["Write LLaVA's JSON list (what `train.py` `json.load`s) with the builder:", "", "```bash",
         f"medreg export {release} --format llava --out llava_{split}.json --split {split}",
         f"python llava/train/train.py --data_path llava_{split}.json --image_folder {release} ...", "```"]
    )
    return [
        "## How to load", "",
        "Hugging Face `datasets` >= 4 (one config per task x language, `default` = every row; the features are "
        "declared in this card's header, nothing is inferred):", "", "```python", "from datasets import load_dataset",
        f'ds = load_dataset("{release}")                          # default config: every row',
        f't2r = load_dataset("{release}", "text_to_region.en")    # one task x language',
        f'stream = load_dataset("{release}", "grounded_report.zh", split="{split}", streaming=True)', "```", "",
        "polars / pyarrow over all shards (every row has the same keys and types, no nulls):", "", "```python",
        "import polars as pl",
        f'rows = pl.scan_ndjson("{release}/data/*/*.jsonl")',
        'boxes = rows.filter(pl.col("meta").struct.field("task") == "text_to_region").collect()',
        "import pyarrow.dataset as pads",
        f'table = pads.dataset("{release}/data", format="json").to_table()', "```", "",
        "InternVL / MedRegA fine-tuning (`--meta_path`): rows are `human`/`gpt` chat rows with `<image>` first; the "
        "meta file has one entry per task x language (per shard file), each with its task's system prompt as "
        "`base_prompt` (MedRegA's fork reads it from every entry; upstream InternVL ignores it):", "", "```bash",
        f"medreg export {release} --format internvl-meta --out meta.json --root-prefix /data/{release}",
        "torchrun ... internvl/train/internvl_chat_finetune.py --meta_path meta.json ...", "```", "",
        *llava_lines, "",
    ]
