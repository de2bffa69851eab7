"""Display orientation: whatever the file's orientation, anatomy lands in the same place."""

import nibabel as nib
import numpy as np
import pytest

from pipeline.ingest.geometry import display_view, resample_nearest, select_slices, square_shape, to_canonical


def _load(samples, rel):
    img = nib.load(str(samples / "totalseg-nifti" / rel))
    return np.asanyarray(img.dataobj), img.affine


def _centre_col(lab2d, label):
    cols = np.where(lab2d == label)[1]
    return cols.mean()


@pytest.mark.parametrize(
    "rel,codes",
    [("ct/example_seg.nii.gz", ("R", "A", "S")), ("mr/example_seg_mr.nii.gz", ("L", "P", "S"))],
)
def test_liver_left_spleen_right_in_ras_and_lps(samples, rel, codes):
    lab, aff = _load(samples, rel)
    vol, geom = to_canonical(lab, aff)
    assert geom.source_codes == codes
    for axis in ("axial", "coronal"):
        n = vol.shape[0] if axis == "axial" else vol.shape[1]
        k = n // 2
        sl = display_view(vol, axis, k)
        if not ((sl == 5).any() and (sl == 1).any()):
            k = int(np.argmax([(display_view(vol, axis, i) == 1).sum() for i in range(n)]))
            sl = display_view(vol, axis, k)
        w = sl.shape[1]
        # liver (5) = patient right -> image left; spleen (1) = patient left -> image right
        assert _centre_col(sl, 5) < w / 2 < _centre_col(sl, 1), (rel, axis)
    # axial: spleen is posterior to the liver's centre (rows run anterior -> posterior)
    sl = vol[vol.shape[0] // 2]
    assert np.where(sl == 1)[0].mean() > np.where(sl == 5)[0].mean()


def test_same_anatomy_whatever_the_file_orientation(samples):
    """Re-store the RAS CT as LPS / PSR with a matching affine: canonical arrays are identical."""
    lab, aff = _load(samples, "ct/example_seg.nii.gz")
    ref, _ = to_canonical(lab, aff)
    # flip i and j (RAS -> LPS)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    shift = np.eye(4)
    shift[0, 3] = lab.shape[0] - 1
    shift[1, 3] = lab.shape[1] - 1
    lps = lab[::-1, ::-1, :]
    aff_lps = aff @ shift @ flip
    got, geom = to_canonical(lps, aff_lps)
    assert geom.source_codes == ("L", "P", "S")
    assert np.array_equal(got, ref)
    # permute axes (k, j, i) with the permuted affine
    perm = np.transpose(lab, (2, 1, 0))
    aff_perm = aff[:, [2, 1, 0, 3]]
    got2, _ = to_canonical(perm, aff_perm)
    assert np.array_equal(got2, ref)


def test_oblique_near_axial_takes_closest_axes(samples):
    lab, aff = _load(samples, "ct/example_seg.nii.gz")
    ref, _ = to_canonical(lab, aff)
    t = np.deg2rad(8)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    got, geom = to_canonical(lab, rot @ aff)
    assert 7.9 < geom.oblique_deg < 8.1
    assert np.array_equal(got, ref)


def test_square_pixels_and_nearest_resample():
    assert square_shape((100, 200), (2.0, 1.0)) == (200, 200)
    assert square_shape((100, 200), (1.0, 1.0)) == (100, 200)
    lab = np.zeros((4, 4), np.uint8)
    lab[1:3, 1:3] = 7
    up = resample_nearest(lab, (8, 4))
    assert set(np.unique(up)) == {0, 7} and (up == 7).sum() == 8


def test_select_slices_spacing_and_cap():
    cands = np.arange(0, 100)
    picked = select_slices(cands, spacing_mm=1.0, min_spacing_mm=10, max_slices=100)
    assert picked == list(range(0, 100, 10))
    capped = select_slices(cands, spacing_mm=1.0, min_spacing_mm=10, max_slices=4)
    assert len(capped) == 4 and capped[0] == 0 and capped[-1] == 90
    assert select_slices(np.array([], dtype=int), 1.0, 10, 4) == []


@pytest.mark.parametrize("atlas", ["aal", "JHU-WhiteMatter-labels-2mm"])
def test_brain_atlas_right_structures_land_on_image_left(samples, atlas):
    """Every *_R / *_L label pair of the AAL (1 mm, sform only) and JHU (2 mm) atlases after the
    canonical layout.  AAL: each right-hemisphere structure's centre is on image left.  JHU (MRIcron's
    copy): every *_R label lies at negative x (patient left) by its own header, so every pair lands
    mirrored — a label/header left-right mismatch in that file, found by this test; a source card for
    it would need a left/right fix, and the laterality rule would flag every such sample."""
    folder = samples / "mricron-atlases"
    img = nib.load(str(folder / f"{atlas}.nii.gz"))
    vol, geom = to_canonical(np.asanyarray(img.dataobj), img.affine)
    assert geom.source_codes == ("R", "A", "S")
    names = {}
    for line in (folder / f"{atlas}.nii.txt").read_text().splitlines():
        parts = line.replace("\t", " ").split()
        if len(parts) >= 2:
            names[parts[1]] = int(parts[0])
    pairs = [(names[n], names[n[:-2] + "_L"]) for n in names if n.endswith("_R") and n[:-2] + "_L" in names]
    assert len(pairs) >= (45 if atlas == "aal" else 15)
    k, r, c = np.indices(vol.shape, sparse=True)
    width = vol.shape[2]
    mirrored = atlas.startswith("JHU")
    for right, left in pairs:
        cr = np.broadcast_to(c, vol.shape)[vol == right].mean()
        cl = np.broadcast_to(c, vol.shape)[vol == left].mean()
        if mirrored:
            assert cl < width / 2 < cr, (atlas, right, left, cr, cl)
        else:
            assert cr < width / 2 < cl, (atlas, right, left, cr, cl)
