"""Warm a worker process before it takes cases: imported (for its side effects) by the process pool's
fork server and by Dask workers (``preload``), so every forked worker starts with the pipeline imported,
the numba kernels loaded from their cache and the language data parsed, instead of paying for that on its
first case (about a second per worker, measured in B5)."""

from __future__ import annotations

import numpy as np

from pipeline.release import case
from pipeline.language.tasks import Language
from pipeline.regions.boxes import regions_2d, slice_label_boxes
from pipeline.regions.counts import slice_label_counts


def warm() -> None:
    assert callable(case.run_batch)  # everything a case needs is imported
    probe = np.zeros((2, 8, 8), np.uint8)
    probe[:, 2:5, 2:5] = 1
    slice_label_boxes(probe)
    slice_label_counts(probe)  # two slices: the serial kernel, the one a worker process runs
    regions_2d(probe[0], {1: "liver"}, policy="component", min_pixels=2)
    Language.load()


warm()
