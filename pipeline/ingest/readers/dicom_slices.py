"""DICOM series assembly from headers: files grouped by SeriesInstanceUID, the series chosen, and its
slices checked and sorted along the slice normal (never by file name or InstanceNumber).

Part of the DICOM series reader (:mod:`pipeline.ingest.readers.dicom`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.paths import shown
from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.dicom_header import FileInfo, SliceHeader, short_uid

_ORIENT_TOL = 1e-3  # direction cosines


@dataclass
class SeriesGroup:
    """Files of one SeriesInstanceUID (header facts only)."""

    series_uid: str
    files: list[FileInfo]

    @property
    def n_slices(self) -> int:
        return sum(len(f.slices) for f in self.files)

    @property
    def modality(self) -> str:
        return self.files[0].modality if self.files else ""

    @property
    def patient_id(self) -> str:
        return self.files[0].patient_id if self.files else ""


def group_series(infos: Sequence[FileInfo]) -> dict[str, SeriesGroup]:
    groups: dict[str, list[FileInfo]] = defaultdict(list)
    for info in infos:
        if info.is_image:
            groups[info.series_uid].append(info)
    return {uid: SeriesGroup(uid, sorted(fs, key=lambda f: f.path)) for uid, fs in sorted(groups.items())}


def choose_series(groups: dict[str, SeriesGroup], series_uid: str | None, where: str) -> tuple[SeriesGroup, list[str]]:
    notes: list[str] = []
    if not groups:
        raise ReadError(f"no DICOM image series found in {shown(where)}", file=where,
                        hint="the folder holds no CT/MR/PET image files (only SEG/RTSTRUCT or non-DICOM files?)")
    if series_uid is not None:
        if series_uid not in groups:
            raise ReadError(
                f"the requested series ({short_uid(series_uid)}) is not in {Path(where).name or where}; it holds "
                f"{len(groups)} series: "
                + ", ".join(f"{g.n_slices} slices (e.g. {Path(g.files[0].path).name})" for g in groups.values()),
                file=where, hint="check the SeriesInstanceUID the annotation refers to, or add the missing files")
        return groups[series_uid], notes
    if len(groups) == 1:
        return next(iter(groups.values())), notes
    ranked = sorted(groups.values(), key=lambda g: (-g.n_slices, g.series_uid))
    chosen = ranked[0]
    # notes reach the run report: name series by a file, never by UID (UIDs can embed dates)
    notes.append(
        f"{Path(where).name or where} holds {len(groups)} image series; read the largest ({chosen.n_slices} slices, "
        f"e.g. {Path(chosen.files[0].path).name}); others: "
        + ", ".join(f"{g.n_slices} slices (e.g. {Path(g.files[0].path).name})" for g in ranked[1:])
    )
    return chosen, notes



def _check_geometry(slices: list[SliceHeader]) -> None:
    first = slices[0]
    _, first_iop, first_ps = first.placement()
    for s in slices:
        _, iop, ps = s.placement()
        if (s.rows, s.cols) != (first.rows, first.cols):
            raise ReadError(
                f"{s.name} is {s.rows}x{s.cols} (rows x columns) but {first.name} is {first.rows}x{first.cols}",
                file=s.path,
                hint="a series must have one matrix size; the folder mixes series or holds a scout/localizer",
            )
        if not np.allclose(iop, first_iop, atol=_ORIENT_TOL):
            raise ReadError(
                f"{s.name} has ImageOrientationPatient {np.round(iop, 4).tolist()} but {first.name} has "
                f"{np.round(first_iop, 4).tolist()}: mixed orientations in one series",
                file=s.path,
                hint="remove scout/localizer images, or split the stacks (e.g. axial + reformats) into separate series",
            )
        if not np.allclose(ps, first_ps, rtol=1e-3, atol=1e-4):
            raise ReadError(
                f"{s.name} has PixelSpacing {ps.tolist()} but {first.name} has {first_ps.tolist()}",
                file=s.path,
                hint="a series must have one pixel spacing; the folder mixes series",
            )


def sort_slices(slices: list[SliceHeader]) -> tuple[list[SliceHeader], np.ndarray, dict]:
    """Sort slices along the normal; returns (sorted slices, normal, geometry facts incl. notes)."""
    _check_geometry(slices)
    iop = slices[0].placement()[1]
    row_dir, col_dir = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    keys = np.array([float(s.placement()[0] @ normal) for s in slices])
    order = np.argsort(keys, kind="stable")
    slices = [slices[i] for i in order]
    keys = keys[order]
    notes: list[str] = []
    facts: dict = {"row_dir": row_dir, "col_dir": col_dir, "normal": normal, "notes": notes}
    first = slices[0]
    if len(slices) == 1:
        step = first.spacing_between or first.slice_thickness or 1.0
        facts["spacing"] = float(step)
        facts["step"] = normal * float(step)
        notes.append(f"single-slice series: slice spacing {step:g} mm taken from the header")
        return slices, normal, facts
    diffs = np.diff(keys)
    dup = np.flatnonzero(diffs < 1e-3)
    if dup.size:
        a, b = slices[dup[0]], slices[dup[0] + 1]
        raise ReadError(
            f"{a.name} and {b.name} lie at the same position ({keys[dup[0]]:.3f} mm along the slice normal)",
            file=b.path,
            hint="the series holds several acquisitions (phases, echoes, time points or duplicates) at the same "
            "positions; split them into separate folders or remove the duplicates",
        )
    nominal = float(np.median(diffs))
    gaps = np.flatnonzero(diffs > 1.5 * nominal)
    for g in gaps[:5]:
        notes.append(
            f"gap in the series: {diffs[g]:.3f} mm between {slices[g].name} and {slices[g + 1].name} "
            f"(nominal {nominal:.3f} mm; about {int(round(diffs[g] / nominal)) - 1} slice(s) missing)"
        )
    if gaps.size > 5:
        notes.append(f"... {gaps.size - 5} more gaps")
    if not gaps.size and diffs.max() - diffs.min() > max(1e-3, 0.01 * nominal):
        notes.append(
            f"non-uniform slice spacing: {diffs.min():.3f}..{diffs.max():.3f} mm (median {nominal:.3f} mm); "
            "the volume uses the mean spacing"
        )
    span = slices[-1].placement()[0] - slices[0].placement()[0]
    step = span / (len(slices) - 1)
    along = float(step @ normal)
    tilt = float(np.degrees(np.arccos(np.clip(abs(along) / np.linalg.norm(step), 0, 1))))
    if tilt > 0.1:
        notes.append(
            f"slice positions are sheared by {tilt:.2f} deg from the normal (gantry tilt); the affine keeps the shear"
        )
    facts["spacing"] = float(abs(along))
    facts["step"] = step
    if gaps.size:
        facts["spacing"] = nominal
        facts["step"] = step * (nominal / along) if along else normal * nominal
        notes.append("the volume affine uses the nominal spacing; slices after a gap are placed at nominal steps")
    return slices, normal, facts

