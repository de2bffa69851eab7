"""Throwaway datasets the project has never seen, for tests/test_card_only.py and tests/test_cards.py.

``write_coded_seg`` writes a DICOM-SEG (highdicom) with five coded segments whose terms the shipped glossary
lacks on the dcmqi CT; ``SEG_CARD`` reads it, defining the terms itself.

``fundus_case`` writes one DRIVE-like case: ``images/<id>_training.tif`` (565 x 584 RGB), vessels
``1st_manual/<id>_manual1.gif`` and the field of view ``mask/<id>_training_mask.gif``; ``DRIVE_CARD`` is the
card that reads such a folder with nothing but ``image_regex`` pairing and a ``roi_masks`` folder.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import yaml
from PIL import Image
from pydicom.sr.codedict import codes

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


SEGMENTS = [  # (number, label, SCT code, meaning, term)
    (1, "artery", "51114001", "Artery", "artery"),
    (2, "capillary", "20982000", "Capillary", "capillary"),
    (3, "edema", "79654002", "Edema", "edema"),
    (4, "vein", "29092000", "Vein", "vein"),
    (5, "tissue", "85756007", "Tissue", "tissue"),
]

SEG_CARD = {
    "name": "coded-vessels",
    "title": "coded DICOM-SEG whose terms are new (test)",
    "adapter": "dicom_seg",
    "licence": "CC0-1.0",
    "modality": "CT",
    "body_region": "thorax",
    "intensity": {"preset": "soft_tissue"},
    "terms": {
        "artery": {"en": "artery", "zh": "动脉", "category": "vessel", "body_region": ["thorax", "abdomen"],
                   "codes": {"SCT": "51114001"}},
        "capillary": {"en": "capillary", "zh": "毛细血管", "category": "vessel", "body_region": "thorax",
                      "codes": {"SCT": "20982000"}},
        "vein": {"en": "vein", "zh": "静脉", "category": "vessel", "body_region": ["thorax", "abdomen"],
                 "codes": {"SCT": "29092000"}},
        "edema": {"en": "edema", "zh": "水肿", "synonyms_en": ["oedema"], "category": "finding",
                  "body_region": "thorax", "codes": {"SCT": "79654002"}},
        "tissue": {"en": "tissue", "zh": "组织", "category": "tissue", "body_region": "thorax",
                   "codes": {"SCT": "85756007"}},
    },
    "labels": {f"SCT:{code}": term for _, _, code, _, term in SEGMENTS},
    "box_policy": {"mode": "component", "min_pixels": 0},
    "layout": {"scan": "."},
}


def coded_masks(shape: tuple[int, int]) -> dict[int, np.ndarray]:
    """Per segment a (3, R, C) mask in the order of the CT files 01, 02, 03 (no two segments overlap)."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    m = {n: np.zeros((3, *shape), bool) for n, *_ in SEGMENTS}
    m[1][:, 100:121, 200:241] = True  # artery on every slice
    m[2][1] = (rr - 300) ** 2 / 15**2 + (cc - 120) ** 2 / 25**2 <= 1  # capillary: an ellipse on 02.dcm
    m[3][0, 250:262, 300:330] = True  # edema: two components on 01.dcm
    m[3][0, 280:300, 340:352] = True
    m[4][2, 400:431, 60:75] = True  # vein on 03.dcm
    m[5][:, 330:380, 380:460] = True  # tissue on every slice
    return m


def write_coded_seg(root: Path, ct_dir: Path) -> tuple[list, dict[int, np.ndarray]]:
    """Copy a CT series to ``root/ct`` and write ``root/vessels-seg.dcm``: a BINARY DICOM-SEG (highdicom) with
    the five coded :data:`SEGMENTS`.  Returns the CT datasets (file order) and each segment's mask."""
    shutil.copytree(ct_dir, root / "ct")
    files = sorted((root / "ct").glob("*.dcm"))
    sources = [pydicom.dcmread(f) for f in files]
    for ds in sources:
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # the dcmqi CT has an empty value, which highdicom rejects
    masks = coded_masks((int(sources[0].Rows), int(sources[0].Columns)))
    pixels = np.stack([masks[n] for n, *_ in SEGMENTS], axis=-1).astype(np.uint8)
    descs = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=label, algorithm_type="MANUAL",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure if term == "edema"
            else codes.SCT.AnatomicalStructure,
            segmented_property_type=hd.sr.CodedConcept(value=code, scheme_designator="SCT", meaning=meaning))
        for n, label, code, meaning, term in SEGMENTS
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixels, segmentation_type="BINARY", segment_descriptions=descs,
            series_instance_uid=hd.UID(), series_number=7, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1")
    seg.save_as(root / "vessels-seg.dcm")
    return sources, masks
