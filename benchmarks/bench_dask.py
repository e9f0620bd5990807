"""Dask overhead: the same check on a 2-worker ``LocalCluster`` against the single process.

On the check benchmark's data (``bench_check.prepare``: online, shuffled replay, outcomes;
Parquet with 1M-row row groups), times in the same run, interleaved:

* the single-process check (DuckDB streaming join, B = 1000 bootstrap);
* the check through an already started ``LocalCluster`` of 2 single-threaded worker
  processes, for several ``partition_rows`` (rows per key bucket and per input fragment);
* optionally the checkpointed single-process run (``--checkpoint``), from an empty directory;
* optionally (``--co-partitioned N``) the same tables rewritten as ``day=0..N-1`` hive folders
  (a request's day is a hash of its key, the same in every table): the single process on
  those folders against the cluster with ``partition_column: day`` (no split, no shuffle).

The cluster's start-up is timed once, apart. Ratios are medians over ``--repeat`` runs.

Usage::

    python benchmarks/bench_dask.py --rows 10000000 --partition-rows 1000000 2500000 5000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_check import prepare  # noqa: E402

from engine.config import Config  # noqa: E402
from engine.pipeline import run_check  # noqa: E402


def by_day(root: Path, paths: dict[str, str], n_days: int) -> dict[str, str]:
    """The three tables as ``day=...`` hive folders (written once, by DuckDB)."""
    import duckdb

    out = {}
    for side in ("online", "offline", "outcomes"):
        target = root / f"days{n_days}" / side
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect()
            con.execute(
                f"COPY (SELECT *, coalesce(hash(request_id) % {n_days}, 0) AS day FROM read_parquet('{paths[side]}')) "
                f"TO '{target}' (FORMAT parquet, PARTITION_BY (day))"
            )
            con.close()
        out[side] = str(target)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--eval-rows", type=int, default=1_000_000)
    ap.add_argument("--partition-rows", type=int, nargs="+", default=[1_000_000, 2_500_000, 5_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--checkpoint", action="store_true", help="also time the checkpointed run")
    ap.add_argument("--checkpoint-rows", type=int, default=2_000_000, help="partition_rows of that run")
    ap.add_argument("--co-partitioned", type=int, default=0, metavar="N",
                    help="also time inputs co-partitioned in N day=... folders")
    ap.add_argument("--data", default=str(Path(__file__).parent / "data"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import dask
    import distributed

    root, paths, _, _ = prepare(args.rows, args.eval_rows, Path(args.data))
    days = by_day(root, paths, args.co_partitioned) if args.co_partitioned else None

    results: dict[str, dict] = {}

    def check(tables: dict[str, str] = paths, name: str | None = None, **kw) -> float:
        t = time.perf_counter()
        result = run_check(root / "baseline", tables["online"], offline=tables["offline"], outcomes=tables["outcomes"],
                           bootstrap=args.bootstrap, backend="cpu", **kw)
        seconds = time.perf_counter() - t
        if name is not None:  # what must equal the single process: everything but the run record
            results[name] = {k: v for k, v in result.to_dict().items() if k != "run"}
        return seconds

    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = distributed.Client(cluster)
    startup = time.perf_counter() - t0
    times: dict[str, list[float]] = {"single": []}
    try:
        check(name="single")  # warm-up: JIT caches, page cache, the workers' imports
        for pr in args.partition_rows:
            check(name=f"dask_{pr}", scheduler=client, config=Config(partition_rows=pr))
        if days is not None:
            check(days, name="single_days")
            check(days, name="dask_days", scheduler=client, config=Config(partition_column="day"))
        for _ in range(args.repeat):
            times["single"].append(check())
            for pr in args.partition_rows:
                times.setdefault(f"dask_{pr}", []).append(check(scheduler=client, config=Config(partition_rows=pr)))
            if args.checkpoint:
                ck = Path(tempfile.mkdtemp(prefix="parity-bench-ck-"))
                try:
                    times.setdefault("checkpoint", []).append(
                        check(checkpoint=ck / "ck", config=Config(partition_rows=args.checkpoint_rows))
                    )
                finally:
                    shutil.rmtree(ck, ignore_errors=True)
            if days is not None:
                times.setdefault("single_days", []).append(check(days))
                times.setdefault("dask_days", []).append(
                    check(days, scheduler=client, config=Config(partition_column="day"))
                )
    finally:
        client.close()
        cluster.close()
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    ratios = {k: round(v / med["single"], 3) for k, v in med.items() if k not in ("single", "single_days", "dask_days")}
    if days is not None:
        ratios["dask_days_over_single_days"] = round(med["dask_days"] / med["single_days"], 3)
    result = {
        "rows": args.rows,
        "bootstrap": args.bootstrap,
        "cluster_startup_s": round(startup, 2),
        "runs_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_s": med,
        "ratio_over_single": ratios,
        "same_result_as_single": {
            k: v == results["single_days" if k == "dask_days" else "single"]
            for k, v in results.items() if k not in ("single", "single_days")
        },
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "dask": dask.__version__,
            "distributed": distributed.__version__,
        },
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
