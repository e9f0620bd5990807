"""One benchmark table: parity against DuckDB, the peers and the floors, from one run.

Usage::

    python -m benchmarks --rows 1000000 10000000 --repeat 5
    python benchmarks/run.py --rows 1000000 --repeat 3 --tools parity duckdb scan numpy

Two workloads on the synthetic deployment of ``engine.synthetic`` (3 slice columns, 5
features, 2 thresholds, a 1M-row evaluation set), generated once under
``benchmarks/data/`` (git-ignored):

* **join** (what parity is for): online log, shuffled offline replay, outcomes; parity's
  ``check`` (join, accumulate, every metric per slice, B = 1000 bootstrap, verdicts) against
  DuckDB's three-way join plus the histogram GROUP BYs it can do (no bootstrap, no metrics);
* **inline** (the peers' workload): the online rows with their label inline (no join),
  against the evaluation set as reference. parity is timed as whole processes from Parquet
  (``baseline`` + ``check``); Evidently and NannyML as their own calculation on frames
  already in memory (reading the Parquet files and building the frames is not timed). The
  peers compute no slices and no per-slice intervals; pandas + scikit-learn by hand computes
  per-slice AUC, precision and recall with a B = 100 resampling bootstrap.

Floors: a bare Parquet scan of the columns parity reads, and one numpy pass (one reduction
per column) over the same columns already in memory.

Every tool runs in its own child process; wall time is the child's (or, where a tool times
its own calculation, that time, marked ``in-process``), peak RSS the child's (``wait4``:
the largest resident set of the process or of a descendant). Evidently and NannyML are
installed by this script into their own virtual environments under
``benchmarks/data/venvs/`` (PyPI must be reachable), with telemetry switched off. A tool
that would run longer than ``--peer-limit-rows`` rows is timed on a sample of that many
rows and extrapolated linearly (marked ``extrapolated``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

PEERS = {"nannyml": ["nannyml==0.13.1", "statsmodels"], "evidently": ["evidently==0.7.23", "pandas<3"]}
QUIET = {"DO_NOT_TRACK": "1", "EVIDENTLY_DISABLE_TELEMETRY": "1", "NML_DISABLE_USAGE_LOGGING": "1"}
ALL_TOOLS = ("parity", "parity-dask", "duckdb", "scan", "numpy", "parity-inline", "by-hand", "nannyml", "evidently")

WHAT = {
    "parity": "join + every metric per slice, B=1000 intervals, verdicts (check only; baseline prebuilt)",
    "parity-dask": "the same on a local Dask cluster (2 workers; cluster start-up included)",
    "duckdb": "3-way join + score histograms per slice column and label (GROUPING SETS); no metrics, no intervals",
    "scan": "floor: read the columns parity reads from the three Parquet files (pyarrow), nothing else",
    "numpy": "floor: one reduction per column over the same columns in memory (in-process)",
    "parity-inline": "labels inline: baseline + check as two processes from Parquet; slices and intervals",
    "by-hand": "pandas + scikit-learn per slice value: AUC, precision, recall, B=100 resampling (in-process)",
    "nannyml": "PerformanceCalculator (AUC, precision, recall, sampling error; 10 chunks) + univariate drift; no slices (in-process)",
    "evidently": "DataDriftPreset + ClassificationPreset report on the whole table; no slices, no intervals (in-process)",
}


# ------------------------------------------------------------------------------ data

def prepare(rows: int, data: Path) -> dict[str, str]:
    """The join workload (bench_check.prepare) plus the inline files and their config."""
    from bench_check import prepare as prepare_join

    root, paths, _, _ = prepare_join(rows, 1_000_000, data)
    meta = json.loads((root / "scenario.json").read_text())
    inline = root / "inline.parquet"
    if not inline.exists():
        import duckdb

        duckdb.sql(
            f"COPY (SELECT o.*, c.label FROM read_parquet('{paths['online']}') o "
            f"JOIN read_parquet('{paths['outcomes']}') c USING (request_id)) TO '{inline}' (FORMAT parquet)"
        )
    (root / "inline.yaml").write_text("columns:\n  online: {label: label}\n")
    paths = dict(paths, root=str(root), inline=str(inline), inline_config=str(root / "inline.yaml"))
    paths["slices"] = json.dumps(meta["slices"])
    paths["features"] = json.dumps(meta["features"])
    paths["thresholds"] = json.dumps(meta["thresholds"])
    return paths


def venv_python(tool: str, data: Path) -> Path:
    """The peer's own virtual environment, created and filled on first use."""
    env = data / "venvs" / tool
    py = env / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    probe = subprocess.run([str(py), "-c", f"import {tool}"], capture_output=True)
    if probe.returncode:
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEERS[tool], "pyarrow"], check=True)
    return py


# ------------------------------------------------------------------------------ children

def _script(body: str) -> str:
    return textwrap.dedent(body)


def _peer_frames(paths: dict[str, str], sample: int | None) -> str:
    """Code that loads the reference and current frames (not timed)."""
    return _script(f"""
        import json, time, pyarrow.parquet as pq
        features = json.loads({paths['features']!r})
        num = [f for f, k in features.items() if k == "numeric"]
        cat = [f for f, k in features.items() if k == "categorical"]
        cols = ["score", "label", *features]
        ref = pq.read_table({paths['evaluation']!r}, columns=cols).to_pandas()
        cur = pq.read_table({paths['inline']!r}, columns=cols).to_pandas()
        if {sample!r}:
            cur = cur.sample(n=min({sample!r}, len(cur)), random_state=0)
        # the peers refuse NaN or out-of-range scores and labels other than 0/1: valid rows only
        ref = ref[ref["score"].between(0, 1) & ref["label"].isin([0, 1])].copy()
        cur = cur[cur["score"].between(0, 1) & cur["label"].isin([0, 1])].copy()
        for df in (ref, cur):
            df["label"] = df["label"].astype(int)
            df["y_pred"] = (df["score"] >= 0.5).astype(int)
        """)


def child(tool: str, paths: dict[str, str], rows: int, sample: int | None) -> list[list[str]]:
    """The command lines of one measurement (run one after the other)."""
    py = sys.executable
    cli = [py, "-m", "engine.cli"]
    slices, features = json.loads(paths["slices"]), json.loads(paths["features"])
    if tool == "parity":
        return [cli + ["check", "--baseline", f"{paths['root']}/baseline", "--online", paths["online"],
                       "--offline", paths["offline"], "--outcomes", paths["outcomes"], "--key", "request_id",
                       "--backend", "cpu", "--fail-on", "never", "--quiet"]]
    if tool == "parity-dask":
        return [child("parity", paths, rows, sample)[0] + ["--scheduler", "local"]]
    if tool == "parity-inline":
        out = f"{paths['root']}/inline-baseline"
        base = cli + ["baseline", paths["evaluation"], "--score", "score", "--label", "label", "--out", out,
                      "--backend", "cpu", "--quiet"]
        for s in slices:
            base += ["--slice", s]
        for f, kind in features.items():
            base += ["--feature", f"{f}:{kind}"]
        for t in json.loads(paths["thresholds"]):
            base += ["--threshold", str(t)]
        check = cli + ["check", "--baseline", out, "--online", paths["inline"], "--config", paths["inline_config"],
                       "--backend", "cpu", "--fail-on", "never", "--quiet"]
        return [base, check]
    if tool == "duckdb":
        sets = ", ".join(f"({s}, bin, label)" for s in slices)
        sql = (f"SELECT {', '.join('o.' + s for s in slices)}, floor(o.score * 1024) AS bin, c.label, count(*) "
               f"FROM read_parquet('{paths['online']}') o "
               f"LEFT JOIN read_parquet('{paths['offline']}') r ON o.request_id = r.request_id "
               f"LEFT JOIN read_parquet('{paths['outcomes']}') c ON o.request_id = c.request_id "
               f"GROUP BY GROUPING SETS ({sets})")
        return [[py, "-c", f"import duckdb; duckdb.sql({sql!r}).fetchall()"]]
    if tool in ("scan", "numpy"):
        cols = ["request_id", "score", *slices, *features]
        load = (f"import pyarrow.parquet as pq, time\n"
                f"t0 = time.perf_counter()\n"
                f"on = pq.read_table({paths['online']!r}, columns={cols!r})\n"
                f"off = pq.read_table({paths['offline']!r}, columns=['request_id', 'score'])\n"
                f"oc = pq.read_table({paths['outcomes']!r}, columns=['request_id', 'label', 'value'])\n"
                f"t_scan = time.perf_counter() - t0\n")
        if tool == "scan":
            return [[py, "-c", load]]
        body = load + _script(f"""
            import json, numpy as np
            arrays = []
            for t in (on, off, oc):
                for c in t.column_names:
                    col = t.column(c)
                    if col.type == "string":
                        col = col.dictionary_encode().combine_chunks().indices
                    arrays.append(np.asarray(col))
            t0 = time.perf_counter()
            total = [float(np.sum(a, dtype=np.float64)) for a in arrays]
            print(json.dumps({{"seconds": time.perf_counter() - t0}}))
            """)
        return [[py, "-c", body]]
    if tool == "by-hand":
        body = _peer_frames(paths, sample) + _script(f"""
            import numpy as np, pandas as pd
            from sklearn.metrics import precision_score, recall_score, roc_auc_score
            slices = json.loads({paths['slices']!r})
            full = pq.read_table({paths['inline']!r}, columns=slices + ["score", "label"]).to_pandas()
            if {sample!r}:
                full = full.sample(n=min({sample!r}, len(full)), random_state=0)
            full = full[full["score"].between(0, 1) & full["label"].isin([0, 1])].copy()
            full["label"] = full["label"].astype(int)
            rng = np.random.default_rng(0)
            t0 = time.perf_counter()
            out = []
            for s in slices:
                for value, g in full.groupby(s, observed=True):
                    y, p = g["label"].to_numpy(), g["score"].to_numpy()
                    if len(np.unique(y)) < 2:
                        continue
                    point = (roc_auc_score(y, p), precision_score(y, p >= 0.5, zero_division=0), recall_score(y, p >= 0.5))
                    reps = []
                    for b in range(100):
                        i = rng.integers(0, len(y), len(y))
                        if len(np.unique(y[i])) < 2:
                            continue
                        reps.append((roc_auc_score(y[i], p[i]), precision_score(y[i], p[i] >= 0.5, zero_division=0),
                                     recall_score(y[i], p[i] >= 0.5)))
                    out.append((s, value, point, np.percentile(np.array(reps), [2.5, 97.5], axis=0)))
            print(json.dumps({{"seconds": time.perf_counter() - t0}}))
            """)
        return [[py, "-c", body]]
    if tool == "nannyml":
        body = _peer_frames(paths, sample) + _script("""
            import nannyml as nml
            t0 = time.perf_counter()
            perf = nml.PerformanceCalculator(
                y_pred_proba="score", y_pred="y_pred", y_true="label", problem_type="classification_binary",
                metrics=["roc_auc", "precision", "recall"], chunk_number=10)
            perf.fit(ref)
            perf.calculate(cur)
            drift = nml.UnivariateDriftCalculator(
                column_names=num + cat + ["score"], treat_as_categorical=cat, chunk_number=10,
                continuous_methods=["kolmogorov_smirnov", "jensen_shannon"], categorical_methods=["chi2", "jensen_shannon"])
            drift.fit(ref)
            drift.calculate(cur)
            print(json.dumps({"seconds": time.perf_counter() - t0}))
            """)
        return [[str(venv_python("nannyml", Path(paths["data"]))), "-c", body]]
    if tool == "evidently":
        body = _peer_frames(paths, sample) + _script("""
            from evidently import BinaryClassification, DataDefinition, Dataset, Report
            from evidently.presets import ClassificationPreset, DataDriftPreset
            t0 = time.perf_counter()
            definition = DataDefinition(
                classification=[BinaryClassification(target="label", prediction_probas="score")],
                numerical_columns=num + ["score"], categorical_columns=cat)
            r = Dataset.from_pandas(ref.drop(columns="y_pred"), data_definition=definition)
            c = Dataset.from_pandas(cur.drop(columns="y_pred"), data_definition=definition)
            Report([DataDriftPreset(), ClassificationPreset()]).run(c, r)
            print(json.dumps({"seconds": time.perf_counter() - t0}))
            """)
        return [[str(venv_python("evidently", Path(paths["data"]))), "-c", body]]
    raise ValueError(f"unknown tool {tool!r}")


def measure(argvs: list[list[str]], timeout: float) -> dict:
    """Run the command lines in turn: wall seconds (summed), peak RSS (max), in-process seconds.

    Peak RSS is the child's own, from ``wait4`` (Linux: the largest of the child and its
    reaped descendants, e.g. Dask's worker processes), not the sum over processes.
    """
    import tempfile
    import threading

    env = dict(os.environ, **QUIET, PYTHONPATH=str(REPO))
    wall, rss, inner = 0.0, 0, None
    for argv in argvs:
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=err, text=True)
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            _, status, usage = os.wait4(proc.pid, 0)
            timer.cancel()
            wall += time.perf_counter() - t0
            proc.returncode = code = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            text, errors = out.read(), err.read()
        rss = max(rss, usage.ru_maxrss // 1024)
        if code == -9:
            return {"error": f"timed out after {timeout:.0f} s"}
        if code != 0:
            last = errors.strip().splitlines()[-1] if errors.strip() else ""
            return {"error": f"exit {code}: {last}"}
        for line in text.splitlines()[::-1]:
            if line.startswith("{") and '"seconds"' in line:
                inner = (inner or 0.0) + json.loads(line)["seconds"]
                break
    return {"wall": wall, "rss_mb": rss, "inner": inner}


# ------------------------------------------------------------------------------ the table

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="One benchmark table (see benchmarks/run.py).")
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tools", nargs="+", default=list(ALL_TOOLS), choices=ALL_TOOLS)
    ap.add_argument("--peer-limit-rows", type=int, default=1_000_000,
                    help="above this many rows, by-hand, NannyML and Evidently run on a sample this large, extrapolated")
    ap.add_argument("--by-hand-rows", type=int, default=100_000, help="sample the by-hand bootstrap is timed on")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--data", default=str(HERE / "data"))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    data = Path(args.data)
    results = []
    for rows in args.rows:
        # generated in a child: a child process starts with its parent's peak RSS, so this
        # process stays small for the figures of its children to be their own
        made = subprocess.run(
            [sys.executable, "-c", f"import json, sys; sys.path.insert(0, {str(HERE)!r}); from run import prepare; "
             f"from pathlib import Path; print(json.dumps(prepare({rows}, Path({str(data)!r}))))"],
            cwd=REPO, capture_output=True, text=True, check=True,
        )
        paths = json.loads(made.stdout.strip().splitlines()[-1])
        paths["data"] = str(data)
        plan = {}
        for tool in args.tools:
            sample = None
            if tool == "by-hand":
                sample = min(rows, args.by_hand_rows)
            elif tool in ("nannyml", "evidently") and rows > args.peer_limit_rows:
                sample = args.peer_limit_rows
            plan[tool] = (child(tool, paths, rows, sample), sample)
        # one warm-up each (page cache, compiled kernels, venv imports), then interleaved rounds
        runs: dict[str, list[dict]] = {t: [] for t in plan}
        for tool, (argvs, _) in plan.items():
            warm = measure(argvs, args.timeout)
            if "error" in warm:
                runs[tool].append(warm)
        for _ in range(args.repeat):
            for tool, (argvs, _) in plan.items():
                if runs[tool] and "error" in runs[tool][0]:
                    continue
                runs[tool].append(measure(argvs, args.timeout))
                print(f"{rows:>11,} {tool:<14} {runs[tool][-1]}", file=sys.stderr, flush=True)
        for tool, (argvs, sample) in plan.items():
            ok = [r for r in runs[tool] if "error" not in r]
            row = {"rows": rows, "tool": tool, "what": WHAT[tool], "runs": len(ok)}
            if not ok:
                row["error"] = runs[tool][0]["error"] if runs[tool] else "not run"
                results.append(row)
                continue
            inproc = ok[0]["inner"] is not None
            seconds = statistics.median([r["inner"] if inproc else r["wall"] for r in ok])
            scale = rows / sample if sample else 1.0
            row.update(
                seconds=seconds * scale,
                measured_seconds=seconds,
                rss_mb=max(r["rss_mb"] for r in ok),
                timing="in-process" if inproc else "process",
                sample=sample,
                extrapolated=bool(sample and sample < rows),
                all_seconds=[round(r["inner"] if inproc else r["wall"], 3) for r in ok],
            )
            results.append(row)
    _print(results)
    meta = machine()
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": meta, "command": " ".join(sys.argv), "results": results}, indent=2))


def _print(results: list[dict]) -> None:
    by_rows: dict[int, dict[str, dict]] = {}
    for r in results:
        by_rows.setdefault(r["rows"], {})[r["tool"]] = r
    print("| rows | tool | median s | rows/s | peak RSS MB | x parity | timing | what it computes |")
    print("|---|---|---|---|---|---|---|---|")
    for rows, tools in by_rows.items():
        for tool, r in tools.items():
            ref = tools.get("parity-inline" if tool in ("by-hand", "nannyml", "evidently", "parity-inline") else "parity")
            if "error" in r:
                print(f"| {rows:,} | {tool} | {r['error']} | | | | | {r['what']} |")
                continue
            ratio = f"{r['seconds'] / ref['seconds']:.2f}" if ref and "seconds" in ref else ""
            timing = r["timing"] + (f", extrapolated from {r['sample']:,} rows" if r["extrapolated"] else "")
            print(f"| {rows:,} | {tool} | {r['seconds']:.2f} | {rows / r['seconds'] / 1e6:.2f}M | {r['rss_mb']:,} "
                  f"| {ratio} | {timing} | {r['what']} |")


def machine() -> dict:
    import duckdb
    import numba
    import numpy as np
    import pyarrow as pa

    return {
        "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
        "numba": numba.__version__, "pyarrow": pa.__version__, "duckdb": duckdb.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


if __name__ == "__main__":
    main()
