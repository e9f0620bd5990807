"""The fused CUDA accumulation against the CPU's fused kernel, and the copy discipline.

Under Numba's CUDA simulator (``conftest.py``) each CUDA thread is a Python thread: a few
hundred rows and a 2 x 16 grid. With ``PARITY_REAL_GPU=1`` (``scripts/gpu_check``) the same
tests run on the device with its default grid and more rows. Statistics must be identical
to the CPU path's, integer for integer, whatever the shared-memory plan.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from numba import cuda

from engine.stats import Accumulator
from kernels.cpu import CpuKernels
from kernels.cuda import CudaKernels
from kernels.cuda import _fused, _kernels, _launch, _staging
from test_accumulate_paths import _table, build_layout

pytestmark = pytest.mark.cudasim

REAL_GPU = os.environ.get("PARITY_REAL_GPU") == "1"
ROWS = 200_000 if REAL_GPU else 240


def gpu(**kw) -> CudaKernels:
    """A tiny grid under the simulator; the device's own grid on a real GPU."""
    return CudaKernels(**kw) if REAL_GPU else CudaKernels(blocks=2, threads=16, **kw)


@pytest.fixture(scope="module")
def layout():
    return build_layout(3000)


@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize(
    "where, shared_bytes",
    [
        # every section in shared memory: more than a device grants, so only simulated
        pytest.param("all", 1 << 23, marks=pytest.mark.skipif(REAL_GPU, reason="over the device's shared memory")),
        ("some", 48 * 1024),
        ("none", 0),
    ],
)
def test_fused_cuda_equals_fused_cpu(layout, paired, where, shared_bytes):
    """Every grid, with every section in shared memory, some, or none."""
    table = _table(ROWS, 5, shift=0.02)
    batches = table.to_batches(max_chunksize=ROWS // 2 + 7)
    k = gpu(shared_bytes=shared_bytes)
    cpu = Accumulator(layout, CpuKernels(), paired=paired, with_value=True).accumulate(batches)
    acc = Accumulator(layout, k, paired=paired, with_value=True)
    got = acc.accumulate(batches)
    for name in cpu.raw:
        assert np.array_equal(got.raw[name], cpu.raw[name]), name
    assert got.rows == cpu.rows == ROWS
    # the plan this case meant to exercise: all sections in shared memory, some, or none
    in_shared = k.last_fused_plan[1][k.last_fused_plan[2] > 0] >= 0
    expect = {"all": in_shared.all(), "some": in_shared.any() and not in_shared.all(), "none": not in_shared.any()}
    assert expect[where], k.last_fused_plan


def test_plan_puts_what_fits_in_shared_memory():
    sizes = [3000, 3000, 120, 120, 9, 30, 500, 64, 12, 9]
    plan = _fused.plan_sections(sizes, 800)
    shared = {s for s in range(_kernels.N_SECTIONS) if plan[1, s] >= 0}
    assert shared == {_kernels.SEC_PATTERN, _kernels.SEC_VALUE, _kernels.SEC_DQ, _kernels.SEC_CALIB,
                      _kernels.SEC_CALIB_OFF, _kernels.SEC_JOINT, _kernels.SEC_DELTA}
    # shared offsets are disjoint and inside the budget; global offsets tile the output
    spans = sorted((plan[1, s], plan[1, s] + sizes[s]) for s in shared)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])) and spans[-1][1] <= 800
    assert list(plan[0]) == list(np.concatenate([[0], np.cumsum(sizes)[:-1]]))


def test_unpack_expands_the_row_pattern():
    """A row pattern raises the data-quality flags kernels.cpu_fused expands it to."""
    pat = 0b101001  # valid score, has label, null key
    flags = _fused.PATTERN_FLAGS[pat]
    assert list(flags) == [1, 1, 0, 0, 0, 1, 0, 1]
    assert list(_fused.PATTERN_FLAGS[0]) == [1, 0, 1, 0, 0, 0, 0, 0]


# --------------------------------------------------------------------------- copies
def test_canonical_layout():
    x = np.arange(10, dtype=np.int32)
    assert _launch.canonical_layout(x)
    assert _launch.canonical_layout(np.zeros((3, 4)))
    assert not _launch.canonical_layout(x[None, :])  # numpy calls it C-contiguous: stride 0
    assert not _launch.canonical_layout(x[:, None])
    assert not _launch.canonical_layout(x[::2])
    assert not _launch.canonical_layout(np.broadcast_to(x, (2, 10)))
    assert _launch.canonical_layout(np.ascontiguousarray(x[None, :]).copy())


@pytest.fixture
def copies(monkeypatch):
    """Every host array handed to ``cuda.to_device``, to the staged copies
    (``_staging.copy_up``) and to a kernel launch while the test runs."""
    seen: dict[str, list] = {"to_device": [], "staged": [], "launch": []}
    real_to_device, real_launch, real_copy_up = cuda.to_device, _launch.launch, _staging.copy_up

    def to_device(a, *args, **kw):
        seen["to_device"].append((a.shape, a.strides, a.dtype))
        return real_to_device(a, *args, **kw)

    def copy_up(dst, src, stream):
        seen["staged"].append((src.shape, src.strides, src.dtype))
        return real_copy_up(dst, src, stream)

    def launch(kernel, config, *args):
        seen["launch"].extend(type(a) for a in args)
        return real_launch(kernel, config, *args)

    monkeypatch.setattr(cuda, "to_device", to_device)
    monkeypatch.setattr(_staging, "copy_up", copy_up)
    monkeypatch.setattr(_launch, "launch", launch)
    return seen


def _fresh(shape, strides, dtype) -> bool:
    return strides == np.empty(shape, dtype).strides


def test_views_reach_to_device_as_fresh_arrays(copies):
    """The [None, :] views the primitive path makes are copied on the host first."""
    x = np.arange(100, dtype=np.int32) % 7
    k = gpu()
    got = k.histogram(x[None, :], np.zeros(1, np.int64), x[None, :] % 3, 3, 21, (x * 5)[None, :].astype(np.int64))
    assert got[0].sum() == 100
    assert copies["to_device"], "nothing was copied"
    assert all(_fresh(*c) for c in copies["to_device"]), copies["to_device"]


def test_gpu_accumulation_copies_only_fresh_arrays_and_launches_device_arrays(layout, copies):
    table = _table(60, 2)
    Accumulator(layout, gpu(), paired=True, with_value=True).accumulate(table.to_batches(max_chunksize=25))
    assert copies["launch"], "no kernel was launched"
    assert copies["staged"], "no column went through the pinned staging"
    for what in ("to_device", "staged"):
        assert all(_fresh(*c) for c in copies[what]), copies[what]
    assert not any(issubclass(t, np.ndarray) for t in copies["launch"])


def test_staged_copies_refuse_views():
    """The one asynchronous copy refuses a layout Numba copies slowly."""
    x = np.arange(8, dtype=np.int32)
    d = cuda.device_array((1, 8), np.int32)
    with pytest.raises(ValueError, match="canonically"):
        _staging.copy_up(d, x[None, :], 0)
    _staging.copy_up(d, x.reshape(1, 8), 0)
    assert np.array_equal(d.copy_to_host()[0], x)


# --------------------------------------------------------------------------- device-resident flow
def _cpu_stats(layout, batches, **kw):
    return Accumulator(layout, CpuKernels(), **kw).accumulate(batches)


def test_statistics_stay_on_the_device_until_read(layout):
    """Several batches, one copy back: when the statistics are read, bit for bit the CPU's."""
    batches = _table(ROWS, 7, shift=0.01).to_batches(max_chunksize=ROWS // 4 + 1)
    assert len(batches) == 4
    k = gpu()
    k.profile = {}
    acc = Accumulator(layout, k, paired=True, with_value=True)
    stats = acc.zero()
    for b in batches:
        acc.update(stats, b)
    assert stats.on_device and stats.rows == ROWS
    assert k.profile["batches"] == 4 and k.profile.get("downloads", 0) == 0
    assert stats.equal(_cpu_stats(layout, batches, paired=True, with_value=True))  # reads raw: syncs
    assert not stats.on_device and k.profile["downloads"] == 1
    stats.grid("score")
    assert k.profile["downloads"] == 1  # read once, kept on the host
    # more batches after a read: a second round on the device, added to what came back
    acc.update(stats, batches[0])
    assert stats.on_device
    again = _cpu_stats(layout, batches + batches[:1], paired=True, with_value=True)
    assert stats.equal(again) and k.profile["downloads"] == 2


def test_pinned_buffers_are_reused_across_batches(layout, monkeypatch):
    """Each column gets a pinned buffer per slot on the first two batches; later batches
    (no larger) reuse them."""
    allocated = []
    real = cuda.pinned_array

    def pinned_array(*args, **kw):
        allocated.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(cuda, "pinned_array", pinned_array)
    batches = _table(120, 8).to_batches(max_chunksize=20)
    k = gpu()
    acc = Accumulator(layout, k, paired=True, with_value=True)
    stats = acc.zero()
    acc.update(acc.update(stats, batches[0]), batches[1])
    first = len(allocated)
    assert first and first == k.staging.counters["pinned_allocations"]
    for b in batches[2:]:
        acc.update(stats, b)
    assert len(allocated) == first
    assert stats.equal(_cpu_stats(layout, batches, paired=True, with_value=True))


def test_interleaved_statistics_of_one_accumulator_stay_apart(layout):
    """Two statistics fed by one accumulator in turn each get their own batches' sums."""
    a, b = _table(60, 3).to_batches(max_chunksize=30), _table(50, 4).to_batches(max_chunksize=25)
    acc = Accumulator(layout, gpu(), paired=True)
    sa, sb = acc.zero(), acc.zero()
    for x, y in zip(a, b):
        acc.update(sa, x)
        acc.update(sb, y)
    assert sa.on_device and sb.on_device
    assert sa.equal(_cpu_stats(layout, a, paired=True)) and sb.equal(_cpu_stats(layout, b, paired=True))


def test_pickled_or_merged_statistics_hold_the_device_sums(layout):
    """What a Dask worker returns (pickled), a checkpoint saves and a merge adds: the
    complete statistics."""
    import pickle

    batches = _table(60, 5).to_batches(max_chunksize=30)
    acc = Accumulator(layout, gpu(), with_value=True)
    expect = _cpu_stats(layout, batches, with_value=True)

    def pending():
        s = acc.zero()
        for b in batches:
            acc.update(s, b)
        assert s.on_device
        return s

    assert pickle.loads(pickle.dumps(pending())).equal(expect)
    assert acc.zero().merge(pending()).equal(expect)
    assert pending().copy().equal(expect)


@pytest.mark.parametrize("one_pass", [True, False])
def test_windows_on_the_gpu_equal_the_cpu(layout, one_pass, monkeypatch):
    """The window pass keeps its statistics on the device too; the window-by-window
    fallback brings each batch's back. Both are the CPU's, window for window."""
    import pyarrow as pa

    import engine.stats as S

    if not one_pass:
        monkeypatch.setattr(S, "WINDOW_PASS_CELLS", 0)
    n = 120
    table = _table(n, 6)
    r = np.random.default_rng(2)
    ts = np.where(r.random(n) < 0.05, np.nan, 1_000_000 + r.integers(0, 3 * 3600, n))
    table = table.append_column("ts", pa.array(ts))
    spec = S.WindowSpec("ts", origin=1_000_000, width=3600, count=3)
    batches = table.to_batches(max_chunksize=50)
    k = gpu()
    k.profile = {}
    acc = Accumulator(layout, k, paired=True, windows=spec)
    assert acc._resident == one_pass
    got = acc.accumulate(batches)
    assert k.profile["downloads"] == (1 if one_pass else k.profile["batches"])
    expect = Accumulator(layout, CpuKernels(), paired=True, windows=spec).accumulate(batches)
    assert set(got.raw) == set(expect.raw) and got.equal(expect)


def test_launch_refuses_host_arrays():
    out = cuda.device_array(4, dtype=np.int64)
    _launch.launch(_kernels.probe_kernel, (1, 4), out)
    with pytest.raises(TypeError, match="host array"):
        _launch.launch(_kernels.probe_kernel, (1, 4), np.zeros(4, np.int64))


def test_label_codes():
    y = np.array([0.0, 1.0, np.nan, 2.0, -1.0, 1.0])
    assert _launch.label_codes(y).tolist() == [0, 1, 2, 3, 3, 1]
