"""The CPU fast path of the accumulate stage: every grid of a batch in one parallel pass.

The primitive path (``Kernels.bin_index`` + ``Kernels.histogram`` glued with numpy) makes a
dozen passes over the rows and allocates a temporary per pass; on two cores it reaches a few
million rows/s. This kernel reads each row once, bins it, and adds it to every cell it
belongs to, in a thread-private set of histograms per chunk of rows; chunks are summed at
the end (integer addition, so the result does not depend on the number of threads).

It computes exactly what ``engine.stats.Accumulator`` computes through the primitives (the
tests compare the two bit for bit); the per-row rules below mirror that module.

Rows go in chunks of ``_CHUNK``: first the chunk's score and feature bins, column by column in
branch-free loops that compile to SIMD code; then row by row, the adds. A row adds to about
36 cells (3 slice dimensions); the layouts keep those adds few (a faithful replay, whose
score equals the served one, adds to the fine grids once, its online and replay counts
packed in one int64 cell; row-level data-quality flags are one add of a flag pattern) and
close together (the four calibration sums of a cell share a cache line). What was measured,
kept and dropped: ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit, prange

from engine import _cache

_cache.announce_compiles()

_TOP = np.uint64(1) << np.uint64(63)


@njit(inline="always", cache=True)
def _key_bin(v, padded, n_edges, kmin, shift, lut, steps):
    """searchsorted(edges, v, 'right') through the sortable-key lookup table (v not NaN).

    ``padded`` is the edges followed by +inf; ``steps`` compare-and-add steps after the
    table's lower bound are always enough (see ``kernels.cpu.EdgeIndex``): no branch.
    """
    bits = np.float64(v).view(np.uint64)
    key = ~bits if (bits & _TOP) else (bits | _TOP)
    if key < kmin:
        return 0
    cell = (key - kmin) >> shift
    code = lut[cell] if cell < lut.shape[0] else n_edges
    for _ in range(steps):
        code += v >= padded[code]
    return min(code, n_edges)


@njit(inline="always", cache=True)
def _uniform_bin(v, edges, j, n_edges, lut, lo, scale, steps):
    """searchsorted(edges[j, :n_edges], v, 'right') for a non-NaN ``v``, without branches.

    The table cell of ``v`` (uniform in value) gives a lower bound of the bin; at most
    ``steps`` edges can lie between it and the answer (counted when the table was built,
    with a margin for the rounding of ``(v - lo) * scale``), so a fixed number of
    compare-and-add steps finishes it: no mispredicted branch, whatever the data. ``edges``
    rows are padded with +inf, so the steps never read past a row.
    """
    x = (v - lo) * scale
    c = 0
    if x >= lut.shape[1]:
        c = lut.shape[1] - 1
    elif x > 0.0:
        c = np.int64(x)
    code = lut[j, c]
    for _ in range(steps):
        code += v >= edges[j, code]
    return min(code, n_edges)


#: Cells of the value lookup tables of numeric features.
LUT_CELLS = 1024


def uniform_lut(edges: np.ndarray, size: int = LUT_CELLS) -> tuple[np.ndarray, float, float, int]:
    """The table of :func:`_uniform_bin` for sorted ``edges``: ``(lut, lo, scale, steps)``."""
    edges = np.asarray(edges, dtype=np.float64)
    if edges.size < 2 or not edges[-1] > edges[0]:
        return np.zeros(size, np.int32), float(edges[0]) if edges.size else 0.0, 0.0, int(edges.size)
    lo = float(edges[0])
    scale = size / float(edges[-1] - edges[0])
    width = 1.0 / scale
    margin = 4 * np.finfo(np.float64).eps * max(abs(lo), abs(float(edges[-1])), width)
    lows = lo + np.arange(size) * width
    lut = np.searchsorted(edges, lows - margin - width * 1e-9, side="right")
    highs = np.searchsorted(edges, lows + width + margin, side="right")
    highs[-1] = edges.size  # the last cell also holds every value above the range
    steps = int((highs - lut).max())
    return lut.astype(np.int32), lo, scale, steps


@njit(inline="always", cache=True)
def _fixed(x, scale):
    return np.int64(np.rint(x * scale))


#: Rows per chunk of :func:`_accumulate_range`: the per-column work of a chunk (score and
#: feature bins) is done column by column, in loops that compile to SIMD code, before the
#: per-row pass (256 and 4096 measured no better).
_CHUNK = 1024


@njit(nogil=True, cache=True)
def _feature_cells(
    c0, c1, num_values, num_edges, num_n_edges, num_lut, num_lo, num_scale, num_steps, num_slot, cat_codes, cat_slot,
    feature_bins, cells,
):
    """``cells[j, i - c0]``: the cell of row ``i``'s feature ``j`` within a slice's feature block.

    Numeric features first (``j < Jn``), then categorical ones. The same bins as
    :func:`_uniform_bin` (NaN: the missing bin), written as branch-free loops over the rows of
    one feature so that they vectorise: the table cell, then the fixed compare-and-add steps.
    """
    m = c1 - c0
    Jn = len(num_values)
    L = num_lut.shape[1]
    top = L - 1.0
    for j in range(Jn):
        out = cells[j]
        v_j = num_values[j]
        lut_j = num_lut[j]
        edges_j = num_edges[j]
        lo, scale, n_edges = num_lo[j], num_scale[j], num_n_edges[j]
        for k in range(m):
            x = (np.float64(v_j[c0 + k]) - lo) * scale
            x = x if x > 0.0 else 0.0  # NaN too: its bin is set below
            x = x if x < top else top
            out[k] = lut_j[np.int64(x)]
        for _ in range(num_steps[j]):
            for k in range(m):
                out[k] += np.float64(v_j[c0 + k]) >= edges_j[out[k]]
        base = num_slot[j] * feature_bins
        for k in range(m):
            v = v_j[c0 + k]
            out[k] = base + (n_edges + 1 if v != v else min(out[k], n_edges))
    for j in range(cat_codes.shape[0]):
        out = cells[Jn + j]
        base = cat_slot[j] * feature_bins
        for k in range(m):
            out[k] = base + cat_codes[j, c0 + k]


@njit(nogil=True, cache=True)
def _score_bins(c0, c1, values, padded, n_edges, kmin, shift, lut, steps, out):
    """``out[i - c0]``: the fine bin of ``values[i]`` for a score in [0, 1], else -1.

    The bins of :func:`_key_bin`, written as branch-free loops over the chunk (the table
    lookup, then the fixed compare-and-add steps) so that they vectorise: the table lookups
    of many rows are then in flight at once rather than one row's chain at a time.
    """
    n_lut = np.uint64(lut.shape[0])
    for k in range(c1 - c0):
        bits = np.float64(values[c0 + k]).view(np.uint64)
        key = ~bits if (bits & _TOP) else (bits | _TOP)
        below = key < kmin
        cell = np.uint64(0) if below else (key - kmin) >> shift
        code = lut[min(cell, n_lut - np.uint64(1))]
        code = n_edges if cell >= n_lut else code
        out[k] = 0 if below else code
    for _ in range(steps):
        for k in range(c1 - c0):
            out[k] += np.float64(values[c0 + k]) >= padded[out[k]]
    for k in range(c1 - c0):
        v = np.float64(values[c0 + k])
        out[k] = min(out[k], n_edges) if (v >= 0.0 and v <= 1.0) else -1


@njit(nogil=True, cache=True)
def _accumulate_range(
    pair_h,  # (n_raw * 3 * F,) int64 work space, zeroed here (see fused_accumulate)
    row_start,
    row_end,
    # slices: per slice column, the row's dictionary index (-1 null) and index -> code table
    col_index,  # (C, n) int32 (see stack_columns)
    col_lut,  # (C, Dmax) int32 dictionary index -> code
    col_unseen,  # (C, Dmax) bool dictionary index -> value unseen in the baseline
    col_null_code,  # (C,) int32
    dim_a,  # (Dd,) int32 first column of each dimension
    dim_b,  # (Dd,) int32 second column (-1: none)
    dim_b_size,  # (Dd,) int64 size of the second column's codes
    dim_offsets,  # (Dd,) int64
    n_raw,
    # scores and labels
    score,  # (n,) float
    offline,  # (n,) float, NaN = no replay (ignored unless paired)
    paired,
    label,  # (n,) float64, NaN = missing
    key_null,  # (n,) bool
    edges,  # fine score edges padded with +inf (EdgeIndex.padded)
    n_score_edges,
    kmin,
    shift,
    lut,
    steps,
    fine_to_calib,
    n_calib,
    thresholds,
    delta_edges,  # padded
    n_delta_edges,
    dkmin,
    dshift,
    dlut,
    dsteps,
    # features
    num_values,  # (Jn, n) float32 or float64 (see stack_columns)
    num_edges,  # (Jn, Emax) float64 (padded)
    num_n_edges,  # (Jn,) int64
    num_lut,  # (Jn, L) int32 value lookup tables (see uniform_lut)
    num_lo,  # (Jn,) float64
    num_scale,  # (Jn,) float64
    num_steps,  # (Jn,) int64
    num_slot,  # (Jn,) int64 feature axis index of each numeric feature
    cat_codes,  # (Jc, n) int32 codes of categorical features
    cat_unseen,  # (Jc, n) bool
    cat_slot,  # (Jc,) int64
    n_features,
    feature_bins,
    n_dq,
    p_scale,
    ll_scale,
    ll2_scale,
    log_eps,
    value,  # (n,) float64, NaN = no value (ignored unless with_value)
    with_value,
    value_scale,
    value2_scale,
):
    Dd = dim_a.shape[0]
    C = len(col_index)
    F = n_score_edges + 1
    T = thresholds.shape[0]
    TT = (T + 1) * (T + 1)
    DB = n_delta_edges + 1
    Jn = len(num_values)
    Jc = cat_codes.shape[0]
    NC = n_calib
    FB = n_features * feature_bins
    # One row adds to ~60 cells; the layouts below make those adds few and close together.
    # The online and replay fine counts share one int64 cell: the online count in the low 32
    # bits, the replay count in the high 32 (a call covers fewer than 2**31 rows, so neither
    # carries), and a faithful replay (the same score: the same cell) adds both in one add.
    pair_h[:] = 0
    # calibration sums (p, p^2, log-loss term, its square) side by side, in one cache line;
    # faithful replays add them once to ``same_c`` (both sides), the others to one side each.
    # Row 0 of the calibration grids (their counts) is left to the caller, who derives it
    # from the fine grids.
    same_c = np.zeros(n_raw * 3 * NC * 4, dtype=np.int64)
    on_c = np.zeros(n_raw * 3 * NC * 4, dtype=np.int64)
    off_c = np.zeros(n_raw * 3 * NC * 4, dtype=np.int64)
    # faithful replays per (slice, #thresholds <= score): their decision pair is the diagonal
    # and their |online - offline| is 0, so the joint and delta grids follow from this
    faith_h = np.zeros((n_raw, T + 1), dtype=np.int64)
    joint_h = np.zeros((n_raw, TT), dtype=np.int64)
    delta_h = np.zeros((3, n_raw, DB), dtype=np.int64)
    feat_h = np.zeros(n_raw * FB, dtype=np.int32)
    # the row-level data-quality flags as one pattern (see below) per row: one add, not six
    pattern_h = np.zeros((n_raw, 64), dtype=np.int32)
    dq_h = np.zeros((n_raw, n_dq), dtype=np.int64)
    value_h = np.zeros((3, n_raw, 3), dtype=np.int64)
    codes = np.empty(Dd, dtype=np.int64)
    cells = np.empty((Jn + Jc, _CHUNK), dtype=np.int32)
    chunk_index = np.empty((C, _CHUNK), dtype=np.int32)
    score_bins = np.empty(_CHUNK, dtype=np.int32)
    off_bins = np.empty(_CHUNK, dtype=np.int32)
    on_one = np.int64(1)
    off_one = np.int64(1) << 32
    for c0 in range(row_start, row_end, _CHUNK):
        c1 = min(c0 + _CHUNK, row_end)
        # the chunk's dictionary indices side by side
        for a in range(C):
            column = col_index[a]
            for k in range(c1 - c0):
                chunk_index[a, k] = column[c0 + k]
        _feature_cells(c0, c1, num_values, num_edges, num_n_edges, num_lut, num_lo, num_scale, num_steps,
                       num_slot, cat_codes, cat_slot, feature_bins, cells)
        _score_bins(c0, c1, score, edges, n_score_edges, kmin, shift, lut, steps, score_bins)
        # replay bins: only rows whose replay differs need them (a faithful replay reuses the
        # online bin), so the vectorised pass pays only where more than 1 row in 8 differs
        chunk_off_bins = False
        if paired:
            differ = 0
            for k in range(c0, c1):
                differ += offline[k] != score[k]
            if differ * 8 > c1 - c0:
                chunk_off_bins = True
                _score_bins(c0, c1, offline, edges, n_score_edges, kmin, shift, lut, steps, off_bins)
        for i in range(c0, c1):
            # ---- slice codes of every dimension
            unseen_any = False
            for d in range(Dd):
                a = dim_a[d]
                ia = chunk_index[a, i - c0]
                code = col_lut[a, ia] if ia >= 0 else col_null_code[a]
                b = dim_b[d]
                if b >= 0:
                    ib = chunk_index[b, i - c0]
                    code = code * dim_b_size[d] + (col_lut[b, ib] if ib >= 0 else col_null_code[b])
                codes[d] = dim_offsets[d] + code
            # ---- label state
            y = label[i]
            if y == 1.0:
                state = 1
            elif y == 0.0:
                state = 0
            else:
                state = 2
            invalid_label = (y == y) and state == 2
            # ---- online score (the replay's block below is its twin, written out: a shared inline
            # helper measured 20% slower, its array arguments defeating LLVM's alias analysis)
            s = np.float64(score[i])
            fb = np.int64(score_bins[i - c0])  # -1: not a score in [0, 1]
            valid = fb >= 0
            cb = 0
            pf = p2f = llf = ll2f = np.int64(0)
            if valid:
                cb = fine_to_calib[fb]
                p = s
                pf = _fixed(p, p_scale)
                p2f = _fixed(p * p, p_scale)
                ll = 0.0
                if state < 2:
                    q = min(max(p, log_eps), 1.0 - log_eps)
                    ll = -math.log(q) if state == 1 else -math.log1p(-q)
                llf = _fixed(ll, ll_scale)
                ll2f = _fixed(ll * ll, ll2_scale)
            # ---- offline replay of the same request
            valid_off = False
            invalid_off = False
            faithful = False
            if paired:
                o = np.float64(offline[i])
                valid_off = o >= 0.0 and o <= 1.0
                invalid_off = (o == o) and not valid_off
                faithful = valid_off and valid and o == s
            if faithful:
                # the same score: the same bins and terms on both sides, a diagonal decision pair
                ton = 0
                for t in range(T):
                    ton += s >= thresholds[t]
                fcell = state * F + fb
                ccell = (state * NC + cb) * 4
                for d in range(Dd):
                    r = codes[d]
                    pair_h[r * 3 * F + fcell] += on_one + off_one
                    c = r * 3 * NC * 4 + ccell
                    same_c[c] += pf
                    same_c[c + 1] += p2f
                    same_c[c + 2] += llf
                    same_c[c + 3] += ll2f
                    faith_h[r, ton] += 1
            else:
                if valid:
                    fcell = state * F + fb
                    ccell = (state * NC + cb) * 4
                    for d in range(Dd):
                        r = codes[d]
                        pair_h[r * 3 * F + fcell] += on_one
                        c = r * 3 * NC * 4 + ccell
                        on_c[c] += pf
                        on_c[c + 1] += p2f
                        on_c[c + 2] += llf
                        on_c[c + 3] += ll2f
                if valid_off:
                    if chunk_off_bins:
                        fo = np.int64(off_bins[i - c0])
                    else:
                        fo = _key_bin(o, edges, n_score_edges, kmin, shift, lut, steps)
                    co = fine_to_calib[fo]
                    of = _fixed(o, p_scale)
                    o2f = _fixed(o * o, p_scale)
                    llo = 0.0
                    if state < 2:
                        q = min(max(o, log_eps), 1.0 - log_eps)
                        llo = -math.log(q) if state == 1 else -math.log1p(-q)
                    llof = _fixed(llo, ll_scale)
                    llo2f = _fixed(llo * llo, ll2_scale)
                    fcell = state * F + fo
                    ccell = (state * NC + co) * 4
                    for d in range(Dd):
                        r = codes[d]
                        pair_h[r * 3 * F + fcell] += off_one
                        c = r * 3 * NC * 4 + ccell
                        off_c[c] += of
                        off_c[c + 1] += o2f
                        off_c[c + 2] += llof
                        off_c[c + 3] += llo2f
                    if valid:
                        ton = 0
                        toff = 0
                        for t in range(T):
                            if s >= thresholds[t]:
                                ton += 1
                            if o >= thresholds[t]:
                                toff += 1
                        jc = ton * (T + 1) + toff
                        dl = abs(s - o)
                        db = _key_bin(dl, delta_edges, n_delta_edges, dkmin, dshift, dlut, dsteps)
                        df = _fixed(dl, p_scale)
                        d2f = _fixed(dl * dl, p_scale)
                        for d in range(Dd):
                            r = codes[d]
                            joint_h[r, jc] += 1
                            delta_h[0, r, db] += 1
                            if df != 0 or d2f != 0:
                                delta_h[1, r, db] += df
                                delta_h[2, r, db] += d2f
            # ---- value (revenue) per label state
            if with_value:
                w = value[i]
                if w == w:
                    wf = _fixed(w, value_scale)
                    w2f = _fixed(w * w, value2_scale)
                    for d in range(Dd):
                        r = codes[d]
                        value_h[0, r, state] += 1
                        value_h[1, r, state] += wf
                        value_h[2, r, state] += w2f
            # ---- features (their cells computed for the chunk above): one add per slice
            for d in range(Dd):
                base = codes[d] * FB
                for j in range(Jn + Jc):
                    feat_h[base + cells[j, i - c0]] += 1
            # ---- data quality: the row-level flags as a 6-bit pattern, expanded after the loop;
            # unseen values (rare) per column directly (order: engine.stats.DQ_FLAGS)
            pattern = (
                np.int64(valid)
                | (np.int64(valid_off) << 1)
                | (np.int64(invalid_off) << 2)
                | (np.int64(state < 2) << 3)
                | (np.int64(invalid_label) << 4)
                | (np.int64(key_null[i]) << 5)
            )
            for d in range(Dd):
                pattern_h[codes[d], pattern] += 1
            for a in range(C):
                ia = chunk_index[a, i - c0]
                if ia >= 0 and col_unseen[a, ia]:
                    unseen_any = True
                    for d in range(Dd):
                        dq_h[codes[d], 9 + a] += 1
            for j in range(Jc):
                if cat_unseen[j, i]:
                    unseen_any = True
                    for d in range(Dd):
                        dq_h[codes[d], 9 + C + j] += 1
            if unseen_any:
                for d in range(Dd):
                    dq_h[codes[d], 8] += 1
    # ---- back to the grids of engine.stats; the fine counts stay packed (split once, after
    # the threads' parts are summed: see fused_accumulate)
    calib_h = np.zeros((5, n_raw, 3, NC), dtype=np.int64)
    calib_off_h = np.zeros((5, n_raw, 3, NC), dtype=np.int64)
    for r in range(n_raw):
        for st in range(3):
            for cc in range(NC):
                c = ((r * 3 + st) * NC + cc) * 4
                for k in range(4):
                    calib_h[1 + k, r, st, cc] = same_c[c + k] + on_c[c + k]
                    calib_off_h[1 + k, r, st, cc] = same_c[c + k] + off_c[c + k]
    db0 = _key_bin(0.0, delta_edges, n_delta_edges, dkmin, dshift, dlut, dsteps)
    for r in range(n_raw):
        for t in range(T + 1):
            joint_h[r, t * (T + 1) + t] += faith_h[r, t]
            delta_h[0, r, db0] += faith_h[r, t]
    for r in range(n_raw):
        for pat in range(64):
            m = pattern_h[r, pat]
            if m:
                dq_h[r, 0] += m
                dq_h[r, 1 if pat & 1 else 2] += m
                for q in range(1, 6):
                    if pat & (1 << q):
                        dq_h[r, 2 + q] += m
    return (
        pair_h.reshape((n_raw, 3, F)),
        calib_h,
        calib_off_h,
        joint_h,
        delta_h,
        feat_h.reshape((n_raw, n_features, feature_bins)).astype(np.int64),
        dq_h,
        value_h,
    )


@njit(nogil=True, cache=True)
def _split_pairs(pair_h, score_h, off_h):
    """The online and replay counts of packed fine cells (low and high 32 bits), added to
    ``score_h`` and ``off_h`` (same shape)."""
    low = (np.int64(1) << 32) - 1
    flat, s, o = pair_h.reshape(-1), score_h.reshape(-1), off_h.reshape(-1)
    for c in range(flat.shape[0]):
        s[c] += flat[c] & low
        o[c] += flat[c] >> 32


@njit(parallel=True, cache=True)
def log_loss_terms(p, state, log_eps):
    """Per-row log-loss term: -log(p) for positives, -log(1 - p) for negatives, else 0.

    ``p`` clipped to ``[log_eps, 1 - log_eps]``. Shared by both accumulate paths so that
    their fixed-point sums agree to the bit (numpy's SIMD log may differ by an ulp).
    """
    out = np.zeros(p.shape[0], dtype=np.float64)
    for i in prange(p.shape[0]):
        if state[i] < 2:
            q = min(max(p[i], log_eps), 1.0 - log_eps)
            out[i] = -math.log(q) if state[i] == 1 else -math.log1p(-q)
    return out



@njit(nogil=True, cache=True)
def add_selected_rows(rows, cols, a, out):
    """``out[rows[t]] += a[cols[t]]`` for every ``t``: a 0/1 matrix (given by its nonzeros)
    times ``a``, in ``a``'s own type (integers exact at any size), with work in proportion
    to the nonzeros rather than to the matrix."""
    for t in range(rows.shape[0]):
        r, c = rows[t], cols[t]
        for k in range(a.shape[1]):
            out[r, k] += a[c, k]


@njit(nogil=True, cache=True)
def max_abs(values):
    """The largest ``|v|`` of ``values`` ignoring NaN (0.0 when there is none), in one pass."""
    top = 0.0
    for i in range(values.shape[0]):
        a = abs(values[i])
        if a > top:  # False for NaN
            top = a
    return top


@njit(parallel=True, cache=True)
def window_index(ticks, null, unit, origin, width, count, out):
    """Each row's time window: ``floor((ticks * unit - origin) / width)`` for a time of
    ``ticks`` (int64, ``unit`` seconds each), ``count`` where null (``null``, bool; empty:
    none) or outside ``[0, count)``. The float steps of numpy's formula, in one pass."""
    has_null = null.shape[0] > 0
    for i in prange(ticks.shape[0]):
        k = math.floor((np.float64(ticks[i]) * unit - origin) / width)
        out[i] = k if (k >= 0 and k < count and not (has_null and null[i])) else count


@njit(parallel=True, cache=True)
def virtual_codes(index, lut, null_code, size, dim_cols, window, window_size, out):
    """Each row's code in dimensions of several columns (and crossed with its time window).

    ``index`` (C, n): the slice columns' dictionary indices (-1: null), ``lut`` (C, Dmax) and
    ``null_code`` (C,) their codes, ``size`` (C,) their code counts; ``dim_cols`` (V, K): the
    columns of each dimension (-1 pads), the code ``((c0 * size1) + c1) * size2 + c2 ...``;
    ``window_size`` (V,): > 0 crosses dimension ``v`` with ``window`` (n,), the code becoming
    ``window * window_size + code``. Written to ``out`` (V, n): one pass over the rows where
    numpy made a temporary per column and dimension (0.1 s a million rows with time windows).
    """
    V, K = dim_cols.shape
    for i in prange(index.shape[1]):
        for v in range(V):
            code = np.int64(0)
            for k in range(K):
                c = dim_cols[v, k]
                if c < 0:
                    break
                ia = index[c, i]
                code = code * size[c] + (lut[c, ia] if ia >= 0 else null_code[c])
            if window_size[v] > 0:
                code += window[i] * window_size[v]
            out[v, i] = code


_POOL: ThreadPoolExecutor | None = None
_MAX_RANGE_ROWS = 1 << 30
#: Below this many rows in all, the threads' packed fine cells can be summed before they are
#: split (neither 32-bit half can carry).
_PACKED_ROWS = 1 << 31
#: Packed fine grids kept between calls, per calling thread (larger ones are not kept).
_WORK_BYTES = 64 << 20
_LOCAL = threading.local()


def _work_spaces(n_ranges: int, size: int) -> list[np.ndarray]:
    """One int64 work space of ``size`` cells per row range, kept between calls.

    Fresh memory costs a page fault per page on first touch, and two threads faulting at
    once wait on each other: a 1M-row batch spent about an eighth of its time in the
    kernel that way. Per calling thread, so that concurrent callers never share one.
    """
    if n_ranges * size * 8 > _WORK_BYTES:
        return [np.empty(size, np.int64) for _ in range(n_ranges)]
    kept = getattr(_LOCAL, "work", [])
    kept = [w for w in kept if w.size == size]
    while len(kept) < n_ranges:
        kept.append(np.empty(size, np.int64))
    _LOCAL.work = kept
    return kept[:n_ranges]


def stack_columns(arrays: list[np.ndarray], dtype: np.dtype | type | None = None, *, slot: str = "") -> np.ndarray:
    """Columns as the kernel takes them: one read-only C-contiguous ``(len(arrays), n)`` array.

    ``dtype`` defaults to the columns' common type (float32 columns stay float32). A plain
    array, not a typed List: Numba caches a function of arrays on disk, while a typed List
    compiles its own methods in every process (1.3 s of a 300k-row check). The columns are
    copied into a buffer kept per calling thread and ``slot`` (fresh memory costs a page
    fault per 4 KiB page on first touch; see :func:`_work_spaces`), so a call's result is
    valid until the same thread stacks into the same slot again.
    """
    if dtype is None:
        dtype = np.result_type(*[a.dtype for a in arrays]) if arrays else np.float64
    dtype = np.dtype(dtype)
    n = int(arrays[0].shape[0]) if arrays else 0
    size = len(arrays) * n
    if size * dtype.itemsize > _WORK_BYTES or not slot:
        out = np.empty((len(arrays), n), dtype)
    else:
        kept = getattr(_LOCAL, "stacks", None)
        if kept is None:
            kept = _LOCAL.stacks = {}
        buf = kept.get((slot, dtype))
        if buf is None or buf.size < size:
            buf = kept[(slot, dtype)] = np.empty(size, dtype)
        out = buf[:size].reshape(len(arrays), n)
    for a, column in enumerate(arrays):
        out[a] = column
    out = out.view()
    out.flags.writeable = False
    return out


class HostStatistics:
    """The nine grids of :func:`fused_accumulate` summed over batches in host memory by
    :func:`fused_add`: the CPU's twin of ``kernels.cuda._staging.DeviceStatistics``, so that
    both backends keep a check's sums in the kernel's layout until they are read once."""

    def __init__(self) -> None:
        self.grids: list[np.ndarray] | None = None

    def download(self) -> tuple[np.ndarray, ...]:
        """The sums (handed over: the object is empty afterwards)."""
        grids, self.grids = self.grids, None
        if grids is None:
            raise ValueError("No batch was added to these statistics.")
        return tuple(grids)


def fused_accumulate(n_threads: int, *args):
    """Every grid of a batch, the rows split over ``n_threads`` threads.

    Each thread runs :func:`_accumulate_range` (compiled without the GIL) on its own row
    range into its own histograms; the parts are summed (integer addition, so the result
    does not depend on the number of threads). Plain threads rather than ``prange``: the
    parallel-loop version ran slower than one thread here.
    """
    into = HostStatistics()
    fused_add(into, n_threads, *args)
    return into.download()


def fused_add(into: HostStatistics, n_threads: int, *args) -> None:
    """Add a batch's grids (those of :func:`fused_accumulate`, same arguments) into ``into``:
    each part is added where it lands, with no grids allocated per batch after the first."""
    global _POOL
    n = args[9].shape[0]  # the score column
    n_raw, n_fine = args[8], args[15] + 1
    n_threads = max(1, min(int(n_threads), n // 50_000 or 1))
    # int32 counts: no range may reach 2**31 rows
    n_ranges = max(n_threads, -(-n // _MAX_RANGE_ROWS))
    work = _work_spaces(n_ranges, n_raw * 3 * n_fine)
    if n_ranges == 1:
        parts = [_accumulate_range(work[0], 0, n, *args)]
    else:
        if _POOL is None or _POOL._max_workers < n_threads:
            _POOL = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="parity-accumulate")
        bounds = np.linspace(0, n, n_ranges + 1).astype(np.int64)
        parts = list(
            _POOL.map(lambda k: _accumulate_range(work[k], bounds[k], bounds[k + 1], *args), range(n_ranges))
        )
    packed = [part[0] for part in parts]
    rest = [part[1:] for part in parts]  # calib, calib_off, joint, delta, feature, dq, value
    if into.grids is None:
        # the first part's grids become the sums (the kernel made them for this call)
        calib, calib_off, joint, delta, feat, dq, value = rest.pop(0)
        score_h = np.zeros((n_raw, 3, n_fine), np.int64)
        into.grids = [score_h, calib, np.zeros(score_h.shape, np.int64), calib_off, joint, delta, feat, dq, value]
    grids = into.grids
    if n < _PACKED_ROWS:
        for part in packed[1:]:
            np.add(packed[0], part, out=packed[0])
        packed = packed[:1]
    for part in packed:  # (the packed cells of parts of 2**31 rows or more could carry: each alone)
        _split_pairs(part, grids[0], grids[2])
    for part in rest:
        for i, grid in zip((1, 3, 4, 5, 6, 7, 8), part):
            np.add(grids[i], grid, out=grids[i])
