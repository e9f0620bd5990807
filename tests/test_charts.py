"""Chart data (engine.charts) against scikit-learn, on a real check of rows we hold.

The evaluation scores are k/1000 (k = 1..1000), so the baseline's score deciles, and with the
one threshold 0.5 the calibration bins, are 0.1, 0.2, ..., 0.9: the bins of
``calibration_curve(strategy="uniform", n_bins=10)``. The ROC is compared with
``roc_curve`` on each row's bin of the ROC grid (the report's binning).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from engine.charts import (
    chart_data,
    chart_slices,
    flip_rates,
    operating_points,
    reliability_points,
    roc_edges,
    roc_points,
    wilson_interval,
)
from engine.config import Config
from engine.expectation import build_baseline
from engine.pipeline import run_check
from engine.result import CheckResult

sklearn_metrics = pytest.importorskip("sklearn.metrics")
sklearn_calibration = pytest.importorskip("sklearn.calibration")

N = 30_000


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    rng = np.random.default_rng(5)
    tmp = tmp_path_factory.mktemp("charts")
    k = np.tile(np.arange(1, 1001), 20)
    ev_score = k / 1000.0
    evaluation = pa.table(
        {
            "score": ev_score,
            "label": (rng.random(k.size) < ev_score).astype(np.int8),
            "country": rng.choice(["A", "B", "C"], k.size),
            "amount": rng.lognormal(3, 1, k.size),
        }
    )
    country = rng.choice(["A", "B", "C"], N)
    score = rng.random(N)
    label = (rng.random(N) < np.where(country == "B", score**2, score)).astype(np.int8)
    replay = np.clip(score + np.where(country == "C", 0.2, 0.0) * rng.standard_normal(N), 0, 1)
    ids = np.arange(N).astype(str)
    online = pa.table(
        {"request_id": ids, "score": score, "country": country, "amount": rng.lognormal(3.3, 1, N)}
    )
    offline = pa.table({"request_id": ids, "score": replay})
    outcomes = pa.table({"request_id": ids, "label": label})
    config = Config(slices=["country"], features={"amount": "numeric"}, thresholds=[0.5, 0.8])
    build_baseline(evaluation, config, out=tmp / "bl")
    result = run_check(tmp / "bl", online, offline=offline, outcomes=outcomes, bootstrap=0)
    return {
        "result": result,
        "evaluation": evaluation.to_pydict(),
        "online": {"score": score, "label": label, "country": country, "replay": replay},
        "baseline": tmp / "bl",
    }


def _slice_entry(result: CheckResult, slice_: dict) -> dict:
    charts = result.extras["charts"]
    return next(s for s in charts["slices"] if s["slice"] == slice_)


@pytest.mark.parametrize("slice_", [{}, {"country": "B"}])
def test_roc_equals_sklearn(world, slice_) -> None:
    result = world["result"]
    charts = result.extras["charts"]
    entry = _slice_entry(result, slice_)
    edges = np.asarray(charts["roc_edges"])
    on = world["online"]
    mask = np.ones(N, bool) if not slice_ else on["country"] == slice_["country"]
    ev = world["evaluation"]
    ev_mask = np.ones(len(ev["score"]), bool) if not slice_ else np.asarray(ev["country"]) == slice_["country"]
    sides = {
        "online": (on["label"][mask], on["score"][mask]),
        "offline": (on["label"][mask], on["replay"][mask]),
        "baseline": (np.asarray(ev["label"])[ev_mask], np.asarray(ev["score"])[ev_mask]),
    }
    for side, (y, s) in sides.items():
        binned = np.searchsorted(edges, s, side="right")  # [lo, hi) bins, as the engine's
        fpr, tpr, _ = sklearn_metrics.roc_curve(y, binned)
        got_fpr, got_tpr = roc_points(entry["roc"][side]["neg"], entry["roc"][side]["pos"])
        np.testing.assert_array_equal(got_fpr, fpr, err_msg=side)
        np.testing.assert_array_equal(got_tpr, tpr, err_msg=side)
        assert len(fpr) > 20  # a real curve, not two points
        # the operating point at each threshold is the rate of score >= t
        for t, f, r in operating_points(entry["roc"][side]["neg"], entry["roc"][side]["pos"], edges,
                                        charts["thresholds"]):
            assert f == pytest.approx(np.mean(s[y == 0] >= t), abs=1e-15)
            assert r == pytest.approx(np.mean(s[y == 1] >= t), abs=1e-15)
    # the grid: a subset of the fine edges holding every threshold, at most ~200 + calibration bins
    assert set(charts["thresholds"]) <= set(charts["roc_edges"])
    assert len(edges) <= 200 + len(charts["calib_edges"])


@pytest.mark.parametrize("slice_", [{}, {"country": "B"}])
def test_reliability_equals_sklearn(world, slice_) -> None:
    result = world["result"]
    charts = result.extras["charts"]
    edges = np.asarray(charts["calib_edges"])
    uniform = np.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(edges, uniform[1:-1], rtol=0, atol=1e-15)
    entry = _slice_entry(result, slice_)
    on = world["online"]
    mask = np.ones(N, bool) if not slice_ else on["country"] == slice_["country"]
    for side, s in (("online", on["score"][mask]), ("offline", on["replay"][mask])):
        y = on["label"][mask]
        # the same rows land in the same bins under both conventions ([lo, hi) vs (lo, hi])
        np.testing.assert_array_equal(
            np.searchsorted(edges, s, side="right"), np.searchsorted(uniform[1:-1], s, side="left")
        )
        prob_true, prob_pred = sklearn_calibration.calibration_curve(y, s, n_bins=10, strategy="uniform")
        rel = entry["reliability"][side]
        got_true, got_pred, nonempty = reliability_points(rel["n"], rel["pos"], rel["sum_p"])
        np.testing.assert_allclose(got_true, prob_true, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got_pred, prob_pred, rtol=0, atol=1e-9)  # sums are 2**-32 fixed point
        assert len(nonempty) == 10
    # slice B's outcomes are score**2: its observed rates sit below the diagonal
    if slice_:
        rel = entry["reliability"]["online"]
        got_true, got_pred, _ = reliability_points(rel["n"], rel["pos"], rel["sum_p"])
        assert np.all(got_true[3:] < got_pred[3:])


def test_histograms_decisions_features(world) -> None:
    result = world["result"]
    charts = result.extras["charts"]
    on = world["online"]
    entry = _slice_entry(result, {"country": "C"})
    mask = on["country"] == "C"
    edges = np.asarray(charts["hist_edges"])
    counts = np.bincount(np.searchsorted(edges, on["score"][mask], side="right"), minlength=edges.size + 1)
    assert entry["hist"]["online"] == counts.tolist()
    assert sum(entry["hist"]["baseline"]) == int(np.sum(np.asarray(world["evaluation"]["country"]) == "C"))
    # decision bands: thresholds each score clears, online x replay; flips as counted on rows
    t = np.asarray(charts["thresholds"])
    a = (on["score"][mask][:, None] >= t).sum(1)
    b = (on["replay"][mask][:, None] >= t).sum(1)
    m = np.zeros((t.size + 1, t.size + 1), np.int64)
    np.add.at(m, (a, b), 1)
    assert entry["decisions"] == m.tolist()
    for k, rate in enumerate(flip_rates(entry["decisions"])):
        assert rate == pytest.approx(np.mean((a > k) != (b > k)), abs=1e-15)
    flip = next(f for f in result.findings if f.metric == "flip_rate" and f.slice == {"country": "C"}
                and f.threshold == 0.5)
    assert flip_rates(entry["decisions"])[0] == pytest.approx(flip.value, abs=1e-12)
    # a numeric feature: rows per decile bin (+ missing), labels for each
    feat = charts["features"][0]
    assert feat["name"] == "amount" and len(feat["labels"]) == len(entry["features"]["amount"]["online"])
    assert sum(entry["features"]["amount"]["online"]) == int(mask.sum())
    assert entry["rows"] == int(mask.sum()) and entry["dq"]["rows"] == int(mask.sum())


def test_chart_slices_order_and_cap(world) -> None:
    from engine.expectation import Baseline

    result = world["result"]
    layout = Baseline.load(world["baseline"]).layout
    flagged = [f for f in result.findings if f.status in ("alert", "warn")]
    picked = chart_slices(layout, result.findings)
    assert picked[0] == 0
    labels = layout.slice_labels()
    assert {tuple(sorted(labels[i].items())) for i in picked[1:]} == {
        tuple(sorted(f.slice.items())) for f in flagged if f.slice
    }
    # an incident's culprit comes right after the population, even when nothing flagged it
    inc = [{"slice": {"country": "__other__"}}]
    assert chart_slices(layout, result.findings, inc)[:2] == [0, labels.index({"country": "__other__"})]
    assert chart_slices(layout, result.findings, inc, limit=1) == [0]
    with pytest.raises(ValueError, match="slice index"):
        from engine.measure import Grids

        g = Grids(score=np.zeros((1, 3, layout.n_fine), np.int64), calib={}, features=[])
        chart_data(g, None, layout, [layout.n_slices])


def test_roc_edges_and_helpers() -> None:
    assert roc_points([5, 0], [0, 0]) == (pytest.approx([]), pytest.approx([]))
    lo, hi = wilson_interval([0, 5, 10], [10, 10, 10])
    assert lo[0] == 0 and hi[2] == 1 and lo[1] < 0.5 < hi[1]
    # Wilson at 95%, 5 of 10: [0.2366, 0.7634]
    assert (round(lo[1], 4), round(hi[1], 4)) == (0.2366, 0.7634)
    assert flip_rates([[3, 1], [0, 4]]) == [0.125]


def test_charts_survive_json(world) -> None:
    import json

    result = world["result"]
    d = json.loads(result.to_json())
    assert d["charts"] == json.loads(json.dumps(result.extras["charts"]))
    back = CheckResult.from_dict(d)
    assert back.extras["charts"] == d["charts"] and back.findings == result.findings
    assert back.to_dict() == d
