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
