"""Wiring of sources and pipeline: the Prefect flow, the in-process runner, the CLI and sample data IO."""

import os

# Offline machines: Prefect must not try to send analytics (set before Prefect is imported anywhere).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
