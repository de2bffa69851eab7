"""``FolderIndex.glob`` (mask discovery lists each folder once) matches ``Path.glob`` exactly: the same files
in the same order, for literal, wildcard, escaped-bracket and dot-file patterns, missing folders and folder
wildcards (which fall back to ``Path.glob``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sources.base import FolderIndex
from sources.mask_folder import glob_escape

NAMES = ["a.png", "a_liver.png", "a_liver_2.png", "a_kidney.PNG", "ab_liver.png", ".a_hidden.png", "b[1].png",
         "b[1]_x.png", "b1_x.png", "c d_x.png", "a_dir"]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    for sub in ("masks", "masks/deep", "other"):
        (tmp_path / sub).mkdir(parents=True)
        for n in NAMES:
            if n == "a_dir":
                (tmp_path / sub / n).mkdir()
            else:
                (tmp_path / sub / n).write_bytes(b"x")
    (tmp_path / "top_x.png").write_bytes(b"x")
    return tmp_path


@pytest.mark.parametrize("pattern", [
    "masks/a_*.png", "masks/a.png", "masks/a*", "masks/*", "masks/?_liver.png", "masks/a_[kl]*", "masks/.a*",
    f"masks/{glob_escape('b[1]')}_*.png", f"masks/{glob_escape('b[1]')}.png", "masks/c d_*.png", "masks/a_dir",
    "missing/a_*.png", "masks/zzz*", "top_*.png", "*_x.png", "*/a_*.png", "masks/**/a.png", "masks/deep/a_*",
])
def test_same_files_and_order_as_path_glob(tree: Path, pattern: str):
    expected = sorted(p for p in tree.glob(pattern) if p.is_file())
    index = FolderIndex(tree)
    assert index.glob(pattern) == expected
    assert index.glob(pattern) == expected  # the cached listing gives the same answer


def test_each_folder_is_listed_once(tree: Path):
    index = FolderIndex(tree)
    for stem in ("a", "ab", "b1", "zz"):
        index.glob(f"masks/{stem}_*.png")
    assert list(index._names) == [tree / "masks"]
    assert [p.name for p in index.glob("masks/a_*.png")] == ["a_liver.png", "a_liver_2.png"]
