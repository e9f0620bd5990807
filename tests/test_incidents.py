"""Incidents, not a wall of alerts: localisation to the culprit slice, global changes kept on
the population, one incident per (culprit, kind)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gate_world as gw
from engine.config import Config
from engine.encode import CategoricalCodes, choose_atoms
from engine.expectation import build_baseline
from engine.incidents import Remainders
from engine.pipeline import run_check


def _run(w: gw.World, **kw):
    bl = build_baseline(w.evaluation, gw.config())
    return run_check(bl, w.online, offline=w.offline, outcomes=w.outcomes, bootstrap=200, **kw)


def _where(incidents):
    return [(json.dumps(i["slice"], sort_keys=True), i["cause"]) for i in incidents]


def test_a_bug_in_one_country_is_one_incident_there_and_explains_the_rest():
    """A serving bug in C01 (16% of traffic) also moves the population and every device:
    those findings are explained by C01, whose incident is the only one."""
    w = gw.world(100_000, seed=21, skew={"C01": 0.15})
    res = _run(w)
    assert _where(res.incidents) == [(json.dumps({"country": "C01"}), "serving_skew")]
    inc = res.incidents[0]
    by_id = {f.id: f for f in res.findings}
    explained = [by_id[i] for i in inc["explained_finding_ids"]]
    assert explained and {json.dumps(f.slice) for f in explained} >= {"{}", json.dumps({"device": "android"})}
    assert all(f.explained_by == {"country": "C01"} for f in explained)
    # every flagged finding is in the incident, its own or explained
    flagged = {f.id for f in res.findings if f.status in ("alert", "warn")}
    assert flagged == set(inc["finding_ids"]) | set(inc["explained_finding_ids"])
    assert res.run["localisation"]["atoms"] == ["country", "device"]


def test_a_bug_in_two_countries_explains_the_population_together():
    """The population moves with C01 and C03 together: neither alone explains it."""
    w = gw.world(100_000, seed=22, skew={"C01": 0.15, "C03": 0.15})
    res = _run(w)
    assert sorted(_where(res.incidents)) == sorted(
        [(json.dumps({"country": "C01"}), "serving_skew"), (json.dumps({"country": "C03"}), "serving_skew")]
    )


def test_a_population_wide_change_stays_one_population_incident():
    """Calibration off by +0.06 in every country: one concept-drift incident on the
    population, never blamed on its largest slice."""
    w = gw.world(100_000, seed=23, calibration_shift={c: 0.06 for c in gw.COUNTRIES})
    res = _run(w)
    assert _where(res.incidents) == [("{}", "concept_drift")]
    assert res.incidents[0]["explained_finding_ids"]


def test_ordinary_label_delay_everywhere_is_one_data_quality_incident():
    """10% of outcomes missing in every slice: one label-coverage incident, not one per
    slice."""
    w = gw.world(100_000, seed=24, label_missing=0.10)
    res = _run(w)
    assert _where(res.incidents) == [("{}", "data_quality")]
    assert res.incidents[0]["metrics"] == ["label_coverage"]
    n_slices = len({json.dumps(f.slice) for f in res.findings if f.metric == "label_coverage" and f.status == "alert"})
    assert n_slices > 10 and len(res.incidents[0]["explained_finding_ids"]) == n_slices - 1


def test_a_bug_in_a_cross_of_two_columns_is_blamed_on_the_slice_with_the_larger_effect():
    """A bug in country=C00 on ios only: C00 and ios explain each other's findings; the
    incident sits on one of them, and the other's findings are explained."""
    w = gw.world(100_000, seed=25)
    online = w.online.to_pandas()
    hit = (online["country"] == "C00") & (online["device"] == "ios")
    online.loc[hit, "score"] = np.clip(online.loc[hit, "score"] + 0.2, 0, 1)
    import pyarrow as pa

    w.online = pa.Table.from_pandas(online, preserve_index=False)
    res = _run(w)
    slices = [i["slice"] for i in res.incidents]
    assert len(res.incidents) == 1, _where(res.incidents)
    assert slices[0] in ({"country": "C00"}, {"device": "ios"})
    assert res.incidents[0]["cause"] == "serving_skew"


def test_remainders_are_planned_from_judged_slices_or_atoms():
    codes = {"country": CategoricalCodes(("BR", "MX")), "device": CategoricalCodes(("ios", "web"))}
    from engine.encode import Layout

    layout = Layout(
        slice_columns=("country", "device"), slice_codes=codes, crosses=(), thresholds=(0.5,),
        score_edges=np.array([0.5]), decile_edges=np.array([0.5]), coarse_edges=np.array([0.5]),
        atoms=choose_atoms(("country", "device"), codes, 1024),
    )
    rem = Remainders(layout.slice_labels(), layout)
    assert rem.plan({}, [{"country": "BR"}]) == (rem.index[json.dumps({"country": "BR"})], [])
    judged, atoms = rem.plan({"device": "ios"}, [{"country": "BR"}])
    assert judged is None and [rem.atom_labels[a] for a in atoms] == [{"country": "BR", "device": "ios"}]
    assert rem.plan({"country": "BR"}, [{"country": "MX"}]) is None  # disjoint
    _, atoms = rem.plan({}, [{"country": "BR"}, {"device": "ios"}])
    assert len(atoms) == 4 + 4 - 1  # BR's 4 device codes and ios's 4 country codes, BR x ios once
    # too large a cross leaves out the column with the most values
    many = {"a": CategoricalCodes(tuple("xyz")), "b": CategoricalCodes(tuple(str(i) for i in range(40))), "c": CategoricalCodes(("p",))}
    assert choose_atoms(("a", "b", "c"), many, 100) == ("a", "c")


@pytest.mark.parametrize("seed", range(3))
def test_finding_ids_are_the_hash_of_the_keys_json(seed):
    """Ids are stable across versions: ``f-`` and a SHA-1 of the compact JSON of the key,
    whatever characters the slice values, windows and features hold."""
    import hashlib
    import random

    from engine.compare import finding_id

    r = random.Random(seed)
    for _ in range(3000):
        metric = r.choice(["auc", "psi", "flip_rate", "unseen_value_rate"])
        scores = r.choice([None, "online", "offline"])
        slice_ = {c: r.choice(["BR", "é", 'a"b', "x\\y", "日本", "\n"]) for c in r.sample(["country", "device", "ü"], r.randint(0, 3))}
        window = r.choice([None, {"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}])
        feature = r.choice([None, "f1", "ü"])
        threshold = r.choice([None, 0.3, 0.6, 1e-7, 0.1 + 0.2])
        key = json.dumps(
            [metric, scores, sorted(slice_.items()), None if window is None else window["start"], feature, threshold],
            separators=(",", ":"),
        )
        assert finding_id(metric, scores, slice_, window, feature, threshold) == "f-" + hashlib.sha1(key.encode()).hexdigest()[:12]
