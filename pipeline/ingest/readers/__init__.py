"""Format readers shared by source adapters (one reader per file format, never one per dataset).

Readers raise :class:`ReadError` (defined in :mod:`pipeline.core.errors`, re-exported here) for bad
input; see its module for the message convention (no absolute paths, no file contents).
"""

from __future__ import annotations

from pipeline.core.errors import ReadError

__all__ = ["ReadError"]
