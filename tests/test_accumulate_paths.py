"""The one-pass CPU kernel computes exactly what the primitive path computes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.encode import LayoutBuilder
from engine.stats import Accumulator
from kernels import reference
from kernels.cpu import CpuKernels


def _table(n: int, seed: int, shift: float = 0.0) -> pa.Table:
    r = np.random.default_rng(seed)
    p = np.clip(r.beta(1, 8, n) + shift, 0, 1).astype(np.float32)
    p[r.random(n) < 0.01] = np.nan
    p[r.random(n) < 0.005] = 1.5
    label = (r.random(n) < p).astype(float)
    label[r.random(n) < 0.02] = np.nan
    label[r.random(n) < 0.01] = 2.0
    off = np.where(r.random(n) < 0.05, r.random(n), p).astype(np.float32)
    off[r.random(n) < 0.02] = np.nan
    off[r.random(n) < 0.005] = -0.5
    country = r.choice(np.array(["US", "BR", "DE", "FR", "NZ", None], dtype=object), n)
    f1 = r.normal(size=n)
    f1[r.random(n) < 0.02] = np.nan
    return pa.table(
        {
            "score": p,
            "offline_score": off,
            "label": label,
            "value": np.round(r.normal(10, 5, n), 2),
            "country": country,
            "device": pa.array(r.choice(["ios", "web", "android"], n)).dictionary_encode(),
            "f1": f1.astype(np.float32),
            "f2": r.integers(0, 20, n),
            "ch": r.choice(list("abcz"), n),
            "__key_null": r.random(n) < 0.01,
        }
    )


def build_layout(rows: int):
    """The layout of ``_table(rows, 1)``'s baseline, in which 'z' is never seen."""
    base = _table(rows, 1)
    base = base.filter(pa.compute.not_equal(base["ch"], "z"))
    builder = LayoutBuilder(
        ["country", "device"],
        {"f1": "numeric", "f2": "numeric", "ch": "categorical"},
        [0.3, 0.6],
        top_k=4,
        crosses=[("country", "device")],
    )
    builder.update(base)
    return builder.build()


@pytest.fixture(scope="module")
def layout():
    return build_layout(20_000)


class _ReferenceKernels(CpuKernels):
    """The numpy oracles, for a third opinion."""

    def __init__(self) -> None:
        super().__init__(fused=False)

    bin_index = staticmethod(reference.bin_index)
    histogram = staticmethod(reference.histogram)


@given(seed=st.integers(0, 2**31), n=st.integers(1, 3000), paired=st.booleans(), batch=st.integers(1, 3000))
def test_fused_equals_primitives(layout, seed, n, paired, batch):
    table = _table(n, seed, shift=0.02)
    fused = Accumulator(layout, CpuKernels(fused=True), paired=paired, with_value=True)
    prim = Accumulator(layout, CpuKernels(fused=False), paired=paired, with_value=True)
    a = fused.accumulate(table.to_batches(max_chunksize=batch))
    b = prim.accumulate(table.to_batches(max_chunksize=max(1, batch // 2)))
    assert a.equal(b)
    assert a.rows == b.rows == n


def test_primitives_equal_numpy_reference(layout):
    table = _table(5000, 7)
    a = Accumulator(layout, CpuKernels(fused=False), paired=True, with_value=True).accumulate(table.to_batches())
    b = Accumulator(layout, _ReferenceKernels(), paired=True, with_value=True).accumulate(table.to_batches())
    assert a.equal(b)


def test_counts_are_exact(layout):
    """Row counts per flag equal a direct count over the rows."""
    table = _table(4000, 3)
    acc = Accumulator(layout, CpuKernels(), paired=True)
    dq = acc.accumulate(table.to_batches(max_chunksize=999)).grid("dq")[0][0]
    flags = dict(zip(acc.dq_flags, dq))
    score = table["score"].to_numpy(zero_copy_only=False)
    label = table["label"].to_numpy(zero_copy_only=False)
    off = table["offline_score"].to_numpy(zero_copy_only=False)
    assert flags["rows"] == 4000
    assert flags["valid_score"] == int(((score >= 0) & (score <= 1)).sum())
    assert flags["invalid_score"] == 4000 - flags["valid_score"]
    assert flags["has_label"] == int(np.isin(label, [0.0, 1.0]).sum())
    assert flags["invalid_label"] == int((~np.isnan(label) & ~np.isin(label, [0.0, 1.0])).sum())
    assert flags["has_offline"] == int(((off >= 0) & (off <= 1)).sum())
    assert flags["invalid_offline_score"] == int((~np.isnan(off) & ~((off >= 0) & (off <= 1))).sum())
    assert flags["null_key"] == int(table["__key_null"].to_numpy().sum())
    assert flags["unseen:ch"] == int((table["ch"].to_numpy(zero_copy_only=False) == "z").sum())


def test_layout_sample_does_not_depend_on_batches():
    """Past max_sample, the quantile sample is every stride-th row by position."""
    table = _table(30_000, 4)

    def build(batch: int):
        builder = LayoutBuilder(["country"], {"f1": "numeric"}, [0.3], max_sample=7_000, total_rows=table.num_rows)
        for b in table.to_batches(max_chunksize=batch):
            builder.update(b)
        return builder.build()

    a, b = build(30_000), build(1_234)
    assert a.fingerprint() == b.fingerprint()
    assert np.array_equal(a.score_edges, b.score_edges)


def test_fused_equals_primitives_on_edge_values(layout):
    """Values on bin edges and thresholds, infinities, -0.0, constant features, and a batch
    long enough for two threads and many chunks: the fused kernel's branch-free binning and
    packed cells give exactly the primitive path's statistics."""
    n = 150_000
    table = _table(n, 11, shift=0.02)
    r = np.random.default_rng(12)
    p = table["score"].to_numpy(zero_copy_only=False).copy()
    on_edge = r.random(n) < 0.2
    p[on_edge] = r.choice(np.concatenate([layout.score_edges[:200], [0.3, 0.6, 0.0, -0.0, 1.0]]), on_edge.sum())
    off = np.where(r.random(n) < 0.5, p, table["offline_score"].to_numpy(zero_copy_only=False))
    off[r.random(n) < 0.01] = -0.0
    f1 = table["f1"].to_numpy(zero_copy_only=False).copy()
    f1[r.random(n) < 0.01] = np.inf
    f1[r.random(n) < 0.01] = -np.inf
    f1_edges = layout.features[[f.name for f in layout.features].index("f1")].edges
    some = r.random(n) < 0.2
    f1[some] = r.choice(f1_edges, some.sum())
    table = (
        table.set_column(table.schema.get_field_index("score"), "score", pa.array(p.astype(np.float32)))
        .set_column(table.schema.get_field_index("offline_score"), "offline_score", pa.array(off.astype(np.float32)))
        .set_column(table.schema.get_field_index("f1"), "f1", pa.array(f1.astype(np.float32)))
        .set_column(table.schema.get_field_index("f2"), "f2", pa.array(np.full(n, 7)))
    )
    for paired in (True, False):
        fused = Accumulator(layout, CpuKernels(fused=True), paired=paired, with_value=True)
        prim = Accumulator(layout, CpuKernels(fused=False), paired=paired, with_value=True)
        a = fused.accumulate(table.to_batches(max_chunksize=120_000))
        b = prim.accumulate(table.to_batches(max_chunksize=50_000))
        assert a.equal(b)


def test_fused_threads_split_packed_cells_when_they_could_carry(layout, monkeypatch):
    """Above ``_PACKED_ROWS`` rows the threads' packed fine cells are split before they are
    summed; the statistics are the same either way (lowered here to force that path)."""
    import kernels.cpu_fused as fused_module

    table = _table(120_000, 13)
    fused = Accumulator(layout, CpuKernels(fused=True), paired=True, with_value=True)
    a = fused.accumulate(table.to_batches())
    monkeypatch.setattr(fused_module, "_PACKED_ROWS", 0)
    b = fused.accumulate(table.to_batches())
    assert a.equal(b)


def test_fused_concurrent_callers_do_not_share_work_spaces(layout):
    """Accumulators called from several Python threads at once (as Dask workers do) give
    what they give one at a time: each calling thread has its own work spaces."""
    from concurrent.futures import ThreadPoolExecutor

    tables = [_table(110_000, 20 + s) for s in range(4)]
    acc = Accumulator(layout, CpuKernels(fused=True), paired=True, with_value=True)
    alone = [acc.accumulate(t.to_batches()) for t in tables]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda t: acc.accumulate(t.to_batches()), tables))
    assert all(a.equal(b) for a, b in zip(alone, together))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("one_pass", [True, False])
def test_each_window_has_exactly_the_statistics_of_its_rows(layout, fused, one_pass, monkeypatch):
    """The window pass (windows crossed into every dimension, one kernel call per batch) and
    the window-by-window fallback both give each window the statistics of its own rows,
    rows without a time in the last block; any batch size."""
    import dataclasses

    import engine.stats as S

    if not one_pass:
        monkeypatch.setattr(S, "WINDOW_PASS_CELLS", 0)
    n = 4000
    table = _table(n, 5, shift=0.02)
    r = np.random.default_rng(6)
    ts = pa.array(1_000_000 + r.integers(0, 5 * 3600, n), pa.int64()).cast(pa.timestamp("s"))
    ts = pa.array(np.where(r.random(n) < 0.03, None, ts.to_pylist()), pa.timestamp("s"))
    table = table.append_column("ts", ts)
    spec = S.WindowSpec("ts", origin=1_000_000, width=3600, count=5)
    kernels = CpuKernels(fused=fused)
    acc = Accumulator(layout, kernels, paired=True, with_value=True, windows=spec)
    assert (acc._window_pass is not None) == one_pass
    stats = acc.accumulate(table.to_batches(max_chunksize=1500))
    inner = Accumulator(dataclasses.replace(layout, atoms=()), kernels, paired=True, with_value=True)
    w = spec.index(table["ts"])
    for b in range(spec.blocks):
        rows = np.flatnonzero(w == b)
        assert rows.size  # every block has rows
        expect = inner.accumulate(table.take(pa.array(rows)).to_batches())
        got = acc.window_statistics(stats, b)
        assert got.rows == rows.size
        for name, arr in expect.raw.items():
            np.testing.assert_array_equal(got.raw[name], arr, err_msg=f"window {b}, grid {name}")
    # the whole period (judged slices and atoms) is what an accumulator without windows has,
    # though the window pass computes it as the sum of the windows
    plain = Accumulator(layout, kernels, paired=True, with_value=True).accumulate(table.to_batches(max_chunksize=1500))
    assert layout.atoms and stats.rows == plain.rows == n
    for name, arr in plain.raw.items():
        np.testing.assert_array_equal(stats.raw[name], arr, err_msg=f"whole period, grid {name}")


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bad", [1e15, -1e15, float("inf")])
def test_a_value_too_large_for_exact_sums_is_refused(layout, fused, bad):
    """Revenue values whose fixed-point sums could overflow are an error naming the value,
    on both accumulation paths (NaN values, however many, are not)."""
    from engine.errors import StatisticsError

    table = _table(2_000, 3)
    value = table["value"].to_numpy().copy()
    value[::7] = np.nan
    acc = Accumulator(layout, CpuKernels(fused=fused), paired=True, with_value=True)
    ok = table.set_column(table.schema.get_field_index("value"), "value", pa.array(value))
    assert acc.accumulate(ok.to_batches()).rows == 2_000
    value[11] = bad
    table = table.set_column(table.schema.get_field_index("value"), "value", pa.array(value))
    with pytest.raises(StatisticsError, match="too large for exact sums"):
        acc.accumulate(table.to_batches())
