"""The unit-level bootstrap's kernel: rows x replicates of Poisson(1) unit weights added to
cell counts (``Kernels.unit_histogram``), on the GPU from device arrays and on the CPU.

Rows belong to ``--units`` users (uint64 ids); each row has one cell: its label (2 cells,
the counts of a rate: shared memory on the GPU) or its label within one of 167 slices
(334 cells x replicates: global atomics). The CPU runs a tenth of the rows (it warns
about the cost of more); both results are checked against each other on a slice of rows.

Usage::

    python benchmarks/bench_unit.py --rows 100000000 --replicates 100
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels.cpu import CpuKernels  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--replicates", type=int, default=100)
    ap.add_argument("--units", type=int, default=5_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from numba import cuda

    from kernels.cuda import CudaKernels
    from kernels.cuda._launch import to_device

    n, B = args.rows, args.replicates
    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.units, n, dtype=np.uint64)
    label = (rng.random(n) < 0.3).astype(np.int32)
    cells = {"2 cells (label)": label, "334 cells (167 slices x label)": label * 167 + rng.integers(0, 167, n, dtype=np.int32)}
    gpu, cpu = CudaKernels(), CpuKernels()
    d_ids = to_device(ids)
    out: dict = {"rows": n, "replicates": B, "units": args.units}
    for what, c in cells.items():
        n_cells = int(c.max()) + 1
        d_cells = to_device(c)
        gpu.unit_histogram(1, d_ids[:1000], d_cells[:1000], n_cells, 0, B)  # compile
        times = []
        for _ in range(args.repeat):
            cuda.synchronize()
            t = time.perf_counter()
            got = gpu.unit_histogram(1, d_ids, d_cells, n_cells, 0, B)
            times.append(time.perf_counter() - t)
        s = min(times)
        print(f"gpu unit_histogram, {what}: {n:,} rows x {B} replicates in {s:.3f} s "
              f"({n * B / s / 1e9:.1f} G row-replicates/s)", flush=True)
        m = n // 10
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cpu.unit_histogram(1, ids[:1000], c[:1000], n_cells, 0, B)  # compile
            t = time.perf_counter()
            ref = cpu.unit_histogram(1, ids[:m], c[:m], n_cells, 0, B)
            cs = time.perf_counter() - t
        same = np.array_equal(gpu.unit_histogram(1, d_ids[:m], d_cells[:m], n_cells, 0, B), ref)
        print(f"cpu unit_histogram, {what}: {m:,} rows x {B} replicates in {cs:.3f} s "
              f"({m * B / cs / 1e9:.2f} G row-replicates/s); gpu identical on those rows: {same}", flush=True)
        out[what] = {"gpu_s": s, "cpu_rows": m, "cpu_s": cs, "identical": same, "total": int(got.sum())}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
