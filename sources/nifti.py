"""NIfTI image + integer label map (TotalSegmentator, nnU-Net/Medical Segmentation Decathlon layouts).

Layout options (card ``layout``, :class:`NiftiLayout`):

* ``cases``: explicit list of ``{id, image, labels}`` (paths relative to the root), or
* ``image_glob`` + ``label_from_image: [regex, replacement]`` (a ``re.sub`` on the image's relative
  path giving the label path) + optional ``case_regex`` (first group = case id).
* ``patient_regex``: first group of the case id/path = patient id.
* ``case_rules``: per-case ``modality`` / ``body_region`` (first regex match on the case id wins).

The label path may also be a **folder of binary masks, one NIfTI per structure** (the TotalSegmentator
dataset's own ``sXXXX/segmentations/<structure>.nii.gz`` layout): each file's name is its label,
mapped to a term by the card (``labels`` or ``resolve_labels_with_glossary``); masks that do not overlap
share one label layer, overlapping ones go to further layers.
"""

from __future__ import annotations

import re
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.core.paths import shown
from pipeline.core.types import CaseRef, LabelLayer, Study
from pipeline.ingest.concurrent import case_reader, prefetch
from pipeline.ingest.readers import ReadError
from sources.base import SourceAdapter
from sources.layouts import Layout3D
from sources.terms import label_table

# The readers (nibabel, scipy, the numba kernels: ~0.5 s to import) are imported where a case is loaded,
# not with the adapter: planning a build only discovers files, and the main process of a build with worker
# processes never loads a case (pipeline/release/tasks.py).
if TYPE_CHECKING:
    from pipeline.ingest.geometry import CanonicalGeometry
    from pipeline.ingest.packing import MaskRuns


class NiftiCase(BaseModel):
    """One explicit case: ids and paths relative to the root."""

    model_config = ConfigDict(extra="forbid")

    id: str
    image: str
    labels: str = Field(description="a label map, or a folder of per-structure masks")

    @field_validator("id", mode="before")
    @classmethod
    def _id_text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) else v


class NiftiLayout(Layout3D):
    """3-D NIfTI image with an integer label map (or a folder of per-structure masks)."""

    cases: list[NiftiCase] | None = Field(None, description="explicit cases [{id, image, labels}]")
    image_glob: str | None = Field(None, description="glob of the images, relative to the root (instead of `cases`)")
    label_from_image: tuple[str, str] | None = Field(
        None, description="[regex, replacement]: re.sub on the image's relative path gives its label path"
    )
    case_regex: str = Field(
        r"([^/]+?)(\.nii(\.gz)?)?$", description="first group on the image's relative path = case id"
    )

    @model_validator(mode="after")
    def _one_way(self) -> NiftiLayout:
        if (self.cases is None) == (self.image_glob is None):
            raise ValueError("give either `cases` or `image_glob` (+ `label_from_image`)")
        if self.image_glob is not None and self.label_from_image is None:
            raise ValueError("`image_glob` needs `label_from_image: [regex, replacement]`")
        return self


def _mask_runs(f: Path, image_shape: tuple[int, ...], img_aff: np.ndarray, notes: list[str],
               got: tuple[MaskRuns, np.ndarray] | None) -> MaskRuns:
    """One structure's mask on the image grid, as runs in Fortran order (resampled when its grid differs).
    ``got`` is what :func:`read_mask_runs` read (on a reader thread)."""
    from pipeline.ingest.align import align_labels_to_image
    from pipeline.ingest.packing import MaskRuns
    from pipeline.ingest.readers.nifti import read_nifti

    if got is not None and got[0].shape == tuple(image_shape) and _same_grid(got[1], img_aff):
        return got[0]
    mask, aff = read_nifti(f, integer_labels=True, notes=notes)
    if mask.shape != image_shape or not np.allclose(aff, img_aff, atol=1e-3):
        mask, note = align_labels_to_image(mask, aff, image_shape, img_aff, label_file=str(f))
        notes.append(note)
    return MaskRuns.from_array(mask > 0, "F")


def _same_grid(aff: np.ndarray, img_aff: np.ndarray) -> bool:
    """The mask's affine is the image's (to 1e-3; equal bytes, the usual case, without allclose's cost)."""
    return bool(np.array_equal(aff, img_aff)) or np.allclose(aff, img_aff, atol=1e-3)


def _read_mask(f: Path) -> tuple[tuple[MaskRuns, np.ndarray] | None, list[str]]:
    from pipeline.ingest.readers.nifti import read_mask_runs

    notes: list[str] = []
    return read_mask_runs(f, notes=notes), notes


class NiftiLabelmapAdapter(SourceAdapter):
    name = "nifti_labelmap"
    formats = ("nifti",)
    description = "3-D NIfTI image with an integer label map (any orientation)"
    layout_model = NiftiLayout

    def discover(self) -> list[CaseRef]:
        lay = self.layout
        refs: list[CaseRef] = []
        if lay.cases is not None:
            refs = [self._ref(c.id, self.root / c.image, self.root / c.labels) for c in lay.cases]
        else:
            pattern, repl = lay.label_from_image
            for img in self.glob(lay.image_glob):
                rel = img.relative_to(self.root).as_posix()
                lab = self.root / re.sub(pattern, repl, rel)
                m = re.search(lay.case_regex, rel)
                cid = m.group(1) if m else img.stem
                refs.append(self._ref(cid, img, lab))
        return sorted(refs, key=lambda r: r.case_id)

    def _ref(self, cid: str, img: Path, lab: Path) -> CaseRef:
        return CaseRef(
            source=self.card.name,
            case_id=cid,
            patient_id=self.patient_of(cid, img.as_posix()),
            paths={"image": str(img), "labels": str(lab)},
            official_split=self.official_split(img.as_posix(), cid),
        )

    def _mask_folder_layers(
        self, folder: Path, image: Future[tuple[np.ndarray, np.ndarray]], notes: list[str], pool: Executor
    ) -> list[tuple[np.ndarray, dict[int, str]]]:
        """The folder's masks packed into label layers on the image's grid. The masks are read on
        ``pool`` a window ahead while this thread packs, and while ``image`` is still being read."""
        from pipeline.ingest.packing import LayerPacker

        files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz")))
        if not files:
            raise ReadError(f"mask folder {shown(folder)} holds no .nii/.nii.gz file", file=str(folder),
                            hint="point `labels` at a label map or a folder of per-structure masks")
        terms = {f: self.term_for(f.name[: -len(".nii.gz")] if f.name.endswith(".nii.gz") else f.name[: -len(".nii")])
                 for f in files}
        if image.done():
            image.result()  # a broken image is reported before any mask is read (always so on one thread)
        reads = prefetch(pool, _read_mask, [f for f in files if terms[f] is not None])
        img, img_aff = image.result()
        # keep the dataset's own ids where the card's label map knows the term (meta.regions.label_id)
        id_of = {t: int(k) for k, t in label_table(self.card).items() if k.isdigit()}
        next_id = max(id_of.values(), default=0) + 1
        # layers in the files' (Fortran) order: no transposing copy while packing or in the box pass; uint8
        # when every id that can be given fits (TotalSegmentator: half the memory, twice the box-pass speed)
        dtype = np.uint8 if next_id + len(files) <= 256 else np.uint16
        packer = LayerPacker(img.shape, order="F", dtype=dtype)
        names: list[dict[int, str]] = []
        used: set[int] = set()
        for f in files:
            term = terms[f]
            if term is None:
                notes.append(f"mask {f.name} has no term in card {self.card.name}; skipped")
                continue
            got, file_notes = next(reads).result()
            notes.extend(file_notes)
            runs = _mask_runs(f, img.shape, img_aff, notes, got)
            if not runs:
                continue
            lid = id_of.get(term)
            if lid is None or lid in used:
                lid, next_id = next_id, next_id + 1
            layer = packer.add(lid, runs)
            if layer == len(names):
                names.append({})
            names[layer][lid] = term
            used.add(lid)
        if len(names) > 1:
            notes.append(f"overlapping masks in {folder.name}: stored as {len(names)} label layers")
        return list(zip(packer.layers, names, strict=True))

    def load(self, ref: CaseRef) -> Study:
        from pipeline.ingest.align import align_labels_to_image
        from pipeline.ingest.geometry import to_canonical
        from pipeline.ingest.readers.nifti import read_nifti

        notes: list[str] = []
        with case_reader() as pool:  # the image, and the masks or the label map, read at once
            image = pool.submit(read_nifti, ref.paths["image"], notes=notes)  # its notes come first
            if Path(ref.paths["labels"]).is_dir():
                mask_notes: list[str] = []
                packed = self._mask_folder_layers(Path(ref.paths["labels"]), image, mask_notes, pool)
                notes.extend(mask_notes)
                if not packed:
                    raise ReadError(f"no mask in {shown(ref.paths['labels'])} maps to a term of card "
                                    f"{self.card.name}", file=ref.paths["labels"], hint="check the card's labels")
                img, img_aff = image.result()
                vol, geom = to_canonical(img, img_aff)
                layers = [LabelLayer(to_canonical(a, img_aff)[0], n, origin=ref.paths["labels"]) for a, n in packed]
                return self._study(ref, vol, geom, layers, notes)
            label_notes: list[str] = []
            labels, lab_aff = read_nifti(ref.paths["labels"], integer_labels=True, notes=label_notes)
            img, img_aff = image.result()
        notes.extend(label_notes)
        if labels.shape != img.shape or not np.allclose(lab_aff, img_aff, atol=1e-3):
            labels, note = align_labels_to_image(
                labels, lab_aff, img.shape, img_aff, label_file=ref.paths["labels"], image_file=ref.paths["image"]
            )
            notes.append(note)
        vol, geom = to_canonical(img, img_aff)
        lab, _ = to_canonical(labels, img_aff)
        # every id the card knows; ids present in the file without a term are reported by the
        # pipeline (which finds present ids in its single pass over the volume)
        names = {int(k): v for k, v in label_table(self.card).items() if k.isdigit()}
        if not names:
            raise ReadError(
                f"card {self.card.name} maps no integer label id to a term",
                file=None,  # the card lies outside the data folder: named by its name only
                hint="set label_map or labels: {id: term} in the card",
            )
        return self._study(ref, vol, geom, [LabelLayer(lab, names, origin=ref.paths["labels"])], notes)

    def _study(self, ref: CaseRef, vol: np.ndarray, geom: CanonicalGeometry, layers: list[LabelLayer],
               notes: list[str]) -> Study:
        attrs = self.case_attrs(ref.case_id)  # case_rules: per-case modality and body region
        return Study(
            ref=ref,
            modality=attrs["modality"],
            image=vol,
            spacing=geom.spacing,
            is_3d=True,
            layers=layers,
            intensity_preset=self.card.intensity.preset,
            notes=notes,
            transform={
                "body_region": attrs["body_region"],
                "source_orientation": "".join(geom.source_codes),
                "canonical": "SPL",
                "oblique_deg": round(geom.oblique_deg, 3),
                "spacing_mm": [round(s, 4) for s in geom.spacing],
            },
        )
