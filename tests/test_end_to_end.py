"""End to end on the synthetic deployment: what was injected is found, with its cause, and
nothing else; the numbers in the result equal a direct computation on the joined rows."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from engine.config import Config
from engine.demo import evaluate
from engine.expectation import build_baseline
from engine.pipeline import run_check
from engine.synthetic import generate, materialize_joined


def _run(tmp_path, rows: int, seed: int, inject: bool = True, bootstrap: int = 400):
    sc = generate(tmp_path / f"data{seed}{inject}", rows=rows, seed=seed, inject=inject)
    config = Config(slices=sc.slices, features=sc.features, thresholds=sc.thresholds)
    build_baseline(sc.evaluation, config, out=tmp_path / f"bl{seed}{inject}", backend="cpu")
    result = run_check(
        tmp_path / f"bl{seed}{inject}", sc.online, offline=sc.offline, outcomes=sc.outcomes,
        bootstrap=bootstrap, seed=seed, backend="cpu",
    )
    return sc, result


@pytest.fixture(scope="module")
def injected(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("e2e"), rows=100_000, seed=0)


def test_every_injection_found_with_its_cause(injected):
    sc, result = injected
    outcome = evaluate(sc, result)
    alerts = [f for f in result.findings if f.status == "alert"]
    for inj in sc.injections:
        here = [f for f in alerts if f.slice == inj.slice]
        assert here, f"no alert for {inj.cause} in {inj.slice}"
        assert {f.cause for f in here} == {inj.cause}, (inj.slice, {(f.metric, f.cause) for f in here})
        found = {f.metric for f in here}
        assert set(inj.metrics) <= found, (inj.cause, set(inj.metrics) - found)
    assert outcome.passed, (outcome.missed, outcome.wrong_cause, outcome.unexplained)


def test_clean_slices_have_no_alerts(injected):
    sc, result = injected
    clean = sc.clean_slices()
    assert {"country": "NZ"} in clean  # the small clean country is among them
    bad = [(f.metric, f.slice) for f in result.findings if f.status == "alert" and f.slice in clean]
    assert not bad


@pytest.mark.slow
def test_no_alerts_on_clean_data_over_20_seeds(tmp_path):
    alerts = []
    for seed in range(20):
        _, result = _run(tmp_path, rows=40_000, seed=100 + seed, inject=False, bootstrap=300)
        alerts += [(seed, f.metric, f.slice, f.feature, f.threshold) for f in result.findings if f.status == "alert"]
    assert not alerts


def _finding(result, metric, slice_, scores=None, feature=None, threshold=None):
    for f in result.findings:
        if (f.metric, f.slice, f.scores, f.feature, f.threshold) == (metric, slice_, scores, feature, threshold):
            return f
    raise AssertionError(f"no finding {metric} {slice_} {scores} {feature} {threshold}")


def test_numbers_equal_a_direct_computation(injected):
    """Counts and threshold metrics exact, AUC within 0.002, Brier and log loss 1e-9."""
    sc, result = injected
    df = materialize_joined(sc)
    thresholds = sc.thresholds
    for slice_ in [{}, {"country": "BR"}, {"country": "MX"}, {"device": "web"}, {"segment": "rare"}]:
        rows = df
        for col, val in slice_.items():
            rows = rows[rows[col] == val]
        s = rows["score"].to_numpy(dtype=float)
        valid = (s >= 0) & (s <= 1)
        y = rows["label"].astype("float").to_numpy()
        labelled = valid & np.isin(y, [0.0, 1.0])
        ys, ss = y[labelled], s[labelled]
        off = rows["score_offline"].to_numpy(dtype=float)
        paired = valid & (off >= 0) & (off <= 1)

        auc = _finding(result, "auc", slice_, scores="online")
        if ys.min() != ys.max():
            assert abs(auc.value - roc_auc_score(ys, ss)) < 0.002
        assert auc.n == labelled.sum()
        assert _finding(result, "positive_rate", slice_, scores="online").value == pytest.approx(ys.mean(), rel=1e-12)
        brier = _finding(result, "brier", slice_, scores="online").value
        assert brier == pytest.approx(brier_score_loss(ys, ss), rel=1e-9)
        ll = _finding(result, "log_loss", slice_, scores="online").value
        assert ll == pytest.approx(log_loss(ys, np.clip(ss, 1e-15, 1 - 1e-15), labels=[0, 1]), rel=1e-9)
        for t in thresholds:
            pred = ss >= t
            tp, fp = (pred & (ys == 1)).sum(), (pred & (ys == 0)).sum()
            prec = _finding(result, "precision", slice_, scores="online", threshold=t)
            assert prec.n == tp + fp
            if tp + fp:
                assert prec.value == pytest.approx(tp / (tp + fp), rel=1e-12)
            rec = _finding(result, "recall", slice_, scores="online", threshold=t)
            assert rec.value == pytest.approx(tp / (ys == 1).sum(), rel=1e-12)
            fpr = _finding(result, "fpr", slice_, scores="online", threshold=t)
            assert fpr.value == pytest.approx(fp / (ys == 0).sum(), rel=1e-12)
            flips = ((s[paired] >= t) != (off[paired] >= t)).sum()
            flip = _finding(result, "flip_rate", slice_, threshold=t)
            assert flip.n == paired.sum()
            assert flip.value == pytest.approx(flips / paired.sum(), rel=1e-12, abs=0)
        mad = _finding(result, "mean_abs_delta", slice_)
        assert mad.value == pytest.approx(np.abs(s[paired] - off[paired]).mean(), rel=1e-9, abs=1e-12)
        cov = _finding(result, "join_coverage", slice_)
        assert cov.n == len(rows)
        assert cov.value == pytest.approx(((off >= 0) & (off <= 1)).sum() / len(rows), rel=1e-12)
        inv = _finding(result, "invalid_score_rate", slice_)
        assert inv.value * inv.n == pytest.approx((~valid).sum())
    dq = result.data_quality
    assert dq["online_rows"] == len(df)
    assert dq["invalid_scores"] == int((~((df["score"] >= 0) & (df["score"] <= 1))).sum())
    assert dq["null_keys"] == int(df["request_id"].isna().sum())
    assert dq["matched_offline"] == int(df["score_offline"].notna().sum())


def test_json_is_strict_and_canonical(injected):
    _, result = injected
    text = result.to_json()

    def reject(name):
        raise ValueError(name)

    doc = json.loads(text, parse_constant=reject)
    keys = [
        (f["metric"], f["scores"] or "", json.dumps(sorted(f["slice"].items())), f["feature"] or "", f["threshold"] or -1)
        for f in doc["findings"]
    ]
    assert doc["schema_version"] == 1
    assert len(keys) == len(set(keys))


def test_model_version_is_always_a_slice(tmp_path):
    """A rollout: the online log mixes two versions; v2's serving path scores differently."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    sc = generate(tmp_path / "mv", rows=60_000, seed=5, inject=False)
    online = pq.read_table(sc.online)
    ids = online["request_id"].fill_null(0).to_numpy()
    v2 = ids % 10 == 0
    score = online["score"].to_numpy(zero_copy_only=False)
    bumped = np.where(v2, np.clip(score * 1.8 + 0.05, 0, 1), score).astype(np.float32)
    online = online.set_column(online.schema.get_field_index("score"), "score", pa.array(bumped))
    online = online.append_column("model_version", pa.array(np.where(v2, "fraud-v8", "fraud-v7")))
    pq.write_table(online, sc.online)
    config = Config(slices=sc.slices, features=sc.features, thresholds=sc.thresholds)
    build_baseline(sc.evaluation, config, out=tmp_path / "bl", backend="cpu")
    result = run_check(tmp_path / "bl", sc.online, offline=sc.offline, outcomes=sc.outcomes, bootstrap=300)

    by_version = {}
    for f in result.findings:
        if "model_version" in f.slice:
            by_version.setdefault(f.slice["model_version"], []).append(f)
    assert set(by_version) >= {"fraud-v7", "fraud-v8"}
    new = [f for f in by_version["fraud-v8"] if f.status == "alert"]
    assert {f.metric for f in new} >= {"flip_rate", "mean_abs_delta"}
    assert {f.cause for f in new} == {"serving_skew"}
    assert not [f for f in by_version["fraud-v7"] if f.status == "alert"]
    df = materialize_joined(sc)
    rows = df[df["model_version"] == "fraud-v8"]
    paired = rows["score"].between(0, 1) & rows["score_offline"].between(0, 1)
    for f in (f for f in by_version["fraud-v8"] if f.metric == "flip_rate"):
        flips = ((rows["score"] >= f.threshold) != (rows["score_offline"] >= f.threshold)) & paired
        assert f.n == paired.sum()
        assert f.value == pytest.approx(flips.sum() / paired.sum(), rel=1e-12)


def test_same_findings_for_any_batch_size(tmp_path):
    """Statistics are exact integers, draws keyed by meaning: the batch size changes nothing."""
    sc = generate(tmp_path / "bs", rows=30_000, seed=11)
    config = Config(slices=sc.slices, features=sc.features, thresholds=sc.thresholds)
    build_baseline(sc.evaluation, config, out=tmp_path / "bl", backend="cpu")
    runs = [
        run_check(tmp_path / "bl", sc.online, offline=sc.offline, outcomes=sc.outcomes, bootstrap=200,
                  config=config.with_overrides(batch_size=size))
        for size in (1 << 20, 7_777)
    ]
    assert [f.to_dict() for f in runs[0].findings] == [f.to_dict() for f in runs[1].findings]


def test_same_findings_for_any_file_partitioning(tmp_path):
    """The online log as one file or as a hive-partitioned directory: identical findings."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    sc = generate(tmp_path / "part", rows=30_000, seed=12)
    online = pq.read_table(sc.online)
    ds.write_dataset(online, tmp_path / "online_by_device", format="parquet",
                     partitioning=["device"], partitioning_flavor="hive")
    config = Config(slices=sc.slices, features=sc.features, thresholds=sc.thresholds)
    build_baseline(sc.evaluation, config, out=tmp_path / "bl", backend="cpu")
    kwargs = dict(offline=sc.offline, outcomes=sc.outcomes, bootstrap=200, seed=4)
    one = run_check(tmp_path / "bl", sc.online, **kwargs)
    many = run_check(tmp_path / "bl", tmp_path / "online_by_device", **kwargs)
    assert [f.to_dict() for f in one.findings] == [f.to_dict() for f in many.findings]
