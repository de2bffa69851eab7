"""The report-grounded fixtures: each dataset's text files as published (committed under
tests/fixtures/reports/<name>/) plus synthetic images written here, deterministically, into a copy.

* ``ms-cxr`` -- MS_CXR_Local_Alignment_v1.1.0.csv (7 boxes, 3 images, one phrase with two boxes); the JPGs under
  ``mimic-cxr-jpg/files/p10/...`` are written at 1/8 of the original 2544 x 3056 (318 x 382), as a resized copy.
* ``chest-imagenome`` -- two ``<dicom_id>_SceneGraph.json`` (18 and 9 objects; one empty box) and split CSVs;
  320 x 384 JPGs under ``mimic-cxr-jpg/files/p11/...`` (the scene graphs' original pixel grid).
* ``radgenome-chestct`` -- ``validation_region_report.csv``; two CT-RATE-named volumes (96 x 96 x 20 voxels,
  0.8 x 0.8 x 5 mm, RAS) with anatomy masks (right/left lung, heart, trachea) and region masks (lung, heart).
* ``generic`` -- ``reports.csv`` (two PNGs, one heart mask PNG) and ``reports.jsonl`` (one abdominal CT volume
  with a liver/spleen label mask), cards ``card.yaml`` / ``card-volumes.yaml``.

Images are chest-radiograph-like (two dark lung fields either side of a bright mediastinum, noise so that no box
is blank); patient right is image left.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reports"
NAMES = ("ms-cxr", "chest-imagenome", "radgenome-chestct", "generic")
MSCXR_IDS = [f"1000000{i}-aaaaaaaa-bbbbbbbb-cccccccc-0000000{i}" for i in (1, 2, 3)]
IMAGENOME_IDS = [f"1100000{i}-dddddddd-eeeeeeee-ffffffff-0000000{i}" for i in (1, 2)]
RADGENOME_VOLUMES = ("valid_1_a_1", "valid_2_a_1")


def chest_radiograph(width: int, height: int, seed: int) -> np.ndarray:
    """A synthetic frontal chest radiograph (uint8): body, two dark lung fields, bright mediastinum, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.full((height, width), 25.0, np.float32)
    img[((xx - width / 2) / (0.48 * width)) ** 2 + ((yy - height / 2) / (0.5 * height)) ** 2 < 1] = 150
    for cx in (0.28, 0.72):  # lung fields (image left = patient right)
        img[((xx - cx * width) / (0.17 * width)) ** 2 + ((yy - 0.47 * height) / (0.32 * height)) ** 2 < 1] = 60
    img[(np.abs(xx - 0.5 * width) < 0.07 * width) & (yy < 0.8 * height)] = 210
    img[((xx - 0.55 * width) / (0.15 * width)) ** 2 + ((yy - 0.62 * height) / (0.13 * height)) ** 2 < 1] = 190
    img += rng.normal(0, 9, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(arr: np.ndarray, path: Path, **kw: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def _mscxr(root: Path) -> None:
    for i, dicom_id in enumerate(MSCXR_IDS, start=1):
        rel = f"mimic-cxr-jpg/files/p10/p1000000{i}/s5000000{i}/{dicom_id}.jpg"
        _save(chest_radiograph(318, 382, seed=i), root / rel, quality=95)


def _imagenome(root: Path) -> None:
    for i, image_id in enumerate(IMAGENOME_IDS, start=1):
        rel = f"mimic-cxr-jpg/files/p11/p1100000{i}/s5100000{i}/{image_id}.jpg"
        _save(chest_radiograph(320, 384, seed=10 + i), root / rel, quality=95)


def _ct_volume(seed: int, shape: tuple[int, int, int] = (96, 96, 20)) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A chest CT in RAS+ voxel order (x: towards the patient's right, y: anterior, z: up) and its masks."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x, y, z = np.mgrid[0:nx, 0:ny, 0:nz].astype(np.float32)
    vol = np.full(shape, -1000.0, np.float32)
    body = ((x - nx / 2) / (0.45 * nx)) ** 2 + ((y - ny / 2) / (0.4 * ny)) ** 2 < 1
    vol[body] = 40
    right = (((x - 0.7 * nx) / (0.14 * nx)) ** 2 + ((y - 0.5 * ny) / (0.25 * ny)) ** 2 < 1) & (z >= 2)
    left = (((x - 0.3 * nx) / (0.14 * nx)) ** 2 + ((y - 0.5 * ny) / (0.25 * ny)) ** 2 < 1) & (z >= 2)
    heart = (((x - 0.45 * nx) / (0.1 * nx)) ** 2 + ((y - 0.62 * ny) / (0.1 * ny)) ** 2 < 1) & (z < 12)
    trachea = (((x - 0.5 * nx) / 4) ** 2 + ((y - 0.55 * ny) / 4) ** 2 < 1) & (z >= 12)
    vol[right | left] = -850
    vol[heart] = 45
    vol[trachea] = -990
    vol += rng.normal(0, 15, shape)
    masks = {"right lung": right & ~heart, "left lung": left & ~heart, "heart": heart, "trachea": trachea}
    return vol.astype(np.int16), {k: v.astype(np.uint8) for k, v in masks.items()}


def _radgenome(root: Path) -> None:
    affine = np.diag([0.8, 0.8, 5.0, 1.0])
    for i, stem in enumerate(RADGENOME_VOLUMES, start=1):
        vol, masks = _ct_volume(seed=20 + i)
        patient = stem.rsplit("_", 2)[0]
        vdir = root / "dataset" / "valid_preprocessed" / patient / f"{patient}a"
        vdir.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(vol, affine), vdir / f"{stem}.nii.gz")
        adir = root / "valid_anatomy_mask" / f"seg_{stem}"
        rdir = root / "valid_region_mask" / f"seg_{stem}"
        adir.mkdir(parents=True, exist_ok=True)
        rdir.mkdir(parents=True, exist_ok=True)
        for name, m in masks.items():
            if name != "heart":  # no anatomy mask for the heart: its region mask stands in (the dataset loader does so)
                nib.save(nib.Nifti1Image(m, affine), adir / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(masks["right lung"] | masks["left lung"], affine), rdir / "lung.nii.gz")
        nib.save(nib.Nifti1Image(masks["heart"], affine), rdir / "heart.nii.gz")


def _generic(root: Path) -> None:
    _save(chest_radiograph(256, 256, seed=31), root / "images" / "case_a.png")
    _save(chest_radiograph(256, 256, seed=32), root / "images" / "case_b.png")
    heart = np.zeros((256, 256), np.uint8)
    yy, xx = np.mgrid[0:256, 0:256]
    heart[((xx - 140) / 38) ** 2 + ((yy - 160) / 33) ** 2 < 1] = 255
    _save(heart, root / "masks" / "case_b_heart.png")
    # an abdominal CT (RAS+: x grows towards the patient's right): liver on the right (high x), spleen on the left
    rng = np.random.default_rng(33)
    shape = (80, 80, 12)
    x, y, _z = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]].astype(np.float32)
    vol = np.full(shape, -1000.0, np.float32)
    vol[((x - 40) / 36) ** 2 + ((y - 40) / 30) ** 2 < 1] = 20
    labels = np.zeros(shape, np.uint8)
    labels[((x - 56) / 14) ** 2 + ((y - 44) / 16) ** 2 < 1] = 1
    labels[((x - 20) / 8) ** 2 + ((y - 34) / 8) ** 2 < 1] = 2
    vol[labels == 1] = 60
    vol[labels == 2] = 45
    vol += rng.normal(0, 12, shape)
    affine = np.diag([0.9, 0.9, 5.0, 1.0])
    (root / "volumes").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol.astype(np.int16), affine), root / "volumes" / "vol_c.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), root / "volumes" / "vol_c_organs.nii.gz")


_WRITERS = {"ms-cxr": _mscxr, "chest-imagenome": _imagenome, "radgenome-chestct": _radgenome, "generic": _generic}


def build(name: str, dest: Path) -> Path:
    """A fixture in its published layout under ``dest/name``: the committed text files plus the images."""
    root = Path(dest) / name
    shutil.copytree(FIXTURES / name, root, dirs_exist_ok=True)
    _WRITERS[name](root)
    return root


if __name__ == "__main__":  # write every fixture into a folder: python -m tests.report_fixtures OUT
    import sys

    for n in NAMES:
        print(build(n, Path(sys.argv[1] if len(sys.argv) > 1 else "report-fixtures")))
