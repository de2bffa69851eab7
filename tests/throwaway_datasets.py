"""Throwaway datasets the project has never seen, for tests/test_card_only.py and tests/test_cards.py.

``fundus_case`` writes one DRIVE-like case: ``images/<id>_training.tif`` (565 x 584 RGB), vessels
``1st_manual/<id>_manual1.gif`` and the field of view ``mask/<id>_training_mask.gif``; ``DRIVE_CARD`` is the
card that reads such a folder with nothing but ``image_regex`` pairing and a ``roi_masks`` folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

W, H = 565, 584  # DRIVE image size


def fundus_case(root: Path, case: str, rng: np.random.Generator) -> None:
    rr, cc = np.mgrid[:H, :W]
    fov = (rr - H / 2) ** 2 + (cc - W / 2) ** 2 <= 270**2
    vessels = np.zeros((H, W), bool)
    x0 = int(rng.integers(150, 250))
    vessels[60:520, x0:x0 + 6] = True  # a vertical trunk
    vessels[300:306, x0:x0 + 180] = True  # a branch to the right
    vessels &= fov
    img = (rng.random((H, W, 3)) * 60 + 40).astype(np.uint8) * fov[..., None]
    for sub in ("images", "1st_manual", "mask"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / "images" / f"{case}_training.tif")
    Image.fromarray(vessels.astype(np.uint8) * 255).save(root / "1st_manual" / f"{case}_manual1.gif")
    Image.fromarray(fov.astype(np.uint8) * 255).save(root / "mask" / f"{case}_training_mask.gif")


DRIVE_CARD = {
    "name": "drive-like",
    "title": "DRIVE-like fundus vessels (test)",
    "adapter": "mask_folder_2d",
    "licence": "CC-BY-4.0",
    "modality": "fundus",
    "body_region": "eye",
    "terms": {"retinal_vessel": {"en": "retinal vessel", "zh": "视网膜血管", "synonyms_en": ["retinal vasculature"],
                                 "category": "vessel", "body_region": "eye"}},
    "labels": {"vessel": "retinal_vessel"},
    "box_policy": {"mode": "label"},
    "layout": {
        "images": "images/*.tif",
        "image_regex": r"(?P<id>\d+)_training",
        "masks": "1st_manual/{id}_manual1.gif",
        "roi_masks": "mask/{id}_training_mask.gif",
        "mask_kind": "binary",
        "label": "vessel",
    },
}


def write_card(tmp_path: Path, card: dict, name: str = "card.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(card, allow_unicode=True), encoding="utf-8")
    return path
