"""The ``@cuda.jit`` code of the CUDA backend, and nothing else.

Grid sizes, buffers and host/device transfers live in ``kernels.cuda._launch``. Every kernel
uses a grid-stride loop (any grid covers any number of rows) and only what Numba's CUDA
simulator also runs: shared memory, ``cuda.syncthreads`` and ``cuda.atomic.add``; no warp
intrinsics, no cooperative groups.

Dynamic shared memory (``cuda.shared.array(0, ...)``) is sized at launch, so one compiled
kernel serves every cell count; all dynamic shared arrays alias the same bytes, so the
histogram keeps its int64 sums at the start (8-byte aligned) and its int32 counts after them.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda, float64, int32, int64
from numba.core import config

from kernels import _rng


def _device_jit(fn):
    """``cuda.jit(device=True)``; under the simulator, uint64 arithmetic wraps silently.

    On a GPU, uint64 multiplication wraps modulo 2**64, which is what the hash wants. The
    simulator runs the same code on numpy scalars, which warn on every wrap; each simulated
    thread starts with numpy's default error state, so it is set inside the call.
    """
    if not config.ENABLE_CUDASIM:
        return cuda.jit(device=True)(fn)

    @functools.wraps(fn)
    def quiet(*args):
        with np.errstate(over="ignore"):
            return fn(*args)

    return cuda.jit(device=True)(quiet)


#: The counter-based generator of ``kernels._rng``, compiled for the device: the same
#: integer algorithm as the CPU backend, so draws are bit-identical.
_RNG = _rng.build(_device_jit)
_cell_base, _draw_hash = _RNG.cell_base, _RNG.draw_hash
_poisson, _normal, _poisson1 = _RNG.poisson, _RNG.normal, _RNG.poisson1


# --------------------------------------------------------------------------- binning
@cuda.jit(device=True)
def _search_right(edges, m, v):
    """``searchsorted(edges[:m], v, side="right")`` for a non-NaN ``v``."""
    lo = 0
    hi = m
    while lo < hi:
        mid = (lo + hi) >> 1
        if edges[mid] <= v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@cuda.jit
def bin_index_kernel(values, edges, shared_edges, out):
    """``out[i] = searchsorted(edges, values[i], side="right")``, ``-1`` for NaN.

    With ``shared_edges`` the block first copies the edges into dynamic shared memory
    (``edges.size * 8`` bytes at launch): the top of the search tree is read by every row.
    """
    m = edges.shape[0]
    staged = cuda.shared.array(0, dtype=float64)
    if shared_edges:
        for k in range(cuda.threadIdx.x, m, cuda.blockDim.x):
            staged[k] = edges[k]
    # every thread reaches the barrier, whatever its share of the rows
    cuda.syncthreads()
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, values.shape[0], step):
        # float32 is widened exactly, as the reference does before comparing
        v = np.float64(values[i])
        if v != v:
            out[i] = -1
        elif shared_edges:
            out[i] = _search_right(staged, m, v)
        else:
            out[i] = _search_right(edges, m, v)


# --------------------------------------------------------------------------- histogram
@cuda.jit
def histogram_kernel(
    outer,
    outer_offsets,
    inner,
    inner_size,
    weights,
    n_weights,
    n_cells,
    row_start,
    row_stop,
    shared_counts,
    shared_sums,
    out,
    errors,
):
    """Add rows ``row_start .. row_stop - 1`` into ``out`` (``(1 + V, n_cells)`` int64).

    With ``shared_counts`` each block counts into an int32 histogram in dynamic shared
    memory and flushes it to ``out[0]`` with one atomic per non-empty cell; with
    ``shared_sums`` the fixed-point sums go to an int64 shared histogram the same way.
    Otherwise rows go to ``out`` with global atomics. Integer addition (modulo 2**64 for the
    sums) is associative, so the result does not depend on the grid or the order.

    A computed cell outside ``0 .. n_cells - 1`` breaks the caller's contract: it is not
    written (that would corrupt memory) but counted in ``errors[0]``.
    """
    sums = cuda.shared.array(0, dtype=int64)
    counts = cuda.shared.array(0, dtype=int32)
    tid = cuda.threadIdx.x
    bdim = cuda.blockDim.x
    # the int32 counts follow the int64 sums in the same dynamic shared bytes
    count_base = 2 * n_weights * n_cells if shared_sums else 0

    if shared_counts:
        for k in range(tid, n_cells, bdim):
            counts[count_base + k] = 0
    if shared_sums:
        for k in range(tid, n_weights * n_cells, bdim):
            sums[k] = 0
    cuda.syncthreads()

    n_dims = outer.shape[0]
    n_inner = inner.shape[0]
    stride = n_inner * inner_size
    for i in range(row_start + cuda.grid(1), row_stop, cuda.gridsize(1)):
        for d in range(n_dims):
            o = outer[d, i]
            if o < 0:
                continue
            base = (outer_offsets[d] + o) * stride
            for m in range(n_inner):
                j = inner[m, i]
                if j < 0:
                    continue
                cell = base + m * inner_size + j
                if cell < 0 or cell >= n_cells:
                    cuda.atomic.add(errors, 0, 1)
                    continue
                if shared_counts:
                    cuda.atomic.add(counts, count_base + cell, 1)
                else:
                    cuda.atomic.add(out, (0, cell), 1)
                for v in range(n_weights):
                    w = np.int64(weights[v, i])
                    if shared_sums:
                        cuda.atomic.add(sums, v * n_cells + cell, w)
                    else:
                        cuda.atomic.add(out, (1 + v, cell), w)

    cuda.syncthreads()
    # flush: one global atomic per non-empty cell and block
    if shared_counts:
        for k in range(tid, n_cells, bdim):
            c = counts[count_base + k]
            if c != 0:
                cuda.atomic.add(out, (0, k), np.int64(c))
    if shared_sums:
        for k in range(tid, n_weights * n_cells, bdim):
            s = sums[k]
            if s != 0:
                cuda.atomic.add(out, (1 + k // n_cells, k % n_cells), s)


# --------------------------------------------------------------------------- draws
@cuda.jit
def poisson_cells_kernel(base, keys, counts, rep_start, n_reps, ztab, ptab, out):
    """``out[r, c] = Poisson(counts[c])`` for replicate ``rep_start + r``; flat over (r, c)."""
    n_keys = keys.shape[0]
    for k in range(cuda.grid(1), n_reps * n_keys, cuda.gridsize(1)):
        r = k // n_keys
        c = k - r * n_keys
        n = counts[c]
        if n <= 0:
            out[r, c] = 0
        else:
            out[r, c] = _poisson(n, _draw_hash(_cell_base(base, keys[c]), rep_start + r), ztab, ptab)


@cuda.jit
def normal_cells_kernel(base, keys, rep_start, n_reps, ztab, out):
    """``out[r, c]`` = standard normal for replicate ``rep_start + r``; flat over (r, c)."""
    n_keys = keys.shape[0]
    for k in range(cuda.grid(1), n_reps * n_keys, cuda.gridsize(1)):
        r = k // n_keys
        c = k - r * n_keys
        out[r, c] = _normal(_draw_hash(_cell_base(base, keys[c]), rep_start + r), ztab)


@cuda.jit
def unit_weights_kernel(base, ids, rep_start, n_reps, thresholds, out):
    """``out[r, i]`` = Poisson(1) weight of unit ``ids[i]`` in replicate ``rep_start + r``."""
    n = ids.shape[0]
    for k in range(cuda.grid(1), n_reps * n, cuda.gridsize(1)):
        r = k // n
        i = k - r * n
        out[r, i] = _poisson1(_draw_hash(_cell_base(base, ids[i]), rep_start + r), thresholds)


# --------------------------------------------------------------------------- probe
@cuda.jit
def probe_kernel(out):
    """``out[i] = i + 1``: whether kernels compile and run here (``kernels.gpu_problem``)."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = i + 1


# --------------------------------------------------------------------------- copies
@cuda.jit
def copy_row_kernel(src, dst, row):
    """``dst[row, :] = src`` with the element cast of ``dst``: stacks 1-d device rows."""
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        dst[row, i] = src[i]
