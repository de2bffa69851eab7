"""Format readers shared by source adapters (one reader per file format, never one per dataset)."""

from __future__ import annotations


class ReadError(Exception):
    """A file could not be read or understood.  Carries the file and a hint for the user."""

    def __init__(self, message: str, *, file: str | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.file = file
        self.hint = hint
