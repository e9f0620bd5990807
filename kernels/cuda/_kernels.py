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
import math

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


@cuda.jit
def unit_histogram_kernel(base, ids, cells, rep_start, n_reps, n_cells, thresholds, shared_cells, out):
    """``out[r, c]`` += the weight of each row in replicate ``rep_start + r`` for each of its
    cells ``cells[:, i]`` (rows x replicates in one pass; weights as ``unit_weights_kernel``).

    With ``shared_cells`` each block adds into an int64 copy of the ``(n_reps, n_cells)``
    counts in dynamic shared memory and flushes the non-zero cells with one global atomic
    each; otherwise rows go to ``out`` with global atomics.
    """
    local = cuda.shared.array(0, dtype=int64)
    tid = cuda.threadIdx.x
    bdim = cuda.blockDim.x
    total = n_reps * n_cells
    if shared_cells:
        for k in range(tid, total, bdim):
            local[k] = 0
    cuda.syncthreads()
    n_inner = cells.shape[0]
    for i in range(cuda.grid(1), ids.shape[0], cuda.gridsize(1)):
        unit = _cell_base(base, ids[i])
        for r in range(n_reps):
            w = _poisson1(_draw_hash(unit, rep_start + r), thresholds)
            if w != 0:
                for m in range(n_inner):
                    c = cells[m, i]
                    if c >= 0:
                        if shared_cells:
                            cuda.atomic.add(local, r * n_cells + c, np.int64(w))
                        else:
                            cuda.atomic.add(out, (r, c), np.int64(w))
    cuda.syncthreads()
    if shared_cells:
        for k in range(tid, total, bdim):
            v = local[k]
            if v != 0:
                cuda.atomic.add(out, (k // n_cells, k - (k // n_cells) * n_cells), v)


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


@cuda.jit
def zero_kernel(flat):
    """``flat[:] = 0``: zeroes device statistics in place, without a copy from the host."""
    for i in range(cuda.grid(1), flat.shape[0], cuda.gridsize(1)):
        flat[i] = 0


# --------------------------------------------------------------------------- fused accumulate
#: Sections of the fused kernel's flat int64 output (see ``kernels.cuda._fused``): the
#: fine online and replay counts, the four calibration sums of each side (p, p^2, log-loss
#: term, its square; side by side per cell), the decision pairs, the |delta| histogram and
#: its sums, the feature cells, the row-level data-quality flags as a 6-bit pattern, the
#: unseen-value flags, and the value (revenue) counts and sums.
SEC_SCORE, SEC_OFF, SEC_CALIB, SEC_CALIB_OFF, SEC_JOINT, SEC_DELTA = 0, 1, 2, 3, 4, 5
SEC_FEAT, SEC_PATTERN, SEC_DQ, SEC_VALUE = 6, 7, 8, 9
N_SECTIONS = 10


@cuda.jit(device=True)
def _add(shared, out, plan, section, cell, v):
    """Add ``v`` to ``cell`` of ``section``: in the block's shared copy when the plan put
    the section there (``plan[1, s] >= 0``), else straight to global memory."""
    so = plan[1, section]
    if so >= 0:
        cuda.atomic.add(shared, so + cell, v)
    else:
        cuda.atomic.add(out, plan[0, section] + cell, v)


@cuda.jit(device=True)
def _slice_row(d, i, col_index, col_lut, col_null, dim_a, dim_b, dim_b_size, dim_offsets):
    """The raw slice (``dim_offsets[d]`` + code) of row ``i`` in slice dimension ``d``."""
    a = dim_a[d]
    ia = col_index[a, i]
    code = np.int64(col_lut[a, ia]) if ia >= 0 else np.int64(col_null[a])
    b = dim_b[d]
    if b >= 0:
        ib = col_index[b, i]
        code = code * dim_b_size[d] + (np.int64(col_lut[b, ib]) if ib >= 0 else np.int64(col_null[b]))
    return dim_offsets[d] + code


@cuda.jit(device=True)
def _rint(x):
    """``np.rint(x)`` (round half to even) as int64, for ``|x| < 2**62``.

    No float arithmetic but an exact add and compares: the CUDA compiler contracts a
    product followed by an add or subtract into a fused multiply-add (one rounding fewer),
    so ``x - floor(x)`` of a product ``x`` could round otherwise than on the CPU.
    """
    r = np.int64(math.floor(x))
    half = np.float64(r) + 0.5
    if x > half or (x == half and (r & 1) == 1):
        r += 1
    return r


@cuda.jit
def fused_accumulate_kernel(
    row_start,
    row_end,
    col_index,  # (C, n) int32 dictionary index per slice column (-1: null)
    col_lut,  # (C, Dmax) int32 dictionary index -> code
    col_unseen,  # (C, Dmax) bool dictionary index -> value unseen in the baseline
    col_null,  # (C,) int32 code of null
    dim_a,  # (Dd,) int32
    dim_b,  # (Dd,) int32 (-1: none)
    dim_b_size,  # (Dd,) int64
    dim_offsets,  # (Dd,) int64
    score,  # (n,) float32/float64
    offline,  # (n,) float (read only when paired)
    paired,
    label_code,  # (n,) int8: 0 negative, 1 positive, 2 missing, 3 present but invalid
    key_null,  # (n,) bool
    ll_on,  # (n,) float64 log-loss term of the online score (computed on the host)
    ll_off,  # (n,) float64 the same for the replay (read only when paired)
    edges,  # (F - 1,) float64 fine score edges
    fine_to_calib,  # (F,) int64
    n_calib,
    thresholds,  # (T,) float64
    delta_edges,  # (DB - 1,) float64
    num_values,  # (Jn, n) float
    num_edges,  # (Jn, Emax) float64, padded
    num_n_edges,  # (Jn,) int64
    num_slot,  # (Jn,) int64
    cat_codes,  # (Jc, n) int32
    cat_unseen,  # (Jc, n) bool
    cat_slot,  # (Jc,) int64
    feature_bins,
    n_dq,
    p_scale,
    ll_scale,
    ll2_scale,
    value,  # (n,) float64, NaN: none (read only when with_value)
    with_value,
    value_scale,
    value2_scale,
    shared_edges,  # stage the fine edges in shared memory after the histogram cells
    plan,  # (3, N_SECTIONS) int64: global offset, shared offset (-1: global), size
    n_shared,  # int64 cells of the block's shared histogram
    out,  # flat int64 statistics
):
    """Every statistic of rows ``row_start .. row_end - 1`` in one pass, as
    ``kernels.cpu_fused._accumulate_range`` computes them (same cells, same integers).

    Each block zeroes its shared copy of the sections the plan puts in shared memory, adds
    its rows there with shared atomics (other sections go to global memory directly), and
    flushes the non-zero cells with one global atomic each. Integer addition is
    associative, so the grid and the order of the rows change nothing.
    """
    shared = cuda.shared.array(0, dtype=int64)
    staged = cuda.shared.array(0, dtype=float64)
    tid = cuda.threadIdx.x
    bdim = cuda.blockDim.x
    m_edges = edges.shape[0]
    for k in range(tid, n_shared, bdim):
        shared[k] = 0
    if shared_edges:
        # the fine edges after the histogram cells (both 8-byte elements)
        for k in range(tid, m_edges, bdim):
            staged[n_shared + k] = edges[k]
    cuda.syncthreads()

    Dd = dim_a.shape[0]
    C = col_index.shape[0]
    F = m_edges + 1
    T = thresholds.shape[0]
    DB = delta_edges.shape[0] + 1
    Jn = num_values.shape[0]
    Jc = cat_codes.shape[0]
    NC = n_calib
    n_raw = plan[2, SEC_PATTERN] // 64
    FB = plan[2, SEC_FEAT] // n_raw  # n_features * feature_bins cells per slice
    for i in range(row_start + cuda.grid(1), row_end, cuda.gridsize(1)):
        # ---- label state
        code = label_code[i]
        state = min(np.int64(code), 2)
        invalid_label = code == 3
        # ---- online score: fine bin (searchsorted right), fixed-point terms
        s = np.float64(score[i])
        valid = s >= 0.0 and s <= 1.0
        fb = 0
        if valid:
            if shared_edges:
                lo = 0
                hi = m_edges
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if staged[n_shared + mid] <= s:
                        lo = mid + 1
                    else:
                        hi = mid
                fb = lo
            else:
                fb = _search_right(edges, m_edges, s)
        # ---- replay
        o = 0.0
        valid_off = False
        invalid_off = False
        fo = 0
        if paired:
            o = np.float64(offline[i])
            valid_off = o >= 0.0 and o <= 1.0
            invalid_off = (o == o) and not valid_off
            if valid_off:
                if shared_edges:
                    lo = 0
                    hi = m_edges
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if staged[n_shared + mid] <= o:
                            lo = mid + 1
                        else:
                            hi = mid
                    fo = lo
                else:
                    fo = _search_right(edges, m_edges, o)
        both = valid and valid_off
        jc = 0
        db = 0
        df = np.int64(0)
        d2f = np.int64(0)
        if both:
            ton = 0
            toff = 0
            for t in range(T):
                if s >= thresholds[t]:
                    ton += 1
                if o >= thresholds[t]:
                    toff += 1
            jc = ton * (T + 1) + toff
            dl = abs(s - o)
            db = _search_right(delta_edges, DB - 1, dl)
            df = _rint(dl * p_scale)
            d2f = _rint((dl * dl) * p_scale)
        w = 0.0
        has_value = False
        if with_value:
            w = value[i]
            has_value = w == w
        pattern = (
            (1 if valid else 0)
            | ((1 if valid_off else 0) << 1)
            | ((1 if invalid_off else 0) << 2)
            | ((1 if state < 2 else 0) << 3)
            | ((1 if invalid_label else 0) << 4)
            | ((1 if key_null[i] else 0) << 5)
        )
        unseen_any = False
        for a in range(C):
            ia = col_index[a, i]
            if ia >= 0 and col_unseen[a, ia]:
                unseen_any = True
        for j in range(Jc):
            if cat_unseen[j, i]:
                unseen_any = True

        for d in range(Dd):
            r = _slice_row(d, i, col_index, col_lut, col_null, dim_a, dim_b, dim_b_size, dim_offsets)
            _add(shared, out, plan, SEC_PATTERN, r * 64 + pattern, np.int64(1))
            if valid:
                _add(shared, out, plan, SEC_SCORE, (r * 3 + state) * F + fb, np.int64(1))
                c = ((r * 3 + state) * NC + fine_to_calib[fb]) * 4
                ll = ll_on[i] if state < 2 else 0.0
                _add(shared, out, plan, SEC_CALIB, c, _rint(s * p_scale))
                _add(shared, out, plan, SEC_CALIB, c + 1, _rint((s * s) * p_scale))
                _add(shared, out, plan, SEC_CALIB, c + 2, _rint(ll * ll_scale))
                _add(shared, out, plan, SEC_CALIB, c + 3, _rint((ll * ll) * ll2_scale))
            if valid_off:
                _add(shared, out, plan, SEC_OFF, (r * 3 + state) * F + fo, np.int64(1))
                c = ((r * 3 + state) * NC + fine_to_calib[fo]) * 4
                llo = ll_off[i] if state < 2 else 0.0
                _add(shared, out, plan, SEC_CALIB_OFF, c, _rint(o * p_scale))
                _add(shared, out, plan, SEC_CALIB_OFF, c + 1, _rint((o * o) * p_scale))
                _add(shared, out, plan, SEC_CALIB_OFF, c + 2, _rint(llo * ll_scale))
                _add(shared, out, plan, SEC_CALIB_OFF, c + 3, _rint((llo * llo) * ll2_scale))
            if both:
                _add(shared, out, plan, SEC_JOINT, r * ((T + 1) * (T + 1)) + jc, np.int64(1))
                _add(shared, out, plan, SEC_DELTA, r * DB + db, np.int64(1))
                if df != 0:
                    _add(shared, out, plan, SEC_DELTA, (n_raw + r) * DB + db, df)
                if d2f != 0:
                    _add(shared, out, plan, SEC_DELTA, (2 * n_raw + r) * DB + db, d2f)
            if has_value:
                _add(shared, out, plan, SEC_VALUE, r * 3 + state, np.int64(1))
                _add(shared, out, plan, SEC_VALUE, (n_raw + r) * 3 + state, _rint(w * value_scale))
                _add(shared, out, plan, SEC_VALUE, (2 * n_raw + r) * 3 + state, _rint((w * w) * value2_scale))
            # ---- features: numeric (NaN: the missing bin), then categorical
            base = r * FB
            for j in range(Jn):
                v = np.float64(num_values[j, i])
                ne = num_n_edges[j]
                if v != v:
                    b = ne + 1
                else:
                    lo = 0
                    hi = ne
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if num_edges[j, mid] <= v:
                            lo = mid + 1
                        else:
                            hi = mid
                    b = lo
                _add(shared, out, plan, SEC_FEAT, base + num_slot[j] * feature_bins + b, np.int64(1))
            for j in range(Jc):
                _add(shared, out, plan, SEC_FEAT, base + cat_slot[j] * feature_bins + cat_codes[j, i], np.int64(1))
            # ---- unseen values (rare)
            if unseen_any:
                _add(shared, out, plan, SEC_DQ, r * n_dq + 8, np.int64(1))
                for a in range(C):
                    ia = col_index[a, i]
                    if ia >= 0 and col_unseen[a, ia]:
                        _add(shared, out, plan, SEC_DQ, r * n_dq + 9 + a, np.int64(1))
                for j in range(Jc):
                    if cat_unseen[j, i]:
                        _add(shared, out, plan, SEC_DQ, r * n_dq + 9 + C + j, np.int64(1))

    cuda.syncthreads()
    # flush the shared sections: one global atomic per non-empty cell and block
    for sec in range(N_SECTIONS):
        so = plan[1, sec]
        if so >= 0:
            go = plan[0, sec]
            for k in range(tid, plan[2, sec], bdim):
                v = shared[so + k]
                if v != 0:
                    cuda.atomic.add(out, go + k, v)
