"""The configuration (engine.config) and the metric catalogue (engine.catalogue)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from engine.catalogue import CAUSES, METRICS, STATUSES, MetricSpec, Tolerance, metric_names
from engine.config import (
    Config,
    MetricOverride,
    config_json_schema,
    load_config,
    parse_duration,
)
from engine.errors import ConfigError, ParityError

ROOT = Path(__file__).resolve().parent.parent

# DESIGN §6, written out independently of the catalogue:
# name -> (family, bad, tolerance kind, tolerance, min_events, per_threshold, bias_corrected)
EXPECTED = {
    "psi": ("drift", "increase", "absolute", 0.1, 0, False, True),
    "js_divergence": ("drift", "increase", "absolute", 0.05, 0, False, True),
    "ks": ("drift", "increase", "absolute", 0.05, 0, False, True),
    "wasserstein": ("drift", "increase", "absolute", 0.05, 0, False, True),
    "flip_rate": ("skew", "increase", "absolute", 0.01, 0, True, False),
    "mean_abs_delta": ("skew", "increase", "absolute", 0.01, 0, False, False),
    "p99_abs_delta": ("skew", "increase", "absolute", 0.05, 0, False, False),
    "auc": ("performance", "decrease", "absolute", 0.02, 20, False, False),
    "precision": ("performance", "decrease", "absolute", 0.02, 20, True, False),
    "recall": ("performance", "decrease", "absolute", 0.02, 20, True, False),
    "fpr": ("performance", "increase", "absolute", 0.02, 0, True, False),
    "predicted_positive_rate": ("performance", "either", "relative", 0.10, 0, True, False),
    "positive_rate": ("performance", "either", "relative", 0.10, 0, False, False),
    "ece": ("performance", "increase", "absolute", 0.02, 0, False, True),
    "brier": ("performance", "increase", "absolute", 0.02, 0, False, False),
    "log_loss": ("performance", "increase", "relative", 0.10, 0, False, False),
    "value_per_row": ("performance", "either", "relative", 0.10, 0, False, False),
    "join_coverage": ("data_quality", "decrease", "floor", 0.99, 0, False, False),
    "label_coverage": ("data_quality", "decrease", "floor", 0.95, 0, False, False),
    "duplicate_key_rate": ("data_quality", "increase", "absolute", 0.001, 0, False, False),
    "invalid_score_rate": ("data_quality", "increase", "absolute", 0.001, 0, False, False),
    "invalid_label_rate": ("data_quality", "increase", "absolute", 0.001, 0, False, False),
    "null_key_rate": ("data_quality", "increase", "absolute", 0.001, 0, False, False),
    "unseen_value_rate": ("data_quality", "increase", "absolute", 0.001, 0, False, False),
    "conflicting_label_rate": ("data_quality", "increase", "absolute", 0.001, 0, False, False),
}
#: Floors under relative tolerances (a rate near 0 would have a margin of a few events).
MIN_MARGIN = {"positive_rate": 0.0005, "predicted_positive_rate": 0.0005}
NEEDS = {"drift": "online", "skew": "offline", "performance": "outcomes", "data_quality": "any"}

FULL_YAML = """\
columns:
  evaluation: {score: p, label: y, weight: w, value: revenue}
  online: {key: [user_id, request_id], ts: served_at, score: p_online,
           model_version: mv, label: null, offline_score: p_replay}
  offline: {key: [user_id, request_id], score: p_offline}
  outcomes: {key: [user_id, request_id], label: clicked, value: revenue, ts: arrived_at}
slices: [country, device, country]
crosses: [[country, device]]
features: {age: numeric, region: categorical}
thresholds: [0.7, 0.3, 0.5, 0.3, 1]
top_k: 50
score_bins: 2048
bootstrap: 200
ci_level: 0.9
fdr_q: 0.1
seed: 42
batch_size: 65536
metrics:
  auc: {tolerance: 0.03, min_events: 50}
  psi: {enabled: false}
  positive_rate: {tolerance_kind: absolute, tolerance: 0.01, bad: increase}
  join_coverage: {tolerance: 0.98}
owners: {country: growth-team, auc: ranking-team}
window: 1d
label_horizon: 7d
duckdb_memory_limit: 16GiB
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> str:
    """Load ``text`` as config.yaml, expect a ConfigError, return its message."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    # one paragraph, no pydantic dump
    assert "\n" not in message
    for noise in ("pydantic", "validation error", "Traceback", "input_value", "type="):
        assert noise not in message
    return message


# ------------------------------------------------------------------------------------------
# The catalogue
# ------------------------------------------------------------------------------------------


def test_catalogue_holds_exactly_the_canonical_metrics() -> None:
    assert set(METRICS) == set(EXPECTED)
    assert metric_names() == tuple(METRICS)
    assert set(metric_names("skew")) == {"flip_rate", "mean_abs_delta", "p99_abs_delta"}
    assert CAUSES == ("data_quality", "serving_skew", "data_drift", "concept_drift", "label_delay")
    assert STATUSES == ("insufficient_data", "alert", "warn", "ok")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_catalogue_defaults_match_design(name: str) -> None:
    family, bad, kind, tol, min_events, per_threshold, bias = EXPECTED[name]
    spec = METRICS[name]
    assert spec.name == name
    assert (spec.family, spec.bad, spec.tolerance_kind) == (family, bad, kind)
    assert spec.tolerance == tol
    assert spec.min_rows == 200
    assert spec.min_events == min_events
    assert spec.per_threshold is per_threshold
    assert spec.bias_corrected is bias
    assert spec.needs == NEEDS[family]
    assert spec.enabled is True
    expected = {"kind": kind, "value": tol, "bad": bad}
    if name in MIN_MARGIN:
        expected["min_margin"] = MIN_MARGIN[name]
    assert spec.tolerance_spec.to_dict() == expected
    # an empty config resolves to the catalogue
    assert Config().resolved_metric(name) == spec


def test_metric_spec_and_tolerance_validate() -> None:
    with pytest.raises(ValueError, match="family"):
        MetricSpec("x", "nope", "increase", "absolute", 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="value"):
        Tolerance("absolute", -0.1, "increase")
    with pytest.raises(ValueError, match="value"):
        Tolerance("absolute", math.nan, "increase")
    with pytest.raises(ValueError, match="either"):
        Tolerance("floor", 0.9, "either")
    with pytest.raises(ValueError, match="kind"):
        Tolerance("percent", 0.1, "increase")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bad"):
        Tolerance("absolute", 0.1, "up")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Tolerance semantics: strictly beyond, in the bad direction
# ------------------------------------------------------------------------------------------

# Binary fractions, so that boundaries are exact in floating point.
A = 0.25  # absolute margin
R = 0.5  # relative fraction
E = 0.5  # expected value; relative margin = R * |E| = 0.25


@pytest.mark.parametrize(
    ("kind", "value", "bad", "expected", "diff", "beyond"),
    [
        # absolute, increase: diff > margin
        ("absolute", A, "increase", E, 0.25, False),
        ("absolute", A, "increase", E, 0.2500001, True),
        ("absolute", A, "increase", E, -10.0, False),
        # absolute, decrease: diff < -margin
        ("absolute", A, "decrease", E, -0.25, False),
        ("absolute", A, "decrease", E, -0.2500001, True),
        ("absolute", A, "decrease", E, 10.0, False),
        # absolute, either: |diff| > margin
        ("absolute", A, "either", E, 0.25, False),
        ("absolute", A, "either", E, -0.25, False),
        ("absolute", A, "either", E, 0.2500001, True),
        ("absolute", A, "either", E, -0.2500001, True),
        ("absolute", A, "either", E, 0.0, False),
        # relative: the same with value * |expected|
        ("relative", R, "increase", E, 0.25, False),
        ("relative", R, "increase", E, 0.2500001, True),
        ("relative", R, "decrease", E, -0.25, False),
        ("relative", R, "decrease", E, -0.2500001, True),
        ("relative", R, "either", E, 0.25, False),
        ("relative", R, "either", E, -0.2500001, True),
        ("relative", R, "either", -E, 0.25, False),  # |expected|
        ("relative", R, "either", -E, 0.2500001, True),
        ("relative", R, "increase", 0.0, 1e-12, True),  # zero expectation: zero margin
        ("relative", R, "increase", 0.0, 0.0, False),
        # floor: the value (expected + diff) below the floor; a ceiling with bad=increase
        ("floor", 0.75, "decrease", 1.0, -0.25, False),  # value 0.75 == floor
        ("floor", 0.75, "decrease", 1.0, -0.2500001, True),
        ("floor", 0.75, "decrease", 0.5, 0.0, True),  # no change, but below the floor
        ("floor", 0.75, "decrease", 0.5, 0.5, False),
        ("floor", 0.25, "increase", 0.0, 0.25, False),  # at the ceiling
        ("floor", 0.25, "increase", 0.0, 0.2500001, True),
    ],
)
def test_tolerance_beyond_boundaries(
    kind: str, value: float, bad: str, expected: float, diff: float, beyond: bool
) -> None:
    tol = Tolerance(kind, value, bad)  # type: ignore[arg-type]
    assert bool(tol.beyond(diff, expected)) is beyond
    excess = tol.excess(diff, expected)
    assert (excess > 0) is beyond
    # a degenerate interval is beyond exactly when its point is
    assert bool(tol.ci_beyond(diff, diff, expected)) is beyond


def test_tolerance_exactly_at_boundary_is_within() -> None:
    assert Tolerance("absolute", 0.02, "decrease").beyond(-0.02, 0.8) is False
    assert Tolerance("absolute", 0.02, "increase").beyond(0.02, 0.1) is False
    assert Tolerance("relative", 0.1, "either").beyond(0.1 * 0.37, 0.37) is False
    assert Tolerance("floor", 0.99, "decrease").beyond(0.0, 0.0, value=0.99) is False
    assert Tolerance("floor", 0.99, "decrease").beyond(0.0, 0.0, value=0.9899) is True


def test_tolerance_ci_beyond_needs_the_whole_interval() -> None:
    inc = Tolerance("absolute", 0.1, "increase")
    assert inc.ci_beyond(0.11, 0.3, 0.0)
    assert not inc.ci_beyond(0.1, 0.3, 0.0)  # touches the tolerance
    assert not inc.ci_beyond(0.05, 0.3, 0.0)
    dec = Tolerance("absolute", 0.1, "decrease")
    assert dec.ci_beyond(-0.3, -0.11, 0.0)
    assert not dec.ci_beyond(-0.3, -0.1, 0.0)
    either = Tolerance("relative", 0.5, "either")
    assert either.ci_beyond(0.3, 0.4, 0.5)
    assert either.ci_beyond(-0.4, -0.3, 0.5)
    assert not either.ci_beyond(-0.4, 0.4, 0.5)  # straddles both bounds
    floor = Tolerance("floor", 0.99, "decrease")
    assert floor.ci_beyond(-0.05, -0.02, 1.0)  # value in [0.95, 0.98]
    assert not floor.ci_beyond(-0.05, 0.0, 1.0)


def test_tolerance_works_on_arrays_and_nan_is_never_beyond() -> None:
    tol = Tolerance("relative", 0.5, "either")
    diff = np.array([0.25, 0.3, -0.3, np.nan, 0.1])
    expected = np.array([0.5, 0.5, 0.5, 0.5, np.nan])
    np.testing.assert_array_equal(
        tol.beyond(diff, expected), [False, True, True, False, False]
    )
    assert Tolerance("absolute", 0.1, "increase").beyond(math.nan, 0.0) is False
    assert Tolerance("floor", 0.9, "decrease").beyond(math.nan, 1.0) is False
    assert Tolerance("absolute", 0.1, "increase").margin(123.0) == 0.1
    assert Tolerance("relative", 0.1, "increase").margin(-2.0) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        Tolerance("floor", 0.9, "decrease").margin(1.0)


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------


def test_empty_file_and_no_options_are_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "{}\n")) == Config()
    c = Config()
    assert c.thresholds == [0.5]
    assert (c.top_k, c.score_bins, c.bootstrap, c.ci_level, c.fdr_q, c.seed) == (
        100, 1024, 1000, 0.95, 0.05, 0
    )
    assert c.batch_size == 1 << 20
    assert c.duckdb_memory_limit == "4GB"
    assert c.columns.online.key == ["request_id"]
    assert c.columns.key("offline") == ["request_id"]
    assert c.columns.key("outcomes") == ["request_id"]
    assert (c.columns.online.score, c.columns.offline.score) == ("score", "score")
    assert (c.columns.evaluation.label, c.columns.outcomes.label) == ("label", "label")
    assert c.columns.evaluation.weight is None
    assert c.window is None and c.window_seconds is None


def test_full_config_loads_and_round_trips(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, FULL_YAML))
    assert c.columns.online.key == ["user_id", "request_id"]
    assert c.columns.online.offline_score == "p_replay"
    assert c.columns.key("offline") == ["user_id", "request_id"]
    assert c.slices == ["country", "device"]  # de-duplicated, order kept
    assert c.crosses == [("country", "device")]
    assert c.features == {"age": "numeric", "region": "categorical"}
    assert c.thresholds == [0.3, 0.5, 0.7, 1.0]  # sorted, de-duplicated
    assert c.window_seconds == 86400
    assert c.label_horizon_seconds == 7 * 86400
    assert c.owners["auc"] == "ranking-team"

    auc = c.resolved_metric("auc")
    assert (auc.tolerance, auc.min_events, auc.bad, auc.tolerance_kind) == (
        0.03, 50, "decrease", "absolute"
    )
    assert c.resolved_metric("psi").enabled is False
    assert c.resolved_metric("psi").tolerance == 0.1
    pr = c.resolved_metric("positive_rate")
    assert pr.tolerance_spec.to_dict() == {"kind": "absolute", "value": 0.01, "bad": "increase"}
    assert c.resolved_metric("join_coverage").tolerance_spec.to_dict() == {
        "kind": "floor", "value": 0.98, "bad": "decrease"
    }
    assert c.resolved_metric("ks") == METRICS["ks"]
    assert set(c.resolved_metrics()) == set(METRICS)

    again = load_config(write(tmp_path, c.to_yaml(), "again.yaml"))
    assert again == c
    assert again.config_hash() == c.config_hash()

    # the published schema accepts what the loader accepts
    jsonschema.validate(yaml.safe_load(FULL_YAML), config_json_schema())
    jsonschema.validate(c.model_dump(mode="json"), config_json_schema())


def test_a_single_key_column_is_a_list_of_one(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "columns: {online: {key: uid}}\n"))
    assert c.columns.online.key == ["uid"]
    assert c.columns.key("outcomes") == ["uid"]


# ------------------------------------------------------------------------------------------
# Errors: one paragraph naming the file, the key and the value
# ------------------------------------------------------------------------------------------


def test_unknown_top_level_key_suggests_the_closest(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "bootstrp: 100\n")
    assert "'bootstrp'" in msg
    assert "Did you mean 'bootstrap'?" in msg


def test_unknown_nested_key_names_the_path(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "metrics:\n  auc: {tolerence: 0.1}\n")
    assert "'metrics.auc.tolerence'" in msg
    assert "Did you mean 'tolerance'?" in msg
    msg = config_error(tmp_path, "columns: {onlin: {score: s}}\n")
    assert "'columns.onlin'" in msg and "Did you mean 'online'?" in msg


def test_unknown_metric_lists_valid_names(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "metrics:\n  aucc: {tolerance: 0.1}\n")
    assert "'metrics'" in msg and "'aucc'" in msg
    assert "Did you mean 'auc'?" in msg
    for name in METRICS:
        assert name in msg
    with pytest.raises(ConfigError, match="'aucc'"):
        Config().resolved_metric("aucc")


def test_bad_type_names_key_and_value(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "metrics:\n  auc: {tolerance: abc}\n")
    assert msg == (
        f"The 'metrics.auc.tolerance' option in {tmp_path / 'config.yaml'} must be a "
        "number >= 0. Got 'abc' instead."
    )
    msg = config_error(tmp_path, "bootstrap: many\n")
    assert "'bootstrap'" in msg and "integer" in msg and "'many'" in msg
    msg = config_error(tmp_path, "bootstrap: true\n")  # a bool is not an int
    assert "'bootstrap'" in msg and "Got true" in msg
    msg = config_error(tmp_path, "features: {age: numerc}\n")
    assert "'features.age'" in msg and "'numerc'" in msg and "'categorical'" in msg
    msg = config_error(tmp_path, "metrics: {auc: 0.1}\n")
    assert "'metrics.auc'" in msg and "tolerance" in msg and "0.1" in msg


def test_negative_tolerance(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "metrics:\n  psi: {tolerance: -0.1}\n")
    assert "'metrics.psi.tolerance'" in msg and ">= 0" in msg and "-0.1" in msg


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.2", ".nan"])
def test_threshold_outside_unit_interval(tmp_path: Path, bad: str) -> None:
    msg = config_error(tmp_path, f"thresholds: [0.5, {bad}]\n")
    assert "'thresholds[1]'" in msg and "(0, 1]" in msg
    assert f"Got {bad if bad != '.nan' else 'NaN'} instead" in msg


@pytest.mark.parametrize("bad", ["1y", "0h", "1.5h", "h", "soon", "3600"])
def test_bad_duration(tmp_path: Path, bad: str) -> None:
    msg = config_error(tmp_path, f"window: {bad}\n")
    assert "'window'" in msg and "duration" in msg and bad in msg
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(bad)


def test_yaml_syntax_error(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "slices: [country\nseed: 1\n")
    assert "not valid YAML" in msg and "line" in msg


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "seed: 1\nseed: 2\n")
    assert "duplicate key 'seed'" in msg


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "- seed\n- 1\n")
    assert "mapping" in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "does not exist" in str(info.value)
    assert isinstance(info.value, ParityError)


def test_cross_references_are_checked(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "slices: [country]\ncrosses: [[country, devise]]\n")
    assert "'crosses[0]'" in msg and "'devise'" in msg
    msg = config_error(tmp_path, "slices: [a, b]\ncrosses: [[a, b], [b, a]]\n")
    assert "'crosses[1]'" in msg
    msg = config_error(tmp_path, "slices: [a]\ncrosses: [[a, a]]\n")
    assert "'crosses[0]'" in msg
    # model_version is always a slice
    assert load_config(write(tmp_path, "slices: [a]\ncrosses: [[a, model_version]]\n"))
    msg = config_error(tmp_path, "metrics: {join_coverage: {bad: either}}\n")
    assert "'metrics.join_coverage.bad'" in msg and "'either'" in msg


def test_several_problems_in_one_paragraph(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "top_k: 0\nscore_bins: 8\n")
    assert "'top_k'" in msg and "'score_bins'" in msg


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("ci_level: 0.3\n", "ci_level"),
        ("ci_level: 1\n", "ci_level"),
        ("fdr_q: 0\n", "fdr_q"),
        ("seed: -1\n", "seed"),
        ("batch_size: 0\n", "batch_size"),
        ("duckdb_memory_limit: lots\n", "duckdb_memory_limit"),
        ("columns: {online: {key: []}}\n", "columns.online.key"),
        ("columns: {online: {score: ''}}\n", "columns.online.score"),
        ("slices: country\n", "slices"),
        ("metrics: {auc: {enabled: maybe}}\n", "metrics.auc.enabled"),
        ("metrics: {auc: {min_rows: 1.5}}\n", "metrics.auc.min_rows"),
        ("metrics: {auc: {bad: down}}\n", "metrics.auc.bad"),
    ],
)
def test_other_bad_values(tmp_path: Path, text: str, key: str) -> None:
    assert f"'{key}'" in config_error(tmp_path, text)


# ------------------------------------------------------------------------------------------
# Durations, overrides, hash, schema
# ------------------------------------------------------------------------------------------


def test_parse_duration() -> None:
    assert parse_duration("15m") == 900
    assert parse_duration("1h") == 3600
    assert parse_duration("1d") == 86400
    assert parse_duration("1w") == 604800
    assert parse_duration("1h30m") == 5400
    assert parse_duration(" 2H ") == 7200
    assert parse_duration("45s") == 45


def test_with_overrides() -> None:
    base = Config.from_dict({"slices": ["country"], "metrics": {"psi": {"enabled": False}}})
    c = base.with_overrides(bootstrap=50, seed=None, window="1h")
    assert (c.bootstrap, c.seed, c.window_seconds) == (50, 0, 3600)
    assert base.bootstrap == 1000  # a copy
    c = base.with_overrides(**{"columns.online.score": "s1"}, columns__offline__score="s2")
    assert (c.columns.online.score, c.columns.offline.score) == ("s1", "s2")
    assert c.columns.online.key == ["request_id"]
    c = base.with_overrides(metrics={"auc": {"tolerance": 0.05}})
    assert c.resolved_metric("auc").tolerance == 0.05
    assert c.resolved_metric("psi").enabled is False  # merged, not replaced
    c = base.with_overrides(thresholds=[0.9, 0.1], slices=["device"])
    assert (c.thresholds, c.slices) == ([0.1, 0.9], ["device"])
    with pytest.raises(ConfigError, match=r"'bootstrap' option must be an integer >= 0\. Got -1"):
        base.with_overrides(bootstrap=-1)
    with pytest.raises(ConfigError, match="Did you mean 'bootstrap'"):
        base.with_overrides(bootstrp=1)
    with pytest.raises(ConfigError, match="'columns.online.scor'"):
        base.with_overrides(**{"columns.online.scor": "x"})


def test_metric_override_model() -> None:
    o = MetricOverride(tolerance=0.5)
    assert o.enabled is True and o.bad is None


def test_config_hash_is_stable_and_sensitive() -> None:
    a = Config.from_dict({"slices": ["country"], "thresholds": [0.5, 0.3]})
    b = Config.from_dict({"thresholds": [0.3, 0.5, 0.5], "slices": ["country"]})
    assert len(a.config_hash()) == 16
    int(a.config_hash(), 16)
    assert a.config_hash() == b.config_hash()
    assert Config().config_hash() == Config.from_dict({"bootstrap": 1000}).config_hash()
    assert a.with_overrides(seed=1).config_hash() != a.config_hash()
    assert (
        a.with_overrides(metrics={"auc": {"tolerance": 0.021}}).config_hash()
        != a.config_hash()
    )
    # stable across processes (no dependence on hash randomisation or dict order)
    code = (
        "from engine.config import Config;"
        "print(Config.from_dict({'slices': ['country'], 'thresholds': [0.5, 0.3]}).config_hash())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == a.config_hash()


def test_schema_file_is_current() -> None:
    committed = json.loads((ROOT / "docs" / "config.schema.json").read_text(encoding="utf-8"))
    assert committed == config_json_schema(), "run scripts/write_config_schema"
    jsonschema.Draft202012Validator.check_schema(committed)


def test_schema_rejects_what_the_loader_rejects() -> None:
    schema = config_json_schema()
    for bad in ({"bootstrp": 1}, {"metrics": {"aucc": {}}}, {"thresholds": [1.5]},
                {"features": {"a": "text"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        with pytest.raises(ConfigError):
            Config.from_dict(bad)


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    text = "metrics:\n  auc: &strict {tolerance: 0.01, min_rows: 500}\n  precision:\n" \
           "    <<: *strict\n    tolerance: 0.03\n"
    c = load_config(write(tmp_path, text))
    assert c.resolved_metric("precision").tolerance == 0.03
    assert c.resolved_metric("precision").min_rows == 500


def test_readme_config_example_is_valid():
    """The README's YAML example stays a valid configuration."""
    import re
    from pathlib import Path

    import yaml

    from engine.config import Config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", readme, re.S).group(1)
    config = Config.from_dict(yaml.safe_load(example))
    assert config.resolved_metric("auc").tolerance == 0.01
    assert not config.resolved_metric("value_per_row").enabled
