"""The bilingual glossary and the shipped label maps (pipeline/language/glossary.py, schemas/language.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.language.glossary import (
    DATA_DIR,
    Glossary,
    english_plural,
    list_label_maps,
    load_glossary,
    load_label_map,
    normalise_name,
)
from schemas.language import CATEGORY_FAMILY, GlossarySpec, TermSpec

REPO = Path(__file__).resolve().parents[1]
CARDS_DIR = REPO / "sources" / "cards"


@pytest.fixture(scope="module")
def g() -> Glossary:
    return load_glossary()


# ----------------------------------------------------------------------------------------- coverage

# SA-Med2D demo structure names (mask file names, data_demo/masks/<image>_<structure>_<NNN>.png)
SAMED2D_STRUCTURES = [
    "aorta", "inferior_vena_cava", "liver", "spleen", "autochthon_left", "autochthon_right",
    "heart_atrium_left", "heart_atrium_right", "heart_myocardium", "heart_ventricle_left",
    "heart_ventricle_right", "lung_lower_lobe_left", "lung_lower_lobe_right", "lung_middle_lobe_right",
    "lung_upper_lobe_left", "rib_left_9", "rib_right_9", "vertebrae_T9", "colon", "femur_right",
    "gluteus_maximus_left", "gluteus_maximus_right", "hip_left", "hip_right",
]  # fmt: skip

# dataset label spelling -> expected term
DATASET_LABELS = {
    # BiomedParse demo targets (mask names use '+' for spaces)
    "lung": "lung",
    "left+lung": "lung_left",
    "right+lung": "lung_right",
    "COVID-19+infection": "covid19_infection",
    "breast tumor": "breast_tumor",
    "optic+disc": "optic_disc",
    "optic+cup": "optic_cup",
    "polyp": "polyp",
    "neoplastic+polyp": "neoplastic_polyp",
    "non-neoplastic+polyp": "non_neoplastic_polyp",
    "melanoma": "melanoma",
    # ChestX-ray14 BBox_List_2017.csv finding labels
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Effusion": "pleural_effusion",
    "Infiltrate": "infiltration",
    "Infiltration": "infiltration",
    "Mass": "mass",
    "Nodule": "nodule",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
    # RTSTRUCT ROI names (incl. AAPM TG-263 style), DICOM-SEG segment label
    "BODY": "body",
    "SpinalCord": "spinal_cord",
    "Lung_L": "lung_left",
    "Lung_R": "lung_right",
    "Kidney_R": "kidney_right",
    "L_Kidney": "kidney_left",
    "Femur_L": "femur_left",
    "Glnd_Thyroid": "thyroid_gland",
    "A_Aorta": "aorta",
    "V_Venacava_I": "inferior_vena_cava",
    "Bowel_Small": "small_bowel",
    "Liver": "liver",
}

# ids present in the totalseg-nifti sample volumes (from the dataset README, verified against the files)
TOTALSEG_CT_PRESENT = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver", 6: "stomach", 7: "pancreas",
    8: "adrenal_gland_right", 9: "adrenal_gland_left", 10: "lung_upper_lobe_left", 11: "lung_lower_lobe_left",
    13: "lung_middle_lobe_right", 14: "lung_lower_lobe_right", 18: "small_bowel", 19: "duodenum", 20: "colon",
    30: "vertebrae_L2", 31: "vertebrae_L1", 32: "vertebrae_T12", 33: "vertebrae_T11", 52: "aorta",
    63: "inferior_vena_cava", 64: "portal_vein_and_splenic_vein", 79: "spinal_cord", 86: "autochthon_left",
    87: "autochthon_right", 88: "iliopsoas_left", 89: "iliopsoas_right", 98: "rib_left_7", 99: "rib_left_8",
    100: "rib_left_9", 101: "rib_left_10", 102: "rib_left_11", 103: "rib_left_12", 110: "rib_right_7",
    111: "rib_right_8", 112: "rib_right_9", 113: "rib_right_10", 114: "rib_right_11", 115: "rib_right_12",
    117: "costal_cartilages",
}  # fmt: skip
TOTALSEG_MR_PRESENT = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver", 6: "stomach", 7: "pancreas",
    8: "adrenal_gland_right", 9: "adrenal_gland_left", 11: "lung_right", 13: "small_bowel", 14: "duodenum",
    15: "colon", 19: "vertebrae", 20: "intervertebral_discs", 21: "spinal_cord", 23: "aorta",
    24: "inferior_vena_cava", 25: "portal_vein_and_splenic_vein", 46: "autochthon_left", 47: "autochthon_right",
    48: "iliopsoas_left", 49: "iliopsoas_right",
}  # fmt: skip


def test_totalseg_maps_are_complete() -> None:
    total = load_label_map("totalseg_total")
    mr = load_label_map("totalseg_total_mr")
    assert sorted(total) == list(range(1, 118))
    assert sorted(mr) == list(range(1, 51))
    assert {k: total[k] for k in TOTALSEG_CT_PRESENT} == TOTALSEG_CT_PRESENT
    assert {k: mr[k] for k in TOTALSEG_MR_PRESENT} == TOTALSEG_MR_PRESENT
    # the two maps use different id spaces
    assert total[11] == "lung_lower_lobe_left" and mr[11] == "lung_right"
    assert total[116] == "sternum" and mr[50] == "brain"


def test_label_map_returns_a_copy() -> None:
    m = load_label_map("totalseg_total")
    m[1] = "liver"
    assert load_label_map("totalseg_total")[1] == "spleen"


def test_unknown_label_map_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="totalseg_total"):
        load_label_map("no_such_map")


def _label_map_files() -> list[Path]:
    files = {p for p in DATA_DIR.glob("*.yaml")} | {p for p in DATA_DIR.glob("*label-map*")}
    files |= {p for p in DATA_DIR.glob("*label_map*")}
    return sorted(files)


@pytest.mark.parametrize("path", _label_map_files(), ids=lambda p: p.name)
def test_every_label_map_term_is_in_the_glossary(path: Path, g: Glossary) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and data
    missing = {k: v for k, v in data.items() if v not in g}
    assert not missing, f"{path.name}: labels without a glossary term: {missing}"
    if path.suffix == ".yaml" and path.stem in list_label_maps():
        assert load_label_map(path.stem) == {int(k): v for k, v in data.items()}


def test_samed2d_structures_are_terms(g: Glossary) -> None:
    missing = [s for s in SAMED2D_STRUCTURES if s not in g]
    assert not missing


def test_samed2d_mask_names_split_from_the_right(g: Glossary) -> None:
    # <image-stem>_<structure>_<NNN>.png: the structure resolves once the stem and index are stripped
    for fname, stem, want in [
        ("s0114_111_heart_ventricle_left_000.png", "s0114_111", "heart_ventricle_left"),
        ("s0619_32_hip_left_001.png", "s0619_32", "hip_left"),
        ("amos_0004_75_inferior_vena_cava_000.png", "amos_0004_75", "inferior_vena_cava"),
    ]:
        structure = fname[len(stem) + 1 :].rsplit("_", 1)[0]
        assert g.resolve(structure) == want


@pytest.mark.parametrize(("label", "term"), sorted(DATASET_LABELS.items()))
def test_dataset_labels_resolve(label: str, term: str, g: Glossary) -> None:
    assert g.resolve(label) == term


def test_breast_tumor_and_kvasir_polyp(g: Glossary) -> None:
    assert g.display("breast_tumor", "en") == "breast tumor"
    assert g.term("breast_tumor").parent == "tumor"
    assert g.resolve("polyp") == "polyp"


def _card_files() -> list[Path]:
    return sorted(CARDS_DIR.glob("*.yaml")) + sorted(CARDS_DIR.glob("*.yml"))


def test_every_card_label_is_covered(g: Glossary) -> None:
    """Every ``labels:`` value of every source card is a glossary term (cards are added over time)."""
    problems: list[str] = []
    for path in _card_files():
        card = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for key, value in (card.get("labels") or {}).items():
            if g.resolve(str(value)) is None:
                problems.append(f"{path.name}: label {key!r} -> {value!r} is not a glossary term")
        lm = card.get("label_map")
        if lm and lm not in list_label_maps():
            problems.append(f"{path.name}: label_map {lm!r} is not shipped ({list_label_maps()})")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------------------- content rules


def test_term_count_and_languages(g: Glossary) -> None:
    assert len(g) >= 160
    assert set(g.languages) >= {"en", "zh"}


def test_mirrors_are_symmetric_with_opposite_laterality(g: Glossary) -> None:
    pairs = 0
    for tid, t in g.terms.items():
        if t.mirror:
            m = g.term(t.mirror)
            assert m.mirror == tid
            assert {t.laterality, m.laterality} == {"left", "right"}
            pairs += 1
    assert pairs >= 60  # both directions counted


def test_laterality_matches_ids_and_names(g: Glossary) -> None:
    for tid, t in g.terms.items():
        side = re.search(r"_(left|right)(_|$)", tid)
        if side:
            assert t.laterality == side.group(1), tid
        if t.laterality:
            assert t.laterality in t.en, tid
            assert ("左" if t.laterality == "left" else "右") in t.zh, tid
        else:
            assert not re.search(r"\b(left|right)\b", t.en), tid


def test_display_names_are_unique_and_clean(g: Glossary) -> None:
    for lang in ("en", "zh"):
        names = [g.display(t, lang) for t in g]
        assert len(names) == len({n.casefold() for n in names}), lang
        for n in names:
            assert not set(n) & set("[]<>"), n


def test_english_number_follows_the_display_name(g: Glossary) -> None:
    """A display name in the plural ("costal cartilages") says so (``number: plural``); templates then get
    "the costal cartilages are" instead of "the costal cartilage is"."""
    plural = re.compile(r"\b(muscles|cartilages|discs|disks|vertebrae|veins|arteries|bones|lungs|kidneys|ribs|structures)$")
    for tid, t in g.terms.items():
        assert bool(plural.search(t.en)) == (t.number == "plural"), tid
    assert {t for t in g if g.term(t).number == "plural"} >= {
        "costal_cartilages", "intervertebral_discs", "vertebrae", "portal_vein_and_splenic_vein", "autochthon",
    }  # fmt: skip


def test_grammar_defaults_and_mass_nouns(g: Glossary) -> None:
    liver, polyp, atel = g.term("liver"), g.term("polyp"), g.term("atelectasis")
    assert (liver.countable, liver.number, liver.article, liver.kind) == (True, "singular", "the", "anatomy")
    assert (polyp.article, polyp.plural_en, polyp.kind) == ("the", "polyps", "finding")
    assert (atel.countable, atel.article, atel.plural_en) == (False, "none", "")  # "atelectasis is seen"
    assert g.term("mass").plural_en == "masses" and g.term("covid19_infection").plural_en == "COVID-19 lesions"
    myo = g.term("heart_myocardium")  # a mass noun of the anatomy takes "the"
    assert (myo.countable, myo.article) == (False, "the")
    for tid in ("pleural_effusion", "pneumonia", "pneumothorax", "infiltration", "cardiomegaly"):
        assert not g.term(tid).countable, tid
    assert english_plural("kidney cyst") == "kidney cysts" and english_plural("artery") == "arteries"


def test_issue_12_glossary_corrections(g: Glossary) -> None:
    """The corrections a bilingual radiologist asked for (issue 12 B8), verbatim."""
    want = {
        "autochthon_left": ("left paraspinal (erector spinae) muscle", "左椎旁肌（竖脊肌）"),
        "autochthon_right": ("right paraspinal (erector spinae) muscle", "右椎旁肌（竖脊肌）"),
        "covid19_infection": ("COVID-19 lesion", "新冠肺炎病灶"),
        "lung_upper_lobe_left": ("left upper lobe", "左肺上叶"),
        "lung_middle_lobe_right": ("right middle lobe", "右肺中叶"),
        "portal_vein_and_splenic_vein": ("portal and splenic veins", "门静脉及脾静脉"),
        "costal_cartilages": ("costal cartilages", "肋软骨"),
        "intervertebral_discs": ("intervertebral discs", "椎间盘"),
        "vertebrae": ("vertebrae", "脊椎"),
        "heart_myocardium": ("left ventricular myocardium", "左心室心肌"),
        "rib": ("rib", "肋骨"),
        "rib_left_7": ("left 7th rib", "左第7肋骨"),
        "cardiomegaly": ("cardiomegaly", "心影增大"),
        "body": ("body outline", "体外轮廓"),
        "iliac_artery_left": ("left common iliac artery", "左髂总动脉"),
        "iliac_vena_right": ("right common iliac vein", "右髂总静脉"),
    }
    for tid, (en, zh) in want.items():
        assert (g.display(tid, "en"), g.display(tid, "zh")) == (en, zh), tid
    assert "腺瘤性息肉" not in g.term("neoplastic_polyp").synonyms["zh"]
    assert g.resolve("腺瘤性息肉") is None
    # the old names still resolve (labels and predictions written with them)
    for old, tid in (("autochthon_left", "autochthon_left"), ("左侧背固有肌", "autochthon_left"),
                     ("COVID-19 infection", "covid19_infection"), ("upper lobe of left lung", "lung_upper_lobe_left"),
                     ("portal/splenic vein", "portal_vein_and_splenic_vein"), ("右侧第7肋", "rib_right_7")):
        assert g.resolve(old) == tid, old


def test_one_laterality_style_in_chinese(g: Glossary) -> None:
    """Chinese display names say the side as 左/右 directly before the structure (右肾, 右第7肋骨), never 左侧/右侧."""
    for tid, t in g.terms.items():
        assert not t.zh.startswith(("左侧", "右侧")), tid
        if t.laterality:
            assert t.zh[0] == ("左" if t.laterality == "left" else "右"), tid


def test_codes_look_like_codes(g: Glossary) -> None:
    for tid, t in g.terms.items():
        for system, code in t.codes.items():
            if system == "SNOMED":
                assert re.fullmatch(r"\d{6,18}", code), (tid, code)


def test_parents_and_categories(g: Glossary) -> None:
    for t in g.terms.values():
        assert t.category in CATEGORY_FAMILY
        if t.parent:
            assert t.parent in g
    assert g.ancestors("lung_upper_lobe_left") == ["lung_left", "lung"]
    assert g.related("lung", "lung_upper_lobe_left") and not g.related("lung_left", "lung_right")


# ----------------------------------------------------------------------------------------- API


def test_display_and_errors(g: Glossary) -> None:
    assert g.display("kidney_right", "en") == "right kidney"
    assert g.display("kidney_right", "zh") == "右肾"
    with pytest.raises(KeyError, match="kidney_right"):
        g.term("right_kidney")  # suggests the canonical id
    with pytest.raises(KeyError):
        g.display("liver", "fr")


@pytest.mark.parametrize(
    ("text", "lang", "want"),
    [
        ("kidney, right", None, "kidney_right"),
        ("Right Kidney", "en", "kidney_right"),
        ("KIDNEY_RIGHT", None, "kidney_right"),
        ("right-kidney.", None, "kidney_right"),
        ("右肾", "zh", "kidney_right"),
        ("右 肾", None, "kidney_right"),
        ("右肾", "en", None),  # a Chinese name is not an English one
        ("gall bladder", "zh", None),  # an English synonym is not a Chinese name
        ("gall bladder", "en", "gallbladder"),
        ("kidney_right", "zh", "kidney_right"),  # ids match in every language
        ("lung, left, upper lobe", None, "lung_upper_lobe_left"),
        ("T12", None, "vertebrae_T12"),
        ("第十二胸椎", "zh", "vertebrae_T12"),
        ("", None, None),
        ("nonsense organ", None, None),
    ],
)
def test_resolve(text: str, lang: str | None, want: str | None, g: Glossary) -> None:
    assert g.resolve(text, lang) == want


def test_every_name_resolves_to_its_own_term(g: Glossary) -> None:
    for tid, t in g.terms.items():
        assert g.resolve(tid) == tid
        for lang, name in t.names.items():
            assert g.resolve(name, lang) == tid
            assert g.resolve(name) == tid
        for lang, syns in t.synonyms.items():
            for s in syns:
                assert g.resolve(s, lang) == tid, s
        for a in t.aliases:
            assert g.resolve(a) == tid, a


def test_mirror_laterality_same_region(g: Glossary) -> None:
    assert g.mirror("kidney_left") == "kidney_right"
    assert g.mirror("liver") is None
    assert g.laterality("rib_left_7") == "left"
    same = g.same_region_terms("kidney_right")
    assert "kidney_left" in same and "liver" in same and "spleen" in same
    assert "kidney_right" not in same and "kidney" not in same  # no self, no containment
    assert "aorta" not in same and "vertebrae_L1" not in same  # other families
    assert same == sorted(same)
    findings = g.same_region_terms("nodule")
    assert "mass" in findings and "pneumothorax" in findings and "lung" not in findings


def test_normalise_name() -> None:
    assert normalise_name("SpinalCord") == "spinal cord"
    assert normalise_name("  COVID-19+infection ") == "covid 19 infection"
    assert normalise_name("左侧 第7肋") == "左侧第7肋"
    assert normalise_name("Ｔ１２") == "t12"


def test_load_glossary_is_cached() -> None:
    assert load_glossary() is load_glossary()


# ----------------------------------------------------------------------------------------- validation


def _spec(**terms: dict) -> GlossarySpec:
    return GlossarySpec(terms={k: TermSpec.model_validate(v) for k, v in terms.items()})


def _t(en: str, zh: str, **kw: object) -> dict:
    return {"en": en, "zh": zh, "category": "organ", "body_region": "abdomen", **kw}


def test_validation_accepts_a_good_pair() -> None:
    spec = _spec(
        a_left=_t("left a", "左甲", laterality="left", mirror="a_right"),
        a_right=_t("right a", "右甲", laterality="right", mirror="a_left"),
    )
    assert Glossary(spec).mirror("a_left") == "a_right"


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ({"a_left": _t("left a", "左甲", laterality="left", mirror="a_right")}, "not a glossary term"),
        (
            {
                "a_left": _t("left a", "左甲", laterality="left", mirror="a_right"),
                "a_right": _t("right a", "右甲", laterality="right"),
            },
            "does not point back",
        ),
        (
            {
                "a_left": _t("left a", "左甲", laterality="left", mirror="a_right"),
                "a_right": _t("right a", "右甲", laterality="left", mirror="a_left"),
            },
            "opposite laterality",
        ),
        ({"a": _t("a", "甲", parent="b")}, "parent 'b' is not a glossary term"),
        ({"a": _t("a", "甲", parent="b"), "b": _t("b", "乙", parent="a")}, "cycle"),
        ({"a": _t("same", "甲"), "b": _t("Same", "乙")}, "already used"),
        ({"a": _t("a", "甲"), "b": _t("b", "甲")}, "already used"),
        ({"Bad-Id": _t("a", "甲")}, "snake_case"),
    ],
)
def test_validation_rejects(terms: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _spec(**terms)


@pytest.mark.parametrize(
    "term",
    [
        _t("a [x]", "甲"),
        _t("a", "甲<乙>"),
        _t("a", "甲", synonyms_en=["<b>"]),
        _t("left a", "左甲", mirror="x"),  # mirror without laterality
        _t("a", "甲", category="planet"),
        _t("a", "甲", body_region="moon"),
        _t("a", "甲", colour="red"),
        _t("a", "甲", countable=False, number="plural"),  # a mass noun has no plural
        _t("as", "甲", number="plural", plural_en="ass"),  # no plural of a plural
        _t("a", "甲", article="an"),
    ],
)
def test_term_validation_rejects(term: dict) -> None:
    with pytest.raises(ValueError):
        TermSpec.model_validate(term)


def test_ambiguous_synonyms_are_rejected() -> None:
    spec = _spec(a=_t("a", "甲", synonyms_en=["thing"]), b=_t("b", "乙", aliases=["Thing"]))
    with pytest.raises(ValueError, match="ambiguous"):
        Glossary(spec)


def test_extra_languages_are_allowed() -> None:
    spec = _spec(a=_t("a", "甲", ja="エー", synonyms_ja=["えー"]))
    gl = Glossary(spec)
    assert gl.display("a", "ja") == "エー"
    assert gl.resolve("えー", "ja") == "a"


# ----------------------------------------------------------------------------------------- card flags


def test_exhaustive_findings_are_findings_the_card_annotates(g: Glossary) -> None:
    """Card ``exhaustive_findings`` (issue 12 A6): validated on the card; every shipped one names lesion or
    finding terms among the card's own labels."""
    from schemas.card import SourceCard
    from sources.terms import label_table

    flagged = 0
    for path in _card_files():
        card = SourceCard.from_yaml(path)
        if isinstance(card.exhaustive_findings, list):
            vocab = set(label_table(card).values())
            for t in card.exhaustive_findings:
                assert t in vocab and g.term(t).kind == "finding", (path.name, t)
                flagged += 1
    assert flagged >= 1  # Kvasir-SEG segments every polyp
    base = {"name": "x", "title": "x", "adapter": "mask_folder_2d", "licence": "CC0-1.0", "modality": "XR",
            "labels": {"Nodule": "nodule"}}  # fmt: skip
    assert SourceCard.model_validate({**base, "exhaustive_findings": True}).exhaustive_findings is True
    assert SourceCard.model_validate({**base, "exhaustive_findings": ["nodule"]}).exhaustive_findings == ["nodule"]
    assert SourceCard.model_validate(base).exhaustive_findings is False
    with pytest.raises(ValueError, match="not terms of this card"):
        SourceCard.model_validate({**base, "exhaustive_findings": ["mass"]})
    with pytest.raises(ValueError, match="term ids"):
        SourceCard.model_validate({**base, "exhaustive_findings": ["Nodule"]})


def test_sentence_answers_need_their_prompt_in_the_rows() -> None:
    from schemas.config import TaskConfig

    assert TaskConfig().system_prompt == "none" and TaskConfig().region_to_text_answer == "name"
    assert TaskConfig(system_prompt="inline", region_to_text_answer="sentence").region_to_text_answer == "sentence"
    with pytest.raises(ValueError, match="inline or turn"):
        TaskConfig(region_to_text_answer="sentence")
