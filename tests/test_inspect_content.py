"""``medreg inspect`` for a newcomer's dataset (issue 11): DICOM by content whatever the file names, mask
folders that are a field of view, and a card's labels that map to terms that do not exist."""

from __future__ import annotations

import shutil

import numpy as np
from typer.testing import CliRunner

from flows.cli import app
from pipeline.ingest.inspect import format_inspection, inspect_path
from throwaway_datasets import DRIVE_CARD, fundus_case, write_card


def test_dicom_recognised_by_content_whatever_the_names(tmp_path, samples):
    """dcmqi's 3 CT files and its SEG renamed the way some exports name them (UIDs, no .dcm)."""
    src = samples / "dcmqi-ct-liver-seg"
    folder = tmp_path / "export"
    folder.mkdir()
    for i, f in enumerate(sorted((src / "ct-3slice").glob("*.dcm"))):
        shutil.copy(f, folder / f"CT.1.3.12.2.1107.5.1.4.{16571 + i}")
    shutil.copy(src / "liver.dcm", folder / "SEG_0001")  # no extension at all
    (folder / "notes.txt").write_text("not DICOM")
    d = inspect_path(folder)
    assert d["by_extension"] == {"DICOM (by content)": 4, ".txt": 1}
    dicom = d["dicom"]
    assert len(dicom["series"]) == 1 and dicom["series"][0]["slices"] == 3 and dicom["series"][0]["modality"] == "CT"
    assert [s["label"] for s in dicom["segmentations"][0]["segments"]] == ["Liver"]
    assert dicom["segmentations"][0]["refers_to_series"] == 1
    assert d["suggested_adapter"] == "dicom_seg"
    one = inspect_path(folder / "CT.1.3.12.2.1107.5.1.4.16571")  # a single file too
    assert one["kind"] == "dicom" and one["series"][0]["slices"] == 1


def test_field_of_view_folder_is_named(tmp_path):
    root = tmp_path / "drive"
    rng = np.random.default_rng(1)
    for case in ("21", "22", "23"):
        fundus_case(root, case, rng)
    d = inspect_path(root)
    assert set(d["roi_like_folders"]) == {"mask"}  # the vessel folder is not a field of view
    masks = {i["path"]: i for i in d["images"] if "fov_like" in i}
    assert masks["mask/21_training_mask.gif"]["fov_like"] is True
    assert masks["1st_manual/21_manual1.gif"]["fov_like"] is False
    text = format_inspection(d)
    assert "field of view? mask/" in text and "layout.roi_masks" in text


def test_inspect_with_a_card_lists_labels_mapping_to_unknown_terms(tmp_path):
    root = tmp_path / "drive"
    fundus_case(root, "21", np.random.default_rng(1))
    bad = {**DRIVE_CARD, "labels": {"vessel": "retinal_vesel"}}
    path = write_card(tmp_path, bad)
    out = CliRunner().invoke(app, ["inspect", str(root), "--card", str(path)])
    assert out.exit_code == 0, out.output
    assert "card problem:" in out.output and "label 'vessel' maps to 'retinal_vesel'" in out.output
    assert "did you mean 'retinal_vessel'" in out.output
    good = CliRunner().invoke(app, ["inspect", str(root), "--card", str(write_card(tmp_path, DRIVE_CARD, "ok.yaml"))])
    assert "every label maps to a known term" in good.output
