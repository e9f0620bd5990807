"""Pure numpy oracles: the semantics every backend must reproduce.

These are written for clarity, not speed; ``kernels.cpu`` is the fast CPU path and is
tested against them. Everything must match exactly, the Poisson and normal draws too (the
generator is integer arithmetic, see ``kernels._rng``).
"""

from __future__ import annotations

import numpy as np

from kernels import _rng

_U64 = np.uint64


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``searchsorted(edges, values, side="right")`` as int32; NaN -> -1."""
    values = np.asarray(values, dtype=np.float64)
    codes = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    codes = codes.astype(np.int32)
    codes[np.isnan(values)] = -1
    return codes


def histogram(
    outer: np.ndarray,
    outer_offsets: np.ndarray,
    inner: np.ndarray,
    inner_size: int,
    n_cells: int,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Cell counts and fixed-point sums; see :meth:`kernels._api.Kernels.histogram`."""
    outer = np.atleast_2d(np.asarray(outer))
    inner = np.atleast_2d(np.asarray(inner))
    n_inner = inner.shape[0]
    n_weights = 0 if weights is None else np.atleast_2d(weights).shape[0]
    out = np.zeros((1 + n_weights, n_cells), dtype=np.int64)
    for d in range(outer.shape[0]):
        for m in range(n_inner):
            ok = (outer[d] >= 0) & (inner[m] >= 0)
            cell = (int(outer_offsets[d]) + outer[d][ok].astype(np.int64)) * (
                n_inner * inner_size
            ) + m * inner_size + inner[m][ok]
            out[0] += np.bincount(cell, minlength=n_cells)
            for v in range(n_weights):
                w = np.atleast_2d(weights)[v][ok]
                # np.add.at keeps int64 exact (bincount would go through float64)
                np.add.at(out[1 + v], cell, w.astype(np.int64))
    return out


def _mix64(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _hashes(seed: int, role: int, stream: int, keys: np.ndarray, rep_start: int, n_reps: int):
    base = _U64(_rng.stream_base(seed, role, stream))
    with np.errstate(over="ignore"):
        cbase = _mix64(np.asarray(keys, dtype=np.uint64) ^ base)
        reps = np.arange(rep_start, rep_start + n_reps, dtype=np.uint64) + _U64(1)
        return _mix64(cbase[None, :] + reps[:, None] * _U64(_rng.GOLDEN))


def _normal_fixed(h: np.ndarray) -> np.ndarray:
    """Normal draws in units of ``2**-NORMAL_BITS``: the table interpolation of ``kernels._rng``."""
    v = h & _U64((1 << 63) - 1)
    v = np.where(v == 0, _U64(1), v)
    lead = np.zeros(v.shape, dtype=np.int64)  # position of the leading one
    for step in (32, 16, 8, 4, 2, 1):
        lead += np.where((v >> (lead + step).astype(np.uint64)) != 0, step, 0)
    t = v - (_U64(1) << lead.astype(np.uint64))
    place = _rng.NORMAL_SEGMENT_BITS + _rng.NORMAL_FRACTION_BITS
    down = np.maximum(lead - place, 0).astype(np.uint64)
    up = np.maximum(place - lead, 0).astype(np.uint64)
    m = ((t >> down) << up).astype(np.int64)
    j = m >> _rng.NORMAL_FRACTION_BITS
    f = m & ((1 << _rng.NORMAL_FRACTION_BITS) - 1)
    t0 = _rng.NORMAL_TABLE[62 - lead, j]
    t1 = _rng.NORMAL_TABLE[62 - lead, j + 1]
    z = t0 - (((t0 - t1) * f) >> _rng.NORMAL_FRACTION_BITS)
    return np.where((h >> _U64(63)) != 0, z, -z)


def _normal(h: np.ndarray) -> np.ndarray:
    return _normal_fixed(h).astype(np.float64) * 2.0**-_rng.NORMAL_BITS


def poisson_cells(seed, role, cell_keys, counts, rep_start, n_reps) -> np.ndarray:
    """Poisson draws per (replicate, cell); see :meth:`kernels._api.Kernels.poisson_cells`."""
    n = np.broadcast_to(_rng.as_counts(counts, len(cell_keys)), (n_reps, len(cell_keys)))
    h = _hashes(seed, role, _rng.STREAM_POISSON, cell_keys, rep_start, n_reps)
    out = np.zeros(h.shape, dtype=np.int64)
    small = (n > 0) & (n < _rng.POISSON_INVERSION_CUTOFF)
    for count in np.unique(n[small]):  # inversion: thresholds at or below the uniform
        at = n == count
        out[at] = np.searchsorted(_rng.POISSON_TABLE[count], h[at] >> _U64(11), side="right")
    large = n >= _rng.POISSON_INVERSION_CUTOFF
    if large.any():
        z = _normal_fixed(h[large])
        w = _rng.CF_BITS
        spread = np.floor(np.sqrt(n[large].astype(np.float64)) * (z * 2.0**-_rng.NORMAL_BITS) * 2.0**w)
        skew = ((z * z) >> (2 * _rng.NORMAL_BITS - w)) + 5 * 2**w
        total = n[large] * 2**w + spread.astype(np.int64) + skew // 6 - 2**w + 2 ** (w - 1)
        out[large] = np.maximum(total, 0) >> w
    return out


def normal_cells(seed, role, cell_keys, rep_start, n_reps) -> np.ndarray:
    """Standard normal draws per (replicate, cell)."""
    return _normal(_hashes(seed, role, _rng.STREAM_NORMAL, cell_keys, rep_start, n_reps))


def unit_weights(seed, unit_ids, rep_start, n_reps) -> np.ndarray:
    """Poisson(1) weights per (replicate, row) from a hash of (seed, unit id, replicate)."""
    h = _hashes(seed, 0, _rng.STREAM_UNIT, unit_ids, rep_start, n_reps)
    u = h >> _U64(11)
    return np.searchsorted(_rng.POISSON1_THRESHOLDS, u, side="right").astype(np.int32)
