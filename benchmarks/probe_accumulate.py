"""What each part of the one-pass accumulation costs: the pinned schema of bench_core.py
with parts switched off (no slices, no replay, no features), one 1M-row batch.

Usage::

    NUMBA_NUM_THREADS=1 python benchmarks/probe_accumulate.py   # single-thread costs
    python benchmarks/probe_accumulate.py
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_core import FEATURES, SLICE_SIZES, THRESHOLDS, make_table  # noqa: E402

from engine.encode import LayoutBuilder  # noqa: E402
from engine.stats import Accumulator  # noqa: E402
from kernels import get_kernels  # noqa: E402


def main() -> None:
    kernels = get_kernels("cpu")
    base = make_table(500_000, seed=1)
    batch = make_table(1 << 20, seed=2).to_batches()[0]
    for slices, features, paired in [
        ([], [], False),
        (list(SLICE_SIZES), [], False),
        (list(SLICE_SIZES), [], True),
        (list(SLICE_SIZES), FEATURES, False),
        (list(SLICE_SIZES), FEATURES, True),
    ]:
        builder = LayoutBuilder(slices, {f: "numeric" for f in features}, THRESHOLDS)
        builder.update(base)
        acc = Accumulator(builder.build(), kernels, paired=paired)
        acc.batch_statistics(batch)  # compile
        times = []
        for _ in range(5):
            t = time.perf_counter()
            acc.batch_statistics(batch)
            times.append(time.perf_counter() - t)
        times.sort()
        print(f"slices={len(slices)} features={len(features)} replay={paired}: "
              f"{times[2] * 1e3:.0f} ms per {batch.num_rows:,} rows (median of 5)")


if __name__ == "__main__":
    main()
