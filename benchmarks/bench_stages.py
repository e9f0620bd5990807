"""Where the time of ``parity check`` goes, stage by stage (same data as bench_check.py).

Usage::

    python benchmarks/bench_check.py --rows 10000000   # once, to generate the data
    python benchmarks/bench_stages.py --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import measure as ME  # noqa: E402
from engine.bootstrap import CellBootstrap  # noqa: E402
from engine.expectation import Baseline  # noqa: E402
from engine.io import open_table  # noqa: E402
from engine.join import join  # noqa: E402
from engine.partition import with_key_null  # noqa: E402
from engine.pipeline import _join_spec  # noqa: E402
from engine.stats import Accumulator  # noqa: E402
from kernels import get_kernels  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--data", default=str(Path(__file__).parent / "data"))
    ap.add_argument("--backend", default="cpu", help="cpu | gpu")
    args = ap.parse_args()
    root = Path(args.data) / f"check_{args.rows}"
    bl = Baseline.load(root / "baseline")
    cfg, layout, kernels = bl.config, bl.layout, get_kernels(args.backend)
    src = {r: open_table(str(root / f"{r}.parquet"), r) for r in ("online", "offline", "outcomes")}
    spec = _join_spec(cfg, layout, src["online"], src["offline"], src["outcomes"])
    timings = {}

    # the join each backend's `parity check` uses: DuckDB on the CPU, the sort join on the GPU
    join_fn = join
    if kernels.name == "gpu":
        from engine.gpu_join import device_join as join_fn
    t = time.perf_counter()
    stream = join_fn(src["online"], src["offline"], src["outcomes"], spec, batch_size=cfg.batch_size)
    batches = list(stream)
    timings["join_s"] = time.perf_counter() - t
    print(f"join: {type(stream).__name__}, offline {stream.report.offline_join}, outcomes "
          f"{stream.report.outcome_join}, fallback {getattr(stream, 'fallback', None)}", flush=True)

    acc = Accumulator(layout, kernels, paired=True, with_value=spec.value is not None)
    acc.accumulate(batches[:1])  # JIT warm-up
    t = time.perf_counter()
    stats = acc.zero()
    for b in batches:
        stats = acc.update(stats, with_key_null(b, spec.keys))
    timings["accumulate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    g_on, g_base = ME.grids_from_statistics(stats, layout), ME.grids_from_statistics(bl.statistics, layout)
    CellBootstrap(layout, kernels, replicates=cfg.bootstrap, seed=0).run(g_on, g_base)
    timings["bootstrap_s"] = time.perf_counter() - t
    print(json.dumps({k: round(v, 3) for k, v in timings.items()} | {"rows": args.rows, "backend": args.backend}, indent=2))


if __name__ == "__main__":
    main()
