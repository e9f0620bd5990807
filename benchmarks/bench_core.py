"""Benchmark of the compute core (issue 2): accumulation throughput and bootstrap time.

Pinned schema: 3 slice columns of 10, 50 and 100 string values (dictionary-encoded, i.e.
already integer codes), online and offline float32 scores, int8 label, 2 thresholds,
5 float32 features. The reference is a plain numpy pass that reads the same columns once
(one reduction per column), measured in the same run; we report the ratio.

Usage::

    python benchmarks/bench_core.py --rows 10000000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import measure as ME  # noqa: E402
from engine.bootstrap import CellBootstrap  # noqa: E402
from engine.encode import LayoutBuilder  # noqa: E402
from engine.stats import Accumulator  # noqa: E402
from kernels import get_kernels  # noqa: E402

SLICE_SIZES = {"s10": 10, "s50": 50, "s100": 100}
FEATURES = [f"f{i}" for i in range(5)]
THRESHOLDS = [0.3, 0.6]


def make_table(rows: int, seed: int, batch: int = 1 << 20) -> pa.Table:
    """The pinned schema, generated in batches."""
    rng = np.random.default_rng(seed)
    batches = []
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        p = rng.beta(1.0, 6.0, n).astype(np.float32)
        off = np.where(rng.random(n) < 0.01, rng.random(n), p).astype(np.float32)
        cols = {
            name: pa.DictionaryArray.from_arrays(
                pa.array(rng.integers(0, size, n).astype(np.int32)),
                pa.array([f"v{i}" for i in range(size)]),
            )
            for name, size in SLICE_SIZES.items()
        }
        cols["score"] = pa.array(p)
        cols["offline_score"] = pa.array(off)
        cols["label"] = pa.array((rng.random(n) < p).astype(np.int8))
        for j, f in enumerate(FEATURES):
            cols[f] = pa.array(rng.normal(j, 1.0, n).astype(np.float32))
        batches.append(pa.record_batch(cols))
    return pa.Table.from_batches(batches)


def numpy_pass(table: pa.Table) -> float:
    """One reduction per column over the same columns: the plain-numpy yardstick."""
    total = 0.0
    for batch in table.to_batches():
        for name in SLICE_SIZES:
            codes = batch.column(name).indices.to_numpy()
            total += np.bincount(codes, minlength=SLICE_SIZES[name])[0]
        for name in ["score", "offline_score", "label"] + FEATURES:
            total += float(batch.column(name).to_numpy().sum())
    return total


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--bootstrap-rows", type=int, nargs="*", default=[1_000_000, 10_000_000])
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    kernels = get_kernels(args.backend)
    base = make_table(min(args.rows, 2_000_000), seed=1)
    builder = LayoutBuilder(list(SLICE_SIZES), {f: "numeric" for f in FEATURES}, THRESHOLDS)
    for b in base.to_batches():
        builder.update(b)
    layout = builder.build()
    acc = Accumulator(layout, kernels, paired=True)
    acc.accumulate(base.slice(0, 10_000).to_batches())  # JIT warm-up

    table = make_table(args.rows, seed=2)
    t_numpy = timed(lambda: numpy_pass(table), args.repeat)
    t_acc = timed(lambda: acc.accumulate(table.to_batches()), args.repeat)
    result = {
        "rows": args.rows,
        "cells": {"slices": layout.n_slices, "fine_bins": layout.n_fine},
        "numpy_pass_s": statistics.median(t_numpy),
        "accumulate_s": statistics.median(t_acc),
    }
    result["numpy_rows_per_s"] = args.rows / result["numpy_pass_s"]
    result["accumulate_rows_per_s"] = args.rows / result["accumulate_s"]
    result["ratio_accumulate_over_numpy_throughput"] = result["accumulate_rows_per_s"] / result["numpy_rows_per_s"]

    base_stats = Accumulator(layout, kernels).accumulate(base.to_batches())
    boot, boot_dev, boot_diff = {}, {}, {}
    for n in args.bootstrap_rows:
        online = table if n >= table.num_rows else table.slice(0, n)
        if n > table.num_rows:
            continue
        stats = acc.accumulate(online.to_batches())
        g_on, g_base = ME.grids_from_statistics(stats, layout), ME.grids_from_statistics(base_stats, layout)
        bs = CellBootstrap(layout, kernels, replicates=args.replicates, seed=0)
        times = timed(lambda: bs.run(g_on, g_base), max(1, args.repeat // 2))
        boot[str(n)] = statistics.median(times)
        if kernels.name == "gpu" and not kernels.draws_on_device:
            # the opt-in device reduction (PARITY_GPU_BOOTSTRAP=device) on the same grids, and
            # how far its float reductions are from numpy's
            kernels.draws_on_device = True
            try:
                dev = CellBootstrap(layout, kernels, replicates=args.replicates, seed=0)
                times = timed(lambda: dev.run(g_on, g_base), max(1, args.repeat // 2))
                boot_dev[str(n)] = statistics.median(times)
                a, b = dev.run(g_on, g_base).online, bs.run(g_on, g_base).online
                with np.errstate(invalid="ignore", divide="ignore"):
                    rel = [np.nanmax(np.abs(a[k] - b[k]) / np.maximum(np.abs(b[k]), 1e-300), initial=0.0) for k in a]
                boot_diff[str(n)] = float(max(rel, default=0.0))
            finally:
                del kernels.draws_on_device  # back to the class's default
    result["bootstrap_s"] = boot
    if boot_dev:
        result["bootstrap_array_module"] = dev.xp.__name__
        result["bootstrap_device_reduce_s"] = boot_dev
        result["bootstrap_device_vs_host_max_rel_diff"] = boot_diff
    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "numba": __import__("numba").__version__,
        "backend": kernels.name,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
