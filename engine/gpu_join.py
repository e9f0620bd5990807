"""The join on the GPU without cuDF: a sort-based join of the key columns (sort,
searchsorted, gather) on the device with CuPy, and the DuckDB path's accounting.

:class:`SortJoinedStream` is a :class:`engine.join.JoinedStream` (same constructor, schema,
batches and :class:`~engine.join.JoinReport`) whose rows are matched on the device:

1. The key columns of the three tables are turned into int64 codes that compare as the keys
   do: integer keys as they are; other keys (strings, timestamps) and composite keys
   through one dictionary shared by the three tables (on the host, with Arrow), the codes
   of several columns combined by mixed radix.
2. Offline: the rows with a non-null key, sorted by (key, score: nulls last, NaN greatest,
   as DuckDB orders them); the first of each key is kept, which is the smallest score, as
   ``min(score)`` in ``engine.join``. Outcomes the same way, by (key, latest ``outcome_ts``,
   largest label, largest value; nulls last).
3. Each online row finds its key in the deduplicated keys by ``searchsorted``; the matched
   score, label and value are gathered.

The counts (rows, duplicates beyond the first per key, null keys, matches, offline rows
without an online row) are those of ``engine.join``, so the data-quality section of a run
is the same whichever join made it. What the device join does not do it hands back to the
DuckDB path, before reading a row, and says why (:attr:`SortJoinedStream.fallback`): no
table to join, a side joined in place, or duplicated online keys (their tie-break is a total
order over every carried column, which DuckDB implements). Tables are read whole: this is
the join of one partition (``--checkpoint`` and Dask runs cut the tables by key bucket).

With ``xp=numpy`` the same code runs on the CPU; that is how CI tests it against DuckDB.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from engine.join import JoinedStream, JoinReport, _unique
from engine.metrics import array_module, to_host

#: ``JoinReport.offline_join`` / ``outcome_join`` of a device join.
DEVICE_SORT = "device_sort"


def _read(src: Any, columns: list[str], batch_size: int) -> pa.Table:
    """The whole table (these columns) in memory."""
    batches = list(src.batches(columns, batch_size))
    if not batches:
        return pa.schema([src.schema.field(c) for c in columns]).empty_table()
    return pa.Table.from_batches(batches)


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    col = table.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col


def key_codes(tables: list[pa.Table], keys: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per table, int64 codes of its key (equal codes: equal keys) and its null-key mask.

    Integer key columns are their own codes. Other types, and each column of a composite
    key, are coded through one dictionary over the three tables; composite codes are the
    columns' codes in mixed radix (refused past 2**62 combinations).
    """
    n = [t.num_rows for t in tables]
    nulls = [np.zeros(k, bool) for k in n]
    if len(keys) == 1 and all(pa.types.is_integer(_column(t, keys[0]).type) for t in tables):
        codes = []
        for i, t in enumerate(tables):
            col = _column(t, keys[0])
            nulls[i] |= col.is_null().to_numpy(zero_copy_only=False)
            codes.append(col.cast(pa.int64()).fill_null(0).to_numpy())
        return codes, nulls
    codes = [np.zeros(k, np.int64) for k in n]
    radix = 1
    for k in keys:
        cols = [_column(t, k) for t in tables]
        common = cols[0].type
        cols = [c.cast(common) for c in cols]  # same family: engine.join checked it
        joint = pa.chunked_array([chunk for c in cols for chunk in c.chunks], type=common).combine_chunks()
        enc = joint.dictionary_encode()
        size = len(enc.dictionary) + 1
        radix *= size
        if radix >= 1 << 62:
            raise OverflowError("the composite key has too many combinations for int64 codes")
        idx = enc.indices.to_numpy(zero_copy_only=False)
        start = 0
        for i, c in enumerate(cols):
            part = idx[start: start + n[i]]
            null = np.isnan(part) if part.dtype.kind == "f" else np.zeros(n[i], bool)
            null |= c.is_null().to_numpy(zero_copy_only=False)
            nulls[i] |= null
            codes[i] = codes[i] * size + np.where(null, 0, np.nan_to_num(part)).astype(np.int64)
            start += n[i]
    return codes, nulls


def _float_parts(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """float64 values (0 where null) and the null mask of a numeric or bool column."""
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type) or pa.types.is_duration(col.type):
        col = col.cast(pa.int64())
    null = col.is_null().to_numpy(zero_copy_only=False)
    values = col.cast(pa.float64()).fill_null(0.0).to_numpy()
    return values, null


def _stable_argsort(xp: Any, a: Any) -> Any:
    """A stable argsort (CuPy's always is, and takes no ``kind``); bools as int8."""
    if a.dtype == bool:
        a = a.astype(xp.int8)
    return xp.argsort(a, kind="stable") if xp is np else xp.argsort(a)


def _first_per_key(xp: Any, keys: Any, order_keys: list[Any], *, full: bool = False) -> tuple:
    """Positions of the first row of each key when rows are sorted by (key, *order_keys).

    Returns the sorted unique keys, the row index of each key's first row, and the number of
    rows beyond the first per key (and, with ``full``, the whole sorted order and its
    first-of-key flags).
    """
    # least significant key first, each a stable sort of the order so far (radix style):
    # no stacking of keys of different types (CuPy's lexsort wants one 2-d array, whose
    # common type would be float64, which cannot hold every int64 key)
    order = xp.arange(keys.shape[0])
    for k in list(reversed(order_keys)) + [keys]:
        order = order[_stable_argsort(xp, k[order])]
    ks = keys[order]
    first = xp.ones(ks.shape[0], dtype=bool)
    if ks.shape[0] > 1:
        first[1:] = ks[1:] != ks[:-1]
    uniq = ks[first]
    if full:
        return uniq, order[first], int(ks.shape[0] - uniq.shape[0]), order, first
    return uniq, order[first], int(ks.shape[0] - uniq.shape[0])


def _conflicts(xp: Any, order: Any, first: Any, label: Any, label_null: Any, ts: tuple | None) -> Any:
    """Per key (in sorted-key order): whether its rows disagree on the label, as the DuckDB
    join decides it (two different non-null labels among the rows of its latest outcome
    time, or among all its rows without one)."""
    gid = xp.cumsum(first) - 1
    lab, null = label[order], label_null[order]
    head = order[first]
    latest = xp.ones(order.shape[0], dtype=bool)
    if ts is not None:
        tv, tn = xp.asarray(ts[0])[order], xp.asarray(ts[1])[order]
        hv, hn = tv[first][gid], tn[first][gid]
        latest = (tn & hn) | (~tn & ~hn & (tv == hv))
    # rows are sorted by label, largest first, nulls last: the key's first row holds the max
    head_label, head_null = label[head][gid], label_null[head][gid]
    differs = latest & ~null & ~head_null & (lab != head_label)
    n_keys = int(first.sum())
    return xp.bincount(gid, weights=differs.astype(xp.float64), minlength=n_keys) > 0


def _sort_keys(xp: Any, values: np.ndarray, null: np.ndarray, descending: bool) -> list[Any]:
    """Sort keys that order one column as DuckDB does: nulls last, NaN greater than every
    number; ascending or descending."""
    nan = np.isnan(values) & ~null
    v = np.where(nan | null, 0.0, values)
    if descending:
        return [xp.asarray(null), xp.asarray(~nan & ~null), xp.asarray(-v)]
    return [xp.asarray(null), xp.asarray(nan), xp.asarray(v)]


def _lookup(xp: Any, uniq: Any, on_keys: Any, on_null: Any) -> tuple[Any, Any]:
    """For each online key: the position of the equal key in ``uniq`` and whether one is."""
    if uniq.shape[0] == 0:
        return xp.zeros(on_keys.shape[0], dtype=xp.int64), xp.zeros(on_keys.shape[0], dtype=bool)
    pos = xp.minimum(xp.searchsorted(uniq, on_keys), uniq.shape[0] - 1)
    return pos, (uniq[pos] == on_keys) & ~on_null


class SortJoinedStream(JoinedStream):
    """``engine.join.JoinedStream`` with the rows matched by a sort-based join on the device.

    Parameters
    ----------
    *args, **kwargs
        Those of :class:`engine.join.JoinedStream`.
    xp : module, optional
        The array module: CuPy on a GPU (the default when it works), numpy to run the same
        logic on the host (tests).

    Attributes
    ----------
    fallback : str or None
        Why the DuckDB path joined instead (None: the device join did), set once iterated.
    """

    def __init__(self, *args: Any, xp: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.xp = array_module() if xp is None else xp
        self.fallback: str | None = None

    def _unsupported(self) -> str | None:
        if self.offline is None and self.outcomes is None:
            return "no table is joined"
        if self.offline_mode == "in_place" or self.outcome_mode == "in_place":
            return "a side is joined in place"
        return None

    def _run(self) -> Iterator[pa.RecordBatch]:
        self.fallback = self._unsupported()
        if self.fallback is None:
            prepared = self._prepare()
            if isinstance(prepared, str):
                self.fallback = prepared
            else:
                yield from self._emit(*prepared)
                return
        yield from super()._run()

    def _prepare(self) -> str | tuple[pa.Table, dict[str, Any]]:
        """Read the tables, dedupe and match on the device; a reason to fall back, or the
        online table and the matched columns."""
        xp, spec, keys = self.xp, self.spec, self.keys
        online = _read(self.online, self.online_read, self.batch_size)
        tables = [online]
        off = oc = None
        if self.offline is not None:
            off = _read(self.offline, _unique(keys + [spec.offline_score]), self.batch_size)
            tables.append(off)
        if self.outcomes is not None:
            cols = keys + [spec.label] + ([spec.value] if spec.value is not None else [])
            cols += [spec.outcome_ts] if spec.outcome_ts is not None else []
            oc = _read(self.outcomes, _unique(cols), self.batch_size)
            tables.append(oc)
        try:
            codes, nulls = key_codes(tables, keys)
        except OverflowError as exc:
            return str(exc)
        on_keys, on_null = xp.asarray(codes[0]), xp.asarray(nulls[0])
        _, _, dup_on = _first_per_key(xp, on_keys[~on_null], [])
        if dup_on:
            return f"{dup_on} duplicated online keys (their tie-break is DuckDB's)"

        report = JoinReport(online_rows=online.num_rows, null_keys=int(nulls[0].sum()))
        report.offline_join = DEVICE_SORT if off is not None else "none"
        report.outcome_join = DEVICE_SORT if oc is not None else "none"
        matched: dict[str, Any] = {}
        i = 1
        if off is not None:
            report.offline_rows = off.num_rows
            valid = ~nulls[i]
            score, score_null = _float_parts(_column(off, spec.offline_score))
            uniq, rows, report.duplicate_keys["offline"] = _first_per_key(
                xp, xp.asarray(codes[i][valid]), _sort_keys(xp, score[valid], score_null[valid], descending=False)
            )
            pos, hit = _lookup(xp, uniq, on_keys, on_null)
            src = xp.asarray(np.flatnonzero(valid))[rows][pos]  # the offline row of each online row
            matched["offline"] = (hit, xp.asarray(score)[src], xp.asarray(score_null)[src] | ~hit)
            i += 1
        if oc is not None:
            report.outcome_rows = oc.num_rows
            valid = ~nulls[i]
            label, label_null = _float_parts(_column(oc, spec.label))
            order: list[Any] = []
            ts = None
            if spec.outcome_ts is not None:
                ts = tuple(p[valid] for p in _float_parts(_column(oc, spec.outcome_ts)))
                order += _sort_keys(xp, *ts, descending=True)
            order += _sort_keys(xp, label[valid], label_null[valid], descending=True)
            value = value_null = None
            if spec.value is not None:
                value, value_null = _float_parts(_column(oc, spec.value))
                order += _sort_keys(xp, value[valid], value_null[valid], descending=True)
            uniq, rows, report.duplicate_keys["outcomes"], full, first = _first_per_key(
                xp, xp.asarray(codes[i][valid]), order, full=True
            )
            conflict = _conflicts(xp, full, first, xp.asarray(label[valid]), xp.asarray(label_null[valid]), ts)
            report.conflicting_labels = int(conflict.sum())
            pos, hit = _lookup(xp, uniq, on_keys, on_null)
            src = xp.asarray(np.flatnonzero(valid))[rows][pos]
            # a key whose rows disagree on the label is not resolved: its label is missing
            missing = xp.asarray(label_null)[src] | ~hit | (conflict[pos] & hit)
            matched["label"] = (hit, xp.asarray(label)[src], missing)
            if value is not None:
                matched["value"] = (hit, xp.asarray(value)[src], xp.asarray(value_null)[src] | ~hit)
        self.report = report
        host = {k: tuple(to_host(a) for a in v) for k, v in matched.items()}
        return online, host

    def _emit(self, online: pa.Table, matched: dict[str, tuple[np.ndarray, ...]]) -> Iterator[pa.RecordBatch]:
        spec, report, n = self.spec, self.report, online.num_rows

        def column(name: str) -> tuple[pa.Array, np.ndarray]:
            if name not in matched:
                return pa.nulls(n, pa.float64()), np.zeros(n, bool)
            hit, values, null = matched[name]
            return pa.array(values, type=pa.float64(), mask=null), hit

        off_score, has_off = column("offline")
        label, has_oc = column("label")
        out: dict[str, Any] = {c: online.column(c) for c in self.carried}
        out["score"] = online.column(spec.online_score).cast(pa.float64())
        out["offline_score"] = off_score
        out["label"] = label
        if spec.value is not None:
            out["value"] = (
                online.column(spec.value).cast(pa.float64()) if self.value_online else column("value")[0]
            )
        out["__has_offline"] = pa.array(has_off)
        out["__has_outcome"] = pa.array(has_oc)
        table = pa.table(out, schema=self.schema) if n else self.schema.empty_table()
        yield from self._counted(iter(table.to_batches(max_chunksize=self.batch_size)), report)


def device_join(online, offline=None, outcomes=None, spec=None, **options: Any) -> SortJoinedStream:
    """``engine.join.join`` with the rows matched on the device (see the module)."""
    return SortJoinedStream(online, offline, outcomes, spec, **options)
