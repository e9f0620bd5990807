"""Checks on a real Dask cluster: a ``LocalCluster`` of 2 worker processes.

The result on the cluster equals the single-process result exactly (the JSON findings,
counts and intervals): from files, from Dask DataFrames, from co-partitioned Dask
DataFrames, through the CLI; and also when a worker process is killed in the middle of the
run (deterministically: when it starts its first bucket task).
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_partition import _check, by_day, comparable, deployment  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from engine.cli import app

distributed = pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def single(deployment):  # noqa: F811
    return comparable(_check(deployment))


def test_cluster_result_equals_single_process(deployment, single, client):  # noqa: F811
    result = _check(deployment, scheduler=client)
    assert result.run["execution"] == {
        "mode": "dask", "scheduler": client.scheduler.address, "buckets": 6,
    }
    assert comparable(result) == single
    assert any(f["status"] == "alert" for f in json.loads(result.to_json())["findings"])


def _frames(dep, npartitions: int):
    return {
        # Arrow-backed pandas columns: an int64 key with nulls stays an int64
        side: dd.from_pandas(pq.read_table(path).to_pandas(types_mapper=pd.ArrowDtype), npartitions=npartitions)
        for side, path in (("online", dep["online"]), ("offline", dep["offline"]), ("outcomes", dep["outcomes"]))
    }


def test_dask_dataframes_give_the_same_result(deployment, single, client):  # noqa: F811
    frames = _frames(deployment, 3)
    result = _check(deployment, online=frames["online"], offline=frames["offline"], outcomes=frames["outcomes"])
    assert comparable_data(result) == comparable_data_of(single)


def test_in_memory_tables_on_the_cluster(deployment, single, client):  # noqa: F811
    """pandas / Arrow tables held by the caller: cut into row ranges, each sent once."""
    tables = {s: pq.read_table(deployment[s]) for s in ("online", "offline", "outcomes")}
    tables["online"] = tables["online"].to_pandas(types_mapper=pd.ArrowDtype)
    result = _check(deployment, **tables, scheduler=client)
    assert result.run["execution"]["buckets"] == 6
    assert comparable_data(result) == comparable_data_of(single)


def test_co_partitioned_dataframes_are_joined_in_place(deployment, single, client):  # noqa: F811
    """Indexed by the key with the same divisions: partition j of each is bucket j."""
    frames = {s: f.set_index("request_id") for s, f in _frames(deployment, 3).items()}
    divisions = frames["online"].divisions
    frames = {s: f.repartition(divisions=divisions) for s, f in frames.items()}
    result = _check(deployment, online=frames["online"], offline=frames["offline"], outcomes=frames["outcomes"])
    assert result.run["execution"]["buckets"] == frames["online"].npartitions
    assert comparable_data(result) == comparable_data_of(single)


def test_inputs_co_partitioned_on_a_column(deployment, by_day, client):  # noqa: F811
    """Hive folders day=...: each day is a bucket, its files read by its task."""
    config = deployment["config"].with_overrides(partition_column="day")
    single = comparable(_check({**deployment, **by_day}))
    result = _check({**deployment, **by_day, "config": config}, scheduler=client)
    assert result.run["execution"]["buckets"] == 3
    assert comparable(result) == single


def comparable_data(result) -> str:
    return comparable_data_of(comparable(result))


def comparable_data_of(text: str) -> str:
    """Findings and data quality (the inputs' fingerprints differ: in memory, not files)."""
    d = json.loads(text)
    return json.dumps({"findings": d["findings"], "data_quality": d["data_quality"], "verdict": d["verdict"]},
                      sort_keys=True)


class KillOnce(distributed.WorkerPlugin):
    """Kill the worker process that starts the first bucket task (once per marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def transition(self, key, start, finish, **kwargs):
        name = key[0] if isinstance(key, tuple) else key
        if finish == "executing" and str(name).startswith("join_bucket") and not os.path.exists(self.marker):
            with open(self.marker, "w") as fh:
                fh.write(str(os.getpid()))
            os._exit(1)  # a hard kill: the task's result and every result held there are lost


def test_worker_killed_midway_does_not_change_the_result(deployment, single, client, tmp_path):  # noqa: F811
    marker = tmp_path / "killed"
    client.register_plugin(KillOnce(str(marker)), name="kill-once")
    try:
        result = _check(deployment, scheduler=client)
    finally:
        client.unregister_worker_plugin("kill-once")
    assert marker.exists()  # a worker really died in the middle of the run
    assert comparable(result) == single
    client.wait_for_workers(2, timeout=60)


def test_cli_scheduler_local(deployment, single, tmp_path):  # noqa: F811
    cfg = tmp_path / "parity.yaml"
    cfg.write_text("partition_rows: 5000\n")
    out = tmp_path / "result.json"
    res = CliRunner().invoke(app, [
        "check", "--baseline", deployment["baseline"], "--online", deployment["online"],
        "--offline", deployment["offline"], "--outcomes", deployment["outcomes"],
        "--bootstrap", "100", "--seed", "3", "--backend", "cpu", "--config", str(cfg),
        "--scheduler", "local", "--json", str(out), "--quiet",
    ])
    assert res.exit_code == 1, res.output  # the deployment has injected problems: alerts
    d = json.loads(out.read_text())
    assert d["run"]["execution"]["mode"] == "dask"
    assert comparable_data_of(json.dumps(d)) == comparable_data_of(single)


@pytest.mark.parametrize("address", ["nohost", "", "ftp"])
def test_cli_bad_scheduler_is_exit_2(deployment, address):  # noqa: F811
    res = CliRunner().invoke(app, [
        "check", "--baseline", deployment["baseline"], "--online", deployment["online"],
        "--scheduler", address, "--quiet",
    ])
    assert res.exit_code == 2, res.output
    assert "scheduler" in res.output and "tcp://host:8786" in res.output
