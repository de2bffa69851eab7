"""flows.samples: manifest vs the shared sample folders, and downloads through a loopback
HTTP mirror (checksums, corrupt files, files already present, files without a pinned URL)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flows import samples as samples_data
from flows.samples import (
    ChecksumMismatchError,
    SampleFile,
    SamplesUnavailableError,
    download_samples,
    find_samples_root,
    load_manifest,
)

SAMPLES = Path(os.environ.get("MEDREG_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="module")
def samples() -> Path:
    if not (SAMPLES / "kvasir-seg-sample").is_dir():  # fail loudly, never skip
        raise FileNotFoundError(f"sample data missing at {SAMPLES}; set MEDREG_SAMPLES")
    return SAMPLES


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


class Mirror:
    """A loopback HTTP server over a folder that records the paths it was asked for."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        log = self.requests

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet, but count
                pass

            def do_GET(self) -> None:  # noqa: N802
                log.append(self.path)
                super().do_GET()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def mirror_of():
    servers: list[Mirror] = []

    def start(root: Path) -> Mirror:
        m = Mirror(root)
        servers.append(m)
        return m

    yield start
    for m in servers:
        m.close()


@pytest.fixture(autouse=True)
def _no_ambient_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDREG_SAMPLES_MIRROR", raising=False)


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".part")]


# ---------------------------------------------------------------------------------------------------
# the manifest
# ---------------------------------------------------------------------------------------------------


def test_manifest_lists_every_file_of_every_sample_folder(samples: Path) -> None:
    entries = {e.name: e for e in load_manifest()}
    expected: dict[str, tuple[str, int]] = {}
    for sums in sorted(samples.glob("*/SHA256SUMS")):
        folder = sums.parent.name
        for line in sums.read_text().splitlines():
            if line.strip():
                digest, rel = line.split(None, 1)
                rel = rel.strip().lstrip("*")
                expected[f"{folder}/{rel}"] = (digest, (sums.parent / rel).stat().st_size)
    assert len(expected) >= 80
    assert sorted(entries) == sorted(expected)
    for name, (digest, size) in expected.items():
        e = entries[name]
        assert (e.sha256, e.bytes) == (digest, size), name
        if e.url is None:
            assert e.note, f"{name}: an entry without url must say why (note)"
        else:
            assert re.fullmatch(r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/\S+", e.url), e.url
    # the few files with no single upstream file
    no_url = sorted(n for n, e in entries.items() if e.url is None)
    assert no_url == sorted([
        "kvasir-seg-sample/kavsir_bboxes.json",
        *(f"mricron-atlases/{p}" for p in ("JHU-WhiteMatter-labels-2mm.nii.gz", "JHU-WhiteMatter-labels-2mm.nii.txt",
                                           "aal.nii.gz", "aal.nii.txt")),
    ])  # fmt: skip
    assert entries["kvasir-seg-sample/kavsir_bboxes.json"].derive["kind"] == "json_subset"


def test_manifest_validation(tmp_path: Path) -> None:
    bad = tmp_path / "m.yaml"
    bad.write_text("files:\n  - folder: x\n    path: ../etc/passwd\n    url: null\n    sha256: '" + "0" * 64 + "'\n    bytes: 1\n")
    with pytest.raises(ValueError, match="unsafe"):
        load_manifest(bad)
    bad.write_text("files:\n  - folder: x\n    path: a\n    url: null\n    sha256: abc\n    bytes: 1\n")
    with pytest.raises(ValueError, match="invalid sha256"):
        load_manifest(bad)


# ---------------------------------------------------------------------------------------------------
# downloads through a mirror
# ---------------------------------------------------------------------------------------------------


def test_download_two_folders_through_mirror(samples: Path, tmp_path: Path, mirror_of) -> None:
    m = mirror_of(samples)
    folders = ["kvasir-seg-sample", "nih-cxr14-bbox"]
    dest = tmp_path / "cache"
    report = download_samples(dest, folders, mirror=m.url, progress=True)
    entries = [e for e in load_manifest() if e.folder in folders]
    assert len(entries) == 12
    assert sorted(report.downloaded) == sorted(e.name for e in entries) and report.present == []
    for e in entries:
        assert sha256(dest / e.folder / e.path) == e.sha256, e.name
    assert len(m.requests) == len(entries)
    assert leftovers(dest) == []

    # everything present: nothing is requested again
    again = download_samples(dest, folders, mirror=m.url, progress=False)
    assert again.downloaded == [] and len(again.present) == len(entries)
    assert len(m.requests) == len(entries)

    # one file deleted, one damaged locally: exactly those two are fetched again
    (dest / "kvasir-seg-sample" / "images" / "cju0qkwl35piu0993l0dewei2.jpg").unlink()
    (dest / "nih-cxr14-bbox" / "BBox_List_2017.csv").write_text("damaged")
    third = download_samples(dest, folders, mirror=m.url, progress=False)
    assert sorted(third.downloaded) == [
        "kvasir-seg-sample/images/cju0qkwl35piu0993l0dewei2.jpg",
        "nih-cxr14-bbox/BBox_List_2017.csv",
    ]
    assert len(m.requests) == len(entries) + 2
    assert sha256(dest / "nih-cxr14-bbox" / "BBox_List_2017.csv") == sha256(samples / "nih-cxr14-bbox" / "BBox_List_2017.csv")


def test_mirror_from_environment(samples: Path, tmp_path: Path, mirror_of, monkeypatch) -> None:
    m = mirror_of(samples)
    monkeypatch.setenv("MEDREG_SAMPLES_MIRROR", m.url + "/")
    report = download_samples(tmp_path, ["nih-cxr14-bbox"], progress=False)
    assert report.downloaded == ["nih-cxr14-bbox/BBox_List_2017.csv"]
    assert m.requests == ["/nih-cxr14-bbox/BBox_List_2017.csv"]


def test_corrupt_file_on_mirror_is_rejected(samples: Path, tmp_path: Path, mirror_of) -> None:
    served = tmp_path / "served"
    shutil.copytree(samples / "kvasir-seg-sample", served / "kvasir-seg-sample")
    bad = served / "kvasir-seg-sample" / "masks" / "cju0rx1idathl0835detmsp84.jpg"
    os.chmod(bad, 0o644)
    data = bytearray(bad.read_bytes())
    data[1000] ^= 0xFF  # same size, different content
    bad.write_bytes(bytes(data))
    m = mirror_of(served)
    dest = tmp_path / "dest"
    entry = next(e for e in load_manifest() if e.name == "kvasir-seg-sample/masks/cju0rx1idathl0835detmsp84.jpg")
    with pytest.raises(ChecksumMismatchError) as info:
        download_samples(dest, ["kvasir-seg-sample"], mirror=m.url, progress=False)
    msg = str(info.value)
    assert "kvasir-seg-sample/masks/cju0rx1idathl0835detmsp84.jpg" in msg
    assert entry.sha256 in msg and hashlib.sha256(bytes(data)).hexdigest() in msg
    assert info.value.expected == entry.sha256
    assert not (dest / "kvasir-seg-sample" / "masks" / "cju0rx1idathl0835detmsp84.jpg").exists()
    assert leftovers(dest) == []


def test_missing_file_on_mirror_reports_and_continues(samples: Path, tmp_path: Path, mirror_of) -> None:
    served = tmp_path / "served"
    shutil.copytree(samples / "kvasir-seg-sample", served / "kvasir-seg-sample")
    os.chmod(served / "kvasir-seg-sample", 0o755)
    (served / "kvasir-seg-sample" / "kavsir_bboxes.json").unlink()
    m = mirror_of(served)
    dest = tmp_path / "dest"
    with pytest.raises(SamplesUnavailableError, match=r"kavsir_bboxes\.json.*404"):
        download_samples(dest, ["kvasir-seg-sample"], mirror=m.url, progress=False, retries=2)
    # a 404 is not retried; every other file was still fetched
    assert m.requests.count("/kvasir-seg-sample/kavsir_bboxes.json") == 1
    assert len(list((dest / "kvasir-seg-sample").rglob("*.jpg"))) == 10
    assert leftovers(dest) == []


def test_files_without_url(samples: Path, tmp_path: Path, mirror_of) -> None:
    # upstream mode (no mirror): the Debian-package atlases have no pinned URL -> clear error
    with pytest.raises(SamplesUnavailableError, match=r"mricron-atlases/aal\.nii\.gz has no pinned download URL.*apt-get download"):
        download_samples(tmp_path / "d", ["mricron-atlases"], progress=False)
    assert not any((tmp_path / "d").rglob("*.nii.gz"))
    with pytest.raises(ValueError, match="unknown sample folder"):
        download_samples(tmp_path / "d", ["no-such-folder"], progress=False)


def test_json_subset_derivation(samples: Path, tmp_path: Path, mirror_of) -> None:
    # the Kvasir box file is an excerpt of the dataset's 1000-entry file: rebuild it from a "full" one
    ours = json.loads((samples / "kvasir-seg-sample" / "kavsir_bboxes.json").read_text())
    full = {"aaaa": {"height": 1, "width": 1, "bbox": []}, **dict(reversed(list(ours.items()))), "zzzz": {}}
    upstream = tmp_path / "up" / "Kvasir-SEG"
    upstream.mkdir(parents=True)
    (upstream / "kavsir_bboxes.json").write_text(json.dumps(full))  # compact, other key order
    m = mirror_of(tmp_path / "up")
    real = next(e for e in load_manifest() if e.name == "kvasir-seg-sample/kavsir_bboxes.json")
    entry = SampleFile(real.folder, real.path, None, real.sha256, real.bytes, real.note,
                       {**real.derive, "from_url": f"{m.url}/Kvasir-SEG/kavsir_bboxes.json"})  # fmt: skip
    report = download_samples(tmp_path / "dest", manifest=[entry], progress=False)
    assert report.downloaded == [entry.name]
    assert sha256(tmp_path / "dest" / entry.folder / entry.path) == real.sha256


def test_direct_urls_are_used_without_mirror(samples: Path, tmp_path: Path, mirror_of) -> None:
    m = mirror_of(samples / "nih-cxr14-bbox")
    real = next(e for e in load_manifest() if e.folder == "nih-cxr14-bbox")
    entry = SampleFile(real.folder, real.path, f"{m.url}/BBox_List_2017.csv", real.sha256, real.bytes)
    report = download_samples(tmp_path, manifest=[entry], progress=False)
    assert report.downloaded == [entry.name] and m.requests == ["/BBox_List_2017.csv"]


# ---------------------------------------------------------------------------------------------------
# find_samples_root
# ---------------------------------------------------------------------------------------------------


def test_find_samples_root_env_and_shared(samples: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDREG_SAMPLES", str(samples))
    assert find_samples_root(["kvasir-seg-sample"]) == samples
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        find_samples_root(["no-such-folder"])
    monkeypatch.setenv("MEDREG_SAMPLES", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        find_samples_root()
    monkeypatch.delenv("MEDREG_SAMPLES")
    monkeypatch.setattr(samples_data, "shared_samples_dir", lambda: samples)
    assert find_samples_root(["totalseg-nifti"]) == samples


def test_find_samples_root_downloads_into_cache(samples: Path, tmp_path: Path, monkeypatch, mirror_of) -> None:
    m = mirror_of(samples)
    monkeypatch.delenv("MEDREG_SAMPLES", raising=False)
    monkeypatch.setattr(samples_data, "shared_samples_dir", lambda: tmp_path / "no-shared")
    monkeypatch.setenv("MEDREG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDREG_SAMPLES_MIRROR", m.url)
    root = find_samples_root(["nih-cxr14-bbox"], progress=False)
    assert root == tmp_path / "cache" / "samples"
    assert sha256(root / "nih-cxr14-bbox" / "BBox_List_2017.csv") == sha256(samples / "nih-cxr14-bbox" / "BBox_List_2017.csv")
    n = len(m.requests)
    assert find_samples_root(["nih-cxr14-bbox"], progress=False) == root
    assert len(m.requests) == n  # cached: no new request
