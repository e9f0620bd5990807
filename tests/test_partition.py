"""The partitioned plan (engine/partition.py) and checkpoint/resume (engine/checkpoint.py).

Split by key bucket, join and accumulate each bucket, merge: the statistics and the join
accounting equal the single-process run's bit for bit, for any number of buckets or
fragments, on data with duplicates on every side, null keys, unmatched rows and a composite
key whose parts have different Arrow types in different tables. A checkpointed run killed
mid-way (SIGKILL, at a deterministic point) and started again gives the uninterrupted result.
"""

from __future__ import annotations

import json
import shutil
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_join import SPEC, make_data, write_inputs

from engine.config import Config
from engine.encode import LayoutBuilder
from engine.errors import ConfigError
from engine.expectation import build_baseline
from engine.io import open_table
from engine.join import JoinedStream
from engine.partition import (
    BucketJob,
    Partial,
    accumulate_joined,
    bucket_of,
    fragments,
    join_bucket,
    key_kinds,
    merge_partials,
    split_fragment,
    split_table,
    wire_schema,
)
from engine.pipeline import run_check
from engine.stats import Accumulator
from engine.synthetic import generate
from kernels import get_kernels

SIDES = ("online", "offline", "outcomes")
REPORT_COUNTS = (
    "online_rows", "offline_rows", "outcome_rows", "matched_offline", "matched_outcomes",
    "offline_without_online", "null_keys", "duplicate_keys",
)


# ---------------------------------------------------------------------------- bucketing


def test_equal_keys_share_a_bucket_whatever_their_type() -> None:
    ints = [0, 1, -5, 2**40, 7, None]
    as_int32 = pa.table({"k": pa.array([0, 1, -5, 7, 7, None], pa.int32())})
    as_int64 = pa.table({"k": pa.array([0, 1, -5, 7, 7, None], pa.int64())})
    assert np.array_equal(
        bucket_of(as_int32, ["k"], ["int"], 13), bucket_of(as_int64, ["k"], ["int"], 13)
    )
    # a float key in one table: every table hashes the float64 value (-0.0 == 0.0)
    f = pa.table({"k": pa.array([0.0, -0.0, 1.0, -5.0, None])})
    i = pa.table({"k": pa.array([0, 0, 1, -5, None], pa.int16())})
    assert np.array_equal(bucket_of(f, ["k"], ["float"], 13), bucket_of(i, ["k"], ["float"], 13))
    words = ["a", "bb", "", "ünï", None]
    for t in (pa.string(), pa.large_string()):
        got = bucket_of(pa.table({"k": pa.array(words, t)}), ["k"], ["bytes"], 11)
        dic = pa.table({"k": pa.array(words).dictionary_encode()})
        assert np.array_equal(got, bucket_of(dic, ["k"], ["bytes"], 11))
    # nulls go to bucket 0; the buckets are spread
    b = bucket_of(pa.table({"k": pa.array(ints)}), ["k"], ["int"], 64)
    assert b[-1] == 0
    spread = bucket_of(pa.table({"k": pa.array(np.arange(64_000))}), ["k"], ["int"], 64)
    counts = np.bincount(spread, minlength=64)
    assert counts.min() > 800 and counts.max() < 1200


def test_timestamps_and_dates_share_buckets() -> None:
    import datetime as dt

    day = pa.array([dt.date(2026, 1, 2)], pa.date32())
    ts = pa.array([dt.datetime(2026, 1, 2)], pa.timestamp("us"))
    ms = pa.array([dt.datetime(2026, 1, 2)], pa.timestamp("ms"))
    got = {int(bucket_of(pa.table({"k": a}), ["k"], ["time"], 97)[0]) for a in (day, ts, ms)}
    assert len(got) == 1


def test_key_kinds_follow_every_table() -> None:
    a = open_table(pa.table({"k": pa.array([1], pa.int32()), "s": ["x"]}), "online")
    b = open_table(pa.table({"k": pa.array([1.0]), "s": pa.array(["x"]).dictionary_encode()}), "offline")
    assert key_kinds(["k", "s"], [a, b]) == ("float", "bytes")
    assert key_kinds(["k"], [a]) == ("int",)


# --------------------------------------------------------------- partitioned == single


def _layout():
    rng = np.random.default_rng(7)
    n = 3000
    ev = pa.table({
        "score": rng.random(n),
        "label": (rng.random(n) < 0.4).astype(np.int8),
        "country": rng.choice(["BR", "DE", "US"], n),
        "region": rng.choice(["eu", "us", "apac"], n),
        "f1": rng.normal(size=n),
    })
    builder = LayoutBuilder(["country", "region"], {"f1": "numeric"}, [0.3, 0.6])
    builder.update(ev)
    return builder.build()


LAYOUT = _layout()


def _single(on, off, oc) -> Partial:
    stream = JoinedStream(on, off, oc, SPEC)
    acc = Accumulator(LAYOUT, get_kernels("cpu"), paired=True, with_value=True)
    return Partial(accumulate_joined(stream, acc), stream.report)


def _partitioned(on, off, oc, n_buckets: int, fragment_rows: int) -> Partial:
    """The plan run in memory: split every fragment, join each bucket, merge (reversed, to
    show that the order of the merge does not matter)."""
    stream = JoinedStream(on, off, oc, SPEC)
    job = BucketJob.for_join(
        stream, LAYOUT, n_buckets, backend="cpu", paired=True, with_value=True, batch_size=256
    )
    sources = {"online": on, "offline": off, "outcomes": oc}
    pieces = {
        s: [split_fragment(job, f, s) for f in fragments(s, src, rows=fragment_rows)]
        for s, src in sources.items()
    }
    buckets = [
        join_bucket(job, *[[p[j] for p in pieces[s]] for s in SIDES]) for j in range(n_buckets)
    ]
    return merge_partials(reversed(buckets))


def assert_same(a: Partial, b: Partial) -> None:
    assert a.stats.equal(b.stats)
    assert a.stats.rows == b.stats.rows
    for name in REPORT_COUNTS:
        assert getattr(a.report, name) == getattr(b.report, name), name


@pytest.mark.parametrize("seed", [0, 1])
def test_partitioned_equals_single_process_on_files(tmp_path: pathlib.Path, seed: int) -> None:
    """Online: hive-partitioned Parquet (several files); offline: CSV; outcomes: Parquet."""
    paths = write_inputs(tmp_path, *make_data(seed))
    on, off, oc = (open_table(p, s) for p, s in zip(paths, SIDES))
    assert len(on.files) > 1
    single = _single(on, off, oc)
    assert single.report.duplicate_keys["online"] and single.report.duplicate_keys["offline"]
    assert single.report.null_keys and single.report.offline_without_online
    # outcomes: 300-row row groups, read as fragments of whole row groups up to 700 rows
    assert len(fragments("outcomes", oc, 700)) == -(-oc.count_rows() // 600)
    for n_buckets, fragment_rows in ((1, 1 << 20), (4, 700), (13, 1 << 20)):
        assert_same(single, _partitioned(on, off, oc, n_buckets, fragment_rows))


def test_parquet_strings_travel_as_dictionaries(tmp_path: pathlib.Path) -> None:
    """Non-key string columns of Parquet inputs are read, split and moved as dictionaries
    (keys, hive columns and other formats as they are); the pieces are single-dictionary
    tables, as the checkpoint's Arrow IPC files need."""
    paths = write_inputs(tmp_path, *make_data(0))
    on, off, oc = (open_table(p, s) for p, s in zip(paths, SIDES))
    job = BucketJob.for_join(JoinedStream(on, off, oc, SPEC), LAYOUT, 3, backend="cpu", paired=True)
    online = job.schemas["online"]
    assert online.field("country").type == pa.dictionary(pa.int32(), pa.string())
    assert online.field("k2").type == pa.string()  # a key: hashed and joined by its bytes
    assert not pa.types.is_dictionary(online.field("region").type)  # the hive column
    assert not any(pa.types.is_dictionary(f.type) for f in job.schemas["offline"])  # CSV
    for fragment in fragments("online", on, 10_000):
        for piece in split_fragment(job, fragment, "online"):
            assert piece.schema == online
            assert all(c.num_chunks <= 1 for c in piece.columns)


def test_high_cardinality_strings_travel_plain(tmp_path: pathlib.Path) -> None:
    """A string column of many distinct values stays a plain string (read as a dictionary
    it is slower, and every piece would carry the whole dictionary)."""
    n = 20_000
    rng = np.random.default_rng(3)
    pq.write_table(
        pa.table({
            "k1": np.arange(n),
            "few": rng.choice(["a", "b", "c"], n),
            "many": [f"user-{x:016x}" for x in rng.integers(0, 2**62, n)],
        }),
        tmp_path / "t.parquet",
    )
    source = open_table(str(tmp_path / "t.parquet"), "online")
    schema = wire_schema(source, source.schema, ["k1"])
    assert schema.field("few").type == pa.dictionary(pa.int32(), pa.string())
    assert schema.field("many").type == pa.string()
    assert schema.field("k1").type == pa.int64()


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_buckets=st.integers(1, 9),
    fragment_rows=st.integers(97, 2500),
)
def test_partitioned_equals_single_for_any_buckets_and_fragments(seed, n_buckets, fragment_rows) -> None:
    """In-memory tables cut into fragments of any size, any number of buckets."""
    on_df, off_df, oc_df = make_data(seed, n_on=800, n_off=600, n_oc=600)
    # the offline key parts with other Arrow types than the online ones (int32 / large_string)
    off_t = pa.Table.from_pandas(off_df, preserve_index=False)
    off_t = off_t.set_column(0, "k1", off_t.column("k1").cast(pa.int32()))
    off_t = off_t.set_column(1, "k2", off_t.column("k2").cast(pa.large_string()))
    on, off, oc = open_table(on_df, "online"), open_table(off_t, "offline"), open_table(oc_df, "outcomes")
    assert_same(_single(on, off, oc), _partitioned(on, off, oc, n_buckets, fragment_rows))


def test_merge_of_partials_is_exact_and_leaves_inputs_alone(tmp_path: pathlib.Path) -> None:
    on, off, oc = (open_table(d, s) for d, s in zip(make_data(3, 600, 500, 500), SIDES))
    parts = [_partitioned(on, off, oc, 3, 200), _partitioned(on, off, oc, 5, 10_000)]
    before = parts[0].stats.copy()
    total = merge_partials(parts)
    assert parts[0].stats.equal(before)
    assert total.report.online_rows == 2 * parts[0].report.online_rows
    assert total.stats.equal(parts[0].stats.merge(parts[1].stats))


# ------------------------------------------------------------------ checkpoint and resume


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A small synthetic deployment with a multi-file online directory and its baseline."""
    root = tmp_path_factory.mktemp("ckpt")
    sc = generate(root / "data", rows=30_000, seed=4, eval_rows=20_000)
    online = root / "online"
    online.mkdir()
    table = pq.read_table(sc.online)
    for i, start in enumerate(range(0, table.num_rows, 7_500)):
        # 3 row groups a file: with partition_rows 5,000, fragments of 2 and of 1 row groups
        pq.write_table(table.slice(start, 7_500), online / f"part-{i}.parquet", row_group_size=2_500)
    config = Config(slices=sc.slices, features=sc.features, thresholds=sc.thresholds, partition_rows=5_000)
    build_baseline(sc.evaluation, config, out=root / "bl", backend="cpu")
    return {"root": root, "online": str(online), "offline": sc.offline, "outcomes": sc.outcomes,
            "baseline": str(root / "bl"), "config": config}


def _check(dep, **kw):
    tables = {side: kw.pop(side, dep[side]) for side in ("online", "offline", "outcomes")}
    return run_check(
        dep["baseline"], tables.pop("online"), **tables,
        bootstrap=100, seed=3, backend="cpu", config=dep["config"], **kw,
    )


def comparable(result) -> str:
    """The JSON result without what differs between two runs of the same check (run id,
    times, how it was executed)."""
    d = json.loads(result.to_json())
    return json.dumps({k: v for k, v in d.items() if k != "run"}, sort_keys=True)


@pytest.fixture(scope="module")
def uninterrupted(deployment):
    return comparable(_check(deployment))


def test_checkpointed_run_equals_the_stream_and_resumes_from_its_records(deployment, uninterrupted, tmp_path):
    first = _check(deployment, checkpoint=tmp_path / "ck")
    assert comparable(first) == uninterrupted
    ex = first.run["execution"]
    assert ex["mode"] == "checkpoint" and not ex["resumed"] and ex["buckets"] == 6
    again = _check(deployment, checkpoint=tmp_path / "ck")
    assert comparable(again) == uninterrupted
    assert again.run["execution"]["buckets_reused"] == 6
    assert again.run["execution"]["fragments_reused"] == again.run["execution"]["fragments"]


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from engine.config import Config
    from engine.pipeline import run_check
    config = Config.model_validate_json(sys.argv[6])
    seen = []
    def progress(done, total):
        seen.append(done)
        if len(seen) == int(sys.argv[7]):
            os.kill(os.getpid(), signal.SIGKILL)  # a hard kill, no cleanup of any kind
    run_check(sys.argv[1], sys.argv[2], offline=sys.argv[3], outcomes=sys.argv[4], bootstrap=100,
              seed=3, backend="cpu", config=config, checkpoint=sys.argv[5], progress=progress)
    """
)


def test_run_killed_midway_resumes_to_the_uninterrupted_result(deployment, uninterrupted, tmp_path):
    ck = tmp_path / "ck"
    args = [deployment["baseline"], deployment["online"], deployment["offline"], deployment["outcomes"],
            str(ck), deployment["config"].model_dump_json(), "4"]
    proc = subprocess.run([sys.executable, "-c", KILLER, *args], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert len(list((ck / "bucket").glob("*.npz"))) == 4  # killed after the 4th of 6 buckets
    resumed = _check(deployment, checkpoint=ck)
    ex = resumed.run["execution"]
    assert ex["resumed"] and ex["buckets_reused"] == 4 and ex["fragments_reused"] == ex["fragments"]
    assert comparable(resumed) == uninterrupted


def test_a_changed_input_fragment_is_recomputed(deployment, tmp_path):
    online = tmp_path / "online"
    online.mkdir()
    for f in sorted(pathlib.Path(deployment["online"]).iterdir()):
        (online / f.name).write_bytes(f.read_bytes())
    ck = tmp_path / "ck"
    _check(deployment, online=str(online), checkpoint=ck)
    # the scores of one file change (a re-written partition): only it is split again, and
    # the result is that of a fresh run on the new data
    part = online / "part-1.parquet"
    t = pq.read_table(part)
    t = t.set_column(t.schema.get_field_index("score"), "score", pa.compute.multiply(t.column("score"), 0.5))
    pq.write_table(t, part, row_group_size=2_500)  # its two fragments change
    resumed = _check(deployment, online=str(online), checkpoint=ck)
    ex = resumed.run["execution"]
    assert ex["resumed"] and ex["fragments_reused"] == ex["fragments"] - 2 and ex["buckets_reused"] == 0
    assert comparable(resumed) == comparable(_check(deployment, online=str(online)))
    assert len(list((ck / "split").iterdir())) == ex["fragments"]  # the old pieces are gone


def test_checkpoint_of_other_arguments_is_not_reused(deployment, tmp_path):
    ck = tmp_path / "ck"
    _check(deployment, checkpoint=ck)
    # without the replay: another plan, so nothing of the first run is reused
    r = _check(deployment, offline=None, checkpoint=ck)
    assert not r.run["execution"]["resumed"]


def test_checkpoint_directory_must_be_a_checkpoint(deployment, tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty and holds no parity checkpoint"):
        _check(deployment, checkpoint=tmp_path / "ck")
    assert (tmp_path / "ck" / "precious.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="Use one or the other"):
        _check(deployment, checkpoint=tmp_path / "ck2", scheduler="local")


def test_cli_checkpoint(deployment, uninterrupted, tmp_path):
    from typer.testing import CliRunner

    from engine.cli import app

    cfg = tmp_path / "parity.yaml"
    cfg.write_text("partition_rows: 5000\n")
    args = [
        "check", "--baseline", deployment["baseline"], "--online", deployment["online"],
        "--offline", deployment["offline"], "--outcomes", deployment["outcomes"],
        "--bootstrap", "100", "--seed", "3", "--backend", "cpu", "--config", str(cfg),
        "--checkpoint", str(tmp_path / "ck"), "--json", str(tmp_path / "r.json"), "--quiet",
    ]
    for resumed in (False, True):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 1, res.output  # alerts: the deployment has injected problems
        d = json.loads((tmp_path / "r.json").read_text())
        assert d["run"]["execution"]["resumed"] is resumed
        assert d["findings"] == json.loads(uninterrupted)["findings"]
    res = CliRunner().invoke(app, args[:-3] + ["--scheduler", "local", "--quiet"])
    assert res.exit_code == 2 and "Use one or the other" in res.output


# ------------------------------------------------- co-partitioned on a hive partition column


@pytest.fixture(scope="module")
def by_day(deployment, tmp_path_factory):
    """The deployment written as day=... folders, each request under one day in every table
    (its day is a function of its key)."""
    root = tmp_path_factory.mktemp("days")
    paths = {}
    for side in ("online", "offline", "outcomes"):
        t = pq.read_table(deployment[side])
        day = pa.array(np.asarray(t.column("request_id").fill_null(0)) % 3 + 1).cast(pa.string())
        t = t.append_column("day", pa.compute.binary_join_element_wise("2026-11-0", day, ""))
        pq.write_to_dataset(t, root / side, partition_cols=["day"])
        paths[side] = str(root / side)
    return paths


def test_partition_column_runs_value_by_value(deployment, by_day, tmp_path):
    config = deployment["config"].with_overrides(partition_column="day")
    single = comparable(_check({**deployment, **by_day}))
    ck = tmp_path / "ck"
    first = _check({**deployment, **by_day, "config": config}, checkpoint=ck)
    assert comparable(first) == single
    assert first.run["execution"]["buckets"] == 3 and not list((ck / "split").iterdir())
    # a new day arrives: the three days already done are reused, only the new one is joined
    new = tmp_path / "new"
    for side, path in by_day.items():
        shutil.copytree(path, new / side)
        t = pq.read_table(pathlib.Path(path) / "day=2026-11-01")
        t = t.set_column(0, "request_id", pa.compute.add(t.column("request_id"), 1))  # new keys
        pq.write_to_dataset(t.append_column("day", pa.array(["2026-11-04"] * t.num_rows)),
                            new / side, partition_cols=["day"])
    grown = {s: str(new / s) for s in by_day}
    resumed = _check({**deployment, **grown, "config": config}, checkpoint=ck)
    assert resumed.run["execution"]["buckets"] == 4 and resumed.run["execution"]["buckets_reused"] == 3
    assert comparable(resumed) == comparable(_check({**deployment, **grown}))


def test_partition_column_must_partition_every_table(deployment, by_day, tmp_path):
    config = deployment["config"].with_overrides(partition_column="day")
    with pytest.raises(ConfigError, match="not a directory partitioned by it"):
        _check({**deployment, **by_day, "outcomes": deployment["outcomes"], "config": config},
               checkpoint=tmp_path / "ck")


def test_without_a_key_rows_are_dealt_round_robin(deployment, tmp_path):
    """An online log alone, with no key column: nothing to join or deduplicate."""
    t = pq.read_table(deployment["online"]).drop_columns(["request_id"])
    pq.write_table(t, tmp_path / "online.parquet", row_group_size=4_000)
    dep = {**deployment, "online": str(tmp_path / "online.parquet"), "offline": None, "outcomes": None}
    single = _check(dep)
    parted = _check(dep, checkpoint=tmp_path / "ck")
    assert parted.run["execution"]["buckets"] == 6
    assert comparable(parted) == comparable(single)
    sizes = [len(p) for p in split_table(t, [], [], 6)]
    assert max(sizes) - min(sizes) <= 1


def test_unwritable_checkpoint_directory_is_exit_2_material(deployment, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match="checkpoint"):
        _check(deployment, checkpoint=tmp_path / "file" / "ck")
