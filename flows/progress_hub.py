"""Where the CLI's progress callback waits for the flow.

A flow's function is pickled with its run context when tasks go to Dask workers; a callback held in that
module's globals (a rich progress bar, with locks) would be pickled along and fail.  A module is pickled
by reference, so the callback lives here.
"""

from __future__ import annotations

from typing import Any

current: Any = None
