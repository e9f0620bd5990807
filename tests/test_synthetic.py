"""Tests of the synthetic deployment generator (engine/synthetic.py).

Reference numbers are computed directly with pandas/numpy on the joined rows, independently of
the engine, so these tests pin down the ground truth the end-to-end tests rely on.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine import synthetic as syn

ROWS = 60_000
INJECTED = ("BR", "DE", "MX", "IN")


@pytest.fixture(scope="module")
def injected(tmp_path_factory):
    sc = syn.generate(tmp_path_factory.mktemp("inj"), rows=ROWS, seed=7)
    return sc, syn.materialize_joined(sc), pq.read_table(sc.evaluation).to_pandas()


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    sc = syn.generate(tmp_path_factory.mktemp("clean"), rows=100_000, seed=3, inject=False)
    return sc, syn.materialize_joined(sc), pq.read_table(sc.evaluation).to_pandas()


def _psi(online: np.ndarray, baseline: np.ndarray, eps: float = 1e-4) -> float:
    """PSI over the baseline's deciles with eps smoothing (DESIGN §5)."""
    edges = np.quantile(baseline, np.linspace(0, 1, 11)[1:-1])

    def props(x):
        c = np.bincount(np.searchsorted(edges, x, side="right"), minlength=10)
        return (c / c.sum() + eps) / (1 + 10 * eps)

    p, q = props(online), props(baseline)
    return float(((p - q) * np.log(p / q)).sum())


def _same(a: pa.Table, b: pa.Table) -> bool:
    """Table equality with NaN == NaN (Arrow's equals says NaN != NaN)."""
    if not a.schema.equals(b.schema):
        return False
    try:
        pd.testing.assert_frame_equal(_pandas(a), _pandas(b))
    except AssertionError:
        return False
    return True


def _pandas(t: pa.Table) -> pd.DataFrame:
    return t.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def _tables(sc):
    return {name: pq.read_table(getattr(sc, name))
            for name in ("evaluation", "online", "offline", "outcomes")}


# ----------------------------------------------------------------------------- format
def test_files_columns_and_types(injected):
    sc, _, _ = injected
    t = _tables(sc)
    assert t["evaluation"].schema.equals(syn.EVALUATION_SCHEMA)
    assert t["online"].schema.equals(syn.ONLINE_SCHEMA)
    assert t["offline"].schema.equals(syn.OFFLINE_SCHEMA)
    assert t["outcomes"].schema.equals(syn.OUTCOMES_SCHEMA)
    assert t["online"].schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert t["online"].num_rows == ROWS and t["evaluation"].num_rows == ROWS
    for col in sc.slices + list(sc.features):
        assert col in t["online"].column_names and col in t["evaluation"].column_names
    assert sc.slices == ["country", "device", "segment"]
    assert sc.features == {"f_amount": "numeric", "f_age": "numeric", "f_tenure": "numeric",
                           "f_clicks": "numeric", "f_channel": "categorical"}
    assert sc.thresholds == [0.3, 0.6]

    ts = t["online"].column("ts").to_numpy()
    assert ts.min() >= np.datetime64("2026-11-05T00:00:00")
    assert ts.max() < np.datetime64("2026-11-06T00:00:00")
    assert np.all(np.diff(ts.astype(np.int64)) >= 0)  # the log is in time order

    ids = t["online"].column("request_id").drop_null().to_numpy()
    assert len(np.unique(ids)) == len(ids) and ids.min() >= 0
    # Outcomes and replay only refer to known requests, once each.
    for name in ("offline", "outcomes"):
        k = t[name].column("request_id").drop_null().to_numpy()
        assert len(np.unique(k)) == len(k)
        assert np.isin(k, ids).all()

    json.loads((sc.online.parent / "scenario.json").read_text())
    d = json.loads(json.dumps(sc.to_dict()))
    assert [i["cause"] for i in d["injections"]] == [
        "serving_skew", "data_drift", "concept_drift", "data_quality"]


def test_determinism_and_seed(tmp_path):
    a = syn.generate(tmp_path / "a", rows=5_000, seed=11)
    b = syn.generate(tmp_path / "b", rows=5_000, seed=11)
    c = syn.generate(tmp_path / "c", rows=5_000, seed=12)
    ta, tb, tc = _tables(a), _tables(b), _tables(c)
    for name in ta:
        assert _same(ta[name], tb[name]), name
    assert not _same(ta["online"], tc["online"])
    assert not _same(ta["evaluation"], tc["evaluation"])



def test_days_spread_the_same_traffic_over_several_days(tmp_path):
    """``days=7``: the same rows (only the times differ), in time order, one daily cycle per
    day, each day's share of the rows a seventh."""
    one = _tables(syn.generate(tmp_path / "one", rows=14_000, seed=3))
    week_sc = syn.generate(tmp_path / "week", rows=14_000, seed=3, days=7)
    week = _tables(week_sc)
    assert week_sc.to_dict()["days"] == 7
    assert _same(one["online"].drop(["ts"]), week["online"].drop(["ts"]))
    ts = week["online"].column("ts").cast(pa.int64()).to_numpy()
    assert np.all(np.diff(ts) >= 0)
    day = (ts - syn.DAY_START.astype(np.int64)) // syn._DAY_US
    assert day.min() == 0 and day.max() == 6
    assert np.all(np.abs(np.bincount(day) - 2_000) <= 1)

def test_chunked_streaming_and_permuted_order(tmp_path):
    kw = dict(rows=25_000, seed=5, chunk_rows=10_000, eval_rows=12_000)
    a = syn.generate(tmp_path / "a", **kw)
    b = syn.generate(tmp_path / "b", **kw)
    assert [p.name for p in (tmp_path / "a").iterdir()] and not any(
        p.name.startswith(".synthetic") for p in (tmp_path / "a").iterdir())
    ta, tb = _tables(a), _tables(b)
    for name in ta:
        assert _same(ta[name], tb[name]), name
    assert pq.ParquetFile(a.online).metadata.num_row_groups == 3
    assert pq.ParquetFile(a.evaluation).metadata.num_row_groups == 2
    assert pq.ParquetFile(a.offline).metadata.num_row_groups == 3
    # The replay holds every keyed online request but the missing IN replays, out of order.
    on = _pandas(ta["online"])
    off_ids = ta["offline"].column("request_id").to_numpy()
    keyed = on["request_id"].dropna().to_numpy(np.int64)
    assert set(off_ids) <= set(keyed)
    missing = on[on["request_id"].notna() & ~on["request_id"].isin(off_ids)]
    assert len(missing) > 0 and (missing["country"] == "IN").all()
    # Chunk order is permuted: the first replay rows do not come from the first online chunk.
    first_chunk = set(keyed[:10_000])
    assert not all(k in first_chunk for k in off_ids[:10_000])


def test_aligned_variant(tmp_path):
    sc = syn.generate(tmp_path, rows=20_000, seed=2, shuffle=False)
    on, off = pq.read_table(sc.online), pq.read_table(sc.offline)
    assert off.column("request_id").equals(on.column("request_id"))  # nulls included
    # A failed replay is a null score, only in the data-quality slice.
    null_score = off.column("score").is_null().to_numpy(zero_copy_only=False)
    country = on.column("country").to_numpy(zero_copy_only=False)
    assert null_score.any() and set(country[null_score]) == {"IN"}
    # The joined result is the same as with a shuffled replay of the same seed.
    shuffled = syn.generate(tmp_path / "s", rows=20_000, seed=2, shuffle=True)
    ja, js = syn.materialize_joined(sc), syn.materialize_joined(shuffled)
    pd.testing.assert_frame_equal(ja, js)


def test_shuffled_is_not_aligned(injected):
    sc, _, _ = injected
    on = pq.read_table(sc.online).column("request_id").drop_null().to_numpy()
    off = pq.read_table(sc.offline).column("request_id").to_numpy()
    assert len(off) < len(on)
    common = min(len(on), len(off))
    assert np.mean(on[:common] == off[:common]) < 0.01


# ----------------------------------------------------------------------------- clean world
def test_clean_data_is_calibrated_and_consistent(clean):
    sc, df, ev = clean
    assert sc.injections == []
    assert df["request_id"].notna().all()
    assert np.isfinite(df["score"]).all() and df["score"].between(0, 1).all()
    assert df["score_offline"].notna().all()
    assert (df["score"] == df["score_offline"]).all()  # no skew: bitwise equal
    assert df["f_channel"].isin(syn.CHANNELS).all()
    labelled = df[df["label"].notna()]
    assert set(labelled["label"].unique()) <= {0, 1}
    assert 0.985 < len(labelled) / len(df) < 0.995  # 1 % of outcomes never arrive
    for data, name in ((labelled, "online"), (ev, "evaluation")):
        for col in sc.slices:
            for value, g in data.groupby(col):
                p = g["score"].to_numpy(np.float64)
                y = g["label"].to_numpy(np.float64)
                se = np.sqrt(np.sum(p * (1 - p))) / len(p)
                assert abs(p.mean() - y.mean()) < 4.5 * se, (name, col, value)
    # Same world online and offline: no drift in any country.
    for country, g in labelled.groupby("country"):
        e = ev[ev["country"] == country]
        assert _psi(g["score"].to_numpy(), e["score"].to_numpy()) < 0.05, country


def test_slice_sizes_and_rare_segment(clean):
    sc, df, ev = clean
    share = ev["country"].value_counts(normalize=True)
    assert len(share) == 12
    assert 0.01 < share["NZ"] < 0.02
    for c in INJECTED:
        assert share[c] >= 0.07
    rare = ev[ev["segment"] == "rare"]
    assert 0.05 < len(rare) / len(ev) < 0.07
    assert not rare["country"].isin(INJECTED).any()
    assert 0.007 < rare["label"].mean() < 0.013  # ~1 % base rate
    assert rare["score"].quantile(0.9) < 0.03  # scores crowded near 0
    others = ev[ev["segment"] != "rare"].groupby("country")["label"].mean()
    assert others.between(0.05, 0.2).all()


def test_inject_false_keeps_clean_rows_identical(tmp_path):
    a = _pandas(pq.read_table(syn.generate(tmp_path / "a", rows=20_000, seed=9).online))
    b = _pandas(pq.read_table(
        syn.generate(tmp_path / "b", rows=20_000, seed=9, inject=False).online))
    keep = ~a["country"].isin(INJECTED)
    assert keep.sum() > 10_000
    pd.testing.assert_frame_equal(a[keep], b[keep])


# ----------------------------------------------------------------------------- injections
def test_serving_skew_in_br(injected):
    _, df, ev = injected
    paired = df[df["score_offline"].notna() & df["score"].between(0, 1)]
    br = paired["country"] == "BR"
    for t in (0.3, 0.6):
        flips = (paired["score"] >= t) != (paired["score_offline"] >= t)
        assert flips[br].mean() > 0.05
        assert flips[~br].sum() == 0
    delta = (paired["score"] - paired["score_offline"]).abs()
    assert delta[br].mean() > 0.1 and delta[~br].max() == 0.0
    g = df[(df["country"] == "BR") & df["label"].notna()]
    y = g["label"].to_numpy(int)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, g["score"]) < roc_auc_score(y, g["score_offline"]) - 0.03
    # The replay is calibrated (outcomes follow the true p); the online scores are not.
    assert abs(g["score_offline"].mean() - y.mean()) < 0.01
    assert g["score"].mean() - y.mean() > 0.2
    e = ev[ev["country"] == "BR"]["score"].to_numpy()
    assert _psi(g["score"].to_numpy(), e) > 1.0
    assert _psi(g["score_offline"].to_numpy(), e) < 0.05
    assert _psi(g["f_amount"].to_numpy(), ev[ev["country"] == "BR"]["f_amount"].to_numpy()) < 0.05


def test_data_drift_in_de(injected):
    _, df, ev = injected
    g = df[df["country"] == "DE"]
    e = ev[ev["country"] == "DE"]
    assert _psi(g["score"].to_numpy(), e["score"].to_numpy()) > 0.15
    for f in ("f_tenure", "f_amount"):
        assert _psi(g[f].to_numpy(), e[f].to_numpy()) > 0.3, f
    for f in ("f_age", "f_clicks"):
        assert _psi(g[f].to_numpy(), e[f].to_numpy()) < 0.05, f
    assert (g["score"] == g["score_offline"]).all()
    lab = g[g["label"].notna()]
    p, y = lab["score"].to_numpy(np.float64), lab["label"].to_numpy(np.float64)
    assert abs(p.mean() - y.mean()) < 4 * np.sqrt(np.sum(p * (1 - p))) / len(p)
    assert abs(y.mean() / e["label"].mean() - 1) < 0.15  # positive rate about the same


def test_concept_drift_in_mx(injected):
    _, df, ev = injected
    g = df[(df["country"] == "MX") & df["label"].notna()]
    e = ev[ev["country"] == "MX"]
    assert (g["score"] == g["score_offline"]).all()
    assert _psi(g["score"].to_numpy(), e["score"].to_numpy()) < 0.05
    for f in ("f_amount", "f_tenure", "f_clicks", "f_age"):
        assert _psi(g[f].to_numpy(), e[f].to_numpy()) < 0.05, f
    p, y = g["score"].to_numpy(np.float64), g["label"].to_numpy(np.float64)
    assert y.mean() - p.mean() > 0.08  # >> 10 standard errors
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, p) < roc_auc_score(e["label"], e["score"]) - 0.1


def test_data_quality_in_in(injected):
    _, df, ev = injected
    is_in = df["country"] == "IN"
    s = df["score"]
    invalid = s.isna() | (s < 0) | (s > 1)
    assert 0.01 < invalid[is_in].mean() < 0.03 and s[is_in].isna().any()
    assert not invalid[~is_in].any()
    assert 0.004 < df["request_id"].isna()[is_in].mean() < 0.02
    assert df["request_id"][~is_in].notna().all()
    replay = df["score_offline"].notna()
    assert replay[is_in].mean() < 0.95 and replay[~is_in].all()
    assert (df["label"][is_in] == 2).mean() > 0.01 and not (df["label"][~is_in] == 2).any()
    unseen = ~df["f_channel"].isin(ev["f_channel"].unique())
    assert unseen[is_in].mean() > 0.004 and not unseen[~is_in].any()
    assert set(df["f_channel"][unseen]) <= set(syn.UNSEEN_CHANNELS)


def test_clean_countries_stay_clean_under_injection(injected):
    sc, df, ev = injected
    for country in ("US", "GB", "FR", "JP", "CA", "ES", "IT", "NZ"):
        g = df[(df["country"] == country) & df["label"].notna()]
        e = ev[ev["country"] == country]
        p, y = g["score"].to_numpy(np.float64), g["label"].to_numpy(np.float64)
        assert abs(p.mean() - y.mean()) < 4.5 * np.sqrt(np.sum(p * (1 - p))) / len(p), country
        assert _psi(p, e["score"].to_numpy()) < 0.06, country
    assert {"country": "NZ"} in sc.clean_slices()
    assert {"segment": "rare"} in sc.clean_slices()


def test_ground_truth_helpers(injected):
    sc, _, _ = injected
    by_cause = {i.cause: i for i in sc.injections}
    assert by_cause["serving_skew"].slice == {"country": "BR"}
    assert "flip_rate" in by_cause["serving_skew"].metrics
    assert {"psi"} <= set(by_cause["data_drift"].metrics)
    assert sc.overlapping({"country": "US"}) == []
    assert sc.overlapping({"segment": "rare"}) == []
    assert len(sc.overlapping({})) == 4
    assert [i.cause for i in sc.overlapping({"device": "android"})] == [
        "serving_skew", "data_drift", "concept_drift", "data_quality"]
    assert sc.explains("flip_rate", {"device": "web"})
    assert not sc.explains("flip_rate", {"country": "MX"})
    assert sc.explains("psi", {"country": "DE"}, feature="f_tenure")
    assert not sc.explains("psi", {"country": "DE"}, feature="f_age")
    assert not sc.explains("auc", {"country": "BR"}, scores="offline")
    assert sc.explains("auc", {"country": "MX"}, scores="offline")
    clean = sc.clean_slices()
    assert {"country": "BR"} not in clean and {"device": "ios"} not in clean


def test_generation_speed(tmp_path):
    import time

    t0 = time.perf_counter()
    syn.generate(tmp_path, rows=200_000, seed=1)
    assert time.perf_counter() - t0 < 5.0
