"""The sort-based device join against DuckDB's join (``engine.join``), numpy standing in for
CuPy: the same rows and the same report, on files and in memory, with duplicated and null
keys on the offline and outcome sides, composite, string and integer keys."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("pandas")  # test_join's reference data (not on every GPU image)

from engine.gpu_join import DEVICE_SORT, SortJoinedStream, key_codes
from engine.io import open_table
from engine.join import JoinedStream, JoinSpec
from test_join import KEYS, ON_COLS, SPEC, make_data, rows_of, write_inputs


def _unique_online(on):
    """Online rows without duplicated keys (rows with a null key component all stay)."""
    null = on[KEYS].isna().any(axis=1)
    return on[null | ~on.duplicated(KEYS)].reset_index(drop=True)


def _xp():
    """CuPy on a GPU run of the tests (scripts/gpu_check), else numpy standing in."""
    if os.environ.get("PARITY_REAL_GPU") == "1":
        import cupy

        return cupy
    return np


def _both(on, off, oc, spec, **kw):
    def sources():
        return [open_table(x, side) if x is not None else None for x, side in ((on, "online"), (off, "offline"), (oc, "outcomes"))]

    duck = JoinedStream(*sources(), spec, threads=2, **kw)
    dev = SortJoinedStream(*sources(), spec, xp=_xp(), **kw)
    return duck, duck.read_all(), dev, dev.read_all()


def _assert_same(duck, a, dev, b):
    assert b.schema == a.schema
    assert rows_of(b) == rows_of(a)
    assert dev.report.to_dict() == duck.report.to_dict()
    assert dev.report.complete


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_duckdb_on_files(tmp_path: pathlib.Path, seed: int) -> None:
    on, off, oc = make_data(seed)
    p_on, p_off, p_oc = write_inputs(tmp_path, _unique_online(on), off, oc)
    duck, a, dev, b = _both(p_on, p_off, p_oc, SPEC, batch_size=512)
    assert dev.fallback is None
    assert dev.report.offline_join == dev.report.outcome_join == DEVICE_SORT
    assert dev.report.duplicate_keys["offline"] > 0 and dev.report.duplicate_keys["outcomes"] > 0
    assert dev.report.null_keys > 0
    _assert_same(duck, a, dev, b)


@pytest.mark.parametrize("key", ["int", "string"])
def test_matches_duckdb_single_key_in_memory(key: str) -> None:
    on, off, oc = make_data(7, n_on=1500, n_off=1200, n_oc=1000)
    on = _unique_online(on)
    for df in (on, off, oc):
        if key == "int":  # distinct per (k1, k2), nulls kept
            df["request_id"] = (df["k1"] * 2 + (df["k2"] == "b")).astype("Int64").mask(df["k2"].isna())
        else:
            df["request_id"] = df["k1"].astype("string") + "-" + df["k2"].astype("string")
    on = on[on["request_id"].isna() | ~on.duplicated("request_id")]
    spec = JoinSpec(online_columns=["ts", "country"], value="value", outcome_ts=None)
    duck, a, dev, b = _both(on, off, oc, spec)
    assert dev.fallback is None
    _assert_same(duck, a, dev, b)


def test_offline_only_and_outcomes_only() -> None:
    on, off, oc = make_data(3, n_on=800, n_off=600, n_oc=600)
    on = _unique_online(on)
    spec = JoinSpec(keys=KEYS, online_columns=ON_COLS)
    for args in ((on, off, None), (on, None, oc)):
        duck, a, dev, b = _both(*args, spec)
        assert dev.fallback is None
        _assert_same(duck, a, dev, b)


def test_duplicated_online_keys_fall_back_to_duckdb() -> None:
    on, off, oc = make_data(4, n_on=600, n_off=400, n_oc=400)
    duck, a, dev, b = _both(on, off, oc, SPEC)
    assert dev.fallback and "duplicated online keys" in dev.fallback
    assert dev.report.offline_join == "hash"
    _assert_same(duck, a, dev, b)


def test_key_codes_equal_exactly_when_keys_are_equal() -> None:
    t1 = pa.table({"a": pa.array([1, 2, None, 2]), "b": pa.array(["x", "y", "x", None])})
    t2 = pa.table({"a": pa.array([2, 1, 2]), "b": pa.array(["y", "x", "x"])})
    (c1, c2), (n1, n2) = key_codes([t1, t2], ["a", "b"])
    assert n1.tolist() == [False, False, True, True] and not n2.any()
    assert c1[0] == c2[1] and c1[1] == c2[0] and c2[2] not in (c1[0], c1[1])
