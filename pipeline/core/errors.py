"""The error every reader and adapter raises for bad input: :class:`ReadError` (file + hint).

Convention (docs/formats.md, "Damaged and hostile input"):

* ``file`` is the path the reader was given (absolute on the build machine): the build driver turns it
  into a path relative to the source's data folder before anything is written.
* The **message and hint never hold an absolute path**.  They name files with
  :func:`pipeline.core.paths.shown` (relative to the data folder of the case being read, the file name
  when no data folder is known) and never quote file contents (values, secrets): at most the offending
  key, tag or line number.
* The hint says what to do (re-download, fix a header tag, set a card option, raise a limit).
"""

from __future__ import annotations


class ReadError(Exception):
    """A file could not be read or understood.  Carries the file and a hint for the user."""

    def __init__(self, message: str, *, file: str | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.file = file
        self.hint = hint
