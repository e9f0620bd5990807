"""Peak memory of ``parity check`` against the number of rows (DESIGN section 9).

Runs the CLI in a child process on the check benchmark's data (``bench_check.py`` generates
it: shuffled replay and outcomes, so the hash join is exercised) with a fixed DuckDB memory
limit, and samples the child's resident set size (RSS, children included) every 20 ms.

Usage::

    python benchmarks/bench_check.py --rows 10000000 --repeat 1    # generates the data
    python benchmarks/bench_memory.py --rows 10000000 --duckdb-memory 1GB
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def peak_rss(cmd: list[str]) -> tuple[int, float, int]:
    """(peak RSS in bytes over the process tree, wall seconds, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    return peak, time.perf_counter() - t0, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000_000])
    ap.add_argument("--duckdb-memory", default="1GB")
    ap.add_argument("--data", default=str(Path(__file__).parent / "data"))
    args = ap.parse_args()
    out = []
    for rows in args.rows:
        root = Path(args.data) / f"check_{rows}"
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(f"duckdb_memory_limit: {args.duckdb_memory}\n")
            cmd = [
                sys.executable, "-m", "engine.cli", "check", "--baseline", str(root / "baseline"),
                "--online", str(root / "online.parquet"), "--offline", str(root / "offline.parquet"),
                "--outcomes", str(root / "outcomes.parquet"), "--config", str(config),
                "--fail-on", "never", "--quiet",
            ]
            peak, wall, code = peak_rss(cmd)
        out.append({"rows": rows, "peak_rss_mb": round(peak / 2**20), "wall_s": round(wall, 2),
                    "rows_per_s": round(rows / wall), "exit": code, "duckdb_memory_limit": args.duckdb_memory})
        print(json.dumps(out[-1]), flush=True)


if __name__ == "__main__":
    main()
