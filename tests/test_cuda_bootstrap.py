"""The bootstrap's replicates drawn and reduced on the device, against the CPU's.

On the GPU backend the draws stay on the device and ``CellBootstrap`` computes the
replicates' grids and metrics with CuPy, bringing back only the metric values. Here the
draws come from the CUDA kernels under Numba's simulator and ``tests/strict_cupy.py``
stands in for CuPy: numpy underneath (so the numbers must be the CPU path's exactly), with
CuPy's refusal of implicit conversions and of numpy operands, so that a numpy array mixed
into the device path fails here as it would on a GPU. With ``PARITY_REAL_GPU=1`` and CuPy
installed the real CuPy is used.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import strict_cupy
from engine import measure as ME
from engine.bootstrap import CellBootstrap
from engine.stats import Accumulator
from kernels.cpu import CpuKernels
from kernels.cuda import CudaKernels
from test_accumulate_paths import _table, build_layout

pytestmark = pytest.mark.cudasim

REAL_GPU = os.environ.get("PARITY_REAL_GPU") == "1"
CPU = CpuKernels()


@pytest.fixture
def xp(monkeypatch):
    """CuPy on a GPU that has it; the strict stand-in otherwise."""
    if REAL_GPU:
        return pytest.importorskip("cupy")
    return strict_cupy.install(monkeypatch)


@pytest.fixture(scope="module")
def sides():
    layout = build_layout(2000)
    acc = Accumulator(layout, CPU, paired=True, with_value=True)
    on = ME.grids_from_statistics(acc.accumulate(_table(300, 5, shift=0.03).to_batches()), layout)
    base = ME.grids_from_statistics(acc.accumulate(_table(300, 1).to_batches()), layout)
    return layout, on, base


def gpu() -> CudaKernels:
    return CudaKernels(draws_on_device=True) if REAL_GPU else CudaKernels(blocks=2, threads=32, draws_on_device=True)


def _assert_same(a: dict, b: dict) -> None:
    """Equal replicates: to the bit with numpy underneath; on a GPU, CuPy's reductions add
    in another order and its ``log`` is not numpy's, so to the last few bits."""
    assert a.keys() == b.keys() and a
    for k in a:
        assert isinstance(b[k], np.ndarray), k  # only metric values came back
        if REAL_GPU:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=str(k))
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


def test_replicates_reduced_on_the_device_equal_the_cpu(sides, xp):
    """Every metric's replicates (performance, skew, score and feature drift, value), both
    sides, in chunks."""
    layout, on, base = sides
    boot = CellBootstrap(layout, gpu(), replicates=5, seed=4, chunk=3)
    assert boot.xp is xp
    got = boot.run(on, base)
    want = CellBootstrap(layout, CPU, replicates=5, seed=4, chunk=3).run(on, base)
    _assert_same(want.online, got.online)
    _assert_same(want.baseline, got.baseline)


def test_shared_baseline_draws_stack_on_the_device(sides, xp):
    """The windows' path: the baseline's draws made once, stacked for two windows on the
    device, and every window compared with them."""
    layout, on, base = sides
    keys = np.concatenate([layout.slice_keys() ^ np.uint64(k) for k in (11, 12)])
    two_on, two_base = ME.stack_slices([on, on]), ME.stack_slices([base, base])

    def run(kernels):
        boot = CellBootstrap(layout, kernels, replicates=4, seed=2, slice_keys=keys)
        draws = CellBootstrap(layout, kernels, replicates=4, seed=2).baseline_draws(base).repeated(2)
        return boot.run(two_on, two_base, shared=draws)

    want, got = run(CPU), run(gpu())
    _assert_same(want.online, got.online)
    _assert_same(want.baseline, got.baseline)


def test_unit_level_counts_reach_the_device(sides, xp):
    """The online side's replicate counts from the unit-level bootstrap (host arrays) are
    moved to the device with the rest."""
    layout, on, base = sides
    cpu_boot = CellBootstrap(layout, CPU, replicates=3, seed=1)
    coarse = cpu_boot.coarsen(on)
    unit = cpu_boot.resample(coarse, 1, 0, 3)  # any (B, ...) counts of the coarse grids
    unit.delta = (unit.delta[0],) if unit.delta is not None else None
    unit.value = (unit.value[0],) if unit.value is not None else None
    want = CellBootstrap(layout, CPU, replicates=3, seed=1, unit=unit).run(on, base)
    got = CellBootstrap(layout, gpu(), replicates=3, seed=1, unit=unit).run(on, base)
    _assert_same(want.online, got.online)


def test_strict_stand_in_refuses_what_cupy_refuses(monkeypatch):
    cp = strict_cupy.install(monkeypatch)
    a = cp.asarray(np.arange(3.0))
    with pytest.raises(TypeError):
        np.asarray(a)
    with pytest.raises(TypeError):
        a + np.ones(3)
    with pytest.raises(TypeError):
        cp.where(a > 1, np.ones(3), 0.0)
    assert np.array_equal(cp.asnumpy(cp.add.reduceat(a, cp.asarray([0, 2]))), [1.0, 2.0])
    assert sys.modules["cupy"] is cp
