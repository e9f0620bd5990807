"""Benchmark of ``parity check`` against DuckDB doing only the join and one histogram.

Generates the synthetic deployment (online, shuffled offline replay, outcomes; 1M-row
evaluation set) once under ``benchmarks/data/`` (git-ignored), builds the baseline, then
times, in the same run, on the same files:

* ``parity check`` (everything: join, accumulate, all metrics, B = 1000 bootstrap, verdicts);
* DuckDB running just the join (online LEFT JOIN offline LEFT JOIN outcomes on request_id)
  and one histogram GROUP BY (country, score bin, label).

Usage::

    python benchmarks/bench_check.py --rows 10000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from engine.config import Config  # noqa: E402
from engine.expectation import build_baseline  # noqa: E402
from engine.pipeline import run_check  # noqa: E402
from engine.synthetic import generate  # noqa: E402

DUCKDB_SQL = """
SELECT o.country, floor(o.score * 100) AS bin, c.label, count(*) AS n
FROM read_parquet('{online}') o
LEFT JOIN read_parquet('{offline}') r ON o.request_id = r.request_id
LEFT JOIN read_parquet('{outcomes}') c ON o.request_id = c.request_id
GROUP BY ALL
"""


def prepare(
    rows: int, eval_rows: int, data: Path, *, aligned: bool = False
) -> tuple[Path, dict[str, str], float, float]:
    """Generate the deployment once (streamed to disk in 1M-row chunks, so it can be larger
    than memory) and build its baseline.

    Returns
    -------
    (root, paths, generate_s, baseline_s)
        ``paths``: evaluation/online/offline/outcomes Parquet files. ``aligned``: the offline
        replay in the online order (``check_<rows>_aligned``) instead of shuffled.
    """
    root = data / (f"check_{rows}_aligned" if aligned else f"check_{rows}")
    marker = root / "scenario.json"
    t0 = time.perf_counter()
    if not marker.exists():
        scenario = generate(root, rows=rows, seed=0, eval_rows=eval_rows, shuffle=not aligned)
        marker.write_text(json.dumps(scenario.to_dict()))
    gen_s = time.perf_counter() - t0
    paths = {k: str(root / f"{k}.parquet") for k in ("evaluation", "online", "offline", "outcomes")}
    baseline_s = 0.0
    if not (root / "baseline" / "manifest.json").exists():
        meta = json.loads(marker.read_text())
        config = Config(slices=meta["slices"], features=meta["features"], thresholds=meta["thresholds"])
        t0 = time.perf_counter()
        build_baseline(paths["evaluation"], config, out=root / "baseline", backend="cpu")
        baseline_s = time.perf_counter() - t0
    return root, paths, gen_s, baseline_s


def check_arguments(description: str | None) -> argparse.ArgumentParser:
    """The arguments of the benchmarks that time ``parity check`` on this data."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--eval-rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--data", default=str(Path(__file__).parent / "data"))
    ap.add_argument("--json", default=None)
    return ap


def main() -> None:
    args = check_arguments(__doc__).parse_args()

    root, paths, gen_s, baseline_s = prepare(args.rows, args.eval_rows, Path(args.data))

    def parity() -> None:
        run_check(root / "baseline", paths["online"], offline=paths["offline"], outcomes=paths["outcomes"],
                  bootstrap=args.bootstrap, backend="cpu")

    def duck() -> None:
        con = duckdb.connect()
        con.execute(DUCKDB_SQL.format(**paths)).fetchall()
        con.close()

    parity()  # warm-up (JIT caches, page cache)
    duck()
    t_parity, t_duck = [], []
    for _ in range(args.repeat):  # interleaved, so both see the same machine state
        t = time.perf_counter(); duck(); t_duck.append(time.perf_counter() - t)
        t = time.perf_counter(); parity(); t_parity.append(time.perf_counter() - t)
    result = {
        "rows": args.rows,
        "eval_rows": args.eval_rows,
        "bootstrap": args.bootstrap,
        "generate_s": round(gen_s, 2),
        "baseline_s": round(baseline_s, 2),
        "parity_check_s": [round(x, 3) for x in t_parity],
        "duckdb_join_histogram_s": [round(x, 3) for x in t_duck],
        "parity_median_s": round(statistics.median(t_parity), 3),
        "duckdb_median_s": round(statistics.median(t_duck), 3),
    }
    result["ratio_parity_over_duckdb"] = round(result["parity_median_s"] / result["duckdb_median_s"], 3)
    result["parity_rows_per_s"] = round(args.rows / result["parity_median_s"])
    result["machine"] = {
        "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
        "pyarrow": pa.__version__, "duckdb": duckdb.__version__, "numba": __import__("numba").__version__,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
