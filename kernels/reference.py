"""Pure numpy oracles: the semantics every backend must reproduce.

These are written for clarity, not speed; ``kernels.cpu`` is the fast CPU path and is
tested against them. Counts must match exactly; Poisson and normal draws match to the last
bit except where a transcendental function differs by an ulp between libraries.
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


def _uniform(h: np.ndarray) -> np.ndarray:
    return ((h >> _U64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def _normal(h: np.ndarray) -> np.ndarray:
    """Acklam's inverse normal CDF at one uniform (see ``kernels._rng``)."""
    p = _uniform(h)
    a, b, c, d = _rng.ACKLAM_A, _rng.ACKLAM_B, _rng.ACKLAM_C, _rng.ACKLAM_D

    def tail(q):
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0
        )

    out = np.empty_like(p)
    low, high = p < _rng.ACKLAM_LOW, p > 1.0 - _rng.ACKLAM_LOW
    mid = ~(low | high)
    out[low] = tail(np.sqrt(-2.0 * np.log(p[low])))
    out[high] = -tail(np.sqrt(-2.0 * np.log(1.0 - p[high])))
    q = p[mid] - 0.5
    r = q * q
    out[mid] = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (
        ((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0
    )
    return out


def poisson_cells(seed, role, cell_keys, lam, rep_start, n_reps) -> np.ndarray:
    """Poisson draws per (replicate, cell); see :meth:`kernels._api.Kernels.poisson_cells`."""
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), (len(cell_keys),))
    h = _hashes(seed, role, _rng.STREAM_POISSON, cell_keys, rep_start, n_reps)
    out = np.zeros(h.shape, dtype=np.int64)
    lam2 = np.broadcast_to(lam, h.shape)
    small = (lam2 > 0) & (lam2 < _rng.POISSON_INVERSION_CUTOFF)
    # inversion, vectorised over the still-active draws
    idx = np.nonzero(small)
    u = _uniform(h[idx])
    lam_s = lam2[idx]
    p = np.exp(-lam_s)
    cdf = p.copy()
    k = np.zeros(u.shape, dtype=np.int64)
    active = u > cdf
    step = 0
    while active.any() and step < 200:
        step += 1
        a = np.nonzero(active)[0]
        k[a] += 1
        p[a] = p[a] * lam_s[a] / k[a]
        cdf[a] += p[a]
        active[a] = u[a] > cdf[a]
    out[idx] = k
    large = lam2 >= _rng.POISSON_INVERSION_CUTOFF
    if large.any():
        z = _normal(h[large])
        lam_l = lam2[large]
        x = np.floor(lam_l + np.sqrt(lam_l) * z + (z * z - 1.0) / 6.0 + 0.5)
        out[large] = np.maximum(x, 0.0).astype(np.int64)
    return out


def normal_cells(seed, role, cell_keys, rep_start, n_reps) -> np.ndarray:
    """Standard normal draws per (replicate, cell)."""
    return _normal(_hashes(seed, role, _rng.STREAM_NORMAL, cell_keys, rep_start, n_reps))


def unit_weights(seed, unit_ids, rep_start, n_reps) -> np.ndarray:
    """Poisson(1) weights per (replicate, row) from a hash of (seed, unit id, replicate)."""
    h = _hashes(seed, 0, _rng.STREAM_UNIT, unit_ids, rep_start, n_reps)
    u = h >> _U64(11)
    return np.searchsorted(_rng.POISSON1_THRESHOLDS, u, side="right").astype(np.int32)
