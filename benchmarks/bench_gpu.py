"""``parity check`` on the GPU backend against the CPU backend, same files, same run.

For a machine with a CUDA GPU (``scripts/gpu_check --bench`` runs it). Generates the
deployment of ``bench_check.py`` (online, shuffled offline replay, outcomes) when absent,
builds its baseline, then, interleaved so both backends see the same machine state:

* ``parity check --backend cpu`` and ``--backend gpu`` (everything: join, accumulate, all
  metrics, bootstrap, verdicts), ``--repeat`` times each after a warm-up run;
* whether the two results agree: the verdict, every finding (value, interval, status) and
  the data-quality counts. They must: the statistics are exact on both backends.

Usage::

    python benchmarks/bench_gpu.py --rows 10000000 --repeat 3
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from bench_check import check_arguments, prepare  # noqa: E402
from engine.pipeline import run_check  # noqa: E402


def _findings(result) -> list[dict]:
    return [f.to_dict() for f in result.findings]


def main() -> None:
    ap = check_arguments(__doc__)
    ap.add_argument("--no-warmup", action="store_true",
                    help="time the first runs (kernels already cached; for sizes where a warm-up costs too much)")
    args = ap.parse_args()

    root, paths, gen_s, baseline_s = prepare(args.rows, args.eval_rows, Path(args.data))
    print(f"{args.rows:,} rows: generated in {gen_s:.1f} s, baseline in {baseline_s:.1f} s", flush=True)

    def check(backend: str):
        return run_check(root / "baseline", paths["online"], offline=paths["offline"], outcomes=paths["outcomes"],
                         bootstrap=args.bootstrap, backend=backend)

    results = {} if args.no_warmup else {b: check(b) for b in ("cpu", "gpu")}  # warm-up: JIT, page cache
    times: dict[str, list[float]] = {"cpu": [], "gpu": []}
    for _ in range(max(1, args.repeat)):
        for backend in ("cpu", "gpu"):
            t = time.perf_counter()
            results[backend] = check(backend)
            times[backend].append(time.perf_counter() - t)
            print(f"  {backend}: {times[backend][-1]:.2f} s", flush=True)

    cpu, gpu = results["cpu"], results["gpu"]
    agree = {
        "verdict": cpu.verdict == gpu.verdict,
        "findings": _findings(cpu) == _findings(gpu),
        "data_quality": cpu.data_quality == gpu.data_quality,
    }
    if not agree["findings"]:  # name the first difference, for the log
        for a, b in zip(_findings(cpu), _findings(gpu)):
            if a != b:
                agree["first_difference"] = {"cpu": a, "gpu": b}
                break
    import numba  # noqa: PLC0415
    from numba import cuda  # noqa: PLC0415

    if numba.config.ENABLE_CUDASIM:
        name = "Numba CUDA simulator"
    else:
        name = cuda.get_current_device().name
        name = name.decode() if isinstance(name, bytes) else name
    out = {
        "rows": args.rows,
        "bootstrap": args.bootstrap,
        "generate_s": round(gen_s, 2),
        "baseline_s": round(baseline_s, 2),
        "cpu_check_s": [round(x, 3) for x in times["cpu"]],
        "gpu_check_s": [round(x, 3) for x in times["gpu"]],
        "cpu_median_s": round(statistics.median(times["cpu"]), 3),
        "gpu_median_s": round(statistics.median(times["gpu"]), 3),
        "agree": agree,
        "findings": len(cpu.findings),
        "machine": {
            "gpu": name, "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "pyarrow": pa.__version__, "numba": numba.__version__,
        },
    }
    out["ratio_gpu_over_cpu"] = round(out["gpu_median_s"] / out["cpu_median_s"], 3)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
