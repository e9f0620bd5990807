"""Laws of the sufficient statistics (hypothesis).

Statistics are a commutative monoid under ``merge`` (``zero`` is the identity), and the
statistics of a table do not depend on how it is cut into batches, on the batch order, on
the batch size or on the row order: they are bit-identical (``Statistics.equal``), since
counts are integers and sums are fixed-point integers.

The layout is built once per module; the tables are random, with the values that test the
edges: scores exactly at a threshold or a fine edge, 0, 1, NaN, out of range, nulls, labels
that are missing or invalid, slice values outside the top-K or never seen.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.encode import LayoutBuilder, quantile_edges
from engine.errors import StatisticsError
from engine.stats import Accumulator, Statistics
from kernels import get_kernels

COUNTRIES = np.array(["us", "de", "fr", "jp", "br", "in", "zz"])
DEVICES = np.array(["ios", "android", "web"])
CH = np.array(list("abcdefgh"))
THRESHOLDS = [0.3, 0.6]


def make_table(seed: int, n: int, *, dirty: float = 0.0, edge_scores=None) -> pa.Table:
    """A random table with score, label, offline_score, value, slices and features.

    ``dirty`` is the share of rows given a data-quality problem of some kind.
    """
    rng = np.random.default_rng(seed)
    score = rng.beta(2.0, 5.0, n)
    if edge_scores is not None and n:
        at_edge = rng.random(n) < 0.2
        score = np.where(at_edge, rng.choice(edge_scores, n), score)
    label = (rng.random(n) < score).astype(np.float64)
    offline = np.clip(score + rng.normal(0, 0.05, n) * (rng.random(n) < 0.6), 0.0, 1.0)
    value = np.round(rng.gamma(2.0, 20.0, n) * np.where(rng.random(n) < 0.1, -1, 1), 2)
    f1 = rng.normal(size=n)
    country = COUNTRIES[rng.choice(len(COUNTRIES), n, p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.06, 0.04])]
    device = DEVICES[rng.integers(0, 3, n)]
    ch = CH[rng.integers(0, len(CH), n)]
    nulls = {c: np.zeros(n, bool) for c in ["score", "label", "offline_score", "value", "f1", "country", "device", "ch"]}
    if dirty and n:
        bad = rng.random(n) < dirty
        kind = rng.integers(0, 12, n)
        score = np.where(bad & (kind == 0), np.nan, score)
        score = np.where(bad & (kind == 1), rng.choice([-0.5, 1.5, np.inf], n), score)
        label = np.where(bad & (kind == 2), rng.choice([2.0, -1.0], n), label)
        offline = np.where(bad & (kind == 3), rng.choice([np.nan, 1.2], n), offline)
        f1 = np.where(bad & (kind == 4), np.nan, f1)
        country = np.where(bad & (kind == 5), "never_seen", country)
        device = np.where(bad & (kind == 6), "fridge", device)
        ch = np.where(bad & (kind == 7), "q", ch)
        for j, c in enumerate(["score", "label", "offline_score", "value"]):
            nulls[c] = bad & (kind == 8 + j)
        for c in ["country", "device", "ch", "f1"]:
            nulls[c] = bad & (kind == 8) & (rng.random(n) < 0.5)
    cols = {"score": score, "label": label, "offline_score": offline, "value": value, "f1": f1,
            "country": country, "device": device, "ch": ch}
    return pa.table({c: pa.array(v, mask=nulls[c]) for c, v in cols.items()})


def _build_layout():
    base = make_table(0, 3000)
    b = LayoutBuilder(
        ["country", "device"], {"f1": "numeric", "ch": "categorical"}, THRESHOLDS,
        top_k=5, score_bins=256, crosses=[("country", "device")],
    )
    b.update(base)
    return b.build()


LAYOUT = _build_layout()
KERNELS = get_kernels("cpu")
ACCS = {
    "plain": Accumulator(LAYOUT, KERNELS),
    "paired_value": Accumulator(LAYOUT, KERNELS, paired=True, with_value=True),
}
# scores that sit exactly on a bin edge, a threshold, or the ends of [0, 1]
EDGE_SCORES = np.concatenate([LAYOUT.score_edges[::16], THRESHOLDS, [0.0, 1.0, np.nextafter(0.3, 0), 5e-324]])


@st.composite
def tables(draw, max_rows: int = 2000):
    n = draw(st.one_of(st.integers(0, 40), st.integers(0, max_rows)))
    seed = draw(st.integers(0, 2**32 - 1))
    dirty = draw(st.sampled_from([0.0, 0.05, 0.5]))
    edges = draw(st.booleans())
    return make_table(seed, n, dirty=dirty, edge_scores=EDGE_SCORES if edges else None)


def stats_of(acc: Accumulator, table: pa.Table, batch_size: int = 1 << 20) -> Statistics:
    return acc.accumulate(table.to_batches(max_chunksize=batch_size))


def same(a: Statistics, b: Statistics) -> bool:
    return a.equal(b) and a.rows == b.rows and (a.n_raw, a.whole_from) == (b.n_raw, b.whole_from)


accs = pytest.mark.parametrize("acc", list(ACCS.values()), ids=list(ACCS))


# ---------------------------------------------------------------------------- monoid
@accs
@given(table=tables())
def test_zero_is_identity(acc, table):
    a = stats_of(acc, table)
    assert a.rows == table.num_rows
    assert same(acc.zero().merge(a), a)
    assert same(a.merge(acc.zero()), a)
    assert same(a + acc.zero(), a)
    if table.num_rows == 0:
        assert same(a, acc.zero())


@accs
@given(a=tables(600), b=tables(600), c=tables(600))
def test_merge_commutative_and_associative(acc, a, b, c):
    sa, sb, sc = (stats_of(acc, t) for t in (a, b, c))
    assert same(sa.merge(sb), sb.merge(sa))
    assert same(sa.merge(sb).merge(sc), sa.merge(sb.merge(sc)))
    # and the merge is the statistics of the concatenated table
    assert same(sa.merge(sb).merge(sc), stats_of(acc, pa.concat_tables([a, b, c])))


# ---------------------------------------------------------------------------- invariance
@accs
@given(table=tables(), cuts=st.lists(st.floats(0.0, 1.0), max_size=6), seed=st.integers(0, 2**32 - 1))
def test_partition_invariance(acc, table, cuts, seed):
    n = table.num_rows
    whole = acc.batch_statistics(table)
    points = sorted({int(c * n) for c in cuts} | {0, n})
    parts = [table.slice(lo, hi - lo) for lo, hi in itertools.pairwise(points)]
    batches = [b for p in parts for b in p.to_batches()]
    assert same(acc.accumulate(batches), whole)
    rng = np.random.default_rng(seed)
    assert same(acc.accumulate([batches[i] for i in rng.permutation(len(batches))]), whole)
    # partitions accumulated apart (workers) and merged in any order
    partials = [stats_of(acc, p) for p in parts]
    merged = acc.zero()
    for i in rng.permutation(len(partials)):
        merged = merged.merge(partials[i])
    assert same(merged, whole)
    # rows shuffled
    assert same(stats_of(acc, table.take(pa.array(rng.permutation(n)))), whole)


@accs
@given(table=tables(max_rows=20), big=tables(max_rows=300))
def test_batch_size_invariance(acc, table, big):
    for t in (table, big):
        ref = acc.batch_statistics(t)
        for size in (1, 7, 1000) if t is table else (7, 1000):
            assert same(stats_of(acc, t, size), ref), size


# ---------------------------------------------------------------------------- persistence
@accs
@given(table=tables(800))
def test_npz_round_trip(acc, table):
    a = stats_of(acc, table)
    buf = io.BytesIO()
    a.to_npz(buf)
    buf.seek(0)
    b = Statistics.from_npz(buf)
    assert same(a, b)
    assert (a.layout_id, a.n_raw, a.whole_from, a.rows) == (b.layout_id, b.n_raw, b.whole_from, b.rows)
    assert all(b.raw[k].dtype == np.int64 for k in b.raw)
    assert same(b.merge(a), a.merge(a))  # a loaded statistic still merges


def test_npz_round_trip_file(tmp_path):
    acc = ACCS["paired_value"]
    a = stats_of(acc, make_table(5, 500, dirty=0.1))
    path = tmp_path / "stats.npz"
    a.to_npz(path)
    assert same(Statistics.from_npz(path), a)


# ---------------------------------------------------------------------------- layouts
def test_merge_of_different_layouts_raises():
    other_builder = LayoutBuilder(["country", "device"], {"f1": "numeric", "ch": "categorical"}, [0.3, 0.7], top_k=5, score_bins=256, crosses=[("country", "device")])
    other_builder.update(make_table(0, 3000))
    other = other_builder.build()
    assert other.fingerprint() != LAYOUT.fingerprint()
    t = make_table(1, 200)
    a = stats_of(ACCS["plain"], t)
    b = stats_of(Accumulator(other, KERNELS), t)
    with pytest.raises(StatisticsError):
        a.merge(b)
    with pytest.raises(StatisticsError):
        b.merge(a)
    # same layout, different statistics (paired / value or not)
    with pytest.raises(StatisticsError):
        a.merge(stats_of(ACCS["paired_value"], t))
    with pytest.raises(StatisticsError):
        ACCS["paired_value"].zero().merge(Accumulator(LAYOUT, KERNELS, paired=True).zero())
    # a layout that round-trips through its dict is the same layout: its statistics merge
    from engine.encode import Layout

    again = Accumulator(Layout.from_dict(LAYOUT.to_dict()), KERNELS)
    assert same(a.merge(stats_of(again, t)), a.merge(a))


def test_layout_is_not_degenerate():
    """The law tests exercise what they claim: slices, crosses, folded tails, edge scores."""
    acc = ACCS["paired_value"]
    s = stats_of(acc, make_table(3, 2000, dirty=0.3, edge_scores=EDGE_SCORES))
    assert LAYOUT.n_slices == 1 + 7 + 5 + 35
    assert set(s.raw) == {"score", "calib", "feature", "dq", "offline", "calib_off", "joint", "delta", "value"}
    dq = s.grid("dq")[0][0]
    assert all(dq[i] > 0 for i in range(len(acc.dq_flags)) if acc.dq_flags[i] != "null_key")
    assert s.grid("value")[1].min() < 0  # negative values are summed too


# ------------------------------------------------------------------------------- layout edges
def _numpy_quantile_edges(sample, n_bins, lo=-np.inf, hi=np.inf):
    """The edges as ``np.quantile(method="inverted_cdf")`` gives them: the reference."""
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return np.zeros(0)
    q = np.unique(np.quantile(sample, np.arange(1, n_bins) / n_bins, method="inverted_cdf"))
    return q[(q > sample.min()) & (q > lo) & (q < hi)].astype(np.float64)


@given(
    st.lists(
        st.one_of(
            st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
            st.sampled_from([0.0, 0.25, 0.5, 1.0, np.nan, np.inf, -np.inf]),  # ties and non-finite
        ),
        max_size=300,
    ),
    st.integers(2, 1100),
    st.booleans(),
)
def test_quantile_edges_are_numpys_inverted_cdf_quantiles(values, n_bins, bounded):
    sample = np.asarray(values, dtype=np.float64)
    lo, hi = (0.0, 1.0) if bounded else (-np.inf, np.inf)
    want = _numpy_quantile_edges(sample, n_bins, lo, hi)
    assert np.array_equal(quantile_edges(sample, n_bins, lo, hi), want)
    assert np.array_equal(quantile_edges(np.sort(sample), n_bins, lo, hi, presorted=True), want)
