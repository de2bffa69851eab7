"""NIfTI image + integer label map (TotalSegmentator, nnU-Net/Medical Segmentation Decathlon layouts).

Layout options (card ``layout``):

* ``cases``: explicit list of ``{id, image, labels}`` (paths relative to the root), or
* ``image_glob`` + ``label_from_image: [regex, replacement]`` (a ``re.sub`` on the image's relative
  path giving the label path) + optional ``case_regex`` (first group = case id).
* ``patient_regex``: first group of the case id/path = patient id.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipeline.align import align_labels_to_image
from pipeline.geometry import to_canonical
from pipeline.readers import ReadError
from pipeline.readers.nifti import read_nifti
from pipeline.types import CaseRef, LabelLayer, Study
from sources.base import SourceAdapter


class NiftiLabelmapAdapter(SourceAdapter):
    name = "nifti_labelmap"
    formats = ("nifti",)
    description = "3-D NIfTI image with an integer label map (any orientation)"

    def discover(self) -> list[CaseRef]:
        lay = self.card.layout
        refs: list[CaseRef] = []
        if "cases" in lay:
            for c in lay["cases"]:
                img = self.root / c["image"]
                lab = self.root / c["labels"]
                cid = str(c["id"])
                refs.append(self._ref(cid, img, lab))
        elif "image_glob" in lay:
            pattern, repl = lay.get("label_from_image", [None, None])
            if pattern is None:
                raise ValueError(f"card {self.card.name}: layout.image_glob needs layout.label_from_image")
            for img in self.glob(lay["image_glob"]):
                rel = img.relative_to(self.root).as_posix()
                lab = self.root / re.sub(pattern, repl, rel)
                m = re.search(lay.get("case_regex", r"([^/]+?)(\.nii(\.gz)?)?$"), rel)
                cid = m.group(1) if m else img.stem
                refs.append(self._ref(cid, img, lab))
        else:
            raise ValueError(f"card {self.card.name}: layout needs `cases` or `image_glob`")
        return sorted(refs, key=lambda r: r.case_id)

    def _ref(self, cid: str, img: Path, lab: Path) -> CaseRef:
        return CaseRef(
            source=self.card.name,
            case_id=cid,
            patient_id=self.patient_of(cid, img.as_posix()),
            paths={"image": str(img), "labels": str(lab)},
            official_split=self.official_split(img.as_posix(), cid),
        )

    def load(self, ref: CaseRef) -> Study:
        image, img_aff = read_nifti(ref.paths["image"])
        labels, lab_aff = read_nifti(ref.paths["labels"], integer_labels=True)
        notes: list[str] = []
        if labels.shape != image.shape or not np.allclose(lab_aff, img_aff, atol=1e-3):
            labels, note = align_labels_to_image(
                labels, lab_aff, image.shape, img_aff, label_file=ref.paths["labels"], image_file=ref.paths["image"]
            )
            notes.append(note)
        vol, geom = to_canonical(image, img_aff)
        lab, _ = to_canonical(labels, img_aff)
        # every id the card knows; ids present in the file without a term are reported by the
        # pipeline (which finds present ids in its single pass over the volume)
        from sources.base import _label_table

        names = {int(k): v for k, v in _label_table(self.card).items() if k.isdigit()}
        if not names:
            raise ReadError(
                f"card {self.card.name} maps no integer label id to a term",
                file=self.card.card_path,
                hint="set label_map or labels: {id: term} in the card",
            )
        return Study(
            ref=ref,
            modality=self.card.modality,
            image=vol,
            spacing=geom.spacing,
            is_3d=True,
            layers=[LabelLayer(lab, names, origin=ref.paths["labels"])],
            intensity_preset=self.card.intensity.preset,
            notes=notes,
            transform={
                "source_orientation": "".join(geom.source_codes),
                "canonical": "SPL",
                "oblique_deg": round(geom.oblique_deg, 3),
                "spacing_mm": [round(s, 4) for s in geom.spacing],
            },
        )
