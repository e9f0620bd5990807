"""Where the time of ``parity check`` goes, stage by stage, each stage with a floor beside it.

The stages are timed inside real ``run_check`` calls (the join workload of ``bench_check.py``:
online log, shuffled replay, outcomes; B = 1000), after one warm-up run, ``--repeat`` times,
medians:

======================  ============================================================  ==========================================================
stage                   what parity does                                              its floor (the least any tool doing this step pays)
======================  ============================================================  ==========================================================
read + join             DuckDB streams the three-way join to Arrow batches, with the   a bare Parquet scan of the same columns (pyarrow); DuckDB's
                        duplicate / null-key / missing-key accounting                  plain three-way join streamed to Arrow, no accounting
accumulate              the fused kernel: every grid of every slice, one pass          one numpy reduction per column over the joined columns
bootstrap               B = 1000 cell-level replicates of every metric of every slice  the Poisson draws alone: B x the coarse cells, one kernel
compare                 measure, judge, localise, incidents (bootstrap excluded)       the point estimates alone (``measure`` of the grids once)
write                   the JSON result (indented, strict)                             ``json.dumps`` of the same document, compact, to disk
======================  ============================================================  ==========================================================

Usage::

    python benchmarks/bench_check.py --rows 10000000   # once, to generate the data
    python benchmarks/bench_stages.py --rows 10000000 [--repeat 5] [--backend cpu|gpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine.bootstrap as B  # noqa: E402
import engine.pipeline as P  # noqa: E402
import engine.stats as S  # noqa: E402
from engine import measure as ME  # noqa: E402
from engine.expectation import Baseline  # noqa: E402

STAGES = ("read + join", "accumulate", "bootstrap", "compare", "write")


class StageClock:
    """Wall time of the stages of one ``run_check``: wrappers around the functions that make
    each stage (nested calls are subtracted from their caller's stage)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = defaultdict(float)

    def wrap(self, owner, name: str, stage: str) -> None:
        inner = getattr(owner, name)
        clock = self

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                clock.times[stage] += time.perf_counter() - t0

        setattr(owner, name, timed)


def instrumented() -> StageClock:
    clock = StageClock()
    clock.wrap(P, "accumulate_joined", "join + accumulate")
    clock.wrap(S.Accumulator, "update", "accumulate")
    clock.wrap(P, "assess", "assess")
    clock.wrap(B.CellBootstrap, "run", "bootstrap")
    return clock


def check_once(bl: Path, root: Path, clock: StageClock, backend: str) -> dict[str, float]:
    clock.times.clear()
    t0 = time.perf_counter()
    result = P.run_check(
        bl, str(root / "online.parquet"), offline=str(root / "offline.parquet"),
        outcomes=str(root / "outcomes.parquet"), backend=backend,
    )
    t_check = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result.write_json(Path(tmp) / "result.json")
        t_write = time.perf_counter() - t0
    t = clock.times
    return {
        "read + join": t["join + accumulate"] - t["accumulate"],
        "accumulate": t["accumulate"],
        "bootstrap": t["bootstrap"],
        "compare": t["assess"] - t["bootstrap"],
        "write": t_write,
        "other": t_check - t["join + accumulate"] - t["assess"],
        "total": t_check + t_write,
        "_result": result,  # type: ignore[dict-item]
    }


def floors(bl: Baseline, root: Path, result, kernels) -> dict[str, dict[str, float]]:
    """Each stage's floor, timed on the same files, columns and grids."""
    import duckdb
    import numpy as np
    import pyarrow.parquet as pq

    cfg, layout = bl.config, bl.layout
    on_cols = ["request_id", "score", *layout.slice_columns, *(f.name for f in layout.features)]
    out: dict[str, dict[str, float]] = {}

    t0 = time.perf_counter()
    tables = [
        pq.read_table(root / "online.parquet", columns=on_cols),
        pq.read_table(root / "offline.parquet", columns=["request_id", "score"]),
        pq.read_table(root / "outcomes.parquet", columns=["request_id", "label", "value"]),
    ]
    out["read + join"] = {"Parquet scan of the same columns (pyarrow)": time.perf_counter() - t0}

    con = duckdb.connect()
    t0 = time.perf_counter()
    sql = (
        f"SELECT {', '.join('o.' + c for c in on_cols)}, f.score AS offline_score, c.label, c.value "
        f"FROM read_parquet('{root / 'online.parquet'}') o "
        f"LEFT JOIN read_parquet('{root / 'offline.parquet'}') f ON o.request_id = f.request_id "
        f"LEFT JOIN read_parquet('{root / 'outcomes.parquet'}') c ON o.request_id = c.request_id"
    )
    for _ in con.sql(sql).to_arrow_reader(cfg.batch_size):
        pass
    out["read + join"]["DuckDB's plain join streamed to Arrow (no accounting)"] = time.perf_counter() - t0

    arrays = []
    for table in tables:
        for name in table.column_names:
            col = table.column(name)
            if str(col.type) == "string":
                col = col.dictionary_encode().combine_chunks().indices
            arrays.append(np.asarray(col))
    t0 = time.perf_counter()
    for a in arrays:
        float(np.sum(a, dtype=np.float64))
    out["accumulate"] = {"one numpy reduction per column, in memory": time.perf_counter() - t0}

    grids = ME.grids_from_statistics(bl.statistics, layout)
    coarse = B.CellBootstrap(layout, kernels, replicates=cfg.bootstrap, seed=0).coarsen(grids)
    # the count grids the bootstrap draws, on both sides (online and baseline)
    drawn = [coarse.score, coarse.offline, coarse.joint, *(coarse.features or [])]
    drawn += [coarse.delta[0]] if coarse.delta is not None else []
    counts = np.concatenate([np.asarray(g, np.int64).reshape(-1) for g in drawn if g is not None] * 2)
    t0 = time.perf_counter()
    kernels.poisson_cells(0, 0, np.arange(counts.size, dtype=np.uint64), counts, 0, cfg.bootstrap)
    what = f"Poisson draws alone: {cfg.bootstrap} x {counts.size:,} coarse count cells (both sides)"
    out["bootstrap"] = {what: time.perf_counter() - t0}

    fine = ME.fine_resolution(layout)
    t0 = time.perf_counter()
    ME.measure(grids, grids, fine, layout)
    out["compare"] = {"point estimates alone (measure the grids once)": time.perf_counter() - t0}

    doc = result.to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        (Path(tmp) / "r.json").write_text(json.dumps(doc))
        out["write"] = {"json.dumps of the same document, compact, to disk": time.perf_counter() - t0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data", default=str(Path(__file__).parent / "data"))
    ap.add_argument("--backend", default="cpu", help="cpu | gpu")
    args = ap.parse_args()
    root = Path(args.data) / f"check_{args.rows}"
    bl = Baseline.load(root / "baseline")
    from kernels import get_kernels

    kernels = get_kernels(args.backend)
    clock = instrumented()
    check_once(root / "baseline", root, clock, args.backend)  # warm-up: page cache, kernels
    runs = [check_once(root / "baseline", root, clock, args.backend) for _ in range(args.repeat)]
    result = runs[-1].pop("_result")
    low = floors(bl, root, result, kernels)
    med = {k: statistics.median(r[k] for r in runs) for k in (*STAGES, "other", "total")}
    print(f"rows {args.rows:,}, backend {args.backend}, medians of {args.repeat} runs (+1 warm-up)")
    print("| stage | parity s | floor | floor s | x floor |")
    print("|---|---|---|---|---|")
    for stage in STAGES:
        for i, (what, secs) in enumerate(low.get(stage, {}).items()):
            head = f"| {stage} | {med[stage]:.2f} |" if i == 0 else "| | |"
            print(f"{head} {what} | {secs:.2f} | {med[stage] / secs:.1f} |")
    print(f"| other (config, baseline load, window spec, result) | {med['other']:.2f} | | | |")
    print(f"| **total** | {med['total']:.2f} | | | |")
    print(json.dumps({"rows": args.rows, "backend": args.backend, "medians": {k: round(v, 3) for k, v in med.items()},
                      "floors": {s: {k: round(v, 3) for k, v in f.items()} for s, f in low.items()}}))


if __name__ == "__main__":
    main()
