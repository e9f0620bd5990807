"""Peak memory of ``parity check`` against the number of rows (DESIGN section 9).

Runs the CLI in a child process on the check benchmark's data with a fixed DuckDB memory
limit, and samples the child's resident set size (RSS, children included) every 20 ms. The
data is generated first when absent (``bench_check.prepare``: streamed to disk in 1M-row
chunks, so it can be larger than memory): by default the offline replay and the outcomes
are shuffled, so the hash join is exercised; ``--aligned`` writes the replay in the online
order (the aligned join path). Disk: about 46 bytes per online row (4.6 GB at 100M rows,
46 GB at 1B), plus DuckDB's spill files.

Usage::

    python benchmarks/bench_memory.py --rows 10000000 100000000 --duckdb-memory 1GB
    python benchmarks/bench_memory.py --rows 10000000 100000000 --duckdb-memory 1GB --aligned
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_check import prepare  # noqa: E402


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
    ap.add_argument("--eval-rows", type=int, default=1_000_000)
    ap.add_argument("--aligned", action="store_true", help="the replay in the online order")
    ap.add_argument("--checkpoint", action="store_true", help="run with --checkpoint (partitioned)")
    ap.add_argument("--data", default=str(Path(__file__).parent / "data"))
    args = ap.parse_args()
    out = []
    for rows in args.rows:
        root, _, gen_s, _ = prepare(rows, args.eval_rows, Path(args.data), aligned=args.aligned)
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(f"duckdb_memory_limit: {args.duckdb_memory}\n")
            cmd = [
                sys.executable, "-m", "engine.cli", "check", "--baseline", str(root / "baseline"),
                "--online", str(root / "online.parquet"), "--offline", str(root / "offline.parquet"),
                "--outcomes", str(root / "outcomes.parquet"), "--config", str(config),
                "--fail-on", "never", "--quiet",
            ]
            if args.checkpoint:
                cmd += ["--checkpoint", str(Path(tmp) / "ck")]
            peak, wall, code = peak_rss(cmd)
        out.append({"rows": rows, "peak_rss_mb": round(peak / 2**20), "wall_s": round(wall, 2),
                    "rows_per_s": round(rows / wall), "exit": code, "duckdb_memory_limit": args.duckdb_memory,
                    "aligned": args.aligned, "checkpoint": args.checkpoint, "generate_s": round(gen_s, 1)})
        print(json.dumps(out[-1]), flush=True)


if __name__ == "__main__":
    main()
