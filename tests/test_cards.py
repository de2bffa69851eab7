"""Card load checks (issue 11): user terms and glossary files, label terms, typed layouts, image/mask pairing.

Every error is asserted to name the file (card, glossary file or data file) or the label, and the fix.
The datasets are the throwaway ones of tests/test_card_only.py.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.ingest.readers import ReadError
from pipeline.language.glossary import load_glossary
from schemas.config import load_config
from sources.base import adapters, builtin_cards, card_problems, get_adapter, load_card
from sources.layouts import layout_markdown
from sources.terms import load_release_terms
from throwaway_datasets import DRIVE_CARD, fundus_case, write_card

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def drive(tmp_path):
    root = tmp_path / "drive"
    rng = np.random.default_rng(5)
    for case in ("21", "22"):
        fundus_case(root, case, rng)
    return root


def _card(**changes) -> dict:
    card = copy.deepcopy(DRIVE_CARD)
    layout = changes.pop("layout", None)
    card.update(changes)
    if layout is not None:
        card["layout"] = {**card["layout"], **layout}
    return card


# --- terms ---------------------------------------------------------------------------------------------


def test_card_terms_join_the_glossary_with_every_name(tmp_path):
    assert "retinal_vessel" not in load_glossary()
    card = load_card(str(write_card(tmp_path, DRIVE_CARD)))
    g = load_glossary()
    assert g.display("retinal_vessel", "zh") == "视网膜血管"
    assert g.resolve("retinal vasculature") == "retinal_vessel"  # synonyms resolve like shipped ones
    assert g.term("retinal_vessel").family == "vessel" and g.term("retinal_vessel").body_regions == ("eye",)
    assert card.terms["retinal_vessel"].en == "retinal vessel"


def test_label_to_an_unknown_term_fails_at_card_load_with_did_you_mean(tmp_path):
    path = write_card(tmp_path, _card(labels={"vessel": "retinal_vesel"}))
    with pytest.raises(ValueError) as exc:
        load_card(str(path))
    msg = str(exc.value)
    assert path.name in msg and "label 'vessel'" in msg and "'retinal_vesel'" in msg
    assert "did you mean 'retinal_vessel'" in msg and "under `terms:`" in msg
    # a shipped term misspelled: the closest shipped term is offered
    path = write_card(tmp_path, _card(terms={}, labels={"vessel": "optic_disk"}), "typo.yaml")
    with pytest.raises(ValueError, match=r"label 'vessel' maps to 'optic_disk'.*did you mean 'optic_disc'"):
        load_card(str(path))


def test_card_term_that_is_already_shipped_names_both_places(tmp_path):
    liver = {"en": "my liver", "zh": "我的肝", "category": "organ", "body_region": "abdomen"}
    path = write_card(tmp_path, _card(terms={"liver": liver}, labels={"vessel": "liver"}))
    with pytest.raises(ValueError) as exc:
        load_card(str(path))
    msg = str(exc.value)
    assert "term 'liver'" in msg and path.name in msg and "pipeline/language/data/glossary/" in msg
    assert "map your labels to the shipped term, or give yours another id" in msg


def test_card_term_whose_name_is_a_shipped_name_names_both_terms(tmp_path):
    clash = {"en": "optic nerve head", "zh": "视网膜血管", "category": "vessel", "body_region": "eye"}
    path = write_card(tmp_path, _card(terms={"retinal_vessel": clash}))
    with pytest.raises(ValueError) as exc:
        load_card(str(path))
    msg = str(exc.value)
    assert path.name in msg and "'retinal_vessel'" in msg and "'optic_disc'" in msg  # the synonym's owner
    assert "optic_disc' is in pipeline/language/data/glossary/findings.yaml" in msg
    assert "retinal_vessel' is in card drive-like" in msg
    assert "Fix: give the new term another id or name" in msg


def test_card_term_with_a_bad_field_names_the_card(tmp_path):
    bad = {"en": "retinal vessel", "zh": "视网膜血管", "category": "vesel", "body_region": "eye"}
    path = write_card(tmp_path, _card(terms={"retinal_vessel": bad}))
    with pytest.raises(ValueError, match="(?s)" + re.escape(path.name) + r".*terms\.retinal_vessel\.category"):
        load_card(str(path))


def test_release_glossary_files(tmp_path):
    """Terms from a glossary file the release config names: a card maps to them without defining them,
    and carries a copy (case tasks in other processes get the card, not the config)."""
    gfile = tmp_path / "extra-terms.yaml"
    gfile.write_text(yaml.safe_dump({"retinal_vessel": DRIVE_CARD["terms"]["retinal_vessel"]}, allow_unicode=True),
                     encoding="utf-8")
    card_path = write_card(tmp_path, _card(terms={}))
    cfg_path = tmp_path / "release.yaml"
    cfg_path.write_text(yaml.safe_dump({"name": "r", "version": "1", "glossary": ["extra-terms.yaml"],
                                        "sources": [{"card": str(card_path)}]}))
    cfg = load_config(cfg_path)
    assert cfg.glossary_paths() == [gfile]
    with pytest.raises(ValueError, match="retinal_vessel"):
        load_card(str(card_path))  # without the release's terms the label points nowhere
    terms = load_release_terms(cfg)
    card = load_card(str(card_path), release_terms=terms)
    assert set(card.terms) == {"retinal_vessel"} and load_glossary().display("retinal_vessel", "en") == "retinal vessel"
    # the card defines the same id differently: an error naming both places
    other = {**DRIVE_CARD["terms"]["retinal_vessel"], "zh": "视网膜的血管"}
    clash_path = write_card(tmp_path, _card(terms={"retinal_vessel": other}), "clash.yaml")
    with pytest.raises(ValueError) as exc:
        load_card(str(clash_path), release_terms=terms)
    msg = str(exc.value)
    assert "defined differently" in msg and gfile.name in msg and clash_path.name in msg
    assert "keep one definition" in msg


def test_release_glossary_file_is_validated_like_the_shipped_one(tmp_path):
    gfile = tmp_path / "bad.yaml"
    bad_id = {"Retinal Vessel": {"en": "x", "zh": "y", "category": "vessel", "body_region": "eye"}}
    gfile.write_text(yaml.safe_dump(bad_id))
    cfg_path = tmp_path / "release.yaml"
    cfg_path.write_text(yaml.safe_dump({"name": "r", "version": "1", "glossary": ["bad.yaml", "missing.yaml"],
                                        "sources": [{"card": "kvasir-seg"}]}))
    with pytest.raises(ValueError, match="(?s)" + re.escape(gfile.name) + r".*term id must be snake_case") as exc:
        load_release_terms(load_config(cfg_path))
    assert "where" not in str(exc.value)  # no unrelated shipped term named
    cfg_path.write_text(yaml.safe_dump({"name": "r", "version": "1", "glossary": ["missing.yaml"],
                                        "sources": [{"card": "kvasir-seg"}]}))
    with pytest.raises(FileNotFoundError, match="missing.yaml.*relative to the release config"):
        load_release_terms(load_config(cfg_path))


def test_inspect_card_check_names_unknown_terms(tmp_path):
    path = write_card(tmp_path, _card(labels={"vessel": "retinal_vesel", "artery": "artery_of_retina"}))
    problems = card_problems(str(path))
    assert any("'retinal_vesel'" in p and "did you mean 'retinal_vessel'" in p for p in problems)
    assert any("label 'artery' maps to 'artery_of_retina'" in p for p in problems)
    assert card_problems("kvasir-seg") == []


# --- typed layouts -------------------------------------------------------------------------------------


def test_layout_typo_is_an_error_with_did_you_mean(tmp_path):
    card = _card()
    card["layout"]["imges"] = card["layout"].pop("images")
    path = write_card(tmp_path, card)
    with pytest.raises(ValueError) as exc:
        load_card(str(path))
    msg = str(exc.value)
    assert path.name in msg and "layout.imges: unknown key; did you mean `images`?" in msg
    assert "medreg sources --layout mask_folder_2d" in msg


def test_nested_layout_typo_names_the_entry(tmp_path):
    card = yaml.safe_load(builtin_cards()["totalseg-ct"].read_text())
    card["layout"]["cases"][0]["lables"] = card["layout"]["cases"][0].pop("labels")
    path = write_card(tmp_path, card)
    with pytest.raises(ValueError, match=r"layout\.cases\.0\.lables: unknown key; did you mean `labels`\?"):
        load_card(str(path))


def test_layout_placeholder_without_a_group_and_binary_without_label(tmp_path):
    path = write_card(tmp_path, _card(layout={"masks": "1st_manual/{idx}_manual1.gif"}))
    with pytest.raises(ValueError, match=r"\{idx\}.*groups: id.*add \(\?P<name>\.\.\.\) to image_regex"):
        load_card(str(path))
    card = _card()
    del card["layout"]["label"]
    with pytest.raises(ValueError, match="mask_kind binary needs `label`"):
        load_card(str(write_card(tmp_path, card, "nolabel.yaml")))
    with pytest.raises(ValueError, match=r"label\(s\) \['vein'\] that map to no term; add them to `labels`"):
        load_card(str(write_card(tmp_path, _card(layout={"label": "vein"}), "vein.yaml")))


def test_display_fix_on_a_3d_card_is_rejected(tmp_path):
    card = yaml.safe_load(builtin_cards()["totalseg-ct"].read_text())
    card["layout"]["case_rules"] = [{"regex": ".", "display": "rot180"}]
    with pytest.raises(ValueError, match="display fixes are for 2-D exports.*remove it"):
        load_card(str(write_card(tmp_path, card)))


def test_unknown_adapter_did_you_mean(tmp_path):
    with pytest.raises(KeyError, match=r"'mask_folder'.*did you mean 'mask_folder_2d'"):
        load_card(str(write_card(tmp_path, _card(adapter="mask_folder"))))


def test_every_shipped_card_loads_and_docs_show_every_layout_model():
    doc = (REPO / "docs" / "adding-a-source.md").read_text(encoding="utf-8")
    for name in builtin_cards():
        load_card(name)
    for name, cls in sorted(adapters().items()):
        assert layout_markdown(name, cls.layout_model) in doc, "run: python -m sources.layouts docs/adding-a-source.md"


def test_nifti_adapter_applies_case_rules(samples):
    card = load_card("totalseg-ct")
    card = card.model_copy(update={"layout": {**card.layout, "case_rules": [
        {"regex": "^example_ct", "modality": "PET", "body_region": "pelvis"}]}})
    ad = get_adapter(card, card.resolve_root(samples))
    (ref,) = ad.discover()
    st = ad.load(ref)
    assert st.modality == "PET" and st.transform["body_region"] == "pelvis"


# --- pairing -------------------------------------------------------------------------------------------


def _adapter(tmp_path, root, **changes):
    return get_adapter(load_card(str(write_card(tmp_path, _card(**changes)))), root)


def test_loose_mask_glob_pairing_the_field_of_view_is_an_error_naming_both_files(tmp_path, drive):
    ad = _adapter(tmp_path, drive, layout={"masks": "*/{id}_*.gif", "roi_masks": None})
    ref = next(r for r in ad.discover() if r.case_id == "21_training")
    with pytest.raises(ReadError) as exc:
        ad.load(ref)
    msg = str(exc.value)
    assert "1st_manual/21_manual1.gif" in msg and "mask/21_training_mask.gif" in msg
    assert "layout.roi_masks" in exc.value.hint and "match one file" in exc.value.hint
    # naming the field-of-view folder: the same loose glob now pairs the vessels only
    ad = _adapter(tmp_path, drive, layout={"masks": "*/{id}_*.gif"})
    st = ad.load(next(r for r in ad.discover() if r.case_id == "21_training"))
    assert [layer.origin for layer in st.layers] == [str(drive / "1st_manual" / "21_manual1.gif")]
    fov = np.asarray(Image.open(drive / "mask" / "21_training_mask.gif").convert("L")) > 127
    rows, cols = np.nonzero(fov)
    assert st.transform["roi_box_px"] == [cols.min(), rows.min(), cols.max(), rows.max()]


def test_one_mask_matched_by_two_images_is_an_error_naming_them(tmp_path, drive):
    fundus_case(drive, "2", np.random.default_rng(2))  # 2_training.tif: "{id}*" also matches 21_manual1.gif
    ad = _adapter(tmp_path, drive, layout={"masks": "1st_manual/{id}*.gif"})
    refs = {r.case_id: r for r in ad.discover()}
    with pytest.raises(ReadError) as exc:
        ad.load(refs["2_training"])
    assert "1st_manual/21_manual1.gif" in str(exc.value) and "21_training" in str(exc.value)
    assert "{id}_manual1.gif rather than {id}*.gif" in exc.value.hint
    with pytest.raises(ReadError, match="22_manual1.gif is matched by image 22_training.tif and by 2_training"):
        ad.load(refs["22_training"])


def test_image_not_matching_image_regex_is_an_error(tmp_path, drive):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(drive / "images" / "extra.tif")
    ad = _adapter(tmp_path, drive)
    with pytest.raises(ValueError, match=r"1 image\(s\).*do not match layout\.image_regex.*images/extra\.tif.*widen"):
        ad.discover()


def test_per_label_files_giving_one_label_twice_is_an_error(tmp_path, drive):
    for case in ("21", "22"):
        src = drive / "1st_manual" / f"{case}_manual1.gif"
        (drive / "1st_manual" / f"{case}_manual2.gif").write_bytes(src.read_bytes())
    ad = _adapter(tmp_path, drive, labels={"manual": "retinal_vessel"}, layout={
        "masks": "1st_manual/{id}_manual*.gif", "mask_kind": "per_label", "label": None,
        "label_regex": r"^\d+_(manual)\d\.gif$"})
    ref = next(r for r in ad.discover() if r.case_id == "21_training")
    files = r"1st_manual/21_manual1\.gif, 1st_manual/21_manual2\.gif"
    with pytest.raises(ReadError, match=r"label 'manual'.*2 mask files: " + files) as exc:
        ad.load(ref)
    assert "one file per label" in exc.value.hint and "mask_kind: instance" in exc.value.hint


def test_two_roi_masks_for_one_image_is_an_error_naming_them(tmp_path, drive):
    (drive / "mask" / "21_training_mask2.gif").write_bytes((drive / "mask" / "21_training_mask.gif").read_bytes())
    ad = _adapter(tmp_path, drive, layout={"roi_masks": "mask/{id}_training_mask*.gif"})
    refs = {r.case_id: r for r in ad.discover()}
    with pytest.raises(ReadError, match=r"2 ROI masks match image 21_training\.tif: mask/21_training_mask\.gif, "
                                        r"mask/21_training_mask2\.gif") as exc:
        ad.load(refs["21_training"])
    assert "make layout.roi_masks match one file per image" in exc.value.hint
    assert ad.load(refs["22_training"]).transform["roi_box_px"]  # its own single ROI mask is fine
