"""Run InternVL's and MedRegA's own training-data code on a release (a check, not a benchmark; CPU only).

Needs checkouts of the two repositories beside the project (not part of it, never committed):

    python -m benchmarks.loaders_check --medrega MedRegA/src --internvl InternVL/internvl_chat \
        [--release DIR] [--site DIR] [--rows N] [--layouts none turn]

* ``--medrega``: the ``src`` folder of github.com/xmed-lab/MedRegA (its fork of InternVL's trainer).
* ``--internvl``: the ``internvl_chat`` folder of github.com/OpenGVLab/InternVL.
* ``--site``: an extra folder put on ``sys.path`` for their dependencies that the project does not install
  (torchvision, decord, opencv-python-headless), e.g. ``pip install --no-deps --target DIR ...``.
* ``--release``: a release to check; by default one is built from the sample data per ``--layouts`` value
  (``tasks.system_prompt``), so the layout the loaders take can be compared with the others.

What runs is their code, unchanged: ``internvl.train.dataset`` (``build_transform``, ``dynamic_preprocess``,
``preprocess_*``) and ``internvl.conversation`` are imported from the checkouts; ``LazySupervisedDataset``
and ``build_datasets`` are taken from their ``internvl_chat_finetune.py`` by name (that module itself imports
deepspeed and the 40B model code at import time, which a CPU check does not need).  ``build_datasets`` reads
the meta file ``medreg export --format internvl-meta`` writes, opens every annotation file and then every
row goes through ``multi_modal_get_item`` (image loading, transform, the chat template, tokenisation, label
masking).  Their ``__getitem__`` catches every exception and retries a random row forever, which would hide
a failure, so the check calls ``multi_modal_get_item`` directly and counts errors by type.

Stand-ins, each because the real thing cannot run here: the tokenizer is a word-level
``PreTrainedTokenizerFast`` built from the release's own text with the chat templates' special tokens (the
checkpoints' tokenizers are not downloadable here); the model object is a namespace holding
``num_image_token`` (the only attribute ``build_datasets`` reads); torchvision's package ``__init__`` (which
registers CUDA kernels of the PyPI wheel) is skipped, its ``transforms`` are the real ones.
"""

from __future__ import annotations

import argparse
import ast
import importlib.machinery
import json
import logging
import os
import sys
import tempfile
import types
from collections import Counter
from copy import deepcopy
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = {"medrega": ["Hermes-2"], "internvl": ["Hermes-2", "internlm2-chat", "phi3-chat", "internvl2_5"]}
SPECIAL = ["<unk>", "<pad>", "<s>", "</s>", "<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>",
           "</ref>", "<box>", "</box>", "<|im_start|>", "<|im_end|>", "<|system|>", "<|user|>", "<|assistant|>",
           "<|end|>", "<|endoftext|>"]


def _torchvision_without_cuda_kernels(site: Path | None) -> None:
    """Make ``torchvision.transforms`` importable from a CUDA build of the wheel on a CPU-only torch."""
    import importlib.util

    if site is not None:
        sys.path.insert(0, str(site))
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torchvision is not importable: pass --site DIR holding it (pip install --no-deps --target)")
    pkg = types.ModuleType("torchvision")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    pkg.__spec__.submodule_search_locations = pkg.__path__
    pkg.__version__ = "0+transforms-only"
    sys.modules["torchvision"] = pkg


def _tokenizer(texts: list[str], bos: bool = False) -> Any:
    """A word-level tokenizer over the release's own words plus the chat templates' special tokens (stand-in
    for the checkpoints' tokenizers, which cannot be downloaded here).  ``bos``: prepend ``<s>`` as InternLM2's
    tokenizer does (``preprocess_internlm`` counts on it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIAL, min_frequency=1))
    if bos:
        bos_id = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", model_max_length=16384)
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[4:]})
    return fast


def _their_classes(finetune: Path, names: tuple[str, ...], namespace: dict[str, Any]) -> dict[str, Any]:
    """Execute only the named top-level classes/functions of their finetune script in ``namespace``."""
    tree = ast.parse(finetune.read_text(encoding="utf-8"))
    keep = [n for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef) and n.name in names]
    missing = set(names) - {n.name for n in keep}
    if missing:
        raise SystemExit(f"{finetune}: no {sorted(missing)}")
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(finetune), "exec"), namespace)  # their code
    return namespace


def _namespace(kind: str) -> dict[str, Any]:
    import math
    import random

    import numpy as np
    import torch
    from PIL import Image
    from torch.utils.data import Dataset

    ds_mod = importlib.import_module("internvl.train.dataset")
    consts = importlib.import_module("internvl.train.constants")
    ns: dict[str, Any] = {
        "json": orjson if kind == "medrega" else json, "os": os, "math": math, "random": random, "np": np,
        "torch": torch, "Image": Image, "Dataset": Dataset, "deepcopy": deepcopy, "Dict": dict,
        "logger": logging.getLogger(f"loaders_check.{kind}"), "traceback": __import__("traceback"),
        "dist": torch.distributed, "UnidentifiedImageError": __import__("PIL").UnidentifiedImageError,
    }
    ns.update({k: getattr(ds_mod, k) for k in dir(ds_mod) if not k.startswith("_")})
    ns.update({k: getattr(consts, k) for k in dir(consts) if k.isupper()})
    return ns


def _load_repo(kind: str, root: Path) -> dict[str, Any]:
    for mod in [m for m in sys.modules if m == "internvl" or m.startswith("internvl.")]:
        del sys.modules[mod]  # the two repositories ship packages of the same name
    sys.path.insert(0, str(root))
    try:
        ns = _namespace(kind)
        finetune = root / "internvl" / "train" / "internvl_chat_finetune.py"
        return _their_classes(finetune, ("LazySupervisedDataset", "build_datasets"), ns)
    finally:
        sys.path.remove(str(root))


def _data_args(meta_path: Path, template: str) -> Any:
    return types.SimpleNamespace(
        meta_path=str(meta_path), conv_style=template, force_image_size=448, pad2square=False,
        use_data_resampling=False, use_packed_ds=False, num_images_expected=1, max_packed_tokens=8192,
        max_buffer_size=20, log_freq=1000, strict_mode=True, replacement=False, allow_overflow=False,
    )


def check(kind: str, ns: dict[str, Any], meta_path: Path, tokenizers: dict[bool, Any], rows: int) -> dict[str, Any]:
    """``build_datasets`` on the meta file, then ``multi_modal_get_item`` on up to ``rows`` rows per entry."""
    out: dict[str, Any] = {}
    model = types.SimpleNamespace(num_image_token=16)  # the only model attribute build_datasets reads
    for template in TEMPLATES[kind]:
        tokenizer = tokenizers[template == "internlm2-chat"]
        img_end = tokenizer.convert_tokens_to_ids("</img>")
        errors: Counter[str] = Counter()
        ok = supervised = 0
        try:
            concat = ns["build_datasets"](_data_args(meta_path, template), tokenizer, None, model, group_by_length=True)
        except Exception as exc:  # their build step itself failing is the finding
            out[template] = {"build_datasets": f"{type(exc).__name__}: {exc}"}
            continue
        for ds in concat.datasets:
            for raw in ds.raw_data[:rows]:
                try:
                    ret = ds.multi_modal_get_item(orjson.loads(raw))
                except Exception as exc:
                    errors[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
                    continue
                ok += 1
                assert int((ret["input_ids"] == img_end).sum()) == 1, "exactly one image"
                supervised += int((ret["labels"] != -100).any())
        out[template] = {"datasets": len(concat.datasets), "rows_in_datasets": len(concat), "items_ok": ok,
                         "items_with_supervised_tokens": supervised, "errors": dict(errors)}
    return out


def _build_release(tmp: Path, layout: str) -> Path:
    from flows.run import build
    from schemas.config import ReleaseConfig

    cfg = ReleaseConfig.model_validate({
        "name": f"loaders-{layout}", "version": "1", "sources": [{"card": "kvasir-seg"}, {"card": "totalseg-ct"}],
        "slicing": {"max_slices_per_case": 2}, "tasks": {"system_prompt": layout}, "output": {"report": False},
    })
    samples = Path(os.environ.get("MEDREG_SAMPLES", REPO.parent / "shared" / "data"))
    return build(cfg, tmp / layout, samples_root=samples)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--medrega", type=Path, help="MedRegA checkout's src/ folder")
    ap.add_argument("--internvl", type=Path, help="InternVL checkout's internvl_chat/ folder")
    ap.add_argument("--site", type=Path, help="extra site folder with torchvision / decord / cv2")
    ap.add_argument("--release", type=Path, action="append", help="release folder(s) to check")
    ap.add_argument("--layouts", nargs="+", default=["none", "turn"], help="tasks.system_prompt of built releases")
    ap.add_argument("--rows", type=int, default=50, help="rows per meta entry put through multi_modal_get_item")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    _torchvision_without_cuda_kernels(args.site)
    import torch.distributed as dist

    from pipeline.release.export import internvl_meta, iter_release_rows

    if not dist.is_initialized():  # InternVL's build_datasets asks for the rank
        dist.init_process_group("gloo", init_method=f"file://{tempfile.mkdtemp()}/pg", rank=0, world_size=1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        releases = args.release or [_build_release(tmp, layout) for layout in args.layouts]
        report: dict[str, Any] = {}
        for release in releases:
            meta_path = tmp / f"{release.name}.meta.json"
            meta_path.write_bytes(orjson.dumps(internvl_meta(release, splits=None)))
            texts = [t["value"] for r in iter_release_rows(release) for t in r["conversations"]]
            texts += [e["base_prompt"] for e in orjson.loads(meta_path.read_bytes()).values()]
            toks = {False: _tokenizer(texts), True: _tokenizer(texts, bos=True)}
            for kind, root in (("medrega", args.medrega), ("internvl", args.internvl)):
                if root is not None:
                    report[f"{release.name} / {kind}"] = check(kind, _load_repo(kind, root), meta_path, toks, args.rows)
        print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
