"""The run history (``--history DIR``, ``parity history``, ``--baseline HISTORY/RUN_ID``).

What is proved here, on real checks of a small synthetic deployment:

* ``parity history DIR`` lists the runs (oldest first; ``--json`` for machines) and
  ``--metric M --slice COL=VALUE`` gives the series with value, expected and CI, equal to
  what each run's JSON holds;
* a damaged or foreign record is skipped with a warning, never a traceback;
* a writer killed (SIGKILL) while appending leaves only complete records; a check that fails
  writes nothing; two processes appending at once lose and corrupt nothing;
* a run's stored statistics are a baseline: checking run B's data against run A equals
  checking it against a baseline accumulated from A's online rows (their outcomes as labels)
  on the same layout, finding for finding.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from engine.config import Config
from engine.errors import ConfigError
from engine.expectation import Baseline, build_baseline
from engine.pipeline import run_check
from engine.stats import LABEL, SCORE, VALUE, Accumulator
from engine.store import HistoryWarning, RunHistory
from engine.synthetic import generate
from kernels import get_kernels

REPO = Path(__file__).resolve().parents[1]
SEED, BOOT = 5, 40


def parity(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # tables on one line each
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *map(str, args)],
        capture_output=True, text=True, cwd=REPO, timeout=timeout, env=env,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A clean deployment split in two periods (A, B: no duplicated keys), and a baseline."""
    root = tmp_path_factory.mktemp("history")
    sc = generate(root / "w", rows=4000, seed=SEED, inject=False)
    online = pq.read_table(sc.online)
    keys = online["request_id"].to_numpy()
    _, first = np.unique(keys, return_index=True)
    online = online.take(np.sort(first))
    half = online.num_rows // 2
    parts = {"A": online.slice(0, half), "B": online.slice(half)}
    paths = {}
    for name, t in parts.items():
        paths[name] = root / f"online_{name}.parquet"
        pq.write_table(t, paths[name])
    cfg = Config(slices=["country", "device"], features={"f_amount": "numeric", "f_channel": "categorical"},
                 thresholds=[0.3, 0.6], bootstrap=BOOT, seed=SEED)
    bl = build_baseline(sc.evaluation, cfg, out=root / "baseline")
    return {"root": root, "sc": sc, "online": paths, "tables": parts, "baseline": bl, "cfg": cfg}


def check(world, online, baseline=None):
    sc = world["sc"]
    return run_check(baseline if baseline is not None else world["root"] / "baseline", online,
                     offline=sc.offline, outcomes=sc.outcomes, backend="cpu")


@pytest.fixture(scope="module")
def recorded(world):
    """Runs A then B, each appended to a history."""
    hist = RunHistory(world["root"] / "runs")
    results = {}
    for name in ("A", "B"):
        results[name] = check(world, world["online"][name])
        hist.append(results[name])
        time.sleep(1.05)  # distinct start seconds: the file names order the runs
    return {"history": hist, "results": results}


# ------------------------------------------------------------------------------- list, series
def test_list_of_runs(world, recorded):
    hist, res = recorded["history"], recorded["results"]
    rows = hist.summary()
    assert [r["id"] for r in rows] == [res["A"].run["id"], res["B"].run["id"]]
    for r, name in zip(rows, "AB"):
        assert r["verdict"] == res[name].verdict
        assert r["baseline_id"] == world["baseline"].id
        assert r["incidents"] == len(res[name].incidents)
        assert r["alerts"] == sum(f.status == "alert" for f in res[name].findings)
        assert r["online_rows"] == res[name].data_quality["online_rows"]
    # runs() yields each run's JSON document, oldest first (the dashboard reads it)
    docs = list(hist.runs())
    assert [d["run"]["id"] for d in docs] == [r["id"] for r in rows]
    assert docs[0] == json.loads(res["A"].to_json())
    # each record has its statistics beside it
    assert sorted(p.suffix for p in hist.path.iterdir()) == [".json", ".json", ".stats", ".stats"]


def test_series_of_a_metric(recorded):
    hist, res = recorded["history"], recorded["results"]
    pts = hist.series("auc", {"country": "US"})
    assert [p["run_id"] for p in pts] == [res["A"].run["id"], res["B"].run["id"]]
    for p, name in zip(pts, "AB"):
        (f,) = [f for f in res[name].findings
                if f.metric == "auc" and f.slice == {"country": "US"} and f.scores == "online"]
        assert (p["value"], p["expected"], p["status"], p["n"]) == (f.value, f.expected, f.status, f.n)
        assert p["ci"] == list(f.ci)
    # this world's replay equals the served scores: the replay's findings would be
    # byte-identical twins of the online ones, which are not repeated
    assert hist.series("auc", {"country": "US"}, scores="offline") == []
    flips = hist.series("flip_rate", {"device": "ios"}, threshold=0.6)
    assert len(flips) == 2 and all(p["threshold"] == 0.6 for p in flips)
    with pytest.raises(ConfigError, match="--threshold 0.3, or --threshold 0.6"):
        hist.series("flip_rate", {"device": "ios"})
    assert hist.series("auc", {"country": "Atlantis"}) == []
    psi = hist.series("psi", {}, feature="f_amount")
    assert len(psi) == 2 and psi[0]["feature"] == "f_amount"


def test_history_command(recorded, tmp_path):
    """The CLI, on a copy of the history with a damaged and a foreign record added."""
    import shutil

    d = tmp_path / "runs"
    shutil.copytree(recorded["history"].path, d)
    (d / "20300101T000000Z_feedfacefeedface.json").write_text('{"schema_version": 1, "verdict": "al')
    (d / "20300101T000001Z_cafebabecafebabe.json").write_text('{"hello": "world"}')
    res = recorded["results"]

    proc = parity("history", d, "--json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["id"] for r in rows] == [res["A"].run["id"], res["B"].run["id"]]
    assert "20300101T000000Z_feedfacefeedface.json" in proc.stderr and "cannot be read" in proc.stderr
    assert "not a parity run record" in proc.stderr

    proc = parity("history", d, "--metric", "auc", "--slice", "country=US", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["slice"] == {"country": "US"} and [p["run_id"] for p in doc["points"]] == [r["id"] for r in rows]

    proc = parity("history", d, "--metric", "flip_rate", "--slice", "device=ios", "--threshold", "0.3")
    assert proc.returncode == 0, proc.stderr
    assert "flip_rate on device=ios: 2 runs" in proc.stdout and res["B"].run["id"] in proc.stdout

    proc = parity("history", d)
    assert proc.returncode == 0 and res["A"].run["id"] in proc.stdout and "verdict" in proc.stdout

    for args, needle in (
        (("--metric", "acu"), "Did you mean 'auc'"),
        (("--metric", "auc", "--slice", "country"), "COLUMN=VALUE"),
        (("--slice", "country=BR"), "give --metric too"),
        (("--metric", "flip_rate", "--slice", "device=ios"), "--threshold 0.3, or --threshold 0.6"),
    ):
        proc = parity("history", d, *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert needle in proc.stderr, proc.stderr
    proc = parity("history", tmp_path / "nope")
    assert proc.returncode == 2 and "nope" in proc.stderr


def test_damaged_records_are_skipped_with_a_warning(recorded, tmp_path):
    import shutil

    d = tmp_path / "runs"
    shutil.copytree(recorded["history"].path, d)
    (d / "20000101T000000Z_0badc0de.json").write_bytes(b"\xff\xfe\x00garbage")
    (d / ".20000101T000000Z_0badc0de.json.tmp123").write_text("{")  # a writer's temporary: ignored
    (d / "notes.json").write_text("not a record name: ignored")
    with pytest.warns(HistoryWarning, match="0badc0de"):
        runs = list(RunHistory(d).runs())
    assert len(runs) == 2


# ------------------------------------------------------------------------------- crash safety
WRITER = textwrap.dedent(
    """
    import json, sys, time, uuid
    from engine.expectation import Baseline
    from engine.result import CheckResult
    from engine.store import RunHistory

    src, out, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    doc = json.loads(open(src).read())
    bl = Baseline.load(sys.argv[5])
    hist = RunHistory(out)
    while time.time() < start:
        time.sleep(0.001)
    for i in range(n):
        run = dict(doc["run"], id=uuid.uuid4().hex[:16])
        res = CheckResult(doc["verdict"], [], run, doc["data_quality"],
                          extras={"statistics": bl.statistics, "layout": bl.layout, "config": bl.config},
                          incidents=doc["incidents"])
        hist.append(res)
        print(run["id"], flush=True)
    """
)


def _writer(recorded, out: Path, n: int, start: float) -> subprocess.Popen:
    hist = recorded["history"]
    record = hist.records()[0]
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(record), str(out), str(n), str(start),
         str(hist.statistics_dir(recorded["results"]["A"].run["id"]))],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _assert_complete(out: Path) -> list[str]:
    """Every record parses and its statistics load as a baseline; returns the run ids."""
    hist = RunHistory(out)
    ids = []
    for f in hist.records():
        doc = json.loads(f.read_text())  # a partial record would raise here
        ids.append(doc["run"]["id"])
        bl = Baseline.load(hist.statistics_dir(doc["run"]["id"]))
        assert bl.statistics.rows > 0
    return ids


def test_two_concurrent_writers_lose_nothing(recorded, tmp_path):
    out = tmp_path / "shared"
    start = time.time() + 4.0  # both processes past their imports, then both append at once
    procs = [_writer(recorded, out, 12, start) for _ in range(2)]
    written = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr
        written += stdout.split()
    ids = _assert_complete(out)
    assert len(written) == 24 and sorted(ids) == sorted(written)
    assert not [f for f in out.iterdir() if f.name.startswith(".")]  # no temporaries left


def test_a_writer_killed_mid_append_leaves_only_complete_records(recorded, tmp_path):
    out = tmp_path / "killed"
    p = _writer(recorded, out, 10_000, time.time())
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.json"))) < 3:
        time.sleep(0.05)
    time.sleep(0.137)
    p.send_signal(signal.SIGKILL)
    stdout, _ = p.communicate(timeout=60)
    ids = _assert_complete(out)
    assert len(ids) >= 3
    # every record the writer announced is there (a record is complete once append returns)
    assert set(stdout.split()) <= set(ids)
    assert len(list(RunHistory(out).runs())) == len(ids)


def test_a_failed_check_writes_nothing(world, tmp_path):
    bad = tmp_path / "no_score.parquet"
    pq.write_table(world["tables"]["A"].drop(["score"]), bad)
    hist = tmp_path / "runs"
    proc = parity("check", "--baseline", world["root"] / "baseline", "--online", bad,
                  "--bootstrap", "0", "--history", hist)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "score" in proc.stderr
    assert not hist.exists() or not any(hist.iterdir())


# ------------------------------------------------------------------------------- run as baseline
def _rows_baseline(world, online: pa.Table, layout, cfg) -> Baseline:
    """A baseline accumulated from online rows with their outcomes as labels, on ``layout``."""
    outcomes = pq.read_table(world["sc"].outcomes)
    rows = online.join(outcomes, "request_id", join_type="left outer")
    rows = rows.rename_columns([{"score": SCORE, "label": LABEL, "value": VALUE}.get(n, n) for n in rows.schema.names])
    acc = Accumulator(layout, get_kernels("cpu"), with_value=True)
    stats = acc.zero()
    for batch in rows.to_batches():
        acc.update(stats, batch)
    return Baseline(layout, stats, cfg, {"id": "rows-of-A", "has_value": True})


def test_run_statistics_as_baseline_equal_a_baseline_of_its_rows(world, recorded):
    hist, res = recorded["history"], recorded["results"]
    a_id = res["A"].run["id"]
    stored = Baseline.load(hist.path / a_id)  # HISTORY/RUN_ID names the run's statistics
    assert stored.id == a_id and stored.manifest["source"]["baseline_id"] == res["A"].run["baseline_id"]
    assert stored.layout.fingerprint() == res["A"].extras["layout"].fingerprint()
    assert Baseline.load(hist.path / a_id[:6]).id == a_id  # an unambiguous prefix
    assert Baseline.load(hist.path / "latest").id == res["B"].run["id"]

    rows_bl = _rows_baseline(world, world["tables"]["A"], stored.layout, stored.config)
    for name in ("score", "calib", "feature", "value"):  # the data quality counts differ: unused
        assert np.array_equal(stored.statistics.raw[name], rows_bl.statistics.raw[name]), name

    on_b = world["online"]["B"]
    vs_run = check(world, on_b, baseline=hist.path / a_id)
    vs_rows = check(world, on_b, baseline=rows_bl)
    assert vs_run.run["baseline_id"] == a_id
    a = [f.to_dict() for f in vs_run.findings]
    b = [f.to_dict() for f in vs_rows.findings]
    assert len(a) == len(b) > 100
    assert a == b
    assert vs_run.verdict == vs_rows.verdict


def test_unknown_run_is_a_usage_error(recorded):
    path = recorded["history"].path
    with pytest.raises(ConfigError, match="holds no run 'ffffffff'"):
        Baseline.load(path / "ffffffff")
    # a run recorded without statistics (an older parity) says so
    record = recorded["history"].records()[0]
    old = path.parent / "old_runs"
    old.mkdir()
    (old / record.name).write_bytes(record.read_bytes())
    run_id = recorded["results"]["A"].run["id"]
    with pytest.raises(ConfigError, match="no stored statistics"):
        Baseline.load(old / run_id)
