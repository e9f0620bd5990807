"""The unit-level Poisson bootstrap (Chamandy et al. 2012), for correlated rows.

When a user (a session, a device) contributes many correlated rows, resampling rows, or
cells as ``engine.bootstrap`` does (exactly the row-level bootstrap), treats them as
independent and gives intervals that are too narrow. Here every row of a unit gets the same
Poisson(1) weight in a replicate, drawn from a hash of (seed, unit id, replicate), so a
unit's rows move together. The weight of a row depends on its unit id alone: the result
does not depend on row order, batches or partitioning, and is identical on every backend.

The cost is rows x replicates (each row is drawn again in every replicate), which is where
the GPU earns its keep: ``Kernels.unit_histogram`` accumulates the replicate cell counts of
all rows and replicates in one kernel launch; the CPU runs the same loop (parallel over
replicates) and warns when it is large.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

#: The unit key of rows whose unit id is null: they form one unit together.
NULL_UNIT = np.uint64(0x9E3779B97F4A7C15)


def unit_keys(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """uint64 key per row: equal unit ids give equal keys, in any batch or partition.

    Integer ids are their own keys (as ``astype(np.uint64)``); other values (strings, dates)
    are keyed by the first 8 bytes of the BLAKE2b hash of their text. Nulls share
    :data:`NULL_UNIT`.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    null = column.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_integer(column.type):
        keys = column.cast(pa.int64()).fill_null(0).to_numpy().astype(np.uint64)
    else:
        enc = column.dictionary_encode()
        table = np.array(
            [int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little")
             for v in enc.dictionary.to_pylist()],
            dtype=np.uint64,
        )
        idx = enc.indices.fill_null(0).to_numpy() if len(table) else np.zeros(len(column), np.int64)
        keys = table[idx] if len(table) else np.zeros(len(column), np.uint64)
    keys[null] = NULL_UNIT
    return keys


class UnitBootstrap:
    """Replicate cell counts of the unit-level bootstrap, in chunks of replicates.

    Parameters
    ----------
    kernels : kernels._api.Kernels
    replicates : int
        B.
    seed : int
    chunk : int
        Replicates per kernel call (memory: ``chunk * n_cells`` int64).
    """

    def __init__(self, kernels, *, replicates: int = 1000, seed: int = 0, chunk: int = 250) -> None:
        self.kernels = kernels
        self.B = int(replicates)
        self.seed = int(seed)
        self.chunk = max(1, int(chunk))

    def counts(self, unit_ids: np.ndarray, cells: np.ndarray, n_cells: int) -> np.ndarray:
        """``(B, n_cells)`` int64: each replicate's weighted count of every cell.

        Parameters
        ----------
        unit_ids : (n,) uint64 (see :func:`unit_keys`)
        cells : (M, n) or (n,) int32, the flat cell of each row (-1: none)
        n_cells : int
        """
        parts = [
            np.asarray(self.kernels.unit_histogram(self.seed, unit_ids, cells, n_cells, r0, min(self.chunk, self.B - r0)))
            for r0 in range(0, self.B, self.chunk)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, int(n_cells)), np.int64)
