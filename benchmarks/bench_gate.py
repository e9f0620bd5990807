"""The gate on clean data at full size: never an alert, ``ok`` almost always, drift intervals
that cover 0 at their nominal rate (issue 14's simulation; the test suite runs it at 20,000
rows).

Each replication draws a fresh world from ``tests/gate_world.py`` (16 countries of unequal
size, from 25% of the traffic down to about 0.3%, so the smallest slices sit near the
minimum counts at 50k rows; 4 devices; a calibrated model; thresholds 0.3 and 0.6, the
second with a predicted-positive rate under 1%), builds the baseline from its own
``--baseline-rows`` evaluation rows and checks ``--rows`` online rows against it with the
default configuration (B = 1000). Nothing is broken: every alert is a false alarm.

Prints, per size: replications, alerts (findings and incidents), verdicts, and the share of
KS and Wasserstein intervals (of the excess over the null) that cover 0, with its binomial
standard error. The targets: 0 alerts, ``ok`` in at least 95% of replications, coverage
93-97%.

Usage: python benchmarks/bench_gate.py [--rows 50000,500000,2000000] [--replications 20]
       [--baseline-rows 500000] [--json benchmarks/data/gate.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import gate_world as gw  # noqa: E402

from engine.expectation import build_baseline  # noqa: E402
from engine.pipeline import run_check  # noqa: E402


def replicate(rows: int, baseline_rows: int, seed: int) -> dict:
    """One clean replication: verdict, alerts, warnings, drift-interval coverage, seconds."""
    w = gw.world(rows, seed=seed, eval_rows=baseline_rows)
    bl = build_baseline(w.evaluation, gw.config(seed=seed))
    t0 = time.perf_counter()
    res = run_check(bl, w.online, offline=w.offline, outcomes=w.outcomes, seed=seed)
    seconds = time.perf_counter() - t0
    drift = [f for f in res.findings if f.metric in ("ks", "wasserstein") and f.ci is not None]
    return {
        "verdict": res.verdict,
        "alerts": sum(f.status == "alert" for f in res.findings),
        "warnings": sum(f.status == "warn" for f in res.findings),
        "incidents": len(res.incidents),
        "alerting": sorted({(f.metric, json.dumps(f.slice)) for f in res.findings if f.status == "alert"}),
        "drift_intervals": len(drift),
        "drift_covered": sum(f.ci[0] <= 0 <= f.ci[1] for f in drift),
        "check_seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="50000,500000,2000000")
    ap.add_argument("--replications", type=int, default=20)
    ap.add_argument("--baseline-rows", type=int, default=500_000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    sizes = [int(x) for x in args.rows.split(",")]
    out = {}
    print(f"clean data, {args.replications} replications per size, baseline {args.baseline_rows:,} rows, B = 1000", flush=True)
    print(f"{'rows':>10s} {'alerts':>6s} {'incid.':>6s} {'ok':>4s} {'warn':>4s} {'warn findings':>13s} "
          f"{'KS/W cover 0':>13s} {'(se)':>6s} {'check s':>8s}", flush=True)
    for rows in sizes:
        reps = [replicate(rows, args.baseline_rows, (rows // 1000) * 1000 + r) for r in range(args.replications)]
        verdicts = Counter(r["verdict"] for r in reps)
        n_int = sum(r["drift_intervals"] for r in reps)
        cover = sum(r["drift_covered"] for r in reps) / max(n_int, 1)
        se = float(np.sqrt(cover * (1 - cover) / max(n_int, 1)))
        summary = {
            "replications": len(reps),
            "alerts": sum(r["alerts"] for r in reps),
            "incidents": sum(r["incidents"] for r in reps),
            "verdicts": dict(verdicts),
            "warning_findings_median": float(np.median([r["warnings"] for r in reps])),
            "drift_intervals": n_int,
            "drift_coverage": cover,
            "check_seconds_median": float(np.median([r["check_seconds"] for r in reps])),
            "alerting": [a for r in reps for a in r["alerting"]],
        }
        out[rows] = summary
        print(f"{rows:10,d} {summary['alerts']:6d} {summary['incidents']:6d} {verdicts['ok']:4d} {verdicts['warn']:4d} "
              f"{summary['warning_findings_median']:13.1f} {cover:13.3f} {se:6.3f} {summary['check_seconds_median']:8.2f}",
              flush=True)
        for a in summary["alerting"]:
            print("   false alarm:", a, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
