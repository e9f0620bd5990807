"""A gate that can be trusted: broken inputs never pass, clean data is ``ok``, modest real
problems alert (each case with its own small generator, ``gate_world``)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import gate_world as gw
from engine.config import Config
from engine.errors import ConfigError, SchemaError
from engine.expectation import build_baseline
from engine.pipeline import run_check


def _baseline(w: gw.World, **cfg):
    return build_baseline(w.evaluation, gw.config(**cfg))


def _check(bl, w: gw.World, **kw):
    kw.setdefault("bootstrap", 200)
    return run_check(bl, w.online, offline=w.offline, outcomes=w.outcomes, **kw)


@pytest.fixture(scope="module")
def small():
    w = gw.world(20_000, seed=1)
    return w, _baseline(w)


# ---------------------------------------------------------------- nothing to judge
def test_an_empty_online_log_is_refused_not_passed(small, tmp_path):
    w, bl = small
    with pytest.raises(SchemaError, match="0 rows: there is nothing to check"):
        run_check(bl, w.online.slice(0, 0), offline=w.offline, outcomes=w.outcomes)
    # and through the CLI, with --fail-on warn as a broken upstream job would run it
    from typer.testing import CliRunner

    from engine.cli import app

    bl.save(tmp_path / "bl")
    pq.write_table(w.online.slice(0, 0), tmp_path / "online.parquet")
    res = CliRunner().invoke(
        app, ["check", "--baseline", str(tmp_path / "bl"), "--online", str(tmp_path / "online.parquet"),
              "--fail-on", "warn"],
    )
    assert res.exit_code == 2, res.output
    assert "online.parquet" in res.output and "0 rows" in res.output


def test_a_replay_that_matches_no_key_is_one_clear_error(small):
    w, bl = small
    foreign = w.offline.set_column(0, "request_id", pc.add(w.offline["request_id"], 10**8))
    with pytest.raises(SchemaError, match=r"None of the 20,000 keys of the offline table"):
        run_check(bl, w.online, offline=foreign, outcomes=w.outcomes, bootstrap=0)
    with pytest.raises(SchemaError, match="The outcomes table .* has 0 rows"):
        run_check(bl, w.online, offline=w.offline, outcomes=w.outcomes.slice(0, 0), bootstrap=0)


# ---------------------------------------------------------------- the baseline's inputs
def test_a_baseline_of_logits_is_refused_naming_column_and_value():
    w = gw.world(5_000, seed=2)
    logits = pc.multiply(pc.ln(pc.divide(w.evaluation["score"], pc.subtract(1.0, w.evaluation["score"]))), 1.0)
    bad = w.evaluation.set_column(w.evaluation.schema.get_field_index("score"), "score", logits)
    with pytest.raises(SchemaError) as info:
        build_baseline(bad, gw.config())
    msg = str(info.value)
    assert "column 'score'" in msg and "outside [0, 1]" in msg and "for example" in msg
    first_bad = next(x for x in logits.to_pylist() if not 0 <= x <= 1)
    assert repr(first_bad) in msg


@pytest.mark.parametrize("what", ["nan_scores", "label_two"])
def test_a_baseline_with_many_invalid_rows_is_refused(what):
    w = gw.world(5_000, seed=3)
    ev = w.evaluation
    rng = np.random.default_rng(0)
    hit = rng.random(ev.num_rows) < 0.10
    if what == "nan_scores":
        col = np.where(hit, np.nan, ev["score"].to_numpy())
        ev = ev.set_column(ev.schema.get_field_index("score"), "score", pa.array(col))
        column = "score"
    else:
        col = np.where(hit, 2, ev["label"].to_numpy())
        ev = ev.set_column(ev.schema.get_field_index("label"), "label", pa.array(col.astype(np.int8)))
        column = "label"
    with pytest.raises(SchemaError, match=f"column '{column}'"):
        build_baseline(ev, gw.config())


def test_a_few_invalid_baseline_rows_are_excluded_and_recorded():
    w = gw.world(5_000, seed=4)
    ev = w.evaluation
    score = ev["score"].to_numpy().copy()
    score[:20] = np.nan  # 0.4%: below the 1% default
    ev = ev.set_column(ev.schema.get_field_index("score"), "score", pa.array(score))
    bl = build_baseline(ev, gw.config())
    assert bl.manifest["data_quality"] == {"rows": 5_000, "invalid_scores": 20, "invalid_labels": 0, "missing_labels": 0}
    # the share is configurable
    with pytest.raises(SchemaError, match="max_invalid_share"):
        build_baseline(ev, gw.config(max_invalid_share=0.001))


# ---------------------------------------------------------------- sufficiency on both sides
def test_small_baseline_slices_are_insufficient_not_alerts():
    """3,000 evaluation rows against 200,000 clean online rows: the smallest countries have
    a baseline of a few dozen rows; their noise must not alert."""
    w = gw.world(200_000, seed=5, eval_rows=3_000)
    bl = _baseline(w)
    res = _check(bl, w)
    assert [f for f in res.findings if f.status == "alert"] == []
    small = [f for f in res.findings if f.metric == "auc" and f.scores == "online" and f.slice == {"country": "C12"}]
    assert small and small[0].status == "insufficient_data"
    assert "the baseline has" in small[0].reason


# ---------------------------------------------------------------- clean data is ok
def test_clean_data_is_ok_and_drift_intervals_cover_zero():
    """20 clean replications (20,000 rows each, slices down to ~60 rows, a threshold with a
    predicted-positive rate under 1%): never an alert, ``ok`` in at least 19 of 20; the KS
    and Wasserstein intervals of the excess over the null cover 0 at 93-97%."""
    verdicts, covered = Counter(), []
    alerts = 0
    for rep in range(20):
        w = gw.world(20_000, seed=100 + rep)
        bl = _baseline(w, seed=rep)
        res = _check(bl, w, seed=rep)
        verdicts[res.verdict] += 1
        alerts += sum(f.status == "alert" for f in res.findings)
        for f in res.findings:
            if f.metric in ("ks", "wasserstein") and f.ci is not None:
                covered.append(f.ci[0] <= 0 <= f.ci[1])
    assert alerts == 0
    assert verdicts["ok"] >= 19, verdicts
    rate = float(np.mean(covered))
    assert len(covered) > 500
    assert 0.93 <= rate <= 0.97, rate


def test_the_replay_equal_to_the_served_scores_is_not_tested_twice(small):
    w, bl = small
    res = _check(bl, w)
    assert not [f for f in res.findings if f.scores == "offline"]  # every one a byte-identical twin
    # a replay that differs keeps its own tests
    moved = w.offline.set_column(1, "score", pc.multiply(w.offline["score"], 0.99))
    res2 = run_check(bl, w.online, offline=moved, outcomes=w.outcomes, bootstrap=50)
    assert [f for f in res2.findings if f.scores == "offline" and f.metric == "auc"]


def test_relative_tolerances_have_a_floor_for_near_zero_rates(small):
    w, bl = small
    res = _check(bl, w)
    ppr = [f for f in res.findings if f.metric == "predicted_positive_rate" and f.threshold == 0.6 and f.slice == {}]
    assert ppr and ppr[0].expected < 0.01
    assert ppr[0].tolerance["min_margin"] == 0.0005


# ---------------------------------------------------------------- a modest real problem
@pytest.mark.slow
def test_a_modest_calibration_problem_in_a_small_slice_alerts_alone():
    """+0.05 on the outcome probability in a country with ~2% of 500,000 rows: alerts there,
    as concept drift, and nowhere else."""
    w = gw.world(500_000, seed=7, calibration_shift={"C09": 0.05})
    bl = _baseline(w)
    res = _check(bl, w, bootstrap=300)
    alerts = [f for f in res.findings if f.status == "alert"]
    assert alerts, [(f.metric, f.slice, f.status, f.ci) for f in res.findings if f.slice == {"country": "C09"}][:20]
    assert {json.dumps(f.slice) for f in alerts} == {json.dumps({"country": "C09"})}, [(f.metric, f.slice) for f in alerts]
    assert {f.cause for f in alerts} == {"concept_drift"}
    assert {"ece", "positive_rate"} <= {f.metric for f in alerts}


@pytest.mark.slow
def test_a_decision_flip_bug_in_a_small_slice_gives_exactly_its_alerts():
    """3% of a 2%-traffic country's decisions flipped at the first threshold (500,000 rows):
    alerts there, as serving skew, one incident, nothing else."""
    w = gw.world(500_000, seed=8, flip={"C09": 0.03})
    bl = _baseline(w)
    res = _check(bl, w, bootstrap=300)
    alerts = [f for f in res.findings if f.status == "alert"]
    assert {json.dumps(f.slice) for f in alerts} == {json.dumps({"country": "C09"})}, [(f.metric, f.slice) for f in alerts]
    assert {f.cause for f in alerts} == {"serving_skew"}
    assert ("flip_rate", gw.THRESHOLDS[0]) in {(f.metric, f.threshold) for f in alerts}
    assert [(i["slice"], i["cause"]) for i in res.incidents] == [({"country": "C09"}, "serving_skew")]


# ---------------------------------------------------------------- smaller defects
def test_real_values_never_collide_with_the_sentinels():
    w = gw.world(20_000, seed=8)
    dev = w.online["device"].to_numpy(zero_copy_only=False).copy()
    ev_dev = w.evaluation["device"].to_numpy(zero_copy_only=False).copy()
    dev[:3000], ev_dev[:3000] = "__null__", "__null__"  # a real value spelled like the sentinel
    dev[3000:3100], ev_dev[3000:3100] = None, None  # and real nulls
    online = w.online.set_column(w.online.schema.get_field_index("device"), "device", pa.array(dev, pa.string()))
    ev = w.evaluation.set_column(w.evaluation.schema.get_field_index("device"), "device", pa.array(ev_dev, pa.string()))
    bl = build_baseline(ev, gw.config())
    res = run_check(bl, online, offline=w.offline, outcomes=w.outcomes, bootstrap=0)
    keys = [(f.metric, f.scores, json.dumps(f.slice), f.feature, f.threshold) for f in res.findings]
    assert len(keys) == len(set(keys))
    rows = {f.slice["device"]: f.n for f in res.findings if f.metric == "invalid_score_rate" and "device" in f.slice}
    assert rows["\\__null__"] == 3000 and rows["__null__"] == 100


def test_a_column_both_slice_and_categorical_feature_has_one_unseen_test():
    w = gw.world(5_000, seed=9)
    cfg = Config(slices=["country", "f_channel"], features={"f_channel": "categorical"}, thresholds=[0.5])
    bl = build_baseline(w.evaluation, cfg)
    res = run_check(bl, w.online, bootstrap=0)
    keys = [(f.metric, json.dumps(f.slice), f.feature) for f in res.findings if f.metric == "unseen_value_rate"]
    assert keys and len(keys) == len(set(keys))


def test_a_check_config_naming_a_slice_the_baseline_lacks_is_an_error(small, tmp_path):
    w, bl = small
    cfg = tmp_path / "c.yaml"
    cfg.write_text("slices: [country, region]\n")
    with pytest.raises(ConfigError, match=r"\['region'\].*not built with"):
        run_check(bl, w.online, config=str(cfg), bootstrap=0)


def test_a_missing_replay_score_is_an_invalid_score_not_lost_coverage(small):
    w, bl = small
    score = w.offline["score"].to_numpy().copy()
    score[:500] = np.nan
    off = w.offline.set_column(1, "score", pa.array(score))
    res = run_check(bl, w.online, offline=off, outcomes=w.outcomes, bootstrap=0)
    assert res.data_quality["matched_offline"] == 20_000
    assert res.data_quality["invalid_offline_scores"] == 500
    (cov,) = [f for f in res.findings if f.metric == "join_coverage" and f.slice == {}]
    assert cov.value == 1.0


def test_control_and_bidi_characters_in_slice_values_are_shown_not_obeyed(tmp_path):
    from engine.report import render_html

    w = gw.world(5_000, seed=10)
    hostile = "BR\u202eevil\x00"
    country = np.where(w.online["country"].to_numpy(zero_copy_only=False) == "C00", hostile, w.online["country"].to_numpy(zero_copy_only=False))
    online = w.online.set_column(w.online.schema.get_field_index("country"), "country", pa.array(country, pa.string()))
    ev_c = w.evaluation["country"].to_numpy(zero_copy_only=False)
    ev = w.evaluation.set_column(w.evaluation.schema.get_field_index("country"), "country",
                                 pa.array(np.where(ev_c == "C00", hostile, ev_c), pa.string()))
    bl = build_baseline(ev, gw.config())
    html = render_html(run_check(bl, online, bootstrap=0))
    assert "\u202e" not in html and "\x00" not in html
    assert "&lt;U+202E&gt;" in html


def test_duplicate_online_keys_are_data_quality_not_serving_skew(small):
    """10% of the online rows are other requests that reused an existing key (a logging bug):
    one data-quality finding on the online table; the pairing with the replay keeps each
    key's own request, so no flip or |delta| finding blames the serving path."""
    w, bl = small
    rng = np.random.default_rng(5)
    n = w.online.num_rows
    taken, impostors = rng.choice(n, 2_000, replace=False), rng.choice(n, 2_000, replace=False)
    extra = w.online.take(impostors).set_column(0, "request_id", w.online["request_id"].take(taken))
    res = run_check(bl, pa.concat_tables([w.online, extra]), offline=w.offline, outcomes=w.outcomes, bootstrap=200)
    assert res.data_quality["duplicate_keys"]["online"] == 2_000
    dup = [f for f in res.findings if f.metric == "duplicate_key_rate" and f.feature is None]
    assert dup and dup[0].status == "alert" and dup[0].cause == "data_quality"
    blamed = [(f.metric, f.slice, f.status) for f in res.findings if f.cause == "serving_skew" and f.status != "ok"]
    assert blamed == []
    assert [i["cause"] for i in res.incidents] == ["data_quality"]
