"""Where the CLI's progress callback waits for the flow.

A flow's function is pickled with its run context when tasks go to Dask workers; a callback held in that
module's globals (a rich progress bar, with locks) would be pickled along and fail.  A module is pickled
by reference, so the callback lives here.  So does the plan the caller made while the temporary server
started (``plan``: config path, output folder, Plan), which the flow uses instead of planning again.
"""

from __future__ import annotations

from typing import Any

current: Any = None
plan: Any = None
