"""The CUDA kernels against the numpy oracles of ``kernels.reference``.

Under Numba's CUDA simulator (the default, see ``conftest.py``) every CUDA thread is a Python
thread, so inputs are tiny and grids are 2 x 32 or 4 x 64; with ``PARITY_REAL_GPU=1``
(``scripts/gpu_check``) the same tests run on a GPU with the device's default grid.

Every result must be identical: bins, counts, fixed-point sums, unit weights, and the Poisson
and normal draws (the generator is integer arithmetic, see ``kernels._rng``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import cuda

from engine.errors import BackendUnavailableError
from kernels import _rng, get_kernels
from kernels import reference as ref
from kernels.cpu import CpuKernels
from kernels.cuda import CudaKernels, is_device_array

pytestmark = pytest.mark.cudasim

REAL_GPU = os.environ.get("PARITY_REAL_GPU") == "1"

#: hypothesis examples for the tests that launch several kernels per example
FEW = settings(max_examples=min(20, settings().max_examples))


def gpu(blocks: int = 2, threads: int = 32, **kw) -> CudaKernels:
    """A tiny grid under the simulator; the device's own grid on a real GPU."""
    if REAL_GPU:
        return CudaKernels(**kw)
    return CudaKernels(blocks=blocks, threads=threads, **kw)


def host(x) -> np.ndarray:
    assert is_device_array(x), "per-row results must stay on the device"
    return x.copy_to_host()


# --------------------------------------------------------------------------- bin_index
@st.composite
def binning_case(draw):
    """Edges (possibly empty or infinite) and values on, next to and outside them, plus NaN."""
    edges = np.unique(
        np.array(
            draw(
                st.lists(
                    st.floats(allow_nan=False, width=64, min_value=-1e6, max_value=1e6)
                    | st.sampled_from([-np.inf, np.inf, 0.0, -0.0, 1e-300]),
                    max_size=40,
                )
            ),
            dtype=np.float64,
        )
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(0, 300))
    pool = [rng.normal(0, 1e3, n), [np.nan, np.inf, -np.inf, 0.0, -0.0, 2e6, -2e6]]
    if edges.size:
        pool += [edges, np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf)]
    pool = np.concatenate([np.asarray(p, dtype=np.float64) for p in pool])
    values = rng.choice(pool, size=n) if n else np.zeros(0)
    return values, edges


@given(binning_case(), st.sampled_from(["f64", "f32", "f64_device", "f32_device"]))
def test_bin_index_matches_searchsorted(case, form):
    values, edges = case
    if form.startswith("f32"):
        with np.errstate(over="ignore"):  # 1.8e308 -> inf is part of the test
            values = values.astype(np.float32)  # the reference widens to float64 exactly
    arg = cuda.to_device(values) if form.endswith("device") else values
    got = host(gpu().bin_index(arg, edges))
    expect = ref.bin_index(values, edges)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expect)


@given(binning_case())
@FEW
def test_bin_index_edges_in_global_memory(case):
    # shared_bytes=0: the search reads the edges from global memory instead of shared
    values, edges = case
    got = host(gpu(shared_bytes=0).bin_index(values, edges))
    np.testing.assert_array_equal(got, ref.bin_index(values, edges))


def test_bin_index_rejects_bad_edges():
    k = gpu()
    for edges in ([1.0, 1.0], [2.0, 1.0], [0.0, np.nan]):
        with pytest.raises(ValueError, match="strictly increasing"):
            k.bin_index(np.zeros(3), np.array(edges))


def test_bin_index_writes_into_out():
    k = gpu()
    values = np.array([0.5, 1.5, np.nan, 3.0])
    rows = cuda.device_array((2, 4), dtype=np.int32)
    assert k.bin_index(values, np.array([1.0, 2.0]), out=rows[1]) is not None
    k.bin_index(values, np.array([0.0, 3.0]), out=rows[0])
    np.testing.assert_array_equal(rows.copy_to_host(), [[1, 1, -1, 2], [0, 1, -1, 2]])
    with pytest.raises(ValueError, match="int32 device array"):
        k.bin_index(values, np.array([1.0]), out=cuda.device_array(3, dtype=np.int32))


# --------------------------------------------------------------------------- histogram
@st.composite
def histogram_case(draw, max_rows: int = 300):
    """Several outer dimensions with offsets, several inner rows, -1 codes, int64 weights."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(0, max_rows))
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    n_inner = draw(st.integers(1, 3))
    inner_size = draw(st.integers(1, 6))
    n_weights = draw(st.sampled_from([None, 1, 2]))
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    n_cells = int(np.sum(sizes)) * n_inner * inner_size
    outer = np.stack([rng.integers(-1, s, n) for s in sizes]).astype(np.int32)
    inner = rng.integers(-1, inner_size, (n_inner, n)).astype(np.int32)
    weights = None
    if n_weights is not None:
        weights = rng.integers(-(2**40), 2**40, (n_weights, n), endpoint=True)
    return outer, offsets, inner, inner_size, n_cells, weights


def _expected(case) -> np.ndarray:
    return ref.histogram(*case)


@pytest.mark.parametrize("path", ["shared", "shared_counts_global_sums", "global"])
@given(case=histogram_case())
@FEW
def test_histogram_matches_reference(path, case):
    outer, offsets, inner, inner_size, n_cells, weights = case
    n_weights = 0 if weights is None else weights.shape[0]
    shared_bytes = {
        "shared": 48 * 1024,
        "shared_counts_global_sums": 4 * n_cells,  # the counts fit, the sums do not
        "global": 0,
    }[path]
    k = gpu(shared_bytes=shared_bytes)
    counts_shared, sums_shared = k.histogram_plan(n_cells, n_weights)
    assert counts_shared == (path != "global")
    assert sums_shared == (path == "shared" and n_weights > 0)
    got = k.histogram(*case)
    assert isinstance(got, np.ndarray) and got.dtype == np.int64
    np.testing.assert_array_equal(got, _expected(case))


@given(case=histogram_case(max_rows=120), form=st.sampled_from(["device2d", "rows", "mixed"]))
@FEW
def test_histogram_accepts_device_rows(case, form):
    outer, offsets, inner, inner_size, n_cells, weights = case
    if form == "device2d":  # (D, n) / (M, n) / (V, n) device arrays
        args = [cuda.to_device(outer), offsets, cuda.to_device(inner)]
        w = None if weights is None else cuda.to_device(weights)
    elif form == "rows":  # lists of 1-d device rows, stacked on the device
        args = [[cuda.to_device(r) for r in outer], offsets, [cuda.to_device(r) for r in inner]]
        w = None if weights is None else [cuda.to_device(r) for r in weights]
    else:  # host outer, device inner rows, host weights
        args = [outer, offsets, [cuda.to_device(r) for r in inner]]
        w = weights
    got = gpu().histogram(*args, inner_size, n_cells, w)
    np.testing.assert_array_equal(got, _expected(case))


def test_histogram_takes_bin_index_output():
    """The hot path: binned on the device, counted on the device, statistics to the host."""
    rng = np.random.default_rng(7)
    k = gpu(4, 64)
    n = 1500
    scores = rng.random(n).astype(np.float32)
    scores[::50] = np.nan
    edges = np.quantile(rng.random(1000), np.linspace(0, 1, 33)[1:-1])
    slices = rng.integers(-1, 5, (1, n)).astype(np.int32)
    feature = rng.normal(size=n)
    codes_a = k.bin_index(cuda.to_device(scores), edges)  # (n,) int32 on the device
    codes_b = k.bin_index(feature, np.array([-1.0, 0.0, 1.0]))
    inner_size = 32
    expect = ref.histogram(
        slices,
        np.array([0]),
        np.stack([ref.bin_index(scores, edges), ref.bin_index(feature, [-1.0, 0.0, 1.0])]),
        inner_size,
        5 * 2 * inner_size,
    )
    # a list of the device rows bin_index returned ...
    got = k.histogram(slices, np.array([0]), [codes_a, codes_b], inner_size, 5 * 2 * inner_size)
    np.testing.assert_array_equal(got, expect)
    # ... or one (M, n) device array whose rows bin_index filled in place
    rows = cuda.device_array((2, n), dtype=np.int32)
    k.bin_index(cuda.to_device(scores), edges, out=rows[0])
    k.bin_index(feature, np.array([-1.0, 0.0, 1.0]), out=rows[1])
    got = k.histogram(slices, np.array([0]), rows, inner_size, 5 * 2 * inner_size)
    np.testing.assert_array_equal(got, expect)
    # a single 1-d device row is one inner axis
    got = k.histogram(slices, np.array([0]), codes_a, inner_size, 5 * inner_size)
    np.testing.assert_array_equal(
        got, ref.histogram(slices, [0], ref.bin_index(scores, edges), inner_size, 5 * inner_size)
    )


@given(case=histogram_case(max_rows=200))
@settings(max_examples=min(4, settings().max_examples))
def test_histogram_split_launches_compose(case):
    # a tiny count_limit splits the rows over many launches; the sums must not notice
    k = gpu(count_limit=64)
    np.testing.assert_array_equal(k.histogram(*case), _expected(case))


@pytest.mark.parametrize("n_dims", [1, 2, 3, 7])
@pytest.mark.parametrize("grid", [(1, 32), (4, 64), (528, 256)])
def test_histogram_chunk_keeps_int32_counts_exact(n_dims, grid):
    k = CudaKernels(blocks=grid[0], threads=grid[1])
    blocks, threads = grid
    chunk = k.histogram_chunk(n_dims, blocks, threads)
    rows_per_block = -(-chunk // (blocks * threads)) * threads
    assert rows_per_block * n_dims <= 2**31 - 1
    assert chunk >= 2**31 // n_dims // 2  # and the split is not needlessly fine


def test_histogram_matches_cpu_backend():
    rng = np.random.default_rng(3)
    n = 800
    outer = np.stack([rng.integers(-1, 3, n), rng.integers(0, 2, n)]).astype(np.int32)
    inner = rng.integers(-1, 20, (2, n)).astype(np.int32)
    weights = rng.integers(0, 2**40, (2, n))
    args = (outer, np.array([0, 3]), inner, 20, 5 * 2 * 20, weights)
    np.testing.assert_array_equal(gpu().histogram(*args), CpuKernels().histogram(*args))


def test_histogram_rejects_cells_out_of_range():
    outer = np.array([[0, 1, 2]], dtype=np.int32)
    inner = np.array([[0, 1, 1]], dtype=np.int32)
    for shared_bytes in (48 * 1024, 0):
        with pytest.raises(ValueError, match="outside 0..3"):
            gpu(shared_bytes=shared_bytes).histogram(outer, np.array([0]), inner, 2, 4)


def test_histogram_empty_inputs():
    k = gpu()
    empty = np.zeros((2, 0), dtype=np.int32)
    got = k.histogram(empty, np.array([0, 1]), empty, 3, 6, np.zeros((1, 0), dtype=np.int64))
    np.testing.assert_array_equal(got, np.zeros((2, 6), dtype=np.int64))


# --------------------------------------------------------------------------- draws
COUNTS = st.sampled_from(["zero", "small", "cutoff", "large", "mixed"])


def _counts(kind: str, rng: np.random.Generator, c: int) -> np.ndarray:
    """Cell counts (the draws' means): whole numbers around the inversion cutoff and far above."""
    cutoff = _rng.POISSON_INVERSION_CUTOFF
    pools = {
        "zero": np.zeros(c, dtype=np.int64),
        "small": rng.integers(0, 6, c),
        "cutoff": rng.choice([cutoff - 2, cutoff - 1, cutoff, cutoff + 1], c),
        "large": np.where(rng.random(c) < 0.1, rng.integers(2**30, 2**41, c), rng.integers(32, 10**6, c)),
    }
    if kind != "mixed":
        return pools[kind]
    return np.where(rng.random(c) < 0.5, rng.choice(np.concatenate(list(pools.values())), c), 0)


def _keys(rng: np.random.Generator, c: int) -> np.ndarray:
    return rng.integers(0, 2**64, c, dtype=np.uint64)


@given(
    seed=st.integers(0, 2**63 - 1),
    role=st.integers(0, 3),
    kind=COUNTS,
    c=st.integers(0, 60),
    rep_start=st.integers(0, 10**6),
    n_reps=st.integers(0, 12),
    data=st.integers(0, 2**32 - 1),
)
def test_poisson_cells_match_reference(seed, role, kind, c, rep_start, n_reps, data):
    rng = np.random.default_rng(data)
    keys, counts = _keys(rng, c), _counts(kind, rng, c)
    got = gpu().poisson_cells(seed, role, keys, counts, rep_start, n_reps)
    expect = ref.poisson_cells(seed, role, keys, counts, rep_start, n_reps)
    assert got.shape == (n_reps, c) and got.dtype == np.int64
    np.testing.assert_array_equal(got, expect)


def test_poisson_cells_distribution():
    # 60 cells x 200 replicates: the means of the draws follow the counts (and match the CPU)
    rng = np.random.default_rng(11)
    counts = np.concatenate([np.full(20, 1), np.full(20, 31), np.full(20, 400)])
    keys = _keys(rng, counts.size)
    got = gpu(4, 64).poisson_cells(5, 1, keys, counts, 0, 200)
    np.testing.assert_array_equal(got, CpuKernels().poisson_cells(5, 1, keys, counts, 0, 200))
    np.testing.assert_array_equal(got, gpu(4, 64).poisson_cells(5, 1, keys, cuda.to_device(counts), 0, 200))
    for block, mu in zip(np.split(got, 3, axis=1), (1, 31, 400)):
        assert abs(block.mean() - mu) < 4 * np.sqrt(mu / block.size)
        assert abs(block.var() / mu - 1) < 0.15


@given(
    seed=st.integers(0, 2**63 - 1),
    role=st.integers(0, 3),
    c=st.integers(0, 60),
    rep_start=st.integers(0, 10**6),
    n_reps=st.integers(0, 12),
    data=st.integers(0, 2**32 - 1),
)
def test_normal_cells_match_reference(seed, role, c, rep_start, n_reps, data):
    keys = _keys(np.random.default_rng(data), c)
    got = gpu().normal_cells(seed, role, keys, rep_start, n_reps)
    expect = ref.normal_cells(seed, role, keys, rep_start, n_reps)
    assert got.shape == (n_reps, c) and got.dtype == np.float64
    np.testing.assert_array_equal(got, expect)


@given(
    seed=st.integers(0, 2**63 - 1),
    n=st.integers(0, 200),
    rep_start=st.integers(0, 10**6),
    n_reps=st.integers(0, 8),
    data=st.integers(0, 2**32 - 1),
    on_device=st.booleans(),
)
def test_unit_weights_match_reference(seed, n, rep_start, n_reps, data, on_device):
    rng = np.random.default_rng(data)
    # repeated ids: rows of one unit must share their weight
    ids = rng.choice(_keys(rng, max(1, n // 3)), n)
    arg = cuda.to_device(ids) if on_device else ids
    got = host(gpu().unit_weights(seed, arg, rep_start, n_reps))
    expect = ref.unit_weights(seed, ids, rep_start, n_reps)
    assert got.shape == (n_reps, n) and got.dtype == np.int32
    np.testing.assert_array_equal(got, expect)


def test_unit_weights_int64_device_ids_are_viewed_as_uint64():
    ids = np.array([-1, 0, 5, -(2**62)], dtype=np.int64)
    got = host(gpu().unit_weights(9, cuda.to_device(ids), 0, 6))
    np.testing.assert_array_equal(got, ref.unit_weights(9, ids.astype(np.uint64), 0, 6))


@given(seed=st.integers(0, 2**63 - 1), data=st.integers(0, 2**32 - 1))
@FEW
def test_replicate_chunks_compose(seed, data):
    rng = np.random.default_rng(data)
    keys = _keys(rng, 25)
    lam = _counts("mixed", rng, 25)
    k = gpu()
    whole = k.poisson_cells(seed, 1, keys, lam, 0, 10)
    parts = np.concatenate(
        [k.poisson_cells(seed, 1, keys, lam, 0, 5), k.poisson_cells(seed, 1, keys, lam, 5, 5)]
    )
    np.testing.assert_array_equal(whole, parts)
    whole = k.normal_cells(seed, 0, keys, 0, 10)
    parts = np.concatenate(
        [k.normal_cells(seed, 0, keys, 0, 5), k.normal_cells(seed, 0, keys, 5, 5)]
    )
    np.testing.assert_array_equal(whole, parts)
    whole = host(k.unit_weights(seed, keys, 0, 10))
    parts = np.concatenate(
        [host(k.unit_weights(seed, keys, 0, 5)), host(k.unit_weights(seed, keys, 5, 5))]
    )
    np.testing.assert_array_equal(whole, parts)
    # cells are keyed by meaning, not position: a permutation permutes the draws
    perm = rng.permutation(25)
    np.testing.assert_array_equal(
        k.poisson_cells(seed, 1, keys[perm], lam[perm], 0, 10),
        k.poisson_cells(seed, 1, keys, lam, 0, 10)[:, perm],
    )


def test_roles_and_streams_are_independent():
    keys = np.arange(200, dtype=np.uint64)
    k = gpu()
    a = k.normal_cells(1, 0, keys, 0, 4)
    b = k.normal_cells(1, 1, keys, 0, 4)
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.2


# --------------------------------------------------------------------------- dispatch
def test_dispatch():
    assert isinstance(get_kernels("gpu"), CudaKernels)
    assert get_kernels("gpu").name == "gpu"
    if REAL_GPU:
        assert isinstance(get_kernels("auto"), CudaKernels)
    else:  # the simulator is for tests only: auto never picks it
        assert isinstance(get_kernels("auto"), CpuKernels)


def test_a_device_that_cannot_compile_is_unavailable_not_a_traceback(monkeypatch):
    """numba-cuda that cannot compile (seen: numba-cuda 0.30 under numpy 2.5) makes ``gpu`` a
    BackendUnavailableError naming the cause and ``auto`` the CPU; the probe kernel itself
    runs (here under the simulator)."""
    from kernels import _dispatch

    _dispatch._run_probe()  # compiles and runs
    if REAL_GPU:
        return

    def broken() -> None:
        raise AttributeError("module 'numpy' has no attribute 'row_stack'")

    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM")  # read at call time: a device, as far as it knows
    monkeypatch.setattr(_dispatch, "_no_nvidia_device", lambda: False)
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(_dispatch, "_run_probe", broken)
    _dispatch._device_probe.cache_clear()
    get_kernels.cache_clear()
    try:
        with pytest.raises(BackendUnavailableError, match="cannot compile or run a kernel.*row_stack"):
            get_kernels("gpu")
        assert isinstance(get_kernels("auto"), CpuKernels)
    finally:
        _dispatch._device_probe.cache_clear()
        get_kernels.cache_clear()


def test_draw_kernels_hold_no_float_arithmetic_a_gpu_rounds_otherwise():
    """``scripts/check_ptx.py`` on the real compiler (NVVM, no GPU needed; a subprocess, as
    this process runs the simulator): no fused multiply-add, float add or approximation in
    the PTX of the draw kernels, so they are bit-identical to the CPU's."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "check_ptx.py")
    done = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode == 3:
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, done.stdout + done.stderr


def test_constructor_validates_grid():
    with pytest.raises(ValueError, match="'threads' parameter of CudaKernels"):
        CudaKernels(blocks=1, threads=0)
    with pytest.raises(ValueError, match="'blocks' parameter of CudaKernels"):
        CudaKernels(blocks=0, threads=32)
    with pytest.raises(ValueError, match="'shared_bytes' parameter"):
        CudaKernels(blocks=1, threads=32, shared_bytes=-1)


@pytest.mark.skipif(not REAL_GPU, reason="the simulator has no __cuda_array_interface__")
def test_cuda_array_interface_inputs():
    class Foreign:  # what CuPy or PyTorch hand over: only the interface
        def __init__(self, arr):
            self._arr = arr
            self.__cuda_array_interface__ = arr.__cuda_array_interface__

    values = np.array([0.5, np.nan, 2.5], dtype=np.float32)
    codes = gpu().bin_index(Foreign(cuda.to_device(values)), np.array([1.0, 2.0]))
    np.testing.assert_array_equal(host(codes), [0, -1, 2])
    outer = Foreign(cuda.to_device(np.zeros((1, 3), dtype=np.int32)))
    got = gpu().histogram(outer, np.array([0]), Foreign(codes), 3, 3)
    np.testing.assert_array_equal(got, [[1, 0, 1]])
