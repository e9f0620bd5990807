"""Conflicting duplicate outcomes (issue 14, item 2): counted, and their labels missing.

A check whose outcomes hold, for some keys, a second row with the opposite label must give
the label-based metrics of a check where those keys have no label at all (the labels are
not resolved, to 1 or otherwise), and say how many keys conflicted.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import engine
from engine.config import Config
from engine.synthetic import generate

LABEL_METRICS = {
    "auc", "precision", "recall", "fpr", "positive_rate", "ece", "brier", "log_loss", "value_per_row",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("conflicts")
    sc = generate(root, rows=20_000, seed=3, eval_rows=20_000, inject=False)
    config = Config(slices=sc.slices, features=sc.features, thresholds=sc.thresholds)
    engine.baseline(str(sc.evaluation), config, out=root / "baseline", backend="cpu")
    outcomes = pq.read_table(sc.outcomes)
    rng = np.random.default_rng(0)
    picked = rng.choice(outcomes.num_rows, 1500, replace=False)
    flipped = outcomes.take(picked)
    flipped = flipped.set_column(
        flipped.schema.get_field_index("label"), "label",
        pc.cast(pc.subtract(pa.scalar(1, flipped.schema.field("label").type), flipped.column("label")),
                flipped.schema.field("label").type),
    )
    agreeing = outcomes.take(rng.choice(outcomes.num_rows, 700, replace=False))  # plain duplicates
    pq.write_table(pa.concat_tables([outcomes, flipped, agreeing]), root / "conflicting.parquet")
    keep = np.ones(outcomes.num_rows, bool)
    keep[picked] = False
    pq.write_table(outcomes.filter(pa.array(keep)), root / "without.parquet")
    conflicted = set(flipped.column("request_id").to_pylist())
    return root, sc, len(conflicted), conflicted


def _check(root, sc, outcomes):
    return engine.check(str(root / "baseline"), str(sc.online), offline=str(sc.offline),
                        outcomes=str(outcomes), backend="cpu", bootstrap=50)


def test_conflicting_keys_are_counted_and_their_labels_missing(world):
    root, sc, n_conflicted, conflicted = world
    got = _check(root, sc, root / "conflicting.parquet")
    ref = _check(root, sc, root / "without.parquet")
    dq = got.data_quality
    assert dq["conflicting_labels"] == n_conflicted
    assert ref.data_quality["conflicting_labels"] == 0
    online_ids = set(pq.read_table(sc.online, columns=["request_id"]).column(0).to_pylist())
    matched_conflicts = len(conflicted & online_ids)
    assert dq["duplicate_keys"]["outcomes"] == 1500 + 700
    # the conflicting keys still match (their outcome row exists), but carry no label
    assert dq["matched_outcomes"] == ref.data_quality["matched_outcomes"] + matched_conflicts

    def label_based(result):
        return sorted(
            (f.metric, f.scores or "", str(f.slice), str(f.feature), str(f.threshold), f.value, f.n)
            for f in result.findings if f.metric in LABEL_METRICS
        )

    a, b = label_based(got), label_based(ref)
    assert a and a == b
