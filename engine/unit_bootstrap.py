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

``parity check --bootstrap-unit COL`` (:class:`UnitAccumulator`): while the online rows
stream through the accumulate stage, every row's cell on each of the bootstrap's *coarse*
grids (score, replay score, joint decisions, |delta|, value, features; per judged slice) is
computed and ``Kernels.unit_histogram`` adds the row's unit weight of every replicate there.
The resulting ``(B, cells)`` replicate counts (memory: B x coarse cells, whatever the number
of rows) are statistics like the others: they merge by addition across batches, buckets and
Dask workers, and since a weight depends on (seed, unit id, replicate) alone they are
identical for any batch size, partitioning or backend. :class:`engine.bootstrap.CellBootstrap`
then takes them as the online side's replicate counts ``n*`` instead of its per-cell Poisson
draws; sums inside a cell stay conditional on ``n*`` as in the cell-level bootstrap. The
baseline keeps the cell-level bootstrap (a check has its statistics, not its rows).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from engine.encode import LABEL_MISSING, N_LABEL_STATES, Layout, _to_float, categorical_codes
from engine.errors import ConfigError
from engine.stats import LABEL, SCORE, Accumulator, DeviceSums, Statistics, _offline_scores, _record_batch

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


# --------------------------------------------------------------------------- in the pipeline
#: Most memory the replicate counts of a unit-level bootstrap may take (they are held once,
#: plus one batch's worth while a batch is added).
UNIT_MAX_BYTES = 4 << 30

#: Prefix of the unit-level replicate counts among a :class:`Statistics`' arrays.
PREFIX = "unit/"

#: Every |delta| fine bin maps to bin ``bin // DELTA_STEP`` of the bootstrap's coarse grid
#: (``engine.bootstrap.CellBootstrap``: every 8th edge).
DELTA_STEP = 8


@dataclass(frozen=True)
class UnitSpec:
    """What a unit-level bootstrap needs: the online column of unit ids, B and the seed."""

    column: str
    replicates: int
    seed: int

    def key(self) -> str:
        """Part of the statistics' layout id: counts of other units, B or seeds never merge."""
        return f"unit:{self.column}:{self.replicates}:{self.seed}"


class UnitAccumulator(Accumulator):
    """An :class:`engine.stats.Accumulator` that also adds the unit-level bootstrap's online
    replicate counts (``unit/<grid>`` arrays of shape ``(B, R, *coarse inner)`` over the
    ``R`` raw slices of the judged dimensions; :meth:`Statistics.grid` derives the whole
    population from them as from every other grid).

    Parameters
    ----------
    layout, kernels, paired, with_value, windows
        As for :class:`Accumulator`.
    unit : UnitSpec
    """

    def __init__(self, layout: Layout, kernels, *, unit: UnitSpec, **options: Any) -> None:
        super().__init__(layout, kernels, **options)
        self.unit = unit
        self.layout_id += "|" + unit.key()
        self._n_coarse = len(layout.coarse_edges) + 1
        self._n_delta = (len(layout.delta_edges) + 1 + DELTA_STEP - 1) // DELTA_STEP
        # a feature's fine bin -> its bin on the bootstrap's coarse grid (deciles + missing)
        self._psi_maps = coarse_feature_maps(layout)
        self._k_psi = max([int(m.max()) + 1 for m in self._psi_maps], default=0)
        sizes = [layout.dim_size(d) for d in layout.dims]
        self._unit_raw = max(1, sum(sizes))  # judged raw slices (the atoms are not judged)
        self._unit_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes else np.zeros(1, np.int64)
        inner: dict[str, tuple[int, ...]] = {"score": (N_LABEL_STATES, self._n_coarse)}
        if self.paired:
            T = len(layout.thresholds)
            inner.update(offline=(N_LABEL_STATES, self._n_coarse), joint=((T + 1) ** 2,), delta=(self._n_delta,))
        if self.with_value:
            inner["value"] = (N_LABEL_STATES,)
        if layout.features:
            inner["feature"] = (len(layout.features), self._k_psi)
        self._unit_inner = inner
        # the flat cell space of one kernel call: grid after grid, (raw slice, *inner) each
        self._unit_base: dict[str, int] = {}
        n = 0
        for name, shape in inner.items():
            self._unit_base[name] = n
            n += self._unit_raw * int(np.prod(shape))
        self.unit_cells = n
        need = 2 * unit.replicates * n * 8
        if need > UNIT_MAX_BYTES:
            raise ConfigError(
                f"The unit-level bootstrap (--bootstrap-unit {unit.column}) keeps {unit.replicates:,} replicates x "
                f"{n:,} cells ({need / 2**30:.1f} GiB), more than the {UNIT_MAX_BYTES / 2**30:.0f} GiB it may use. "
                "Use fewer replicates (--bootstrap), fewer slices or features, or drop --bootstrap-unit."
            )

    @property
    def cells_per_row(self) -> int:
        """Cells a row adds its weight to (one per judged dimension and grid): the kernel's
        work is rows x replicates x this."""
        grids = len(self._unit_inner) - ("feature" in self._unit_inner) + len(self.layout.features)
        return max(1, len(self.layout.dims)) * grids

    def zero(self) -> Statistics:
        stats = super().zero()
        for name, shape in self._unit_inner.items():
            stats.raw[PREFIX + name] = np.zeros((self.unit.replicates, self._unit_raw) + shape, np.int64)
        return stats

    def batch_statistics(self, batch: pa.RecordBatch | pa.Table) -> Statistics:
        batch = _record_batch(batch)
        stats = super().batch_statistics(batch)
        stats.raw.update(self.unit_counts(batch))
        return stats

    def _add_on_device(self, sums: DeviceSums, batch: pa.RecordBatch) -> None:
        """The statistics, and the replicate counts added into one device array kept with
        them (no copy back per batch)."""
        super()._add_on_device(sums, batch)
        counts = sums.extra.get(PREFIX)
        if counts is None:
            counts = sums.extra[PREFIX] = self.kernels.device_zeros((self.unit.replicates, self.unit_cells), np.int64)
        self._unit_histogram(batch, out=counts)

    def _drain(self, sums: DeviceSums) -> dict[str, np.ndarray]:
        raw = super()._drain(sums)
        counts = sums.extra[PREFIX]  # a device array on the GPU, numpy's on the CPU
        raw.update(self.split(counts if isinstance(counts, np.ndarray) else counts.copy_to_host()))
        return raw

    # ------------------------------------------------------------------ one batch
    def row_cells(self, batch: pa.RecordBatch) -> np.ndarray:
        """``(M, n)`` int32: each row's flat cell on every coarse grid, once per judged
        dimension (-1: the row has none there, e.g. an invalid score).

        Binned on the host with ``searchsorted`` on both backends (the coarse grids have
        few edges; the kernel's rows x replicates dominate), exactly as the accumulator bins
        onto the fine grid and the bootstrap maps fine bins to coarse ones: with every
        weight 1, the counts are the coarse grids of the statistics (tested).
        """
        layout, n = self.layout, batch.num_rows
        # the row's raw slice in each judged dimension
        if layout.dims:
            per_col = {c: categorical_codes(batch.column(c), layout.slice_codes[c])[0] for c in layout.slice_columns}
            raw = []
            for d, dim in enumerate(layout.dims):
                code = np.zeros(n, np.int64)
                for c in dim:
                    code = code * layout.slice_codes[c].size + per_col[c]
                raw.append(self._unit_offsets[d] + code)
        else:
            raw = [np.zeros(n, np.int64)]
        score = _to_float(batch.column(SCORE)).astype(np.float64)
        valid = (score >= 0.0) & (score <= 1.0)  # NaN compares False
        state = self._label_states(batch, n)
        n_c = self._n_coarse
        inner: list[tuple[str, np.ndarray]] = [
            ("score", np.where(valid, state * n_c + np.searchsorted(layout.coarse_edges, score, "right"), -1))
        ]
        if self.paired:
            off = _offline_scores(batch).astype(np.float64)
            valid_off = (off >= 0.0) & (off <= 1.0)
            both = valid & valid_off
            inner.append(("offline", np.where(valid_off, state * n_c + np.searchsorted(layout.coarse_edges, off, "right"), -1)))
            T = len(layout.thresholds)
            thresholds = np.asarray(layout.thresholds, dtype=np.float64)
            joint = np.searchsorted(thresholds, score, "right") * (T + 1) + np.searchsorted(thresholds, off, "right")
            inner.append(("joint", np.where(both, joint, -1)))
            delta = np.abs(score - off)
            inner.append(("delta", np.where(both, np.searchsorted(layout.delta_edges, delta, "right") // DELTA_STEP, -1)))
        if self.with_value:
            value = self._checked_value(batch)
            inner.append(("value", np.where(np.isnan(value), -1, state)))
        for j, f in enumerate(layout.features):
            if f.kind == "numeric":
                v = _to_float(batch.column(f.name)).astype(np.float64)
                fine = np.where(np.isnan(v), f.n_bins - 1, np.searchsorted(f.edges, v, "right"))
            else:
                fine = categorical_codes(batch.column(f.name), f.categories)[0]
            inner.append(("feature", j * self._k_psi + self._psi_maps[j][fine]))
        out = np.empty((len(raw) * len(inner), n), np.int32)
        m = 0
        for r in raw:
            for name, code in inner:
                size = int(np.prod(self._unit_inner[name]))
                out[m] = np.where(code >= 0, self._unit_base[name] + r * size + code, -1)
                m += 1
        return out

    def _label_states(self, batch: pa.RecordBatch, n: int) -> np.ndarray:
        if LABEL not in batch.schema.names:
            return np.full(n, LABEL_MISSING, np.int64)
        y = _to_float(batch.column(LABEL)).astype(np.float64)
        return np.where(y == 1.0, 1, np.where(y == 0.0, 0, LABEL_MISSING)).astype(np.int64)

    def unit_counts(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        """The batch's ``unit/<grid>`` replicate counts."""
        return self.split(np.asarray(self._unit_histogram(batch)))

    def _unit_histogram(self, batch: pa.RecordBatch, out: Any = None) -> Any:
        """``Kernels.unit_histogram`` of the batch's rows: ``(B, unit_cells)`` counts, added
        into the device array ``out`` when given (GPU)."""
        spec = self.unit
        if spec.column not in batch.schema.names:
            raise ConfigError(f"The online batch has no unit column '{spec.column}' (--bootstrap-unit).")
        ids = unit_keys(batch.column(spec.column))
        cells = self.row_cells(batch)
        with warnings.catch_warnings():
            # the run warns once about the whole cost (engine.pipeline), not once per batch
            warnings.simplefilter("ignore", _cost_warning())
            if out is None:
                return self.kernels.unit_histogram(spec.seed, ids, cells, self.unit_cells, 0, spec.replicates)
            return self.kernels.unit_histogram(spec.seed, ids, cells, self.unit_cells, 0, spec.replicates, out=out)

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """``(R, unit_cells)`` flat counts as ``unit/<grid>`` arrays ``(R, raw slices, *inner)``."""
        out = {}
        for name, shape in self._unit_inner.items():
            base = self._unit_base[name]
            size = self._unit_raw * int(np.prod(shape))
            out[PREFIX + name] = flat[:, base : base + size].reshape((flat.shape[0], self._unit_raw) + shape)
        return out


def accumulator(layout: Layout, kernels, unit: "UnitSpec | None" = None, **options: Any) -> Accumulator:
    """The accumulator of a check: with the unit-level bootstrap's counts when ``unit`` is
    given (``options``: those of :class:`engine.stats.Accumulator`)."""
    if unit is None:
        return Accumulator(layout, kernels, **options)
    return UnitAccumulator(layout, kernels, unit=unit, **options)


def coarse_feature_maps(layout: Layout) -> list[np.ndarray]:
    """Per feature, fine bin -> coarse bin: the maps ``CellBootstrap.coarsen`` uses."""
    from engine.measure import fine_resolution

    return list(fine_resolution(layout).feature_psi_maps)


def _cost_warning() -> type[Warning]:
    from kernels.cpu import UnitBootstrapCostWarning

    return UnitBootstrapCostWarning


def take_replicates(stats: Statistics, layout: Layout) -> Any:
    """Remove the ``unit/`` arrays from ``stats`` and return them as the online replicate
    counts of the coarse grids (an :class:`engine.measure.Grids` with a leading replicate
    axis over the judged slices; ``calib`` is derived from ``score`` by the bootstrap, the
    sums of ``delta`` and ``value`` stay conditional on these counts), or None if there are
    none. The statistics that remain are the plain ones (what a run history keeps)."""
    from engine.measure import Grids

    names = [k for k in stats.raw if k.startswith(PREFIX)]
    if not names:
        return None
    grid = {k[len(PREFIX):]: stats.grid(k) for k in names}
    for k in names:
        del stats.raw[k]
    features = []
    if "feature" in grid:
        for j, m in enumerate(coarse_feature_maps(layout)):
            features.append(grid["feature"][:, :, j, : int(m.max()) + 1])
    return Grids(
        score=grid["score"],
        calib=None,
        features=features,
        offline=grid.get("offline"),
        joint=grid.get("joint"),
        delta=(grid["delta"], None, None) if "delta" in grid else None,
        value=(grid["value"], None, None) if "value" in grid else None,
    )


def cost_message(rows: int, replicates: int, cells_per_row: int, column: str) -> str:
    """The one warning a CPU run of the unit-level bootstrap gives about its cost."""
    return (
        f"the unit-level bootstrap (--bootstrap-unit {column}) on the CPU draws every row's weight again in "
        f"every replicate: {rows:,} rows x {replicates:,} replicates = {rows * replicates:,} weight draws, "
        f"each added to {cells_per_row} cells. This can take minutes; a GPU (--backend gpu) runs it about a "
        "hundred times faster, and fewer replicates (--bootstrap) cost proportionally less."
    )
