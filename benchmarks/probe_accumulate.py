"""What each part of the one-pass accumulation costs: the pinned schema of bench_core.py
with parts switched off (no slices, no replay, no features), one 1M-row batch; last, the
whole schema with a replay that differs from the served score on every row (in the pinned
schema 1 replay in 100 differs, and a faithful replay costs less).

Usage::

    NUMBA_NUM_THREADS=1 python benchmarks/probe_accumulate.py   # single-thread costs
    python benchmarks/probe_accumulate.py
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pyarrow as pa

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
    off = batch.schema.get_field_index("offline_score")
    differing = batch.set_column(
        off, "offline_score", pa.array(np.random.default_rng(3).random(batch.num_rows).astype(np.float32))
    )
    for slices, features, paired, rows in [
        ([], [], False, batch),
        (list(SLICE_SIZES), [], False, batch),
        (list(SLICE_SIZES), [], True, batch),
        (list(SLICE_SIZES), FEATURES, False, batch),
        (list(SLICE_SIZES), FEATURES, True, batch),
        (list(SLICE_SIZES), FEATURES, True, differing),
    ]:
        builder = LayoutBuilder(slices, {f: "numeric" for f in features}, THRESHOLDS)
        builder.update(base)
        acc = Accumulator(builder.build(), kernels, paired=paired)
        acc.batch_statistics(rows)  # compile
        times = []
        for _ in range(5):
            t = time.perf_counter()
            acc.batch_statistics(rows)
            times.append(time.perf_counter() - t)
        times.sort()
        replay = ("differing" if rows is differing else "1% differing") if paired else "none"
        print(f"slices={len(slices)} features={len(features)} replay={replay}: "
              f"{times[2] * 1e3:.0f} ms per {batch.num_rows:,} rows (median of 5)")


if __name__ == "__main__":
    main()
