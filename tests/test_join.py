"""Tests of engine.join against a direct pandas computation, on real Parquet/CSV and DuckDB."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import ConfigError, JoinError, SchemaError
from engine.io import open_table
from engine.join import JoinedStream, JoinReport, JoinSpec, join

KEYS = ["k1", "k2"]
ON_COLS = ["ts", "region", "country", "f1"]

# ------------------------------------------------------------------------------ data


def _maybe_null(rng: np.random.Generator, values: Any, p: float) -> pd.Series:
    s = pd.Series(values)
    return s.mask(rng.random(len(s)) < p)


def make_data(
    seed: int, n_on: int = 2000, n_off: int = 1500, n_oc: int = 1500
) -> tuple[pd.DataFrame, ...]:
    """Random online/offline/outcomes with duplicates on every side, null keys, unmatched rows,
    ties in ts and score, a composite key."""
    rng = np.random.default_rng(seed)
    space = n_on // 2  # k1 in [0, space) x k2 in {a, b}: about n_on keys, so many duplicates

    def keys(n: int, lo: int = 0) -> dict[str, pd.Series]:
        return {
            "k1": _maybe_null(rng, rng.integers(lo, lo + space, n), 0.03).astype("Int64"),
            "k2": _maybe_null(rng, rng.choice(["a", "b"], n), 0.02).astype(object),
        }

    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    on = pd.DataFrame(
        {
            **keys(n_on),
            "ts": _maybe_null(rng, t0 + pd.to_timedelta(rng.integers(0, 5, n_on), unit="h"), 0.05),
            "score": _maybe_null(rng, np.round(rng.random(n_on), 1), 0.03),
            "region": rng.choice(["eu", "us", "apac"], n_on),
            "country": _maybe_null(rng, rng.choice(["BR", "DE", "US"], n_on), 0.05).astype(object),
            "f1": _maybe_null(rng, np.round(rng.normal(size=n_on), 0), 0.05),
        }
    )
    on["ts"] = on["ts"].astype("datetime64[us, UTC]")
    # Offline: shifted key range, so some offline keys have no online row and vice versa.
    off = pd.DataFrame(
        {
            **keys(n_off, lo=space // 5),
            "score": _maybe_null(rng, np.round(rng.random(n_off), 2), 0.05),
        }
    )
    oc = pd.DataFrame(
        {
            **keys(n_oc, lo=space // 3),
            "label": _maybe_null(rng, rng.choice([0, 1, 1, 0, 2, -1], n_oc), 0.03).astype("Int64"),
            "value": _maybe_null(rng, np.round(rng.random(n_oc) * 10, 0), 0.1),
            "ts": _maybe_null(rng, t0 + pd.to_timedelta(rng.integers(0, 4, n_oc), unit="D"), 0.1),
        }
    )
    oc["ts"] = oc["ts"].astype("datetime64[us, UTC]")
    return on, off, oc


def reference(
    on: pd.DataFrame,
    off: pd.DataFrame | None,
    oc: pd.DataFrame | None,
    keys: list[str],
    on_cols: list[str],
    value: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The join and its report computed directly in pandas, following the documented rules."""
    null_on = on[keys].isna().any(axis=1)
    ok = on[~null_on]
    order = (["ts"] if "ts" in on_cols else []) + ["score"] + [c for c in on_cols if c != "ts"]
    if off is not None:  # a duplicated key keeps the row closest to its replay score first
        replay = off[~off[keys].isna().any(axis=1)].groupby(keys)["score"].min().rename("__replay")
        ok = ok.join(replay, on=keys)
        ok = ok.assign(__gap=(ok["score"].astype("float64") - ok["__replay"]).abs())
        order = ["__gap"] + order
    ok = ok.sort_values(order, na_position="last", kind="stable").drop_duplicates(keys)
    carried = list(dict.fromkeys(keys + on_cols))
    ok = ok[carried + ["score"]]
    rep: dict[str, Any] = {
        "online_rows": len(on),
        "offline_rows": 0,
        "outcome_rows": 0,
        "duplicate_keys": {"online": int((~null_on).sum() - len(ok)), "offline": 0, "outcomes": 0},
        "null_keys": int(null_on.sum()),
        "offline_without_online": 0,
    }
    if off is not None:
        null_off = off[keys].isna().any(axis=1)
        g = off[~null_off].groupby(keys)["score"].min().rename("offline_score").reset_index()
        g["__has_offline"] = True
        ok = ok.merge(g, on=keys, how="left")
        rep["offline_rows"] = len(off)
        rep["duplicate_keys"]["offline"] = int((~null_off).sum() - len(g))
        online_keys = set(map(tuple, ok[keys].astype(object).to_numpy().tolist()))
        off_keys = set(map(tuple, g[keys].astype(object).to_numpy().tolist()))
        rep["offline_without_online"] = len(off_keys - online_keys) + int(null_off.sum())
    else:
        ok["offline_score"] = np.nan
        ok["__has_offline"] = False
    if oc is not None:
        null_oc = oc[keys].isna().any(axis=1)
        by = [c for c in ["ts", "label", "value"] if c in oc]
        o = oc[~null_oc].sort_values(by, ascending=False, na_position="last", kind="stable")
        o = o.drop_duplicates(keys)[keys + by[by.index("label") :]].assign(__has_outcome=True)
        conflicted = conflicting_keys(oc[~null_oc], keys, "ts" if "ts" in oc else None)
        rep["conflicting_labels"] = len(conflicted)
        hit = o[keys].astype(object).apply(tuple, axis=1).isin(conflicted)
        o["label"] = o["label"].astype("float64").where(~hit.to_numpy(), np.nan)
        ok = ok.merge(o, on=keys, how="left")
        rep["outcome_rows"] = len(oc)
        rep["duplicate_keys"]["outcomes"] = int((~null_oc).sum() - len(o))
    else:
        ok["label"] = np.nan
        ok["value"] = np.nan
        ok["__has_outcome"] = False
    nul = on[null_on][carried + ["score"]].assign(
        offline_score=np.nan, __has_offline=False, label=np.nan, value=np.nan, __has_outcome=False
    )
    out = pd.concat([ok, nul], ignore_index=True)
    out["__has_offline"] = out["__has_offline"].fillna(False).astype(bool)
    out["__has_outcome"] = out["__has_outcome"].fillna(False).astype(bool)
    rep["matched_offline"] = int(out["__has_offline"].sum())
    rep["matched_outcomes"] = int(out["__has_outcome"].sum())
    cols = carried + ["score", "offline_score", "label"] + (["value"] if value else [])
    return out[cols + ["__has_offline", "__has_outcome"]], rep


def conflicting_keys(oc: pd.DataFrame, keys: list[str], ts: str | None) -> set[tuple]:
    """Keys (of non-null key rows) whose rows disagree on the label: two different non-null
    labels among the key's rows, or among its rows of the latest ``ts`` when one is given
    (all its rows when every ``ts`` is null). Loops over the keys: a direct computation."""
    out = set()
    for key, rows in oc.groupby(keys, dropna=False):
        if ts is not None and rows[ts].notna().any():
            rows = rows[rows[ts] == rows[ts].max()]
        if rows["label"].dropna().nunique() > 1:
            out.add(tuple(key))
    return out


def _sort_key(row: dict[str, Any]) -> tuple:
    return tuple((v is None, v if v is not None else 0) for v in row.values())


def rows_of(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=_sort_key)


def assert_same_rows(got: pa.Table, expected: pd.DataFrame) -> None:
    exp = pa.Table.from_pandas(expected, schema=got.schema, preserve_index=False)
    assert got.num_rows == exp.num_rows
    assert rows_of(got) == rows_of(exp)


def assert_report(report: JoinReport, expected: dict[str, Any]) -> None:
    got = report.to_dict()
    for k, v in expected.items():
        assert got[k] == v, (k, got[k], v)
    assert report.complete


def write_inputs(
    tmp: pathlib.Path, on: pd.DataFrame, off: pd.DataFrame, oc: pd.DataFrame
) -> tuple[str, str, str]:
    """Online: hive-partitioned Parquet; offline: CSV; outcomes: one Parquet file."""
    pq.write_to_dataset(
        pa.Table.from_pandas(on, preserve_index=False), tmp / "online", partition_cols=["region"]
    )
    off.to_csv(tmp / "offline.csv", index=False)
    pq.write_table(
        pa.Table.from_pandas(oc, preserve_index=False), tmp / "outcomes.parquet", row_group_size=300
    )
    return str(tmp / "online"), str(tmp / "offline.csv"), str(tmp / "outcomes.parquet")


SPEC = JoinSpec(keys=KEYS, online_columns=ON_COLS, value="value", outcome_ts="ts")


# ------------------------------------------------------------------------------ against pandas


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pandas_on_files(tmp_path: pathlib.Path, seed: int) -> None:
    on, off, oc = make_data(seed)
    p_on, p_off, p_oc = write_inputs(tmp_path, on, off, oc)
    stream = JoinedStream(
        open_table(p_on, "online"),
        open_table(p_off, "offline"),
        open_table(p_oc, "outcomes"),
        SPEC,
        batch_size=512,
        threads=2,
    )
    got = stream.read_all()
    exp, rep = reference(on, off, oc, KEYS, ON_COLS)
    assert_same_rows(got, exp)
    assert_report(stream.report, rep)
    assert stream.report.offline_join == "hash" and stream.report.outcome_join == "hash"
    d = stream.report
    assert (
        d.offline_rows == d.matched_offline + d.offline_without_online + d.duplicate_keys["offline"]
    )
    assert got.num_rows == d.online_rows - d.duplicate_keys["online"]
    # Invalid labels pass through untouched for the accumulator to count.
    assert {2.0, -1.0} <= set(got.column("label").drop_null().to_pylist())


def test_matches_pandas_in_memory_single_key() -> None:
    on, off, oc = make_data(7, n_on=1500, n_off=1200, n_oc=1000)
    for df in (on, off, oc):
        df["request_id"] = df["k1"].astype("string") + "-" + df["k2"].astype("string")
    cols = ["ts", "country"]
    spec = JoinSpec(online_columns=cols, value=None, outcome_ts="ts")
    stream = join(
        open_table(on, "online"),
        open_table(off, "offline"),
        open_table(oc, "outcomes"),
        spec,
        threads=1,
    )
    got = stream.read_all()
    exp, rep = reference(on, off, oc, ["request_id"], cols, value=False)
    assert_same_rows(got, exp)
    assert_report(stream.report, rep)


def test_no_offline_no_outcomes(tmp_path: pathlib.Path) -> None:
    on, _, _ = make_data(3, n_on=800)
    stream = JoinedStream(
        open_table(on, "online"), None, None, JoinSpec(keys=KEYS, online_columns=ON_COLS)
    )
    got = stream.read_all()
    exp, rep = reference(on, None, None, KEYS, ON_COLS, value=False)
    assert_same_rows(got, exp)
    assert_report(stream.report, rep)
    assert (stream.report.offline_join, stream.report.outcome_join) == ("none", "none")


def test_deterministic_across_order_and_partitioning(tmp_path: pathlib.Path) -> None:
    on, off, oc = make_data(4, n_on=1200)
    shuffled = on.sample(frac=1.0, random_state=1).reset_index(drop=True)
    pq.write_table(
        pa.Table.from_pandas(on, preserve_index=False), tmp_path / "one.parquet", row_group_size=100
    )
    pq.write_to_dataset(
        pa.Table.from_pandas(shuffled.assign(part=np.arange(len(on)) % 4), preserve_index=False),
        tmp_path / "parts",
        partition_cols=["part"],
    )
    offs = off.sample(frac=1.0, random_state=2)
    results = []
    for p_on, o in [(tmp_path / "one.parquet", off), (tmp_path / "parts", offs)]:
        s = JoinedStream(
            open_table(p_on, "online"),
            open_table(o, "offline"),
            open_table(oc, "outcomes"),
            SPEC,
            threads=2,
        )
        results.append((rows_of(s.read_all()), s.report.to_dict()))
    assert results[0] == results[1]


# ------------------------------------------------------------------------------ aligned path


def aligned_data(n: int = 5000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rid = pd.Series(rng.permutation(n) * 3, dtype="Int64")
    rid[rng.random(n) < 0.01] = pd.NA
    on = pd.DataFrame(
        {"request_id": rid, "score": rng.random(n), "country": rng.choice(["US", "BR"], n)}
    )
    off = pd.DataFrame({"request_id": rid, "score": rng.random(n)})
    oc = pd.DataFrame(
        {
            "request_id": pd.Series(rng.permutation(n)[: n // 2] * 3, dtype="Int64"),
            "label": rng.integers(0, 2, n // 2),
        }
    )
    return on, off, oc


def write_offline_parts(path: pathlib.Path, off: pd.DataFrame) -> str:
    """Three files with different row-group sizes, so batch boundaries do not line up."""
    path.mkdir()
    cuts = [0, 1234, 3001, len(off)]
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        part = pa.Table.from_pandas(off.iloc[a:b], preserve_index=False)
        pq.write_table(part, path / f"part-{i}.parquet", row_group_size=97 * (i + 1))
    return str(path)


@pytest.mark.parametrize("with_outcomes", [False, True])
def test_aligned_path_taken_and_equal_to_hash(tmp_path: pathlib.Path, with_outcomes: bool) -> None:
    on, off, oc = aligned_data()
    p_on = tmp_path / "on.parquet"
    pq.write_table(pa.Table.from_pandas(on, preserve_index=False), p_on, row_group_size=1000)
    p_off = write_offline_parts(tmp_path / "off", off)
    spec = JoinSpec(online_columns=["country"])
    res = {}
    for mode in ("auto", "never"):
        s = JoinedStream(
            open_table(p_on, "online"),
            open_table(p_off, "offline"),
            open_table(oc, "outcomes") if with_outcomes else None,
            spec,
            aligned=mode,
            batch_size=700,
        )
        res[mode] = (rows_of(s.read_all()), s.report)
    assert res["auto"][1].offline_join == "aligned"
    assert res["never"][1].offline_join == "hash"
    assert res["auto"][0] == res["never"][0]
    assert res["auto"][1].to_dict() == res["never"][1].to_dict()
    exp, rep = reference(
        on, off, oc if with_outcomes else None, ["request_id"], ["country"], value=False
    )
    assert_report(res["auto"][1], rep)


def test_aligned_not_taken_when_a_key_is_out_of_order(tmp_path: pathlib.Path) -> None:
    on, off, oc = aligned_data(seed=1)
    off = off.copy()
    i, j = 10, 4321
    off.iloc[[i, j]] = off.iloc[[j, i]].to_numpy()  # two keys (with their scores) swap places
    p_on = tmp_path / "on.parquet"
    pq.write_table(pa.Table.from_pandas(on, preserve_index=False), p_on)
    p_off = write_offline_parts(tmp_path / "off", off)
    spec = JoinSpec(online_columns=["country"])
    s = JoinedStream(
        open_table(p_on, "online"), open_table(p_off, "offline"), open_table(oc, "outcomes"), spec
    )
    got = s.read_all()
    assert s.report.offline_join == "hash"
    exp, rep = reference(on, off, oc, ["request_id"], ["country"], value=False)
    assert_same_rows(got, exp)
    assert_report(s.report, rep)
    with pytest.raises(JoinError, match="not aligned"):
        JoinedStream(
            open_table(p_on, "online"), open_table(p_off, "offline"), None, spec, aligned="require"
        ).read_all()


def test_aligned_disabled_by_duplicates_or_row_count() -> None:
    on, off, _ = aligned_data(n=1000, seed=2)
    dup_on = on.copy()
    dup_on.loc[5, "request_id"] = dup_on.loc[6, "request_id"]
    for o, f in [(dup_on, off.assign(request_id=dup_on["request_id"])), (on, off.iloc[:-1])]:
        s = JoinedStream(open_table(o, "online"), open_table(f, "offline"), None, JoinSpec())
        got = s.read_all()
        assert s.report.offline_join == "hash"
        exp, rep = reference(o, f, None, ["request_id"], [], value=False)
        assert_same_rows(got, exp)
        assert_report(s.report, rep)


# ------------------------------------------------------------------------------ in place


def test_in_place_label_and_offline_score() -> None:
    on, off, oc = aligned_data(n=2000, seed=3)
    rng = np.random.default_rng(0)
    on["y"] = pd.Series(rng.choice([0, 1, 2], len(on)), dtype="Int64").mask(
        rng.random(len(on)) < 0.1
    )
    on["replay"] = pd.Series(rng.random(len(on))).mask(rng.random(len(on)) < 0.2)
    spec = JoinSpec(online_columns=["country"], online_label="y", online_offline_score="replay")
    s = JoinedStream(
        open_table(on, "online"), open_table(off, "offline"), open_table(oc, "outcomes"), spec
    )
    got = s.read_all()
    assert (s.report.offline_join, s.report.outcome_join) == ("in_place", "in_place")
    r = s.report
    assert r.offline_rows == 0 and r.outcome_rows == 0  # the tables were not read
    assert r.matched_offline == int(on["replay"].notna().sum())
    assert r.matched_outcomes == int(on["y"].notna().sum())
    assert r.null_keys == int(on["request_id"].isna().sum())
    exp = on[["request_id", "country", "score"]].assign(
        offline_score=on["replay"],
        label=on["y"].astype("float64"),
        __has_offline=on["replay"].notna(),
        __has_outcome=on["y"].notna(),
    )
    assert_same_rows(got, exp)


def test_in_place_label_with_hash_offline_and_online_duplicates() -> None:
    on, off, _ = make_data(5, n_on=1000)
    on["y"] = pd.Series(np.arange(len(on)) % 3, dtype="Int64")
    cols = ON_COLS + ["y"]
    spec = JoinSpec(keys=KEYS, online_columns=cols, online_label="y")
    s = JoinedStream(open_table(on, "online"), open_table(off, "offline"), None, spec)
    got = s.read_all()
    assert (s.report.offline_join, s.report.outcome_join) == ("hash", "in_place")
    exp, rep = reference(on, off, None, KEYS, cols, value=False)
    exp["label"] = exp["y"].astype("float64")
    exp["__has_outcome"] = exp["y"].notna()
    rep["matched_outcomes"] = int(exp["__has_outcome"].sum())
    assert_same_rows(got, exp)
    assert_report(s.report, rep)


# ------------------------------------------------------------------------------ streaming


def test_batches_never_exceed_batch_size(tmp_path: pathlib.Path) -> None:
    n = 10_000
    on, off, oc = aligned_data(n=n, seed=4)
    p_on = tmp_path / "on.parquet"
    pq.write_table(pa.Table.from_pandas(on, preserve_index=False), p_on, row_group_size=3000)
    shuffled = off.sample(frac=1.0, random_state=0)
    dup_on = pd.concat([on, on.iloc[:50]], ignore_index=True)
    cases = [
        (on, off, None, "aligned"),  # Arrow only
        (on, off, oc, "aligned"),  # zipped stream through DuckDB
        (on, shuffled, oc, "hash"),
        (dup_on, shuffled, None, "hash"),
        (on.assign(y=1), None, None, "none"),
    ]
    for o, f, c, path in cases:
        s = JoinedStream(
            open_table(p_on if o is on else o, "online"),  # the plain case from a file
            open_table(f, "offline") if f is not None else None,
            open_table(c, "outcomes") if c is not None else None,
            JoinSpec(online_columns=["country"]),
            batch_size=1000,
        )
        sizes = [b.num_rows for b in s]
        assert s.report.offline_join == path
        assert max(sizes) <= 1000 and sum(sizes) == n


def test_report_fills_while_consumed_and_reiteration_is_identical() -> None:
    on, off, oc = aligned_data(n=3000, seed=5)
    s = JoinedStream(
        open_table(on, "online"),
        open_table(off.sample(frac=1.0, random_state=0), "offline"),
        open_table(oc, "outcomes"),
        JoinSpec(),
        batch_size=500,
    )
    it = iter(s)
    first = next(it)
    assert first.num_rows <= 500 and not s.report.complete
    assert s.report.online_rows == 3000  # known before the first batch
    rest = list(it)
    assert s.report.complete
    total1 = (rows_of(pa.Table.from_batches([first, *rest])), s.report.to_dict())
    total2 = (rows_of(s.read_all()), s.report.to_dict())
    assert total1 == total2
    assert set(s.report.to_dict()) == {
        "online_rows",
        "offline_rows",
        "outcome_rows",
        "matched_offline",
        "matched_outcomes",
        "offline_without_online",
        "duplicate_keys",
        "null_keys",
        "conflicting_labels",
    }
    assert set(s.report.to_dict(include_paths=True)) >= {"offline_join", "outcome_join"}


def test_output_types_are_the_online_types(tmp_path: pathlib.Path) -> None:
    n = 40
    on = pa.table(
        {
            "request_id": pa.array(np.arange(n) % 30, pa.int32()),  # duplicates: the DuckDB path
            "score": pa.array(np.linspace(0, 1, n), pa.float32()),
            "cat": pa.array(["x", "y"] * (n // 2)).dictionary_encode(),
            "ts": pa.array(np.arange(n) * 10**9, pa.timestamp("ns", tz="America/New_York")),
            "day": pa.array(np.arange(n, dtype=np.int32), pa.date32()),
            "flag": pa.array([True, False] * (n // 2)),
        }
    )
    oc = pa.table(
        {
            "request_id": pa.array(np.arange(n), pa.int64()),
            "label": pa.array(np.arange(n) % 4 - 1, pa.int8()),
        }
    )
    cols = ["cat", "ts", "day", "flag"]
    for online in (on, on.slice(0, 30)):  # with duplicates (SQL) and without (Arrow)
        s = JoinedStream(
            open_table(online, "online"),
            None,
            open_table(oc, "outcomes"),
            JoinSpec(online_columns=cols),
        )
        got = s.read_all()
        for c in ["request_id", *cols]:
            assert got.schema.field(c).type == on.schema.field(c).type
        for c in ["score", "offline_score", "label"]:
            assert got.schema.field(c).type == pa.float64()
        assert set(got.column("label").to_pylist()) == {-1.0, 0.0, 1.0, 2.0}
    # Earliest ts wins among online duplicates.
    got = JoinedStream(
        open_table(on, "online"), None, None, JoinSpec(online_columns=cols)
    ).read_all()
    by_key = dict(
        zip(
            got.column("request_id").to_pylist(),
            got.column("ts").cast(pa.int64()).to_pylist(),
            strict=True,
        )
    )
    assert all(by_key[k] == k * 10**9 for k in range(30))


# ------------------------------------------------------------------------------ errors


@pytest.fixture
def files(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    on, off, oc = aligned_data(n=200)
    paths = {}
    for name, df in [("online", on), ("offline", off), ("outcomes", oc)]:
        paths[name] = tmp_path / f"{name}.parquet"
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), paths[name])
    return paths


def test_missing_key_column(tmp_path: pathlib.Path, files: dict[str, pathlib.Path]) -> None:
    p = tmp_path / "nokey.parquet"
    pq.write_table(pa.table({"req_id": [1, 2], "score": [0.1, 0.2]}), p)
    with pytest.raises(SchemaError) as e:
        JoinedStream(
            open_table(files["online"], "online"), open_table(p, "offline"), None, JoinSpec()
        )
    msg = str(e.value)
    assert str(p) in msg and "'request_id'" in msg and "'req_id'" in msg and "'score'" in msg


def test_missing_online_column(files: dict[str, pathlib.Path]) -> None:
    with pytest.raises(SchemaError) as e:
        JoinedStream(
            open_table(files["online"], "online"), None, None, JoinSpec(online_columns=["contry"])
        )
    msg = str(e.value)
    assert str(files["online"]) in msg and "'contry'" in msg and "Did you mean 'country'?" in msg


def test_wrong_type_score_and_label(tmp_path: pathlib.Path, files: dict[str, pathlib.Path]) -> None:
    p = tmp_path / "off_str.parquet"
    pq.write_table(pa.table({"request_id": [1, 2], "score": ["0.1", "0.2"]}), p)
    with pytest.raises(SchemaError) as e:
        JoinedStream(
            open_table(files["online"], "online"), open_table(p, "offline"), None, JoinSpec()
        )
    assert str(p) in str(e.value) and "'score'" in str(e.value) and "string" in str(e.value)
    q = tmp_path / "oc_str.parquet"
    pq.write_table(pa.table({"request_id": [1, 2], "label": ["yes", "no"]}), q)
    with pytest.raises(SchemaError, match="label"):
        JoinedStream(
            open_table(files["online"], "online"), None, open_table(q, "outcomes"), JoinSpec()
        )


def test_key_type_mismatch(tmp_path: pathlib.Path, files: dict[str, pathlib.Path]) -> None:
    p = tmp_path / "off_strkey.csv"
    pd.DataFrame({"request_id": ["a", "b"], "score": [0.1, 0.2]}).to_csv(p, index=False)
    with pytest.raises(JoinError) as e:
        JoinedStream(
            open_table(files["online"], "online"), open_table(p, "offline"), None, JoinSpec()
        )
    msg = str(e.value)
    assert str(p) in msg and str(files["online"]) in msg and "'request_id'" in msg
    assert "int64" in msg and "string" in msg


def test_config_errors(files: dict[str, pathlib.Path]) -> None:
    on = open_table(files["online"], "online")
    off = open_table(files["offline"], "offline")
    with pytest.raises(ConfigError, match="label"):
        JoinedStream(on, None, None, JoinSpec(online_score="score", online_columns=["label"]))
    with pytest.raises(ConfigError, match="key"):
        JoinedStream(on, off, None, JoinSpec(keys=[]))
    with pytest.raises(ConfigError):
        JoinedStream(on, off, None, JoinSpec(), batch_size=0)
    with pytest.raises(ConfigError):
        JoinedStream(on, off, None, JoinSpec(), aligned="maybe")  # type: ignore[arg-type]
    # No key at all is fine when nothing is joined.
    s = JoinedStream(on, None, None, JoinSpec(keys=[], online_columns=["country"]))
    assert s.read_all().num_rows == 200 and s.report.null_keys == 0


def test_small_memory_limit_spills(files: dict[str, pathlib.Path]) -> None:
    on, off, oc = aligned_data(n=20_000, seed=9)
    s = JoinedStream(
        open_table(on, "online"),
        open_table(off.sample(frac=1.0, random_state=1), "offline"),
        open_table(oc, "outcomes"),
        JoinSpec(),
        memory_limit="64MB",
        threads=1,
    )
    assert sum(b.num_rows for b in s) == 20_000 and s.report.matched_offline == int(
        on["request_id"].notna().sum()
    )


def test_corrupt_file_found_while_joining(tmp_path: pathlib.Path) -> None:
    # The footer is intact (so opening succeeds) but a data page is not: the error comes from
    # the scan inside DuckDB, and still names the table.
    d = tmp_path / "off"
    d.mkdir()
    t = pa.table({"request_id": np.arange(1000), "score": np.random.default_rng(0).random(1000)})
    pq.write_table(t, d / "a.parquet")
    pq.write_table(t, d / "b.parquet")
    raw = bytearray((d / "b.parquet").read_bytes())
    raw[10:400] = np.random.default_rng(1).bytes(390)
    (d / "b.parquet").write_bytes(bytes(raw))
    src = open_table(d, "offline")
    with pytest.raises(SchemaError, match="offline table"):
        JoinedStream(open_table(t, "online"), src, None, JoinSpec(), aligned="never").read_all()


def test_out_of_memory_is_a_join_error_that_says_what_to_do() -> None:
    rng = np.random.default_rng(0)
    n = 300_000
    on = pa.table({"request_id": rng.permutation(n), "score": rng.random(n)})
    off = pa.table({"request_id": rng.permutation(n), "score": rng.random(n)})
    stream = JoinedStream(
        open_table(on, "online"), open_table(off, "offline"), None, JoinSpec(),
        memory_limit="1MB", aligned="never",
    )
    with pytest.raises(JoinError, match="ran out of memory.*duckdb_memory_limit.*--checkpoint"):
        stream.read_all()


# ------------------------------------------------------------------------------ conflicting labels


def test_conflicting_duplicate_labels_are_counted_and_missing() -> None:
    """A key whose outcome rows disagree on the label is counted and its label is missing
    (never resolved to 1); agreeing duplicates and a later correction (outcome_ts) are not
    conflicts; null keys and unmatched keys follow the table-wide count."""
    t = pd.Timestamp("2026-01-01", tz="UTC")
    h = pd.Timedelta(hours=1)
    on = pd.DataFrame({"request_id": [1, 2, 3, 4, 5, 6], "score": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    oc = pd.DataFrame(
        {
            #             conflict   agree   corrected  tie at latest  no ts    unmatched   null key
            "request_id": [1, 1, 1, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 9, 9, None, None],
            "label": [0, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, None, 0, 0, 1, 0, 1],
            "ts": [t, t, t, t, t, t, t + h, t, t + h, t + h, None, None, t, t, t, t, t],
        }
    )
    oc["request_id"] = oc["request_id"].astype("Int64")
    oc["label"] = oc["label"].astype("Int64")
    oc["ts"] = oc["ts"].astype("datetime64[us, UTC]")

    def run(spec: JoinSpec, table: pd.DataFrame) -> tuple[dict[int, Any], JoinReport]:
        s = JoinedStream(open_table(on, "online"), None, open_table(table, "outcomes"), spec)
        got = s.read_all().to_pydict()
        return dict(zip(got["request_id"], got["label"])), s.report

    # with outcome_ts: 4's rows at its latest time disagree (0 earlier is a correction)
    labels, rep = run(JoinSpec(outcome_ts="ts"), oc)
    assert rep.conflicting_labels == 3  # keys 1, 4 and 9 (unmatched, still counted)
    assert labels == {1: None, 2: 1.0, 3: 1.0, 4: None, 5: 1.0, 6: 0.0}
    assert rep.matched_outcomes == 6 and rep.duplicate_keys["outcomes"] == 8
    assert rep.to_dict()["conflicting_labels"] == 3

    # without a time column every row of a key counts: 3's correction is a conflict too
    labels, rep = run(JoinSpec(), oc.drop(columns="ts"))
    assert rep.conflicting_labels == 4
    assert labels == {1: None, 2: 1.0, 3: None, 4: None, 5: 1.0, 6: 0.0}

    # no duplicates: nothing to resolve, nothing counted
    labels, rep = run(JoinSpec(), oc.drop(columns="ts").drop_duplicates("request_id"))
    assert rep.conflicting_labels == 0 and labels[1] == 0.0


@pytest.mark.parametrize("offline_join", ["hash", "aligned"])
def test_slice_codes_computed_in_the_join_give_the_same_check(monkeypatch, offline_join):
    """The SQL join hands string slice columns and categorical features over as codes
    (``JoinSpec.encoded``): top values, other values the baseline saw, values it never saw,
    nulls, quotes and non-ASCII text give the same findings and data-quality counts as
    Arrow's encoding of the strings."""
    import engine.pipeline as P
    from engine.config import Config
    from engine.expectation import build_baseline

    rng = np.random.default_rng(5)
    n = 6000

    def table(seed: int, places: list) -> pa.Table:
        r = np.random.default_rng(seed)
        p = r.beta(2, 5, n)
        return pa.table(
            {
                "request_id": np.arange(n),
                "score": p,
                "label": (r.random(n) < p).astype(np.int8),
                "place": pa.array(list(r.choice(np.array(places, dtype=object), n)), pa.string()),
                "channel": pa.array([None if x == "" else x for x in r.choice(["web", "app", "", "O'Hare"], n)], pa.string()),
            }
        )

    seen = ["BR", "US", "São Paulo", "O'Hare", "rare-1", "rare-2"]
    evaluation = table(1, seen + ["BR"] * 20 + ["US"] * 10)
    online = table(2, seen + ["never-seen", "日本", ""])
    online = online.set_column(3, "place", pa.array([None if v == "" else v for v in online["place"].to_pylist()], pa.string()))
    offline = pa.table({"request_id": np.arange(n), "score": np.where(rng.random(n) < 0.1, rng.random(n), online["score"].to_numpy())})
    if offline_join == "hash":
        offline = offline.take(rng.permutation(n))
    outcomes = online.select(["request_id", "label"])
    online = online.drop_columns(["label"])
    config = Config(slices=["place"], features={"channel": "categorical"}, thresholds=[0.3], top_k=2)
    bl = build_baseline(evaluation, config)
    real, used = P._sql_encoding, []
    monkeypatch.setattr(P, "_sql_encoding", lambda *a: used.append(real(*a)) or used[-1])
    coded = P.run_check(bl, online, offline=offline, outcomes=outcomes, bootstrap=50)
    assert {e[0] for e in used if e is not None} == {"place", "channel"}  # both coded in SQL
    monkeypatch.setattr(P, "_sql_encoding", lambda *a: None)
    plain = P.run_check(bl, online, offline=offline, outcomes=outcomes, bootstrap=50)
    assert coded.run["joins"]["offline"] == offline_join
    assert [f.to_dict() for f in coded.findings] == [f.to_dict() for f in plain.findings]
    assert coded.data_quality == plain.data_quality
    assert any(f.metric == "unseen_value_rate" and (f.value or 0) > 0 for f in coded.findings)


def test_code_sql_matches_the_codes_of_the_strings():
    """``code_sql`` + ``code_dictionary`` encode as ``categorical_codes`` does the strings."""
    import duckdb

    from engine.encode import CategoricalCodes, categorical_codes
    from engine.join import code_dictionary, code_sql, encoding

    values = ["a", "O'Hare", None, "é", "b", "zz", "a", "x'", None, "c"]
    col = pa.array(values, pa.string())
    for codes in (
        CategoricalCodes(("a", "O'Hare"), frozenset({"a", "O'Hare", "b", "x'"})),
        CategoricalCodes(("a",), None),
        CategoricalCodes(("a", "b", "c"), frozenset({"a", "b", "c"})),
        CategoricalCodes((), frozenset({"a"})),
    ):
        _, vals, others = encoding("c", codes.values, codes.seen)
        con = duckdb.connect()
        con.register("t", pa.table({"c": col}))
        got = con.sql(f"SELECT {code_sql('c', vals, others)} AS k FROM t").to_arrow_table().column("k").combine_chunks()
        dictionary = pa.DictionaryArray.from_arrays(got, code_dictionary(vals, others))
        want_codes, want_unseen = categorical_codes(col, codes)
        got_codes, got_unseen = categorical_codes(dictionary, codes)
        assert got_codes.tolist() == want_codes.tolist(), codes
        assert got_unseen.tolist() == want_unseen.tolist(), codes
