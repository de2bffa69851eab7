"""Resource bombs, run in a fresh process by tests/test_faults_inputs.py so peak memory can be measured.

Usage: ``python tests/fault_bombs.py SAMPLES_DIR WORK_DIR``.  Prints one JSON line:
``{"errors": {kind: message}, "peak_growth_mib": float}``.  The address space is capped at the
post-import size + 2 GiB, so a bomb that is not refused fails with MemoryError instead of exhausting
the machine.
"""

from __future__ import annotations

import gzip
import json
import resource
import shutil
import struct
import sys
import zlib
from pathlib import Path

import pydicom

from pipeline.core.errors import ReadError
from pipeline.core.paths import data_root
from pipeline.ingest.readers.dicom import read_series
from pipeline.ingest.readers.dicom_seg import read_seg
from pipeline.ingest.readers.image2d import read_image
from pipeline.ingest.readers.nifti import read_nifti
from schemas.config import load_config
from schemas.yamlio import load_yaml
from sources.base import load_card
from sources.terms import label_table


def _alias_bomb(key: str, levels: int = 9) -> str:
    lines = [f"  l0: &l0 [{', '.join(['lol'] * 9)}]"]
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return f"{key}:\n" + "\n".join(lines) + "\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_bombs(samples: Path, work: Path) -> dict[str, object]:
    """Write every bomb file; return kind -> a callable that reads it."""
    card_head = "name: bomb\ntitle: bomb\nadapter: mask_folder_2d\nlicence: CC0-1.0\nmodality: CT\n"
    (work / "bomb-labels.yaml").write_text(card_head + _alias_bomb("labels"))
    (work / "bomb-layout.yaml").write_text(card_head + _alias_bomb("layout"))
    config = "name: b\nversion: '1'\nsources: [{card: kvasir-seg}]\n"
    (work / "bomb-config.yaml").write_text(config + _alias_bomb("validation"))
    (work / "bomb-glossary.yaml").write_text(_alias_bomb("liver"))
    raw = bytearray(gzip.decompress((samples / "totalseg-nifti" / "ct" / "example_ct_sm.nii.gz").read_bytes()))
    raw[40:56] = struct.pack("<8h", 3, 2000, 2000, 800, 1, 1, 1, 1)  # 6.4 GB of int16
    (work / "bomb.nii").write_bytes(bytes(raw[:720]))
    (work / "bomb.nii.gz").write_bytes(gzip.compress(bytes(raw[:720])))
    dcmqi = samples / "dcmqi-ct-liver-seg"
    shutil.copytree(dcmqi / "ct-3slice", work / "ct", copy_function=shutil.copyfile)
    series = read_series(work / "ct")
    ds = pydicom.dcmread(dcmqi / "liver.dcm")
    ds.NumberOfFrames = 10**7
    (work / "seg1").mkdir()
    ds.save_as(work / "seg1" / "liver.dcm")
    del ds.PerFrameFunctionalGroupsSequence
    (work / "seg2").mkdir()
    ds.save_as(work / "seg2" / "liver.dcm")
    ct = pydicom.dcmread(work / "ct" / "02.dcm")
    ct.Rows = ct.Columns = 65535
    (work / "big").mkdir()
    ct.save_as(work / "big" / "02.dcm")
    for name, side in (("bomb.png", 12_000), ("huge.png", 100_000)):  # 144 MP (under Pillow's limit), 10^10 px
        ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
        png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        (work / name).write_bytes(png + _png_chunk(b"IEND", b""))
    return {
        "card-labels": lambda: label_table(load_card(str(work / "bomb-labels.yaml"))),
        "card-layout": lambda: load_card(str(work / "bomb-layout.yaml")),
        "config": lambda: load_config(work / "bomb-config.yaml"),
        "glossary": lambda: load_yaml(work / "bomb-glossary.yaml", what="glossary file"),
        "nifti": lambda: read_nifti(work / "bomb.nii"),
        "nifti-gz": lambda: read_nifti(work / "bomb.nii.gz"),
        "seg-frames": lambda: read_seg(work / "seg1" / "liver.dcm", series),
        "seg-pixels": lambda: read_seg(work / "seg2" / "liver.dcm", series),
        "ct-rows": lambda: read_series(work / "big"),
        "png": lambda: read_image(work / "bomb.png"),
        "png-huge": lambda: read_image(work / "huge.png"),
    }


def main() -> None:
    samples, work = Path(sys.argv[1]), Path(sys.argv[2])
    bombs = make_bombs(samples, work)
    vm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
              if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, ((vm << 10) + (2 << 30), resource.RLIM_INFINITY))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    errors: dict[str, str] = {}
    with data_root(work):
        for kind, read in bombs.items():
            try:
                read()
            except (ReadError, ValueError) as exc:
                errors[kind] = str(exc)
            else:
                errors[kind] = "NOT REFUSED"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"errors": errors, "peak_growth_mib": round(peak / 1024, 1)}))


if __name__ == "__main__":
    main()
