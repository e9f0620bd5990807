"""The accumulate stage: sufficient statistics per cell, mergeable by addition.

Every statistic is an int64 array of cells. Counts are exact; sums of bounded quantities are
fixed-point integers (``rint(x * 2**bits)``), so any batch size, batch order, partitioning,
backend or number of workers gives bit-identical statistics. Nothing after this stage
touches rows.

Grids (``S`` slices, ``F`` fine score bins, ``C`` calibration bins, ``T`` thresholds):

========== ======================== ==========================================================
grid       cells                    values (row 0 is always the count)
========== ======================== ==========================================================
score      (S, 3, F)                label state x online fine score bin
offline    (S, 3, F)                label state x offline (replay) fine score bin
calib      (S, 3, C)                + sums of p, p^2, log-loss term, its square (online score)
calib_off  (S, 3, C)                the same for the offline score
feature    (S, J, B)                per feature: bin (numeric: quantile bins + missing bin)
joint      (S, (T+1)^2)             (#thresholds <= online, #thresholds <= offline): flips
delta      (S, D)                   |online - offline| histogram + sums of |d| and d^2
value      (S, 3)                   label state + sums of value and value^2
dq         (S, Q)                   data-quality flags (see ``DQ_FLAGS``), plus one per
                                    categorical column for values unseen in the baseline
========== ======================== ==========================================================

Label states are 0 (negative), 1 (positive), 2 (missing or invalid: never a negative).

Exactness across backends: counts and the sums of p, p^2, |delta| and values are identical
on every backend (IEEE products rounded to fixed point). The log-loss terms go through
``log``: every path computes them on the host with one compiled function
(``kernels.cpu_fused.log_loss_terms``), so they agree to the bit; a future device-side log
(libdevice) could differ in the last ulp, changing the fixed-point term of about one row in
a million by 2**-32.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any, Iterable

import numba
import numpy as np
import pyarrow as pa

from engine.encode import (
    LABEL_MISSING,
    LOG_EPS,
    N_LABEL_STATES,
    Layout,
    _to_float,
    categorical_codes,
    dictionary_parts,
)
from engine.errors import ConfigError, StatisticsError
from engine.metrics import aggregate_bins
from kernels.cpu_fused import fused_accumulate, log_loss_terms, max_abs, stack_columns, uniform_lut, virtual_codes, window_index

#: Fixed-point resolutions (bits after the binary point) of each summed quantity.
#: Bounded in [0, 1]: 2**-32. Log-loss terms are at most -log(1e-15) = 34.5: 2**-32 keeps
#: 2**31 / 34.5 = 62M worst-case rows per cell (typical terms are < 1: billions). Squares of
#: log-loss terms only feed the bootstrap's within-cell spread: 2**-20. Values (revenue) are
#: unbounded: 2**-16, with an overflow check on every merge.
P_BITS = 32
LL_BITS = 32
LL2_BITS = 20
VALUE_BITS = 16
VALUE2_BITS = 0

#: Most cells one score grid may have (int64: 256 MiB; a thread keeps an int32 copy).
MAX_GRID_CELLS = 1 << 25
#: Most score-grid cells of the pass that accumulates all windows at once (more windows x
#: slices are accumulated window by window).
WINDOW_PASS_CELLS = 1 << 23
#: Memory the accumulation threads' private score grids may take together.
THREAD_GRID_BYTES = 2 << 30

DQ_FLAGS = (
    "rows",
    "valid_score",
    "invalid_score",
    "has_offline",
    "invalid_offline_score",
    "has_label",
    "invalid_label",
    "null_key",
    "unseen_value",
)

#: Canonical batch columns the accumulator reads (the join stage renames to these).
SCORE, OFFLINE_SCORE, LABEL, VALUE, KEY_NULL = "score", "offline_score", "label", "value", "__key_null"


@dataclass(frozen=True)
class WindowSpec:
    """Time windows ``[origin + k width, origin + (k + 1) width)`` (seconds since the Unix
    epoch, UTC), ``k < count``; one more block holds rows without a time."""

    column: str
    origin: int
    width: int
    count: int
    #: The latest time seen (seconds): "now" for the label horizon (not part of the key).
    latest: float = 0.0

    @property
    def blocks(self) -> int:
        return self.count + 1

    def key(self) -> str:
        return f"windows:{self.column}:{self.origin}:{self.width}:{self.count}"

    def bounds(self, k: int) -> tuple[int, int]:
        return self.origin + k * self.width, self.origin + (k + 1) * self.width

    def index(self, column: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Each row's window (``count`` for a missing or out-of-range time)."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if pa.types.is_timestamp(column.type):  # the common case, in one pass over the ticks
            ticks = np.asarray(column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), np.int64)
            null = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else np.zeros(0, bool)
            out = np.empty(ticks.shape[0], np.int64)
            window_index(ticks, null, _TICK[column.type.unit], float(self.origin), float(self.width), self.count, out)
            return out
        seconds = epoch_seconds(column)
        with np.errstate(invalid="ignore"):
            k = np.floor((seconds - self.origin) / self.width)
        ok = np.isfinite(k) & (k >= 0) & (k < self.count)
        return np.where(ok, k, self.count).astype(np.int64)


#: Seconds per tick of each timestamp unit.
_TICK = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def epoch_seconds(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A time column as float seconds since the Unix epoch (NaN for null): a timestamp of
    any unit (naive ones read as UTC), or a number of seconds."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_timestamp(column.type):
        unit = _TICK[column.type.unit]
        raw = column.cast(pa.int64()).to_numpy(zero_copy_only=False)
        values = np.asarray(raw, dtype=np.float64) * unit
        if column.null_count:
            values[column.is_null().to_numpy(zero_copy_only=False)] = np.nan
        return values
    if pa.types.is_date(column.type):
        return epoch_seconds(column.cast(pa.timestamp("s")))
    return _to_float(column).astype(np.float64)


def _virtual_name(dim: tuple[str, ...]) -> str:
    """The name of the virtual column of a dimension of more than two columns (a NUL first:
    no real column has it)."""
    return "\0" + "*".join(dim)


def _float_column(col) -> np.ndarray:
    """A float column as float32/float64 numpy (zero-copy when it has no nulls)."""
    values = _to_float(col)
    return values if values.dtype in (np.float32, np.float64) else values.astype(np.float64)


def _offline_scores(batch: pa.RecordBatch) -> np.ndarray:
    """The replay's scores; a matched row whose replay score is missing (null, NaN) reads as
    an invalid score (-1), counted in ``invalid_offline_score``, never as a row the replay
    lacks (that is a join-coverage loss, and the join says it matched)."""
    off = _float_column(batch.column(OFFLINE_SCORE))
    if "__has_offline" in batch.schema.names:
        matched = batch.column("__has_offline").to_numpy(zero_copy_only=False).astype(bool)
        lost = matched & np.isnan(off)
        if lost.any():
            off = np.where(lost, -1.0, off).astype(off.dtype)
    return off


def _key_null(batch: pa.RecordBatch) -> np.ndarray:
    """The join's null-key mask, all False when the batch has none."""
    if KEY_NULL in batch.schema.names:
        return batch.column(KEY_NULL).to_numpy(zero_copy_only=False).astype(bool)
    return np.zeros(batch.num_rows, dtype=bool)


def _canonical(*args):
    """Arguments of the fused kernel in one canonical form per type.

    Numba compiles once per signature, and a signature includes each array's dtype and
    writeability (Arrow hands out read-only arrays for columns without nulls, writable
    copies otherwise). Every array becomes a read-only contiguous view, so writeability never
    adds a signature; float32 columns stay float32 (widening them would copy every batch),
    so a table of float32 scores and features costs one more compilation.
    """
    out = []
    for a in args:
        if isinstance(a, np.ndarray):
            a = np.ascontiguousarray(a).view()
            a.flags.writeable = False
        out.append(a)
    return out


def _record_batch(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    """A table as one record batch (an empty one keeps the schema)."""
    if isinstance(batch, pa.Table):
        if not batch.num_rows:
            return pa.RecordBatch.from_pylist([], schema=batch.schema)
        return batch.combine_chunks().to_batches()[0]
    return batch


def to_fixed(x: np.ndarray, bits: int) -> np.ndarray:
    """``rint(x * 2**bits)`` as int64: exact, order-independent sums."""
    return np.rint(np.asarray(x, dtype=np.float64) * float(2**bits)).astype(np.int64)


def from_fixed(x: np.ndarray, bits: int) -> np.ndarray:
    """Back to float64."""
    return np.asarray(x, dtype=np.float64) / float(2**bits)


#: Serialises bringing device sums back (a Statistics object read from two threads at once).
_SYNC = threading.RLock()


class DeviceSums:
    """Statistics of batches added where the backend keeps them (the GPU's memory, or host
    arrays on the CPU) in the fused kernel's layout: what a :class:`Statistics` object still
    owes its ``raw`` arrays (see :meth:`Accumulator.update`).

    Parameters
    ----------
    acc : Accumulator
        The accumulator whose batches these are; it turns them into ``raw`` arrays.
    """

    def __init__(self, acc: "Accumulator") -> None:
        self.acc = acc
        #: The fused kernel's sums: ``kernels.cuda._staging.DeviceStatistics`` on the GPU,
        #: ``kernels.cpu_fused.HostStatistics`` on the CPU.
        self.fused = acc.kernels.fused_statistics()
        #: Further device arrays of the accumulator's own (the unit-level replicate counts).
        self.extra: dict[str, Any] = {}

    def drain(self) -> dict[str, np.ndarray]:
        """The statistics as ``raw`` arrays on the host (on the GPU, one copy back of each
        buffer)."""
        return self.acc._drain(self)


class Statistics:
    """Mergeable sufficient statistics of one table role (``baseline`` or ``online``).

    ``raw[name]`` is ``(1 + V, R, *inner)`` over the ``R`` slices of the slice dimensions
    (without the whole population, which :meth:`grid` derives exactly by summing the first
    dimension: every row has exactly one code there).

    On the GPU the accumulate stage leaves its sums on the device (:class:`DeviceSums`);
    reading ``raw`` (and so every method here, pickling and saving) brings them back first,
    once: whoever reads the statistics sees all of them.
    """

    def __init__(
        self, layout_id: str, n_raw: int, whole_from: int, raw: dict[str, np.ndarray] | None = None, rows: int = 0
    ) -> None:
        self.layout_id = layout_id
        self.n_raw = n_raw
        self.whole_from = whole_from  # number of raw slices (from 0) that partition the population
        self._raw: dict[str, np.ndarray] = {} if raw is None else raw
        self.rows = rows
        self._pending: DeviceSums | None = None

    @property
    def raw(self) -> dict[str, np.ndarray]:
        """The arrays by grid name, complete (sums still on the device come back first)."""
        if self._pending is not None:
            self.sync()
        return self._raw

    @property
    def on_device(self) -> bool:
        """Whether some sums are still on the device (until ``raw`` is read or :meth:`sync`)."""
        return self._pending is not None

    def sync(self) -> "Statistics":
        """Add the sums still on the device into ``raw`` (one copy back); else nothing."""
        with _SYNC:
            pending, self._pending = self._pending, None
            if pending is not None:
                self._add_raw(pending.drain())
        return self

    def device_sums(self, acc: "Accumulator") -> DeviceSums:
        """Where ``acc`` adds batches on the device (made on first use; sums another
        accumulator left there come back first)."""
        if self._pending is not None and self._pending.acc is not acc:
            self.sync()
        if self._pending is None:
            self._pending = DeviceSums(acc)
        return self._pending

    def __repr__(self) -> str:
        where = ", partly on the device" if self._pending is not None else ""
        return (
            f"Statistics({self.layout_id!r}, n_raw={self.n_raw}, whole_from={self.whole_from}, "
            f"rows={self.rows}, grids={sorted(self._raw)}{where})"
        )

    def __getstate__(self) -> dict[str, Any]:
        self.sync()  # a pickled copy (a Dask result, a checkpoint) holds every sum
        return dict(self.__dict__)

    def copy(self) -> "Statistics":
        """An independent copy."""
        return Statistics(
            self.layout_id, self.n_raw, self.whole_from, {k: v.copy() for k, v in self.raw.items()}, self.rows
        )

    def merge(self, other: "Statistics") -> "Statistics":
        """Cell-wise sum (a commutative monoid: ``zero`` is the identity); a new object."""
        return self.copy().add_(other)

    def add_(self, other: "Statistics") -> "Statistics":
        """Add ``other`` into these statistics in place (the accumulate loop's merge)."""
        if other.layout_id != self.layout_id or set(other.raw) != set(self.raw):
            raise StatisticsError(
                "Statistics of different layouts cannot be merged "
                f"({self.layout_id} vs {other.layout_id})."
            )
        self._add_raw(other.raw)
        self.rows += other.rows
        return self

    def _add_raw(self, other: dict[str, np.ndarray]) -> None:
        """Add ``other``'s arrays (the same names) into ``raw``, checking for overflow."""
        for name, a in self._raw.items():
            np.add(a, other[name], out=a)
            # every summed quantity except 'value' is non-negative and below 2**63 on each
            # side, so a wrap-around shows as a negative cell
            if name.rsplit("/", 1)[-1] != "value" and a.min(initial=0) < 0:
                raise StatisticsError(f"Fixed-point overflow in the '{name}' statistics.")

    def __add__(self, other: "Statistics") -> "Statistics":
        return self.merge(other)

    def grid(self, name: str) -> np.ndarray:
        """``(1 + V, S, *inner)``: slice 0 is the whole population."""
        raw = self.raw[name]
        whole = raw[:, : self.whole_from].sum(axis=1, keepdims=True)
        if name != "value" and whole.min(initial=0) < 0:
            raise StatisticsError(f"Fixed-point overflow in the whole population's '{name}' statistics.")
        if self.n_raw == 1 and self.whole_from == 1:
            return whole  # no slice columns: the only slice is the population
        return np.concatenate([whole, raw], axis=1)

    def equal(self, other: "Statistics") -> bool:
        """Bit-identical statistics."""
        return (
            self.layout_id == other.layout_id
            and set(self.raw) == set(other.raw)
            and all(np.array_equal(self.raw[k], other.raw[k]) for k in self.raw)
        )

    def to_npz(self, path) -> None:
        """Save (lossless)."""
        np.savez_compressed(
            path,
            __meta__=np.array([self.layout_id, str(self.n_raw), str(self.whole_from), str(self.rows)]),
            **self.raw,
        )

    @classmethod
    def from_npz(cls, path) -> "Statistics":
        with np.load(path, allow_pickle=False) as f:
            layout_id, n_raw, whole_from, rows = f["__meta__"].tolist()
            raw = {k: f[k] for k in f.files if k != "__meta__"}
        return cls(layout_id, int(n_raw), int(whole_from), raw, int(rows))


class Accumulator:
    """zero / update(batch) / merge for one layout, one role, one backend.

    With the fused kernel (``kernels.fused_add``), :meth:`update` adds each batch into sums
    kept in the kernel's layout (device memory on the GPU, host arrays on the CPU) and turns
    them into ``raw`` arrays once, when the statistics are read (:meth:`Statistics.sync`):
    on the GPU one copy back, on the CPU one reshaping instead of one per batch (with time
    windows, gathering the windows' cells and summing the whole period). Elsewhere (the
    primitive kernels) each batch's statistics are added on the host. The integers are the
    same either way.

    Parameters
    ----------
    layout : Layout
    kernels : kernels._api.Kernels
    paired : bool
        Whether batches carry an ``offline_score`` column (online ⟕ offline).
    with_value : bool
        Whether batches carry a ``value`` column.
    windows : WindowSpec, optional
        Also accumulate the judged slices per time window (``win/<grid>`` statistics, with a
        window axis: :meth:`window_statistics` reads one window back).
    """

    def __init__(
        self,
        layout: Layout,
        kernels,
        *,
        paired: bool = False,
        with_value: bool = False,
        windows: "WindowSpec | None" = None,
        window_blocks: int = 0,
    ) -> None:
        self.layout = layout
        self.kernels = kernels
        self.paired = paired
        self.with_value = with_value
        self.windows = windows
        self.layout_id = layout.fingerprint() + ("" if windows is None else f"|{windows.key()}")
        self._dims = layout.stat_dims  # the judged dimensions, then the atoms
        # the fused kernels cross at most two columns in a dimension; a wider one (the atoms)
        # travels as one more, virtual, column whose index is the row's code in it
        self._virtual = [d for d in self._dims if len(d) > 2]
        # ``window_blocks``: the pass that accumulates every window at once; each dimension
        # is virtual, and the judged ones (the population alone without slices) are crossed
        # with the window: code ``window * size + code``. The atoms are not: they serve the
        # whole period's localisation only.
        self._window_blocks = window_blocks
        self._n_crossed = 0
        if window_blocks:
            self._dims = self._dims or [()]
            self._virtual = list(self._dims)
            self._n_crossed = max(1, len(layout.dims))
        sizes = [layout.dim_size(d) * (window_blocks if i < self._n_crossed else 1) for i, d in enumerate(self._dims)]
        self._n_raw = max(1, sum(sizes))
        self._whole_from = sizes[0] if sizes else 1
        self._dim_offsets = (
            np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes else np.zeros(1, np.int64)
        )
        self._fine_to_calib = layout.fine_to(layout.calib_edges)
        self._n_calib = len(layout.calib_edges) + 1
        self._n_fine = layout.n_fine
        self._thresholds = np.asarray(layout.thresholds, dtype=np.float64)
        self._feature_bins = max([f.n_bins for f in layout.features], default=1)
        # one unseen-value flag per slice column and per categorical feature, in the order
        # the kernels write them (a column both slice and feature has two, counting alike;
        # the compare stage reads one)
        self._categorical = (
            [c for c in layout.slice_columns]
            + [_virtual_name(d) for d in self._virtual]  # never unseen: a placeholder flag
            + [f.name for f in layout.features if f.kind == "categorical"]
        )
        self._dq_flags = DQ_FLAGS + tuple(
            f"pad:{c}" if c.startswith("\0") else f"unseen:{c}" for c in self._categorical
        )
        cells = self._n_raw * N_LABEL_STATES * self._n_fine
        # per window, the judged slices only (the atoms serve the whole period's localisation)
        self._per_window = self._window_pass = None
        if windows is not None:
            judged = dataclasses.replace(layout, atoms=())
            self._per_window = Accumulator(judged, kernels, paired=paired, with_value=with_value)
            inner = self._per_window
            crossed = inner._n_raw * windows.blocks + layout.n_atoms
            if crossed * N_LABEL_STATES * self._n_fine <= WINDOW_PASS_CELLS:
                # one kernel call per batch for every window and the whole period: the whole
                # period's judged cells are the sum of the windows' (exact integers)
                self._window_pass = Accumulator(
                    layout, kernels, paired=paired, with_value=with_value, window_blocks=windows.blocks
                )
                self._window_src, self._window_dq = self._window_pass._window_order(inner)
                self._pass_dq = [self._window_pass._dq_flags.index(f) for f in self._dq_flags]
        # the fused kernel's sums are kept in its layout across batches (on the device on
        # the GPU), except with windows accumulated window by window (rows regrouped on the
        # host per batch)
        self._resident = (
            bool(getattr(kernels, "fused", False))
            and hasattr(kernels, "fused_add")
            and (self._per_window is None or self._window_pass is not None)
        )
        if cells > MAX_GRID_CELLS:
            raise ConfigError(
                f"The layout has {layout.n_slices:,} slices x {self._n_fine:,} score bins = {cells:,} cells "
                f"per score grid, more than the {MAX_GRID_CELLS:,} parity keeps in memory. Lower 'top_k', "
                "drop a cross, or slice by fewer columns."
            )

    def _window_order(self, inner: "Accumulator") -> tuple[np.ndarray, list[int]]:
        """Where the window pass (``self``) puts each (window, slice) cell of ``inner``'s
        layout: ``src[w, s]``, the pass's slice of window ``w``'s slice ``s``; and the pass's
        data-quality flags of ``inner``'s (the pass has a placeholder per virtual column)."""
        blocks = self._window_blocks
        src = np.empty((blocks, inner._n_raw), np.int64)
        for d, dim in enumerate(self._dims[: self._n_crossed]):
            size = self.layout.dim_size(dim)
            start = int(inner._dim_offsets[d]) if inner._dims else 0
            for w in range(blocks):
                src[w, start : start + size] = self._dim_offsets[d] + w * size + np.arange(size)
        return src, [self._dq_flags.index(f) for f in inner._dq_flags]

    # ------------------------------------------------------------------ shapes
    def _shapes(self) -> dict[str, tuple[int, ...]]:
        L, T = N_LABEL_STATES, len(self._thresholds)
        shapes = {
            "score": (1, self._n_raw, L, self._n_fine),
            "calib": (5, self._n_raw, L, self._n_calib),
            "feature": (1, self._n_raw, max(1, len(self.layout.features)), self._feature_bins),
            "dq": (1, self._n_raw, len(self._dq_flags)),
        }
        if self.paired:
            shapes["offline"] = (1, self._n_raw, L, self._n_fine)
            shapes["calib_off"] = (5, self._n_raw, L, self._n_calib)
            shapes["joint"] = (1, self._n_raw, (T + 1) ** 2)
            shapes["delta"] = (3, self._n_raw, len(self.layout.delta_edges) + 1)
        if self.with_value:
            shapes["value"] = (3, self._n_raw, L)
        return shapes

    @property
    def dq_flags(self) -> tuple[str, ...]:
        return self._dq_flags

    def _all_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = self._shapes()
        if self._per_window is not None:
            for name, shape in self._per_window._shapes().items():
                shapes["win/" + name] = (shape[0], self.windows.blocks) + shape[1:]
        return shapes

    def window_statistics(self, stats: Statistics, w: int) -> Statistics:
        """The statistics of window ``w`` (judged slices; ``w == windows.count``: rows without
        a time), in the per-window layout (the layout without atoms)."""
        inner = self._per_window
        raw = {k[4:]: v[:, w] for k, v in stats.raw.items() if k.startswith("win/")}
        return Statistics(inner.layout_id, inner._n_raw, inner._whole_from, raw, int(raw["dq"][0, : inner._whole_from, 0].sum()))

    def zero(self) -> Statistics:
        """The identity of :meth:`Statistics.merge`."""
        raw = {k: np.zeros(s, dtype=np.int64) for k, s in self._all_shapes().items()}
        return Statistics(self.layout_id, self._n_raw, self._whole_from, raw, 0)

    # ------------------------------------------------------------------ one batch
    def slice_codes(self, batch: pa.RecordBatch, window: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(D, n)`` slice codes per dimension and the unseen-value mask per column
        (``window``: each row's window block, for the window pass)."""
        n = batch.num_rows
        per_col: dict[str, np.ndarray] = {}
        unseen: dict[str, np.ndarray] = {}
        for col in self.layout.slice_columns:
            per_col[col], unseen[col] = categorical_codes(batch.column(col), self.layout.slice_codes[col])
        rows = []
        for d, dim in enumerate(self._dims):
            code = np.zeros(n, dtype=np.int64)
            for col in dim:
                code = code * self.layout.slice_codes[col].size + per_col[col]
            if window is not None and d < self._n_crossed:
                code = window * self.layout.dim_size(dim) + code
            rows.append(code.astype(np.int32))
        if not rows:
            rows.append(np.zeros(n, dtype=np.int32))
        return np.stack(rows), unseen

    def update(self, stats: Statistics, batch: pa.RecordBatch | pa.Table) -> Statistics:
        """Add one batch to ``stats`` in place (and return it).

        On the GPU the batch's sums are added on the device and stay there
        (:meth:`Statistics.device_sums`) until ``stats`` is read.
        """
        if not self._resident:
            return stats.add_(self.batch_statistics(batch))
        if stats.layout_id != self.layout_id:
            raise StatisticsError(
                f"Statistics of another layout ({stats.layout_id}) cannot take this accumulator's batches ({self.layout_id})."
            )
        batch = _record_batch(batch)
        self._add_on_device(stats.device_sums(self), batch)
        stats.rows += batch.num_rows
        return stats

    def _add_on_device(self, sums: DeviceSums, batch: pa.RecordBatch) -> None:
        """Add the batch's statistics into ``sums`` on the device (through the window pass
        when there is one)."""
        if self._window_pass is not None:
            w = self.windows.index(batch.column(self.windows.column))
            self._window_pass._fused_add(sums, batch, w.astype(np.int64))
        else:
            self._fused_add(sums, batch)

    def _fused_add(self, sums: DeviceSums, batch: pa.RecordBatch, window: np.ndarray | None = None) -> None:
        self.kernels.fused_add(sums.fused, *self._fused_args(batch, window))

    def _drain(self, sums: DeviceSums) -> dict[str, np.ndarray]:
        """``sums`` brought back as ``raw`` arrays (what :meth:`batch_statistics` gives, for
        every batch added together: each step from the kernel's grids on is linear)."""
        if self._window_pass is not None:
            return self._window_raw(self._window_pass._fused_raw(sums.fused.download()))
        return self._fused_raw(sums.fused.download())

    def batch_statistics(self, batch: pa.RecordBatch | pa.Table, window: np.ndarray | None = None) -> Statistics:
        """The statistics of one batch (O(cells) memory); ``window``: each row's window
        block (the window pass only)."""
        batch = _record_batch(batch)
        if self._window_pass is not None:
            return self._from_window_pass(batch)
        if getattr(self.kernels, "fused", False):
            stats = self._batch_fused(batch, window)
        else:
            stats = self._batch_primitives(batch, window)
        if self._per_window is not None:
            self._add_windows(stats, batch)
        return stats

    def _from_window_pass(self, batch: pa.RecordBatch) -> Statistics:
        """The batch's statistics through the window pass alone: its windows' cells become
        the ``win/`` statistics, their sum over the windows the whole period's judged cells,
        and its atoms (not crossed) the whole period's."""
        spec, wp = self.windows, self._window_pass
        w = spec.index(batch.column(spec.column))
        sub = wp.batch_statistics(batch, window=w.astype(np.int64))
        return Statistics(self.layout_id, self._n_raw, self._whole_from, self._window_raw(sub.raw), sub.rows)

    def _window_raw(self, pass_raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The window pass's arrays as this accumulator's: the windows' cells, their sum
        over the windows (the whole period's judged cells) and the atoms (not crossed)."""
        wp = self._window_pass
        atoms = slice(wp._n_raw - self.layout.n_atoms, wp._n_raw)
        raw: dict[str, np.ndarray] = {}
        for name, arr in pass_raw.items():
            win = arr[:, self._window_src]  # (V, window, judged slice, ...)
            whole = np.concatenate([win.sum(axis=1), arr[:, atoms]], axis=1)
            raw[name] = whole[..., self._pass_dq] if name == "dq" else whole
            raw["win/" + name] = win[..., self._window_dq] if name == "dq" else win
        return raw

    def _add_windows(self, stats: Statistics, batch: pa.RecordBatch) -> None:
        """Accumulate the batch's rows per window into ``win/`` statistics, window by window
        (where the window pass's cells would not fit)."""
        spec, inner = self.windows, self._per_window
        w = spec.index(batch.column(spec.column))
        counts = np.bincount(w, minlength=spec.blocks)
        order = np.argsort(w, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)])
        for name, shape in inner._shapes().items():
            stats.raw["win/" + name] = np.zeros((shape[0], spec.blocks) + shape[1:], dtype=np.int64)
        for b in np.nonzero(counts)[0]:
            rows = order[starts[b] : starts[b + 1]]
            part = batch if rows.size == batch.num_rows else batch.take(pa.array(rows))
            sub = inner.batch_statistics(part)  # the inner accumulator has no windows
            for name, arr in sub.raw.items():
                stats.raw["win/" + name][:, b] = arr

    def _batch_primitives(self, batch: pa.RecordBatch, window: np.ndarray | None = None) -> Statistics:
        """Through the primitives (bin_index, histogram) and numpy: the slow reference path
        the fused kernels of both backends are tested against (``CpuKernels(fused=False)``)."""
        k = self.kernels
        n = batch.num_rows
        shapes = self._shapes()
        out: dict[str, np.ndarray] = {}
        outer, unseen = self.slice_codes(batch, window)
        offs = self._dim_offsets

        def hist(name: str, inner: np.ndarray, weights: np.ndarray | None = None, inner_size: int | None = None) -> None:
            # one inner row: the code spans all inner axes; several rows: one axis each
            shape = shapes[name]
            if inner_size is None:
                inner_size = int(np.prod(shape[2:])) if inner.shape[0] == 1 else int(shape[-1])
            n_cells = int(np.prod(shape[1:]))
            counts = k.histogram(outer, offs, inner, inner_size, n_cells, weights)
            out[name] = np.asarray(counts).reshape(shape)

        # ---- scores and labels
        score = _to_float(batch.column(SCORE)).astype(np.float64)
        valid_score = (score >= 0.0) & (score <= 1.0)  # NaN compares False
        invalid_score = ~valid_score
        fine = np.asarray(k.bin_index(np.where(valid_score, score, np.nan), self.layout.score_edges))
        label_state, has_label, invalid_label = self._labels(batch, n)
        score_inner = np.where(valid_score, label_state * self._n_fine + fine, -1).astype(np.int32)
        hist("score", score_inner[None, :])
        calib = self._fine_to_calib[np.maximum(fine, 0)]
        calib_inner = np.where(valid_score, label_state * self._n_calib + calib, -1).astype(np.int32)
        hist("calib", calib_inner[None, :], self._calib_weights(score, valid_score, label_state))

        # ---- paired: offline replay of the same request
        if self.paired:
            off = _offline_scores(batch).astype(np.float64)
            present = ~np.isnan(off)
            valid_off = (off >= 0.0) & (off <= 1.0)
            invalid_off = present & ~valid_off
            fine_off = np.asarray(k.bin_index(np.where(valid_off, off, np.nan), self.layout.score_edges))
            hist("offline", np.where(valid_off, label_state * self._n_fine + fine_off, -1).astype(np.int32)[None, :])
            calib_off = self._fine_to_calib[np.maximum(fine_off, 0)]
            hist(
                "calib_off",
                np.where(valid_off, label_state * self._n_calib + calib_off, -1).astype(np.int32)[None, :],
                self._calib_weights(off, valid_off, label_state),
            )
            both = valid_score & valid_off
            T = len(self._thresholds)
            t_on = np.searchsorted(self._thresholds, score, side="right")
            t_off = np.searchsorted(self._thresholds, off, side="right")
            hist("joint", np.where(both, t_on * (T + 1) + t_off, -1).astype(np.int32)[None, :])
            delta = np.abs(score - off)
            dbin = np.asarray(k.bin_index(np.where(both, delta, np.nan), self.layout.delta_edges))
            dw = np.stack([to_fixed(np.where(both, delta, 0.0), P_BITS), to_fixed(np.where(both, delta * delta, 0.0), P_BITS)])
            hist("delta", np.where(both, dbin, -1).astype(np.int32)[None, :], dw)
        else:
            valid_off = np.zeros(n, dtype=bool)
            invalid_off = np.zeros(n, dtype=bool)

        # ---- features
        if self.layout.features:
            feat_inner = np.empty((len(self.layout.features), n), dtype=np.int32)
            for j, f in enumerate(self.layout.features):
                if f.kind == "numeric":
                    values = _to_float(batch.column(f.name))
                    b = np.asarray(k.bin_index(values, f.edges))
                    feat_inner[j] = np.where(b < 0, f.n_bins - 1, b)
                else:
                    feat_inner[j], unseen[f.name] = categorical_codes(batch.column(f.name), f.categories)
            hist("feature", feat_inner)
        else:
            out["feature"] = np.zeros(shapes["feature"], dtype=np.int64)

        if self.with_value:
            out["value"] = self._value_grid(batch, outer, label_state)

        # ---- data quality flags (a row may raise several)
        key_null = _key_null(batch)
        any_unseen = np.zeros(n, dtype=bool)
        for m in unseen.values():
            any_unseen |= m
        flags = [
            np.ones(n, dtype=bool),
            valid_score,
            invalid_score,
            valid_off,
            invalid_off,
            has_label,
            invalid_label,
            key_null,
            any_unseen,
        ] + [unseen.get(c, np.zeros(n, dtype=bool)) for c in self._categorical]
        dq_inner = np.stack([np.where(f, 0, -1) for f in flags]).astype(np.int32)
        hist("dq", dq_inner, inner_size=1)  # flag q of a row lands in cell (slice, q)
        return Statistics(self.layout_id, self._n_raw, self._whole_from, out, n)

    def _checked_value(self, batch: pa.RecordBatch) -> np.ndarray:
        """The value column as float64 (NaN: none), refused if its sums could overflow."""
        value = _to_float(batch.column(VALUE)).astype(np.float64, copy=False)
        vmax = float(max_abs(value))
        n = max(batch.num_rows, 1)
        if vmax * 2**VALUE_BITS * n >= 2**62 or vmax * vmax * 2**VALUE2_BITS * n >= 2**62:
            raise StatisticsError(f"The 'value' column holds {vmax:g}, too large for exact sums.")
        return value

    def _value_grid(self, batch: pa.RecordBatch, outer: np.ndarray, label_state: np.ndarray) -> np.ndarray:
        """Value (revenue) count and sums per (slice, label state), through the primitives."""
        value = self._checked_value(batch)
        ok = ~np.isnan(value)
        weights = np.stack(
            [to_fixed(np.where(ok, value, 0.0), VALUE_BITS), to_fixed(np.where(ok, value * value, 0.0), VALUE2_BITS)]
        )
        inner = np.where(ok, label_state, -1).astype(np.int32)[None, :]
        shape = self._shapes()["value"]
        counts = self.kernels.histogram(outer, self._dim_offsets, inner, N_LABEL_STATES, int(np.prod(shape[1:])), weights)
        return np.asarray(counts).reshape(shape)

    def _batch_fused(self, batch: pa.RecordBatch, window: np.ndarray | None = None) -> Statistics:
        """One pass over the rows: ``kernels.cpu_fused`` on the CPU, the backend's
        ``fused_accumulate`` (one CUDA kernel, ``kernels.cuda._fused``) on the GPU."""
        # one accumulation interface: the CPU's kernel or the backend's own (CUDA), same
        # arguments, same grids bit for bit
        accumulate = getattr(self.kernels, "fused_accumulate", fused_accumulate)
        grids = accumulate(*self._fused_args(batch, window))
        return Statistics(self.layout_id, self._n_raw, self._whole_from, self._fused_raw(grids), batch.num_rows)

    def _fused_args(self, batch: pa.RecordBatch, window: np.ndarray | None = None) -> list:
        """The arguments of ``kernels.cpu_fused.fused_accumulate`` for one batch."""
        layout, n = self.layout, batch.num_rows
        cols = layout.slice_columns
        parts = [dictionary_parts(batch.column(c), layout.slice_codes[c]) for c in cols]
        virtual_index = self._virtual_index(parts, window, n)
        for i, dim in enumerate(self._virtual):
            size = layout.dim_size(dim)
            if window is not None and i < self._n_crossed:  # the window pass: _virtual is _dims
                size *= self._window_blocks
            parts.append((virtual_index[i], np.arange(size, dtype=np.int32), np.zeros(size, bool)))
        cols = tuple(cols) + tuple(_virtual_name(d) for d in self._virtual)
        dmax = max([max(len(p[1]), 1) for p in parts], default=1)
        col_index = stack_columns([p[0] for p in parts], np.int32, slot="slices")
        col_lut = np.zeros((len(parts), dmax), np.int32)
        col_unseen = np.zeros((len(parts), dmax), bool)
        for a, (_, lut, unseen) in enumerate(parts):
            col_lut[a, : len(lut)] = lut
            col_unseen[a, : len(unseen)] = unseen
        col_null = np.array(
            [layout.slice_codes[c].size - 1 if c in layout.slice_codes else 0 for c in cols], dtype=np.int32
        )
        if self._dims:
            # a virtual dimension reads its own column, by position (in the window pass an
            # atoms dimension may have the columns, and so the name, of a judged cross)
            n_real, virtual = len(layout.slice_columns), iter(range(len(self._virtual)))
            dims = [(n_real + next(virtual),) if d in self._virtual else tuple(cols.index(c) for c in d) for d in self._dims]
            dim_a = np.array([d[0] for d in dims], np.int32)
            dim_b = np.array([d[1] if len(d) > 1 else -1 for d in dims], np.int32)
            dim_b_size = np.array([layout.slice_codes[cols[d[1]]].size if len(d) > 1 else 1 for d in dims], np.int64)
        else:  # no slice columns: one dimension whose only code is the population
            col_index = np.zeros((1, n), np.int32)
            col_lut = np.zeros((1, 1), np.int32)
            col_unseen = np.zeros((1, 1), bool)
            col_null = np.zeros(1, np.int32)
            dim_a, dim_b, dim_b_size = np.zeros(1, np.int32), np.full(1, -1, np.int32), np.ones(1, np.int64)
        score = _float_column(batch.column(SCORE))
        offline = _offline_scores(batch) if self.paired else score
        label = _to_float(batch.column(LABEL)).astype(np.float64, copy=False) if LABEL in batch.schema.names else np.full(n, np.nan)
        key_null = _key_null(batch)
        numeric = [(j, f) for j, f in enumerate(layout.features) if f.kind == "numeric"]
        categorical = [(j, f) for j, f in enumerate(layout.features) if f.kind == "categorical"]
        num_values = stack_columns([_float_column(batch.column(f.name)) for _, f in numeric], slot="features")
        cat = [categorical_codes(batch.column(f.name), f.categories) for _, f in categorical]
        cat_codes = np.stack([c[0] for c in cat]) if cat else np.zeros((0, n), np.int32)
        cat_unseen = np.stack([c[1] for c in cat]) if cat else np.zeros((0, n), bool)
        score_index = self.kernels.edge_index(layout.score_edges)
        delta_index = self.kernels.edge_index(layout.delta_edges)
        # threads: one per core, each with private grids, within THREAD_GRID_BYTES in all
        per_thread = 2 * self._n_raw * N_LABEL_STATES * self._n_fine * 4
        n_threads = max(1, min(numba.get_num_threads(), -(-n // 65536), THREAD_GRID_BYTES // per_thread))
        value = self._checked_value(batch) if self.with_value else np.zeros(1)
        return _canonical(
            n_threads,
            col_index, col_lut, col_unseen, col_null, dim_a, dim_b, dim_b_size, self._dim_offsets, self._n_raw,
            score, offline, self.paired, label, key_null,
            score_index.padded, len(score_index.edges), score_index.kmin, score_index.shift,
            score_index.lut, score_index.steps,
            self._fine_to_calib.astype(np.int64), self._n_calib, self._thresholds,
            delta_index.padded, len(delta_index.edges), delta_index.kmin, delta_index.shift,
            delta_index.lut, delta_index.steps,
            num_values, *self._numeric_luts(numeric),
            np.array([j for j, _ in numeric], np.int64),
            cat_codes, cat_unseen, np.array([j for j, _ in categorical], np.int64),
            max(1, len(layout.features)), self._feature_bins, len(self._dq_flags),
            float(2**P_BITS), float(2**LL_BITS), float(2**LL2_BITS), LOG_EPS,
            value, self.with_value, float(2**VALUE_BITS), float(2**VALUE2_BITS),
        )

    def _virtual_index(self, parts: list[tuple], window: np.ndarray | None, n: int) -> np.ndarray:
        """``(V, n)`` int32: each row's code in the virtual dimensions (those of more than two
        columns; in the window pass every dimension, the judged ones crossed with the
        row's window), from the slice columns' dictionary ``parts``."""
        layout, cols = self.layout, self.layout.slice_columns
        out = np.empty((len(self._virtual), n), np.int32)
        if not self._virtual:
            return out
        lut = np.zeros((max(len(cols), 1), max([len(p[1]) for p in parts], default=0) + 1), np.int32)
        for a, (_, table, _) in enumerate(parts):
            lut[a, : len(table)] = table
        index = stack_columns([p[0] for p in parts], np.int32, slot="slice-index") if parts else np.zeros((1, n), np.int32)
        size = np.array([layout.slice_codes[c].size for c in cols] or [1], np.int64)
        dim_cols = np.full((len(self._virtual), max([len(d) for d in self._virtual] + [1])), -1, np.int64)
        window_size = np.zeros(len(self._virtual), np.int64)
        for v, dim in enumerate(self._virtual):
            dim_cols[v, : len(dim)] = [cols.index(c) for c in dim]
            if window is not None and v < self._n_crossed:
                window_size[v] = layout.dim_size(dim)
        window = window if window is not None else np.zeros(0, np.int64)
        virtual_codes(index, lut, size - 1, size, dim_cols, window, window_size, out)
        return out

    def _fused_raw(self, grids: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
        """The nine grids of the fused kernel as ``raw`` arrays (linear in the grids)."""
        score_h, calib_h, off_h, calib_off_h, joint_h, delta_h, feat_h, dq_h, value_h = grids
        # calibration counts: the fine counts summed into calibration bins (calib edges are
        # a subset of the fine ones), as the kernel leaves them out
        calib_h[0] = aggregate_bins(score_h, self._fine_to_calib, self._n_calib)
        out = {"score": score_h[None], "calib": calib_h, "feature": feat_h[None], "dq": dq_h[None]}
        if self.paired:
            calib_off_h[0] = aggregate_bins(off_h, self._fine_to_calib, self._n_calib)
            out.update(offline=off_h[None], calib_off=calib_off_h, joint=joint_h[None], delta=delta_h)
        if self.with_value:
            out["value"] = value_h
        return out

    def _numeric_luts(self, numeric) -> tuple[np.ndarray, ...]:
        """Padded edges and value lookup tables of the numeric features (built once)."""
        if getattr(self, "_luts", None) is None:
            tables = [uniform_lut(f.edges) for _, f in numeric]
            steps = np.array([t[3] for t in tables], np.int64)
            width = max([len(f.edges) for _, f in numeric], default=0) + int(steps.max(initial=0)) + 1
            edges = np.full((len(numeric), width), np.inf)  # +inf pads: the steps stop there
            for r, (_, f) in enumerate(numeric):
                edges[r, : len(f.edges)] = f.edges
            lut = np.zeros((len(tables), max([len(t[0]) for t in tables], default=1)), np.int32)
            for j, table in enumerate(tables):
                lut[j, : len(table[0])] = table[0]
            self._luts = (
                edges,
                np.array([len(f.edges) for _, f in numeric], np.int64),
                lut,
                np.array([t[1] for t in tables], np.float64),
                np.array([t[2] for t in tables], np.float64),
                steps,
            )
        return self._luts

    def _labels(self, batch: pa.RecordBatch, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if LABEL not in batch.schema.names:
            return np.full(n, LABEL_MISSING, np.int64), np.zeros(n, bool), np.zeros(n, bool)
        y = _to_float(batch.column(LABEL)).astype(np.float64)
        present = ~np.isnan(y)
        pos, neg = y == 1.0, y == 0.0
        state = np.where(pos, 1, np.where(neg, 0, LABEL_MISSING)).astype(np.int64)
        return state, pos | neg, present & ~(pos | neg)

    @staticmethod
    def _calib_weights(p: np.ndarray, valid: np.ndarray, label_state: np.ndarray) -> np.ndarray:
        p = np.where(valid, p, 0.0)
        ll = np.where(valid, log_loss_terms(p, label_state, LOG_EPS), 0.0)
        return np.stack([
            to_fixed(p, P_BITS),
            to_fixed(p * p, P_BITS),
            to_fixed(ll, LL_BITS),
            to_fixed(ll * ll, LL2_BITS),
        ])

    def accumulate(self, batches: Iterable[pa.RecordBatch]) -> Statistics:
        """Fold an iterable of batches into statistics."""
        stats = self.zero()
        for batch in batches:
            if batch.num_rows:
                stats = self.update(stats, batch)
        return stats.sync()  # on the GPU: the one copy back
