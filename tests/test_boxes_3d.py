"""Detection boxes of a 3-D study (LIDC/LUNA-style per-slice nodule boxes): ``Study.boxes`` with a slice index.

The study has anisotropic in-plane spacing, so the axial images are resampled to square pixels; each box
must land where its mask would: the expected boxes are computed here independently, by drawing each box
as a mask on the stored slice, resizing it with Pillow (nearest neighbour) to the written image size and
taking the mask's extent with scipy.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.core.types import CaseRef, LabelLayer, PixelBoxAnnotation, Study
from pipeline.ingest.convert import convert
from schemas.card import SourceCard
from schemas.config import SlicingConfig

K, R, C = 6, 40, 50
SPACING = (2.5, 0.6, 0.8)  # mm along (S, P, L): axial pixels are 0.6 x 0.8 mm -> columns resampled
OUT_W = round(C * 0.8 / 0.6)  # 67
# Pillow computes source positions in floating point: where an output pixel centre falls exactly on a source
# pixel edge it may round the other way.  50 -> 67 columns has one such edge (before source column 25,
# output column 33); no box or mask below has an edge there.


def _expected(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = int(np.floor(box[0])), int(np.floor(box[1])), int(np.ceil(box[2])), int(np.ceil(box[3]))
    mask = np.zeros((R, C), np.uint8)
    mask[y0:y1 + 1, x0:x1 + 1] = 255
    big = np.asarray(Image.fromarray(mask).resize((OUT_W, R), Image.NEAREST)) > 0
    (sl,) = ndimage.find_objects(big.astype(np.uint8))
    return (sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1)


def _study() -> Study:
    rng = np.random.default_rng(7)
    image = rng.normal(40, 20, (K, R, C)).astype(np.float32)
    labels = np.zeros((K, R, C), np.uint8)
    labels[4, 2:8, 3:9] = 1  # a labelled structure on slice 4, next to a box
    boxes = [
        PixelBoxAnnotation("nodule", (10, 5, 20, 12), slice_index=1),
        PixelBoxAnnotation("nodule", (30.4, 20.0, 41.6, 33.2), slice_index=4),
        PixelBoxAnnotation("mass", (1, 30, 2, 31), slice_index=4),
        PixelBoxAnnotation("nodule", (10, 5, 20, 12), slice_index=9),  # off the volume: noted, not emitted
        PixelBoxAnnotation("nodule", (60, 5, 70, 12), slice_index=2),  # right of the image: noted
    ]
    ref = CaseRef(source="toy3d", case_id="c1", patient_id="p1", paths={"image": "-"})
    return Study(ref=ref, modality="CT", image=image, spacing=SPACING, is_3d=True, boxes=boxes,
                 layers=[LabelLayer(labels, {1: "liver"}, origin="labels.nii.gz")], intensity_preset="abdomen")


CARD = SourceCard(name="toy3d", title="t", adapter="nifti_labelmap", licence="CC0-1.0", modality="CT")


def test_3d_boxes_land_where_their_masks_would():
    slicing = SlicingConfig(axes=["axial", "coronal"], min_spacing_mm=0, max_slices_per_case=10, min_label_pixels=1,
                            min_image_px=4)
    res = convert(_study(), CARD, CARD.box_policy, slicing)
    axial = {s.index: s for s in res.slices if s.axis == "axial"}
    assert sorted(axial) == [1, 4]  # box slices are candidates like labelled ones
    assert all(s.image.shape == (R, OUT_W) for s in axial.values())
    got1 = {(r.term, r.box_px) for r in axial[1].regions}
    assert got1 == {("nodule", _expected((10, 5, 20, 12)))}
    got4 = {(r.term, r.box_px) for r in axial[4].regions}
    assert got4 == {("nodule", _expected((30.4, 20.0, 41.6, 33.2))), ("mass", _expected((1, 30, 2, 31))),
                    ("liver", _expected((3, 2, 8, 7)))}
    # the regions of a slice are in reading order (top-to-bottom, then left-to-right)
    assert [r.box_px[1] for r in axial[4].regions] == sorted(r.box_px[1] for r in axial[4].regions)
    for r in axial[4].regions:
        assert r.area == (r.box_px[2] - r.box_px[0] + 1) * (r.box_px[3] - r.box_px[1] + 1) or r.term == "liver"
    # coronal images show the label layer only; the boxes are counted in a note, as are the boxes off the volume
    coronal_terms = {r.term for s in res.slices if s.axis == "coronal" for r in s.regions}
    assert coronal_terms == {"liver"}
    assert "3 detection box(es) are given on axial slices: not emitted on coronal images" in res.notes
    assert any(n.startswith("2 detection box(es) lie outside the 6x40x50 volume") for n in res.notes)
