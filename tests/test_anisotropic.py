"""The square-pixel path (issue 15 item 7): a coronal view of an anisotropic volume (0.8 x 0.8 mm in plane,
3 mm slices) is resampled so its pixels are square in physical space, and the box of a labelled block
lands where its physical extent says - computed here independently from the block's millimetres."""

from __future__ import annotations

import numpy as np

from pipeline.core.types import CaseRef, LabelLayer, Study
from pipeline.ingest.convert import convert
from schemas.card import BoxPolicy, SourceCard
from schemas.config import SlicingConfig

K, R, C = 40, 120, 100          # canonical (S, P, L) axes: 40 slices of 3 mm, 120 x 100 voxels of 0.8 mm
SPACING = (3.0, 0.8, 0.8)


def _study() -> Study:
    rng = np.random.default_rng(0)
    image = rng.normal(40, 20, (K, R, C)).astype(np.float32)
    lab = np.zeros((K, R, C), np.uint8)
    lab[10:20, 30:90, 20:70] = 1          # slices 10..19 (30 mm), rows 30..89, columns 20..69
    ref = CaseRef(source="synthetic", case_id="aniso", patient_id="p", paths={})
    return Study(ref=ref, modality="CT", image=image, spacing=SPACING, is_3d=True,
                 layers=[LabelLayer(lab, {1: "liver"})], intensity_preset="abdomen")


def test_a_coronal_view_of_an_anisotropic_volume_has_square_pixels_and_true_boxes():
    card = SourceCard.model_validate({"name": "synthetic", "title": "t", "adapter": "nifti_labelmap",
                                      "licence": "CC0-1.0", "modality": "CT", "intensity": {"preset": "abdomen"}})
    slicing = SlicingConfig(axes=["coronal"], max_slices_per_case=1, min_spacing_mm=1, min_label_pixels=1)
    conv = convert(_study(), card, BoxPolicy(mode="label"), slicing)
    assert len(conv.slices) == 1
    sl = conv.slices[0]
    # coronal display: rows = superior..inferior (K flipped, 3 mm), columns = patient right..left (0.8 mm);
    # square pixels at the finer spacing: K rows become K * 3 / 0.8 = 150 rows of 0.8 mm
    assert sl.image.shape == (150, C)
    (region,) = sl.regions
    x0, y0, x1, y1 = region.box_px
    assert (x0, x1) == (20, 69)  # columns are not resampled
    # the block's slices 10..19 are 30..60 mm above the bottom; displayed top-down (superior first):
    # rows cover (K - 20) * 3 mm .. (K - 10) * 3 mm from the top = 60..90 mm = rows 75..112.5 of 0.8 mm
    top_mm, bottom_mm = (K - 20) * 3.0, (K - 10) * 3.0
    assert abs(y0 - top_mm / 0.8) <= 1 and abs((y1 + 1) - bottom_mm / 0.8) <= 1
    # and the box's physical size equals the block's: 50 columns x 0.8 mm, 10 slices x 3 mm
    assert (x1 - x0 + 1) * 0.8 == 40.0 and abs((y1 - y0 + 1) * 0.8 - 30.0) <= 0.8
