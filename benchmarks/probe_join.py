"""DuckDB alone on the check benchmark's files: what the join's parts cost.

Usage (after ``python benchmarks/bench_check.py --rows 10000000`` generated the data)::

    python benchmarks/probe_join.py --rows 10000000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import duckdb

JOIN = (
    "FROM online o LEFT JOIN offline f ON o.request_id = f.request_id "
    "LEFT JOIN outcomes c ON o.request_id = c.request_id"
)
STRINGS = "o.country, o.device, o.segment, o.f_channel"
NUMBERS = "o.request_id, o.f_amount, o.f_age, o.f_tenure, o.f_clicks, CAST(o.score AS DOUBLE) AS score"
OUTER = "f.score AS offline_score, c.label, c.value"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--data", default=str(Path(__file__).parent / "data"))
    args = ap.parse_args()
    root = Path(args.data) / f"check_{args.rows}"
    con = duckdb.connect()
    con.execute("SET disabled_optimizers = 'build_side_probe_side'")
    for name in ("online", "offline", "outcomes"):  # as engine/join.py reads local Parquet
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{root / f'{name}.parquet'}')")

    def streamed(sql: str) -> float:
        t = time.perf_counter()
        for _ in con.sql(sql).to_arrow_reader(1 << 20):
            pass
        return time.perf_counter() - t

    def fetched(sql: str) -> float:
        t = time.perf_counter()
        con.sql(sql).fetchall()
        return time.perf_counter() - t

    probes = {
        "key-only duplicate aggregate, online": lambda: fetched(
            "SELECT count(*) FROM (SELECT request_id FROM online GROUP BY ALL HAVING count(*) > 1)"
        ),
        "join streamed to Arrow, every carried column + ts": lambda: streamed(
            f"SELECT {NUMBERS}, {STRINGS}, o.ts, {OUTER} {JOIN}"
        ),
        "the same without ts": lambda: streamed(f"SELECT {NUMBERS}, {STRINGS}, {OUTER} {JOIN}"),
        "the same without ts and the string columns": lambda: streamed(f"SELECT {NUMBERS}, {OUTER} {JOIN}"),
        "join + one histogram GROUP BY (bench_check's yardstick)": lambda: fetched(
            f"SELECT o.country, floor(o.score * 100) AS bin, c.label, count(*) {JOIN} GROUP BY ALL"
        ),
    }
    # What the accumulation would cost inside DuckDB: fine score bins by an ASOF join on the
    # baseline's edges, one cell grid (slice x label x bin, three slice columns) with one
    # fixed-point sum, as GROUPING SETS. parity computes about ten such grids.
    import json

    import numpy as np
    import pyarrow as pa

    layout = json.loads((root / "baseline" / "layout.json").read_text())
    edges = np.concatenate([[-np.inf], np.asarray(layout["score_edges"])])
    con.register("edges_src", pa.table({"lo": edges, "bin": np.arange(len(edges), dtype=np.int32)}))
    con.execute("CREATE TABLE edges AS SELECT * FROM edges_src")
    probes["one cell grid inside DuckDB (ASOF binning + GROUPING SETS)"] = lambda: fetched(
        f"WITH j AS (SELECT o.country, o.device, o.segment, CAST(o.score AS DOUBLE) AS s, c.label AS y {JOIN}), "
        "b AS (SELECT j.*, e.bin FROM j ASOF LEFT JOIN edges e ON j.s >= e.lo) "
        "SELECT country, device, segment, y, bin, count(*), "
        "sum(CASE WHEN s >= 0 AND s <= 1 THEN CAST(round_even(s * 4294967296, 0) AS BIGINT) END) "
        "FROM b GROUP BY GROUPING SETS ((country, y, bin), (device, y, bin), (segment, y, bin))"
    )
    for name, probe in probes.items():
        print(f"{probe():6.2f} s  {name}")


if __name__ == "__main__":
    main()
