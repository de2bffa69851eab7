"""A synthetic single-frame DICOM series writer for tests and benchmarks (not part of the pipeline).

Tests import it as ``from synthetic_dicom import write_synthetic_series`` (tests/ is on sys.path under
pytest); benchmarks as ``from tests.synthetic_dicom import write_synthetic_series`` from the repo root.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_synthetic_series(
    folder: str | Path,
    stored: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (1.0, 0.8, 0.8),
    origin: Sequence[float] = (-200.0, -200.0, -100.0),
    iop: Sequence[float] = (1, 0, 0, 0, 1, 0),
    intercept: float = -1024.0,
    slope: float = 1.0,
    modality: str = "CT",
    names: Sequence[str] | None = None,
    positions: Sequence[Sequence[float]] | None = None,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    series_uid: str | None = None,
    patient_id: str = "SYN-0001",
    seed: int = 0,
) -> list[Path]:
    """Write ``stored`` ``(K, R, C)`` int16/uint16 values as a single-frame DICOM series (tests, benchmarks,
    docs).

    Slice ``k`` lies at ``origin + k * spacing[0] * normal`` (or at ``positions[k]``), with the rows/columns
    of IOP ``iop`` and PixelSpacing ``spacing[1:]``.  ``names`` gives the file names per slice (default
    shuffled ``IMG#####.dcm`` names and InstanceNumbers, so nothing but the positions gives the order).
    Realistic patient/study tags are filled in (fake values) so privacy checks have something to catch.
    Compressed ``transfer_syntax`` values are encoded with pydicom's encoders.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stored = np.asarray(stored)
    K, R, C = stored.shape
    iop_a = np.asarray(iop, float)
    normal = np.cross(iop_a[:3], iop_a[3:])
    rng = np.random.default_rng(seed)
    perm = rng.permutation(K)
    if names is None:
        names = [f"IMG{int(p):05d}.dcm" for p in perm]
    series_uid = series_uid or generate_uid(entropy_srcs=[f"series-{seed}-{patient_id}"])
    study_uid = generate_uid(entropy_srcs=[f"study-{seed}-{patient_id}"])
    frame_uid = generate_uid(entropy_srcs=[f"for-{seed}-{patient_id}"])
    signed = stored.dtype.kind == "i"
    ts = UID(transfer_syntax)
    out = []
    for k in range(K):
        sop = generate_uid(entropy_srcs=[f"sop-{seed}-{patient_id}-{k}"])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2" if modality == "CT"
                                           else "1.2.840.10008.5.1.4.1.1.4")
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if ts.is_compressed else ts
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = sop
        ds.PatientName = "Doe^Jane"
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20200102"
        ds.StudyTime = "101010"
        ds.AccessionNumber = "ACC123"
        ds.InstitutionName = "Synthetic Hospital"
        ds.ReferringPhysicianName = "Who^Doctor"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.SeriesNumber = 2
        ds.InstanceNumber = int(perm[k]) + 1
        pos = (np.asarray(positions[k], float) if positions is not None
               else np.asarray(origin, float) + k * spacing[0] * normal)
        ds.ImagePositionPatient = [f"{v:.6g}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in iop_a]
        ds.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[2]:.6g}"]
        ds.SliceThickness = f"{spacing[0]:.6g}"
        ds.Rows, ds.Columns = R, C
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        if modality == "CT" or intercept != 0 or slope != 1:
            ds.RescaleIntercept = f"{intercept:g}"
            ds.RescaleSlope = f"{slope:g}"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.KVP = "120"
        ds.PixelData = np.ascontiguousarray(stored[k].astype("<i2" if signed else "<u2")).tobytes()
        if ts.is_compressed:
            ds.compress(ts)
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True, implicit_vr=ts == ImplicitVRLittleEndian,
                   little_endian=True) if not ts.is_compressed else ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out
