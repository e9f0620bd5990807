"""What localisation (atoms) and windows add to a check.

Generates the demo's deployment at ``--rows`` (default 3M) over ``--days`` days of traffic
(default 7), builds two baselines (atoms off: ``max_atoms: 0``; atoms on: the default), and
times ``run_check`` in three configurations, ``--repeat`` times each, interleaved: no atoms
and no windows (localisation then only takes slices out of the population), atoms, and atoms
with daily windows (``--window 1d``: the issue's "7 daily"). Prints the medians and the ratios
to the first. ``--days 1 --window 206m`` is the earlier setup (the day cut into 206-minute
windows, 8 of them as they fall on the epoch-aligned grid).

Usage: python benchmarks/bench_incidents.py [--rows 3000000] [--repeat 3] [--days 7] [--window 1d]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from engine.config import Config
from engine.expectation import build_baseline
from engine.pipeline import run_check
from engine.synthetic import generate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--window", default="1d")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="parity-bench-incidents-"))
    sc = generate(work / "data", rows=args.rows, seed=0, days=args.days)
    baselines = {}
    for atoms in (0, 1024):
        cfg = Config(slices=sc.slices, features=sc.features, thresholds=sc.thresholds, max_atoms=atoms)
        baselines[atoms] = build_baseline(sc.evaluation, cfg, out=work / f"bl{atoms}")
    runs = {
        "no atoms, no windows": dict(baseline=baselines[0]),
        "atoms (localisation)": dict(baseline=baselines[1024]),
        f"atoms + windows ({args.window})": dict(baseline=baselines[1024], window=args.window, time_column="ts"),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    info = {}
    for _ in range(args.repeat):
        for name, kw in runs.items():
            bl = kw.pop("baseline")
            t0 = time.perf_counter()
            res = run_check(bl, sc.online, offline=sc.offline, outcomes=sc.outcomes, **kw)
            times[name].append(time.perf_counter() - t0)
            kw["baseline"] = bl
            info[name] = (len(res.incidents), res.run.get("windows", {}).get("count"), res.run["localisation"]["atom_cells"])
    ref = statistics.median(times["no atoms, no windows"])
    print(f"rows {args.rows:,} over {args.days} day(s), repeat {args.repeat} (medians)")
    print(f"{'configuration':28s} {'median s':>9s} {'ratio':>6s}  incidents windows atoms  {'min-max s':>11s}")
    for name, ts in times.items():
        m = statistics.median(ts)
        n_inc, n_win, n_atoms = info[name]
        print(f"{name:28s} {m:9.2f} {m / ref:6.2f}  {n_inc:9d} {str(n_win):>7s} {n_atoms:5d}  {min(ts):5.2f}-{max(ts):5.2f}")
    # the ratio run by run (each run's three configurations ran one after the other)
    names = list(times)
    per_run = [times[names[-1]][i] / times[names[0]][i] for i in range(args.repeat)]
    print(f"ratio of the last to the first, run by run: median {statistics.median(per_run):.2f} "
          f"({', '.join(f'{r:.2f}' for r in per_run)})")


if __name__ == "__main__":
    main()
