"""The CPU backend: the semantics of ``kernels.reference``, compiled with Numba's CPU JIT.

numpy alone cannot reach the accumulation targets (a binary search over 1024 edges runs at
about 13M rows/s; a fused count over several slice columns needs one pass, not one
``bincount`` per column and statistic), so the hot loops are ``numba.njit`` functions that
run over row chunks in parallel, each chunk into its own private histogram, summed at the
end (integer addition: the result does not depend on the number of threads).
"""

from __future__ import annotations

import warnings

import numba
import numpy as np
from numba import njit, prange

from engine import _cache
from kernels import _rng
from kernels.cpu_fused import HostStatistics, _key_bin, fused_add

_cache.announce_compiles()
_RNG = _rng.build(njit(inline="always", cache=True))
_cell_base, _draw_hash = _RNG.cell_base, _RNG.draw_hash
_poisson, _normal, _poisson1 = _RNG.poisson, _RNG.normal, _RNG.poisson1

class UnitBootstrapCostWarning(UserWarning):
    """The unit-level bootstrap runs on the CPU over many rows x replicates."""


#: Rows per parallel chunk; a chunk owns a private histogram.
_CHUNK_ROWS = 1 << 18
_LUT_BITS = 16


# --------------------------------------------------------------------------- binning
def _monotone_keys(values: np.ndarray) -> np.ndarray:
    """Map float64 to uint64 so that unsigned order equals float order (NaN aside)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    sign = (bits >> np.uint64(63)).astype(bool)
    return np.where(sign, ~bits, bits | np.uint64(1 << 63))


class EdgeIndex:
    """Sorted edges plus a lookup table on the high bits of the value's sortable key.

    ``lut[c]`` is the number of edges at or below the lowest value of key cell ``c``: a
    lower bound of the bin, finished by a counted number of compare-and-add steps
    (``kernels.cpu_fused._key_bin``, shared by both CPU paths). The result is exactly
    ``searchsorted(edges, v, side="right")``; the table only saves the binary search.
    """

    def __init__(self, edges: np.ndarray) -> None:
        self.edges = np.ascontiguousarray(edges, dtype=np.float64)
        if self.edges.ndim != 1 or np.any(np.diff(self.edges) <= 0) or np.isnan(self.edges).any():
            raise ValueError("edges must be a 1-d, strictly increasing array without NaN")
        if self.edges.size == 0:
            self.kmin, self.shift = np.uint64(0), np.uint64(63)
            self.lut = np.zeros(1, dtype=np.int32)
            self.steps = 0
            self.padded = np.full(1, np.inf)
            return
        keys = _monotone_keys(self.edges)
        self.kmin = keys[0]
        span = int(keys[-1] - keys[0])
        self.shift = np.uint64(max(span.bit_length() - _LUT_BITS, 0))
        n_lut = (span >> int(self.shift)) + 1
        lows = self.kmin + (np.arange(n_lut, dtype=np.uint64) << self.shift)
        self.lut = np.searchsorted(keys, lows, side="right").astype(np.int32)
        # At most ``steps`` edges lie strictly inside one key cell (integer arithmetic:
        # exact), so a fixed number of compare-and-add steps finishes any lookup; the edges
        # padded with +inf keep those steps inside the array.
        highs = np.searchsorted(keys, lows + ((np.uint64(1) << self.shift) - np.uint64(1)), side="right")
        highs[-1] = self.edges.size
        self.steps = int((highs - self.lut).max())
        self.padded = np.concatenate([self.edges, np.full(self.steps + 1, np.inf)])


@njit(parallel=True, cache=True)
def _bin_index_lut(values, padded, n_edges, kmin, shift, lut, steps, out):
    for i in prange(values.shape[0]):
        v = np.float64(values[i])
        out[i] = -1 if v != v else _key_bin(v, padded, n_edges, kmin, shift, lut, steps)


# --------------------------------------------------------------------------- histogram
@njit(parallel=True, cache=True)
def _histogram(outer, outer_offsets, inner, inner_size, n_cells, weights, n_chunks):
    n_dims, n = outer.shape
    n_inner = inner.shape[0]
    n_weights = weights.shape[0]
    stride = n_inner * inner_size
    chunk = (n + n_chunks - 1) // n_chunks
    partial = np.zeros((n_chunks, 1 + n_weights, n_cells), dtype=np.int64)
    for c in prange(n_chunks):
        local = partial[c]
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
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
                    local[0, cell] += 1
                    for v in range(n_weights):
                        local[1 + v, cell] += weights[v, i]
    out = partial[0].copy()
    for c in range(1, n_chunks):
        out += partial[c]
    return out


# --------------------------------------------------------------------------- draws
@njit(parallel=True, cache=True)
def _poisson_cells(base, keys, counts, rep_start, n_reps, ztab, ptab, out):
    for c in prange(keys.shape[0]):
        cb = _cell_base(base, keys[c])
        n = counts[c]
        for r in range(n_reps):
            out[r, c] = _poisson(n, _draw_hash(cb, rep_start + r), ztab, ptab) if n > 0 else 0


@njit(parallel=True, cache=True)
def _normal_cells(base, keys, rep_start, n_reps, ztab, out):
    for c in prange(keys.shape[0]):
        cb = _cell_base(base, keys[c])
        for r in range(n_reps):
            out[r, c] = _normal(_draw_hash(cb, rep_start + r), ztab)


@njit(parallel=True, cache=True)
def _unit_weights(base, ids, rep_start, n_reps, thresholds, out):
    for i in prange(ids.shape[0]):
        cb = _cell_base(base, ids[i])
        for r in range(n_reps):
            out[r, i] = _poisson1(_draw_hash(cb, rep_start + r), thresholds)


@njit(parallel=True, cache=True)
def _unit_histogram(base, ids, cells, rep_start, n_reps, thresholds, out):
    # one replicate per parallel iteration: each owns its row of ``out``
    n = ids.shape[0]
    for r in prange(n_reps):
        for i in range(n):
            w = _poisson1(_draw_hash(_cell_base(base, ids[i]), rep_start + r), thresholds)
            if w:
                for m in range(cells.shape[0]):
                    c = cells[m, i]
                    if c >= 0:
                        out[r, c] += w


#: Row-replicates above which the CPU's unit-level bootstrap warns about its cost.
UNIT_COST_WARN = 2_000_000_000


class CpuKernels:
    """numpy arrays in, numpy arrays out; Numba-compiled loops inside."""

    name = "cpu"

    def __init__(self, fused: bool = True) -> None:
        #: Whether the accumulator may use the one-pass kernel of ``kernels.cpu_fused``.
        self.fused = fused
        self._edge_cache: dict[bytes, EdgeIndex] = {}

    def edge_index(self, edges: np.ndarray) -> EdgeIndex:
        """The (cached) lookup table for ``edges``."""
        edges = np.ascontiguousarray(edges, dtype=np.float64)
        key = edges.tobytes()
        index = self._edge_cache.get(key)
        if index is None:
            if len(self._edge_cache) > 64:
                self._edge_cache.clear()
            index = self._edge_cache[key] = EdgeIndex(edges)
        return index

    def bin_index(self, values, edges) -> np.ndarray:
        index = self.edge_index(edges)
        values = np.ascontiguousarray(values)
        if values.dtype not in (np.float32, np.float64):
            values = values.astype(np.float64)
        out = np.empty(values.shape[0], dtype=np.int32)
        _bin_index_lut(values, index.padded, len(index.edges), index.kmin, index.shift, index.lut, index.steps, out)
        return out

    def histogram(self, outer, outer_offsets, inner, inner_size, n_cells, weights=None):
        outer = np.ascontiguousarray(np.atleast_2d(outer), dtype=np.int32)
        inner = np.ascontiguousarray(np.atleast_2d(inner), dtype=np.int32)
        if weights is None:
            weights = np.zeros((0, outer.shape[1]), dtype=np.int64)
        weights = np.ascontiguousarray(np.atleast_2d(weights), dtype=np.int64)
        n = outer.shape[1]
        n_chunks = max(1, min(numba.get_num_threads() * 2, -(-n // _CHUNK_ROWS)))
        return _histogram(
            outer,
            np.ascontiguousarray(outer_offsets, dtype=np.int64),
            inner,
            int(inner_size),
            int(n_cells),
            weights,
            n_chunks,
        )

    def poisson_cells(self, seed, role, cell_keys, counts, rep_start, n_reps):
        keys = np.ascontiguousarray(cell_keys, dtype=np.uint64)
        counts = _rng.as_counts(counts, keys.shape[0])
        out = np.empty((n_reps, keys.shape[0]), dtype=np.int64)
        base = np.uint64(_rng.stream_base(seed, role, _rng.STREAM_POISSON))
        _poisson_cells(base, keys, counts, rep_start, n_reps, _rng.NORMAL_TABLE, _rng.POISSON_TABLE, out)
        return out

    def normal_cells(self, seed, role, cell_keys, rep_start, n_reps):
        keys = np.ascontiguousarray(cell_keys, dtype=np.uint64)
        out = np.empty((n_reps, keys.shape[0]), dtype=np.float64)
        base = np.uint64(_rng.stream_base(seed, role, _rng.STREAM_NORMAL))
        _normal_cells(base, keys, rep_start, n_reps, _rng.NORMAL_TABLE, out)
        return out

    def fused_statistics(self) -> HostStatistics:
        """Empty sums for :meth:`fused_add` to add batches into (host memory)."""
        return HostStatistics()

    def fused_add(self, into: HostStatistics, n_threads: int, *args) -> None:
        """Add a batch's grids into ``into`` (``kernels.cpu_fused.fused_add``)."""
        fused_add(into, n_threads, *args)

    def device_zeros(self, shape, dtype) -> np.ndarray:
        """Zeroed sums kept with the statistics (host memory: this backend's "device")."""
        return np.zeros(shape, dtype)

    def unit_histogram(self, seed, unit_ids, cells, n_cells, rep_start, n_reps, out=None):
        ids = np.ascontiguousarray(unit_ids, dtype=np.uint64)
        cells = np.ascontiguousarray(np.atleast_2d(cells), dtype=np.int32)
        if cells.shape[1] != ids.shape[0]:
            raise ValueError(f"The 'cells' argument must have {ids.shape[0]} columns. Got {cells.shape[1]} instead.")
        if ids.shape[0] * n_reps > UNIT_COST_WARN:
            warnings.warn(
                f"The unit-level bootstrap on the CPU costs rows x replicates = {ids.shape[0] * n_reps:,} "
                "weight draws (each row is drawn again in every replicate); on a GPU "
                "(--backend gpu) it runs about a hundred times faster.",
                UnitBootstrapCostWarning,
                stacklevel=2,
            )
        if out is None:
            out = np.zeros((max(n_reps, 0), int(n_cells)), dtype=np.int64)
        base = np.uint64(_rng.stream_base(seed, 0, _rng.STREAM_UNIT))
        if n_reps > 0 and ids.shape[0]:
            _unit_histogram(base, ids, cells, rep_start, n_reps, _rng.POISSON1_THRESHOLDS, out)
        return out

    def unit_weights(self, seed, unit_ids, rep_start, n_reps):
        ids = np.ascontiguousarray(unit_ids, dtype=np.uint64)
        out = np.empty((n_reps, ids.shape[0]), dtype=np.int32)
        base = np.uint64(_rng.stream_base(seed, 0, _rng.STREAM_UNIT))
        _unit_weights(base, ids, rep_start, n_reps, _rng.POISSON1_THRESHOLDS, out)
        return out
