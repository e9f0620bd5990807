"""Checks over time: windows in one pass, control charts, onset, label horizon."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

import gate_world as gw
from engine.config import Config
from engine.errors import ConfigError, SchemaError
from engine.expectation import build_baseline
from engine.pipeline import run_check
from engine.timeline import DESIGNED_FALSE_ALARM_RATE, control_series, onset


def _check(w, **kw):
    bl = build_baseline(w.evaluation, gw.config())
    kw.setdefault("bootstrap", 200)
    return run_check(bl, w.online, offline=w.offline, outcomes=w.outcomes, time_column="ts", **kw)


def test_a_step_change_on_day_k_has_its_onset_on_day_k():
    """A serving bug in C01 from day 8 of 14: one incident, on C01, started on day 8 and
    ongoing; no C01 window before day 8 is flagged; no other slice's window alerts
    outside what C01 explains."""
    w = gw.world(140_000, seed=31, days=14, from_day=8, skew={"C01": 0.15})
    res = _check(w, window="1d")
    assert res.run["windows"]["count"] == 14
    assert [(i["slice"], i["cause"]) for i in res.incidents] == [({"country": "C01"}, "serving_skew")]
    inc = res.incidents[0]
    assert inc["started"] == "2026-11-09T00:00:00Z"  # day 8 (day 0 is 2026-11-01)
    assert inc["ongoing"] is True and inc["last_seen"] == "2026-11-14T00:00:00Z"
    assert [x["start"][:10] for x in inc["windows"]] == [f"2026-11-{d:02d}" for d in range(9, 15)]
    early = [f for f in res.findings if f.window is not None and f.window["start"] < "2026-11-09"
             and f.slice == {"country": "C01"} and f.status in ("alert", "warn")]
    assert early == []
    # the whole period's findings are there, and every window's next to them
    whole = [f for f in res.findings if f.window is None]
    assert whole and len(res.findings) > 10 * len(whole)
    charts = res.extras["control_charts"]
    flips = [c for c in charts if c["metric"] == "flip_rate" and c["threshold"] == 0.3]
    assert flips and flips[0]["onset"] == "2026-11-09T00:00:00Z"
    assert [p["signal"] for p in flips[0]["points"]][:9] == [False] * 9
    assert json.loads(res.to_json())["control_charts"]


def test_clean_windows_stay_quiet_at_the_designed_rate():
    """30 clean daily windows: no incident, and the share of (test, window) points that
    signal is at or below the designed false-alarm rate."""
    w = gw.world(150_000, seed=32, days=30)
    res = _check(w, window="1d")
    assert res.incidents == []
    points = [p for series in control_series([f for f in res.findings if f.window]).values() for p in series]
    assert len(points) > 10_000
    rate = np.mean([p["signal"] for p in points])
    assert rate <= DESIGNED_FALSE_ALARM_RATE, rate


def test_a_single_bad_window_is_a_warning_not_an_incident_that_pages():
    series = control_series([])
    assert series == {}
    # one window far beyond, then quiet: never a signal (k of n needs two)
    from engine.compare import Finding

    def f(day, p):
        return Finding("auc", "online", {}, {"start": f"2026-11-{day:02d}T00:00:00Z", "end": ""}, None, None,
                       0.7, 0.8, -0.1, [-0.2, 0.0], {"kind": "absolute", "value": 0.02, "bad": "decrease"},
                       1000, p, "alert" if p < 0.01 else "ok", None, 0.1)

    pts = list(control_series([f(d, 1e-12 if d == 5 else 0.9) for d in range(1, 11)]).values())[0]
    assert not any(p["signal"] for p in pts) and onset(pts) is None


def test_windows_younger_than_the_label_horizon_are_not_judged_on_outcomes():
    """Outcomes of the last 3 days have not arrived (label horizon 3d): those windows say
    so instead of alerting, label coverage is judged on the rows that are due, and nothing
    pages."""
    w = gw.world(140_000, seed=33, days=14)
    on = w.online.to_pandas()
    late = on["ts"] >= np.datetime64("2026-11-12")
    keep = ~np.isin(w.outcomes["request_id"].to_numpy(), on.loc[late, "request_id"].to_numpy())
    w.outcomes = w.outcomes.filter(pa.array(keep))
    res = _check(w, window="1d", config=None)
    # without a horizon, the missing recent outcomes are a (data-quality) incident
    assert any(i["metrics"] == ["label_coverage"] for i in res.incidents)
    cfg = gw.config(window="1d", label_horizon="3d")
    bl = build_baseline(w.evaluation, gw.config())
    res = run_check(bl, w.online, offline=w.offline, outcomes=w.outcomes, time_column="ts", config=cfg, bootstrap=200)
    assert res.incidents == [], res.incidents
    young = [f for f in res.findings if f.window and f.window["start"] >= "2026-11-12" and f.metric == "auc"]
    assert young and all(f.status == "insufficient_data" and "label horizon" in f.reason for f in young)
    cov = next(f for f in res.findings if f.window is None and f.metric == "label_coverage" and f.slice == {})
    assert cov.status == "ok" and cov.value > 0.99


def test_label_coverage_short_beyond_the_horizon_is_label_delay():
    w = gw.world(140_000, seed=34, days=14, label_missing=0.10)
    cfg = gw.config(window="1d", label_horizon="2d")
    bl = build_baseline(w.evaluation, gw.config())
    res = run_check(bl, w.online, offline=w.offline, outcomes=w.outcomes, time_column="ts", config=cfg, bootstrap=200)
    assert [(i["slice"], i["cause"]) for i in res.incidents] == [({}, "label_delay")]


@pytest.mark.parametrize(
    "case, error, pattern",
    [
        ("missing", SchemaError, r"'nope' is not a column"),
        ("not_time", SchemaError, r"country"),
        ("all_null", SchemaError, r"empty or all null"),
        ("bad_window", ConfigError, r"window"),
        ("too_many", ConfigError, r"windows, more than the 1000"),
    ],
)
def test_bad_time_input_is_an_error_naming_it(case, error, pattern):
    w = gw.world(5_000, seed=35, days=3)
    bl = build_baseline(w.evaluation, gw.config())
    online, column, window = w.online, "ts", "1d"
    if case == "missing":
        column = "nope"
    elif case == "not_time":
        column = "country"
    elif case == "all_null":
        online = online.set_column(online.schema.get_field_index("ts"), "ts", pa.nulls(online.num_rows, pa.timestamp("s")))
    elif case == "bad_window":
        window = "3 fortnights"
    elif case == "too_many":
        window = "1m"
    with pytest.raises(error, match=pattern):
        run_check(bl, online, time_column=column, window=window, bootstrap=0)


@pytest.mark.parametrize(
    "column",
    [
        pa.array([1_700_000_000_000, None, 1_700_086_399_999, 1_699_999_999_001], pa.int64()).cast(pa.timestamp("ms")),
        pa.array([1_700_000_000_000_000, None, 1_700_086_399_999_999], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.array([1_700_000_000_000_000_000, 1_700_086_399_999_999_999], pa.int64()).cast(pa.timestamp("ns")),
        pa.array([19_000, None, 19_010], pa.int32()).cast(pa.date32()),
        pa.array([1_700_000_000, None, 1_700_086_399], pa.int64()),
        pa.array([1.7e9, float("nan"), 1.7000863e9]),
    ],
    ids=["ms", "us-utc", "ns", "date", "int-seconds", "float-seconds"],
)
def test_the_time_range_from_parquet_statistics_equals_a_scan(tmp_path, column):
    """The windows' range is read from the Parquet footers where they hold it exactly (no
    scan of the time column), else scanned: the same windows either way."""
    import pyarrow.parquet as pq

    from engine.io import open_table
    from engine.pipeline import _window_spec

    table = pa.table({"ts": column})
    path = tmp_path / "online.parquet"
    pq.write_table(table, path, row_group_size=2)
    cfg = Config(slices=["country"], window="6h", columns={"online": {"ts": "ts"}})
    from_file = _window_spec(cfg, open_table(str(path), "online"), str(path))
    scanned = _window_spec(cfg, open_table(table, "online"), table)
    assert from_file == scanned


def test_an_all_null_time_column_in_parquet_is_still_refused(tmp_path):
    import pyarrow.parquet as pq

    from engine.errors import SchemaError
    from engine.io import open_table
    from engine.pipeline import _window_spec

    path = tmp_path / "online.parquet"
    pq.write_table(pa.table({"ts": pa.array([None, None], pa.timestamp("us"))}), path)
    cfg = Config(slices=["country"], window="6h", columns={"online": {"ts": "ts"}})
    with pytest.raises(SchemaError, match="all null"):
        _window_spec(cfg, open_table(str(path), "online"), str(path))


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_each_rows_window_is_numpys_formula_on_its_seconds(unit):
    """``WindowSpec.index`` on timestamps (one compiled pass over the ticks) places every
    row where the float formula on ``epoch_seconds`` does: window edges, just inside and
    outside them, nulls, times before the first and after the last window."""
    from engine.stats import WindowSpec, epoch_seconds

    per_s = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    spec = WindowSpec("ts", origin=1_700_000_000 - 1_700_000_000 % 3600, width=3600, count=30)
    rng = np.random.default_rng(0)
    seconds = rng.integers(spec.origin - 7200, spec.origin + 32 * 3600, 20_000)
    edges = spec.origin + 3600 * np.arange(-1, 32)
    ticks = np.concatenate([seconds * per_s + rng.integers(0, per_s, seconds.size), edges * per_s, edges * per_s - 1])
    column = pa.array(ticks, pa.int64()).cast(pa.timestamp(unit))
    column = pa.array(np.where(rng.random(ticks.size) < 0.05, None, column.to_pylist()), pa.timestamp(unit))
    with np.errstate(invalid="ignore"):
        k = np.floor((epoch_seconds(column) - spec.origin) / spec.width)
    expected = np.where(np.isfinite(k) & (k >= 0) & (k < spec.count), k, spec.count).astype(np.int64)
    got = spec.index(column)
    assert np.array_equal(got, expected)
    assert set(np.unique(got)) == set(range(spec.count + 1))
    assert np.array_equal(spec.index(pa.chunked_array([column[:100], column[100:]])), expected)
