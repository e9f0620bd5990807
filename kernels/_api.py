"""The compute primitives: one protocol, several implementations.

The signatures and docstrings here are the contract. ``kernels.cpu`` (numpy, accelerated
with Numba's CPU JIT) is the reference the CUDA implementation is tested against; the pure
numpy oracles in ``kernels.reference`` define the semantics.

Conventions
-----------
* A *code* is a non-negative int32; ``-1`` marks a row that does not take part (NaN value,
  invalid label, ...). Primitives skip negative codes.
* Bins are half-open ``[edges[k-1], edges[k])``: ``bin_index(v) == searchsorted(edges, v,
  side="right")``, so ``v >= t`` is exact whenever ``t`` is an edge.
* Fixed-point sums: a bounded float ``x`` is stored as ``rint(x * 2**bits)`` in int64, so
  sums are exact integers and identical in any order, on any backend.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

ArrayLike = Any  # a numpy array, or a device array on the GPU backend


@runtime_checkable
class Kernels(Protocol):
    """The primitives every backend implements."""

    #: ``"cpu"`` or ``"gpu"``.
    name: str

    def bin_index(self, values: ArrayLike, edges: np.ndarray) -> ArrayLike:
        """Assign each value to a bin of sorted, strictly increasing ``edges``.

        Parameters
        ----------
        values : (n,) float32 or float64
        edges : (m,) float64, strictly increasing

        Returns
        -------
        (n,) int32
            ``searchsorted(edges, values, side="right")`` in ``0..m``; ``-1`` for NaN.
        """
        ...

    def histogram(
        self,
        outer: ArrayLike,
        outer_offsets: np.ndarray,
        inner: ArrayLike,
        inner_size: int,
        n_cells: int,
        weights: ArrayLike | None = None,
    ) -> np.ndarray:
        """Fused counting of rows into cells for several slice dimensions at once.

        For each row ``i``, dimension ``d`` and inner axis ``m`` with ``outer[d, i] >= 0``
        and ``inner[m, i] >= 0`` the row lands in cell::

            (outer_offsets[d] + outer[d, i]) * (M * inner_size) + m * inner_size + inner[m, i]

        Parameters
        ----------
        outer : (D, n) int32
            Slice codes, one row per slice dimension.
        outer_offsets : (D,) int64
            First outer index of each dimension.
        inner : (M, n) int32
            Codes inside a slice (e.g. ``label * n_bins + bin``), one row per inner axis
            (e.g. one per feature), each in ``0..inner_size-1`` or ``-1``.
        inner_size : int
        n_cells : int
            Total number of cells; every computed cell index must be below it.
        weights : (V, n) int64, optional
            Fixed-point values summed per cell alongside the count.

        Returns
        -------
        (1 + V, n_cells) int64, host array
            Row 0 holds the counts, row ``1 + v`` the sum of ``weights[v]``.
        """
        ...

    def poisson_cells(
        self,
        seed: int,
        role: int,
        cell_keys: np.ndarray,
        counts: np.ndarray,
        rep_start: int,
        n_reps: int,
    ) -> np.ndarray:
        """Poisson(``counts``) draws per (cell, replicate) from a counter-based generator.

        A cell of ``n`` rows is redrawn as Poisson(n), the sum of its rows' Poisson(1)
        weights. The draw for replicate ``r`` of a cell is a pure function of
        ``(seed, role, cell_keys[c], r)`` and ``counts[c]``, computed in integer arithmetic
        (``kernels._rng``): any chunk of replicates, any order of cells, any backend gives
        the same numbers.

        Parameters
        ----------
        seed : int
        role : int
            Stream id (0 baseline, 1 online, ...): different roles give independent draws.
        cell_keys : (C,) uint64
            The cells' meanings, hashed (not array positions).
        counts : (C,) non-negative integers below 2**42 (an integer or float dtype holding
            whole numbers; anything else is a ValueError)
        rep_start, n_reps : int
            Replicates ``rep_start .. rep_start + n_reps - 1``.

        Returns
        -------
        (n_reps, C) int64, host array
        """
        ...

    def normal_cells(
        self, seed: int, role: int, cell_keys: np.ndarray, rep_start: int, n_reps: int
    ) -> np.ndarray:
        """Standard normal draws per (cell, replicate), independent of :meth:`poisson_cells`.

        Returns
        -------
        (n_reps, C) float64, host array
        """
        ...

    def unit_histogram(
        self, seed: int, unit_ids: ArrayLike, cells: ArrayLike, n_cells: int, rep_start: int, n_reps: int,
        out: ArrayLike | None = None,
    ) -> np.ndarray:
        """Cell counts of the unit-level Poisson bootstrap, rows x replicates in one pass.

        ``out[r, c]`` is the sum over rows ``i`` and inner rows ``m`` with ``cells[m, i] == c``
        of row ``i``'s weight in replicate ``rep_start + r``: exactly what
        :meth:`unit_weights` gives, without materialising the (n_reps, n) weights.

        Parameters
        ----------
        unit_ids : (n,) uint64
        cells : (M, n) or (n,) int32
            Flat cell of each row (-1: the row does not count), M cells per row.
        n_cells : int
        out : (n_reps, n_cells) int64 array of the backend, optional
            Counts to add into (kept with statistics between batches, see
            :meth:`device_zeros`); returned.

        Returns
        -------
        (n_reps, n_cells) int64 array (a host array unless ``out`` is given)
        """
        ...

    def unit_weights(
        self, seed: int, unit_ids: ArrayLike, rep_start: int, n_reps: int
    ) -> ArrayLike:
        """Per-row Poisson(1) weights from a hash of (seed, unit id, replicate).

        Rows of the same unit get the same weight in a replicate (Chamandy et al. 2012).

        Parameters
        ----------
        unit_ids : (n,) uint64

        Returns
        -------
        (n_reps, n) int32
        """
        ...
