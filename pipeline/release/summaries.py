"""The case summaries of one build, in plan order, kept on disk instead of in the driver's memory.

Every case task hands back a :class:`~schemas.records.CaseSummary` (counts, errors, notes, its images'
fingerprints: ~2.6 KB a case as Python objects).  The release-level steps after the cases (split and
duplicate decisions, the writer, the manifest, the run log) read them several times, in plan order, one
at a time.  :class:`SummaryLog` appends each summary as one JSON line to an unlinked temporary file in
the store and keeps only its offset and length (12 bytes a case), so the driver's memory does not grow
with the summaries of a 10,000- or 1,000,000-case build; each pass decodes one summary at a time.

The file is unlinked as soon as it is created: a killed build leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

from schemas.records import CaseSummary


class SummaryLog(Sequence[CaseSummary]):
    """``n`` case summaries by plan position, spilled to a temporary file under ``directory``."""

    def __init__(self, n: int, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".summaries-", suffix=".tmp")
        os.unlink(name)  # nameless from here on: a killed build leaves nothing behind
        self._fd: int | None = fd
        self._offset = np.full(n, -1, dtype=np.int64)
        self._length = np.zeros(n, dtype=np.int32)
        self._end = 0

    def put(self, i: int, summary: CaseSummary) -> None:
        """Record the summary of the case at plan position ``i`` (a second put replaces the first)."""
        data = summary.model_dump_json().encode()
        written = 0
        while written < len(data):
            written += os.pwrite(self._file(), data[written:], self._end + written)
        self._offset[i], self._length[i] = self._end, len(data)
        self._end += len(data)

    def _file(self) -> int:
        if self._fd is None:
            raise ValueError("the summary log is closed")
        return self._fd

    def has(self, i: int) -> bool:
        return bool(self._offset[i] >= 0)

    def _read(self, i: int) -> CaseSummary:
        off = int(self._offset[i])
        if off < 0:
            raise KeyError(f"no summary recorded for case #{i}")
        data = os.pread(self._file(), int(self._length[i]), off)
        return CaseSummary.model_validate_json(data)

    def __len__(self) -> int:
        return len(self._offset)

    @overload
    def __getitem__(self, i: int) -> CaseSummary: ...

    @overload
    def __getitem__(self, i: slice) -> list[CaseSummary]: ...

    def __getitem__(self, i: int | slice) -> CaseSummary | list[CaseSummary]:
        if isinstance(i, slice):
            return [self._read(j) for j in range(len(self))[i]]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        return self._read(i % n)

    def __iter__(self) -> Iterator[CaseSummary]:
        for i in range(len(self)):
            yield self._read(i)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.close()
