"""Owners: routing incidents by slice (column or column=value), metric and cause.

What is proved here: both config forms route as documented (first match wins, a slice rule
never matches the population, crosses match either column); routing is a pure function; an
owners rule naming a slice column the baseline lacks is a ConfigError naming it, and through
the CLI exit 2 with that message and no traceback; the YAML rules form loads and the
published JSON Schema accepts it and rejects a bad entry.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from engine.config import Config, config_json_schema, load_config
from engine.errors import ConfigError
from engine.owners import assign_owners, check_owners, routes

REPO = Path(__file__).resolve().parents[1]


def inc(slice_=None, metrics=("auc",), cause="concept_drift", **kw) -> dict:
    return {"id": "inc-1", "slice": dict(slice_ or {}), "metrics": list(metrics), "cause": cause,
            "owner": None, "escalation": None, **kw}


def owner_of(incident, cfg) -> tuple:
    (out,) = assign_owners([incident], cfg)
    return out["owner"], out["escalation"]


def test_mapping_form_routes_by_slice_column_or_metric():
    cfg = Config(slices=["country", "device"], owners={"country": "risk", "flip_rate": "ml-platform"})
    assert owner_of(inc({"country": "BR"}), cfg) == ("risk", None)
    assert owner_of(inc({"device": "ios"}, metrics=["flip_rate", "auc"]), cfg) == ("ml-platform", None)
    assert owner_of(inc({}, metrics=["flip_rate"]), cfg) == ("ml-platform", None)
    assert owner_of(inc({}, metrics=["auc"]), cfg) == (None, None)  # a slice never matches the population
    assert owner_of(inc({"device": "ios"}), cfg) == (None, None)


def test_rules_first_match_wins():
    cfg = Config.from_dict({
        "slices": ["country", "device"],
        "owners": [
            {"match": {"slice": "country=BR", "metric": "flip_rate"}, "owner": "serving-latam", "escalation": "page"},
            {"match": {"slice": "country=BR"}, "owner": "risk-latam", "escalation": "ticket"},
            {"match": {"cause": "data_quality"}, "owner": "data-eng"},
            {"match": {"slice": "country"}, "owner": "risk"},
            {"match": {"metric": "auc"}, "owner": "ranking", "escalation": "email"},
        ],
    })
    assert owner_of(inc({"country": "BR"}, metrics=["flip_rate"]), cfg) == ("serving-latam", "page")
    assert owner_of(inc({"country": "BR"}, metrics=["auc"]), cfg) == ("risk-latam", "ticket")
    assert owner_of(inc({"country": "MX"}, cause="data_quality"), cfg) == ("data-eng", None)
    assert owner_of(inc({"country": "MX"}), cfg) == ("risk", None)
    # a cross slice matches a rule on either of its columns
    assert owner_of(inc({"country": "BR", "device": "ios"}, metrics=["ece"]), cfg) == ("risk-latam", "ticket")
    assert owner_of(inc({"device": "ios"}), cfg) == ("ranking", "email")
    assert owner_of(inc({"device": "ios"}, metrics=["psi"]), cfg) == (None, None)
    # metrics given as finding-like dicts are read too
    assert owner_of(inc({"device": "ios"}, metrics=[{"metric": "auc", "scores": "online"}]), cfg) == ("ranking", "email")


def test_assign_owners_is_pure():
    cfg = Config(slices=["country"], owners={"country": "risk"})
    given = [inc({"country": "BR"}), inc({}, owner="someone", escalation="page")]
    before = copy.deepcopy(given)
    out = assign_owners(given, cfg)
    assert given == before
    assert [o["owner"] for o in out] == ["risk", "someone"]  # no match keeps what it had
    assert assign_owners([], cfg) == []


def test_owners_naming_an_unknown_slice_column():
    cfg = Config.from_dict({"owners": {"countyr": "risk", "auc": "ranking"}})
    with pytest.raises(ConfigError) as err:
        check_owners(cfg, ["country", "device"], baseline="bl/")
    msg = str(err.value)
    assert "'owners.countyr'" in msg and "'countyr'" in msg and "bl/" in msg
    assert "slice columns: country, device" in msg and "Did you mean 'country'?" in msg
    rules = Config.from_dict({"owners": [{"match": {"metric": "auc"}, "owner": "a"},
                                         {"match": {"slice": "region=EU"}, "owner": "b"}]})
    with pytest.raises(ConfigError, match=r"'owners\[1\]\.match\.slice' option names the slice column 'region'"):
        check_owners(rules, ["country"])
    check_owners(rules, ["country", "region"])  # known: no error
    check_owners(Config.from_dict({"owners": {"flip_rate": "ml"}}), [])  # a metric needs no slice
    assert [r.metric for r in routes(Config.from_dict({"owners": {"flip_rate": "ml"}}))] == ["flip_rate"]


def test_yaml_rules_and_the_published_schema(tmp_path):
    text = (
        "slices: [country]\n"
        "owners:\n"
        "  - {match: {slice: \"country=BR\"}, owner: risk-latam, escalation: page}\n"
        "  - {match: {metric: flip_rate}, owner: ml-platform}\n"
        "notify: {timeout: 2.5, retries: 2, backoff: 0.25, deadline: 30}\n"
    )
    (tmp_path / "c.yaml").write_text(text)
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.owners[0].escalation == "page" and cfg.notify.retries == 2
    schema = config_json_schema()
    jsonschema.validate(yaml.safe_load(text), schema)
    jsonschema.validate({"owners": {"country": "risk"}}, schema)  # the mapping form still valid
    jsonschema.validate(cfg.model_dump(mode="json"), schema)
    assert load_config(tmp_path / "c.yaml").config_hash() == cfg.config_hash()
    for bad in ({"owners": [{"match": {}, "owner": "x"}]}, {"owners": [{"match": {"slice": "country"}}]},
                {"owners": [{"match": {"slice": "country"}, "owner": "x", "pager": "y"}]},
                {"notify": {"retries": -1}}):
        with pytest.raises(ConfigError):
            Config.from_dict(bad)
        if bad != {"owners": [{"match": {}, "owner": "x"}]}:  # "at least one condition" is the loader's
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(bad, schema)
    with pytest.raises(ConfigError, match=r"'owners\[0\]\.match\.slcie' option in .* Did you mean 'slice'"):
        (tmp_path / "typo.yaml").write_text("owners:\n  - {match: {slcie: country}, owner: x}\n")
        load_config(tmp_path / "typo.yaml")


def test_cli_exit_2_for_an_owners_entry_naming_an_unknown_slice(tmp_path):
    from engine.expectation import build_baseline
    from engine.synthetic import generate

    sc = generate(tmp_path / "w", rows=2000, seed=1, inject=False)
    build_baseline(sc.evaluation, Config(slices=["country", "device"], bootstrap=0), out=tmp_path / "bl")
    (tmp_path / "c.yaml").write_text(
        "bootstrap: 0\nowners:\n  - {match: {slice: \"region=EU\"}, owner: risk-eu, escalation: page}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "check", "--baseline", str(tmp_path / "bl"), "--online", str(sc.online),
         "--config", str(tmp_path / "c.yaml")],
        capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    for needle in ("parity: error:", "owners[0].match.slice", "'region'", str(tmp_path / "bl"), "country, device"):
        assert needle in proc.stderr, proc.stderr
