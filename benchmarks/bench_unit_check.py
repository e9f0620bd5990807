"""``parity check --bootstrap-unit`` end to end, against the same check with the cell-level
bootstrap, on one backend (the GPU by default; ``scripts/gpu_check --bench`` runs it).

On the deployment of ``bench_check.py`` (generated when absent). Its online log has no user
column, so the unit is the request id: every row its own unit. The cost of the unit-level
bootstrap does not depend on how rows group into units (one weight draw per row and
replicate, added to each of the row's coarse cells), so this times what a user id would
cost. Prints as it goes: the cell-level check first (it also warms the JIT and the page
cache), then the unit-level one, then how many findings' intervals moved.

Usage::

    python benchmarks/bench_unit_check.py --rows 10000000 --backend gpu
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_check import check_arguments, prepare  # noqa: E402
from engine.pipeline import run_check  # noqa: E402


def main() -> None:
    ap = check_arguments(__doc__)
    ap.add_argument("--backend", default="gpu")
    ap.add_argument("--unit", default="request_id", help="the online column of units")
    args = ap.parse_args()
    root, paths, gen_s, baseline_s = prepare(args.rows, args.eval_rows, Path(args.data))
    print(f"{args.rows:,} rows: generated in {gen_s:.1f} s, baseline in {baseline_s:.1f} s", flush=True)

    def check(unit: str | None):
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the CPU's cost warning: we know
            result = run_check(root / "baseline", paths["online"], offline=paths["offline"], outcomes=paths["outcomes"],
                               bootstrap=args.bootstrap, backend=args.backend, bootstrap_unit=unit)
        return result, time.perf_counter() - t

    cell, cell_s = check(None)
    print(f"parity check --backend {args.backend} (cell-level bootstrap, B = {args.bootstrap}): {cell_s:.2f} s", flush=True)
    unit, unit_s = check(args.unit)
    extra = unit_s - cell_s
    # a first run on a fresh machine also compiles (the cell-level run first: its JIT)
    rate = (f"{args.rows * args.bootstrap / extra / 1e9:.2f} G row-replicates/s over the difference"
            if extra > 0 else "no rate: the cell-level run paid the compilation")
    print(f"parity check --backend {args.backend} --bootstrap-unit {args.unit} (B = {args.bootstrap}): {unit_s:.2f} s "
          f"({extra:+.2f} s, {rate})", flush=True)
    same_values = all(a.value == b.value or a.value != a.value for a, b in zip(cell.findings, unit.findings))
    moved = sum(a.ci != b.ci for a, b in zip(cell.findings, unit.findings))
    print(f"findings: {len(unit.findings)}, values identical: {same_values}, intervals moved: {moved}; "
          f"verdicts {cell.verdict} / {unit.verdict}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": args.rows, "bootstrap": args.bootstrap, "backend": args.backend, "unit": args.unit,
                       "cell_s": cell_s, "unit_s": unit_s, "values_identical": same_values, "intervals_moved": moved},
                      f, indent=2)


if __name__ == "__main__":
    main()
