"""The GPU's copies and fused accumulation against the CPU's, on the pinned schema of
``bench_core.py`` (for ``scripts/gpu_check --bench``, on a machine with a CUDA GPU).

Prints, as it goes:

* the host-to-device copy rate of a 1-d int32 column, of the ``x[None, :]`` view the
  primitive path used to copy (through ``kernels.cuda._launch.to_device``, which copies it
  to a fresh array first), and of a pinned array;
* ``Accumulator.accumulate`` on both backends (every grid, same batches), the statistics
  compared bit for bit, and the GPU's time split into host preparation, staging into the
  pinned buffers, upload, kernel and the one download; the kernel's rate in rows/s and in
  GB/s of per-row columns read, against the card's bandwidth (``--bandwidth``, GB/s; 4800
  for an H200);
* the GPU's time per batch as it runs (copies and kernels overlapped with the next batch's
  host work, ``kernels.cuda._staging``) against the sum of its phases run one after the
  other (the profiled pass), and the staged copies' rates (host into pinned, pinned to
  device).

Usage::

    python benchmarks/bench_fused.py --rows 10000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import os
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_core import FEATURES, SLICE_SIZES, THRESHOLDS, make_table  # noqa: E402
from engine.encode import LayoutBuilder  # noqa: E402
from engine.stats import Accumulator  # noqa: E402
from kernels.cpu import CpuKernels  # noqa: E402


def best(fn, repeat: int) -> float:
    from numba import cuda

    times = []
    for _ in range(repeat):
        cuda.synchronize()
        t = time.perf_counter()
        fn()
        cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--batch", type=int, default=1 << 22)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bandwidth", type=float, default=4800.0, help="the card's memory bandwidth, GB/s")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from numba import cuda

    from kernels.cuda import CudaKernels
    from kernels.cuda._launch import to_device

    out: dict = {"rows": args.rows}
    if hasattr(cuda, "get_current_device"):
        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
        print(f"device: {name}, {dev.MULTIPROCESSOR_COUNT} SMs", flush=True)
    else:
        name = "Numba CUDA simulator"
    out["device"] = name

    # ---- copy rates
    n = args.rows
    x = np.arange(n, dtype=np.int32)
    pinned = cuda.pinned_array(n, dtype=np.int32)
    pinned[:] = x
    to_device(x)  # context, allocator warm
    for what, fn in (
        ("1-d int32, pageable", lambda: to_device(x)),
        ("x[None, :] via to_device (fresh copy first)", lambda: to_device(x[None, :])),
        ("1-d int32, pinned", lambda: cuda.to_device(pinned)),
    ):
        s = best(fn, args.repeat)
        out[f"copy {what}"] = {"s": s, "GB/s": x.nbytes / s / 1e9}
        print(f"copy rate: {what:<46s} {s * 1e3:8.2f} ms  {x.nbytes / s / 1e9:7.2f} GB/s", flush=True)

    # ---- fused accumulation, both backends, same batches
    base = make_table(min(args.rows, 1_000_000), seed=1)
    builder = LayoutBuilder(list(SLICE_SIZES), {f: "numeric" for f in FEATURES}, THRESHOLDS)
    for b in base.to_batches():
        builder.update(b)
    layout = builder.build()
    table = make_table(args.rows, seed=2, batch=args.batch)
    batches = table.to_batches()
    gpu = CudaKernels() if hasattr(cuda, "get_current_device") else CudaKernels(blocks=2, threads=8)
    acc = {"cpu": Accumulator(layout, CpuKernels(), paired=True), "gpu": Accumulator(layout, gpu, paired=True)}
    for a in acc.values():
        a.accumulate(base.slice(0, 10_000).to_batches())  # JIT warm-up
    stats, times = {}, {}
    for backend in ("cpu", "gpu"):
        t = []
        for _ in range(args.repeat):
            s = time.perf_counter()
            stats[backend] = acc[backend].accumulate(batches)
            t.append(time.perf_counter() - s)
        times[backend] = statistics.median(t)
        print(f"accumulate {backend}: {times[backend]:.3f} s  {n / times[backend] / 1e6:8.1f} M rows/s", flush=True)
    equal = stats["cpu"].equal(stats["gpu"])
    print(f"statistics identical: {equal}", flush=True)
    waited = gpu.staging.counters["slot_wait"]
    gpu.profile = {}
    t = time.perf_counter()
    acc["gpu"].accumulate(batches)
    serial_s = time.perf_counter() - t
    prof = gpu.profile
    gpu.profile = None
    phases = ("prepare", "stage", "upload", "kernel", "download")
    gb = prof["row_bytes"] / 1e9
    k_s = prof["kernel"]
    print(
        "gpu phases (one pass, each synchronised): "
        + ", ".join(f"{p} {prof[p]:.3f} s" for p in phases)
        + f"; {prof['batches']} batches, {prof['downloads']} download(s)"
        + f"; plan in shared memory: {[int(v) for v in gpu.last_fused_plan[1]]}",
        flush=True,
    )
    print(
        f"fused kernel from device memory: {n / k_s / 1e9:.2f} G rows/s, {gb / k_s:.0f} GB/s of "
        f"{gb:.2f} GB per-row columns = {100 * gb / k_s / args.bandwidth:.1f}% of {args.bandwidth:.0f} GB/s",
        flush=True,
    )
    print(
        f"staged copies: host -> pinned {gb / prof['stage']:.1f} GB/s, pinned -> device {gb / prof['upload']:.1f} GB/s "
        f"({gpu.staging.counters['pinned_allocations']} pinned buffers allocated in all runs)",
        flush=True,
    )
    n_batches = prof["batches"]
    # whole accumulations (the host's Arrow-to-numpy work included) over their batches
    overlapped, serial = times["gpu"] / n_batches, serial_s / n_batches
    print(
        f"gpu per batch of {n // n_batches:,} rows: {overlapped * 1e3:.1f} ms as it runs (overlapped) vs "
        f"{serial * 1e3:.1f} ms phase after phase (profiled); the host waited {waited / args.repeat * 1e3:.1f} ms "
        "per accumulation for a staging slot",
        flush=True,
    )
    out.update(
        layout={"slices": layout.n_slices, "fine_bins": layout.n_fine},
        accumulate_s=times,
        identical=equal,
        gpu_phases_s={p: prof[p] for p in phases},
        gpu_batches=n_batches,
        gpu_batch_s={"overlapped": overlapped, "serial": serial},
        staged_GB_per_s={"host_to_pinned": gb / prof["stage"], "pinned_to_device": gb / prof["upload"]},
        kernel_rows_per_s=n / k_s,
        kernel_GB_per_s=gb / k_s,
        row_GB=gb,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    if not equal:
        raise SystemExit("the GPU's statistics differ from the CPU's")


if __name__ == "__main__":
    main()
