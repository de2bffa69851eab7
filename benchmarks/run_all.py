"""Run every CPU benchmark in one process-free sequence (each prints its own ratios).

    python -m benchmarks.run_all [--quick]

B6 (model judges on GPU) runs through benchmarks/gpu_check.sh on a GPU machine. B10 and B11 generate a
full-size CT case of the scale corpus (benchmarks/corpus.py) in a temporary folder (~1 min, ~250 MB). B3/B4/B5
(`benchmarks/b12_scale.py`) need a generated scale corpus and run on their own (docs/scaling.md).
"""

from __future__ import annotations

import subprocess
import sys

BENCHES = [
    "benchmarks.b1_boxes", "benchmarks.b2_end_to_end", "benchmarks.b7_dicom_series", "benchmarks.b8_samples",
    "benchmarks.b9_diff", "benchmarks.b10_costs", "benchmarks.b11_ct_case",
    "benchmarks.b13_seg_reader", "benchmarks.b14_discovery", "benchmarks.b15_duplicates",
]


def main() -> int:
    extra = [a for a in sys.argv[1:] if a == "--quick"]
    rc = 0
    for mod in BENCHES:
        print(f"\n=== {mod} ===", flush=True)
        rc |= subprocess.call([sys.executable, "-m", mod, *extra])
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
