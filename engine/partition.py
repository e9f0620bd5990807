"""Partitioned execution: cut one check into independent, pure pieces of work.

A check over billions of rows, on a Dask cluster or as a long single-process job that must
survive being killed, is cut the way a Grace hash join is:

1. **split**: each *fragment* of each input (a file, or a slice of an in-memory table, or a
   Dask partition) is read once, with only the columns the check needs, and cut into
   ``n_buckets`` pieces by a hash of the join key (:func:`bucket_of`). A key lands in the
   same bucket in every table, whatever its Arrow type there (integers, floats, strings,
   timestamps: see :func:`bucket_of`).
2. **join and accumulate** each bucket: the pieces of the bucket are joined with the very
   join of a single-process run (:mod:`engine.join`, DuckDB) and accumulated
   (:class:`engine.stats.Accumulator`). Every row of a key is in one bucket, so the duplicate
   rule and the join accounting are exactly the single-process ones.
3. **merge**: statistics and join counts add up (:meth:`Partial.add_`), in any order.

So the result equals the single-process result exactly, for any number of buckets, workers
or fragments. Each step is a pure function of its inputs: a task that is lost (a killed
worker) is simply run again, and a bucket's result can be stored and reused (a checkpoint).

Dask's own ``merge`` is not used for step 2 because it multiplies the rows of a duplicated
key and knows nothing of the duplicate rule; the bucket split is the same hash partitioning
``merge`` does before joining partition by partition.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from engine import _cache
from engine.encode import Layout
from engine.errors import ConfigError, SchemaError
from engine.io import TableSource, open_table
from engine.join import JoinReport, JoinSpec, JoinedStream
from engine.stats import KEY_NULL, Accumulator, Statistics, WindowSpec
from kernels import get_kernels

_cache.announce_compiles()

__all__ = [
    "BucketJob",
    "Fragment",
    "Partial",
    "accumulate_joined",
    "bucket_of",
    "fragments",
    "join_bucket",
    "merge_partials",
    "split_table",
]

SIDES = ("online", "offline", "outcomes")

#: Rows per fragment when an in-memory table is cut into fragments.
MEMORY_FRAGMENT_ROWS = 1 << 22


# ------------------------------------------------------------------------------ the unit


def with_key_null(batch: pa.RecordBatch, keys: Sequence[str]) -> pa.RecordBatch:
    """``batch`` plus the ``__key_null`` column the accumulator counts null keys from."""
    null = None
    for k in keys:
        m = pc.is_null(batch.column(k))
        null = m if null is None else pc.or_(null, m)
    if null is None:
        null = pa.array(np.zeros(batch.num_rows, dtype=bool))
    return pa.RecordBatch.from_arrays(
        list(batch.columns) + [null], names=list(batch.schema.names) + [KEY_NULL]
    )


def accumulate_joined(
    stream: JoinedStream,
    acc: Accumulator,
    progress: Callable[[int], None] | None = None,
) -> Statistics:
    """Run a join and accumulate every joined batch.

    Parameters
    ----------
    stream : JoinedStream
    acc : Accumulator
    progress : callable, optional
        Called with the number of rows of each accumulated batch.

    Returns
    -------
    Statistics
        ``stream.report`` is complete afterwards.
    """
    stats = acc.zero()
    for batch in stream:
        if not batch.num_rows:
            continue
        acc.update(stats, with_key_null(batch, stream.spec.keys))
        if progress is not None:
            progress(batch.num_rows)
    return stats.sync()  # on the GPU, the statistics' one copy back


@dataclass
class Partial:
    """What one bucket (or a merge of buckets) contributes: statistics and join counts."""

    stats: Statistics
    report: JoinReport

    def add_(self, other: "Partial") -> "Partial":
        """Add ``other`` into this partial in place (exact, commutative, associative)."""
        self.stats.add_(other.stats)
        a, b = self.report, other.report
        for name in (
            "online_rows", "offline_rows", "outcome_rows", "matched_offline",
            "matched_outcomes", "offline_without_online", "null_keys", "conflicting_labels",
        ):
            setattr(a, name, getattr(a, name) + getattr(b, name))
        for side, n in b.duplicate_keys.items():
            a.duplicate_keys[side] = a.duplicate_keys.get(side, 0) + n
        # an aligned bucket and a hashed one make a hashed whole
        a.offline_join = a.offline_join if a.offline_join == b.offline_join else "hash"
        a.outcome_join = a.outcome_join if a.outcome_join == b.outcome_join else "hash"
        a.complete = a.complete and b.complete
        return self


def merge_partials(partials: Iterable[Partial]) -> Partial:
    """The sum of several partials (a new object; the inputs are not modified)."""
    it = iter(partials)
    first = next(it)
    total = Partial(first.stats.copy(), replace(first.report, duplicate_keys=dict(first.report.duplicate_keys)))
    for p in it:
        total.add_(p)
    return total


@dataclass(frozen=True)
class BucketJob:
    """Everything the work on one bucket needs, picklable (it travels to Dask workers).

    Attributes
    ----------
    layout : Layout
        The baseline's layout (with the ``model_version`` slice when the run adds one).
    spec : JoinSpec
    backend : str
        ``"auto" | "cpu" | "gpu"``: resolved on the worker, so GPU workers use their GPU.
    paired, with_value : bool
        Whether the accumulator holds the replay's grids / the value sums.
    columns : dict
        ``side -> columns read`` for every table of the run.
    key_kinds : tuple of str
        How each key column is hashed (see :func:`bucket_of`).
    n_buckets : int
    batch_size : int
    memory_limit : str, optional
        DuckDB's memory limit inside one bucket's join.
    threads : int, optional
        Threads of one piece of work (reading, DuckDB, the accumulator); default: every
        core, or one on a Dask worker (see :func:`task_threads`).
    fragment_rows : int
        Rows per input fragment read by one split task (Parquet: whole row groups).
    partition_column : str, optional
        The inputs are co-partitioned on this hive column: buckets are its values, and
        nothing is split (:func:`fragments_by_value`).
    schemas : dict
        ``side -> pyarrow.Schema`` of the columns read (pieces are cast to it).
    """

    layout: Layout
    spec: JoinSpec
    backend: str
    paired: bool
    with_value: bool
    columns: dict[str, list[str]]
    key_kinds: tuple[str, ...]
    n_buckets: int
    batch_size: int = 1 << 20
    memory_limit: str | None = None
    threads: int | None = None
    fragment_rows: int = MEMORY_FRAGMENT_ROWS
    partition_column: str | None = None
    schemas: dict[str, pa.Schema] = field(default_factory=dict)
    windows: WindowSpec | None = None
    #: The unit-level bootstrap's settings (``engine.unit_bootstrap``); None: none.
    unit: Any = None

    @classmethod
    def for_join(cls, stream: JoinedStream, layout: Layout, n_buckets: int, **options: Any) -> "BucketJob":
        """The job of a join's partitioned plan: the columns, key kinds and schemas it reads.

        Parameters
        ----------
        stream : JoinedStream
            The join as a single process would run it (built, not iterated).
        layout : Layout
        n_buckets : int
        **options
            ``backend``, ``paired``, ``with_value``, ``batch_size``, ``memory_limit``,
            ``threads``, ``fragment_rows``, ``partition_column``, ``windows``, ``unit``.
        """
        columns = stream.columns_read()
        sources = {"online": stream.online, "offline": stream.offline, "outcomes": stream.outcomes}
        joined = {s: sources[s] for s in columns}
        return cls(
            layout=layout,
            spec=stream.spec,
            columns=columns,
            key_kinds=key_kinds(stream.spec.keys, list(joined.values())),
            n_buckets=n_buckets,
            schemas={
                s: wire_schema(joined[s], pa.schema([joined[s].schema.field(c) for c in cols]), stream.spec.keys)
                for s, cols in columns.items()
            },
            **{"backend": "auto", "paired": False, "with_value": False, **options},
        )


#: A Parquet string column travels as a dictionary when its dictionary page (first row group
#: of the input's first file) is at most this many bytes, i.e. it holds a few thousand short
#: values: a high-cardinality column read as a dictionary took 5x its plain read (1M distinct
#: values: 175 against 35 ms), and every split piece would carry the whole dictionary.
DICTIONARY_PAGE_LIMIT = 64 * 1024


def wire_schema(source: TableSource, schema: pa.Schema, keys: Sequence[str]) -> pa.Schema:
    """The schema pieces of ``source`` are read, split and moved in.

    Low-cardinality string columns of Parquet files (keys and hive partition columns aside)
    are read as dictionaries: Parquet stores them so, and decoding to plain strings took 3x
    longer than the read itself (22 against 67 ms per 1M rows of four such columns); the
    pieces are a third smaller to cut and to send. DuckDB reads a dictionary column back as
    VARCHAR, so the join, its duplicate rule and what reaches the accumulator are unchanged.
    """
    if source.format != "parquet" or not source.files:
        return schema
    small = _small_dictionaries(source)  # columns stored in the file: hive columns are not
    fields = [
        f.with_type(pa.dictionary(pa.int32(), f.type)) if f.type == pa.string() and f.name in small and f.name not in keys else f
        for f in schema
    ]
    return pa.schema(fields, metadata=schema.metadata)


def _small_dictionaries(source: TableSource) -> set[str]:
    """Columns of the first non-empty row group of ``source``'s first file whose dictionary
    page is at most ``DICTIONARY_PAGE_LIMIT`` bytes (footer only; none if it cannot be read)."""
    try:
        fragment = ds.ParquetFileFormat().make_fragment(source.files[0], filesystem=source.dataset.filesystem)
        meta = fragment.metadata
    except (pa.ArrowException, OSError):
        return set()
    for r in range(meta.num_row_groups):
        group = meta.row_group(r)
        if group.num_rows:
            chunks = [group.column(i) for i in range(group.num_columns)]
            return {
                c.path_in_schema
                for c in chunks
                if c.has_dictionary_page and 0 < c.data_page_offset - c.dictionary_page_offset <= DICTIONARY_PAGE_LIMIT
            }
    return set()


# ---------------------------------------------------------------------- bucketing by key


def key_kinds(keys: Sequence[str], sources: Sequence[TableSource]) -> tuple[str, ...]:
    """How each key column is hashed so that equal keys of every table share a bucket.

    DuckDB joins an integer key with a float key by value, so a key that is a float or a
    decimal in any table is hashed as a float64 everywhere; integer keys as int64; strings
    and binaries by their bytes; dates and timestamps as microseconds.
    """
    kinds = []
    for k in keys:
        types = []
        for src in sources:
            t = src.schema.field(k).type
            types.append(t.value_type if pa.types.is_dictionary(t) else t)
        if any(pa.types.is_floating(t) or pa.types.is_decimal(t) for t in types):
            kinds.append("float")
        elif all(pa.types.is_integer(t) or pa.types.is_null(t) for t in types):
            kinds.append("int")
        elif any(pa.types.is_timestamp(t) or pa.types.is_date(t) for t in types):
            kinds.append("time")
        else:
            kinds.append("bytes")
    return tuple(kinds)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised (uint64 in, uint64 out)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def _fnv1a(offsets: np.ndarray, data: np.ndarray, out: np.ndarray) -> None:
    for i in range(out.size):
        h = np.uint64(0xCBF29CE484222325)
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[j])) * np.uint64(0x100000001B3)
        out[i] = h


def _column_hash(col: pa.Array, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``(uint64 hash, valid mask)`` of one key column."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    n = len(col)
    valid = col.is_valid().to_numpy(zero_copy_only=False) if col.null_count else np.ones(n, bool)
    if kind == "bytes":
        arr = pc.cast(col, pa.large_binary()) if not pa.types.is_large_binary(col.type) else col
        arr = pc.fill_null(arr, b"") if arr.null_count else arr
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
        data = arr.buffers()[2]
        data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
        out = np.empty(n, dtype=np.uint64)
        _fnv1a(offsets, data, out)
        return out, valid
    if kind == "float":
        # large integers round to the float64 DuckDB compares them as (in every table alike)
        x = pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        x = np.where(valid, x, 0.0) + 0.0  # -0.0 joins 0.0: give them one hash
        return x.view(np.uint64), valid
    if kind == "time":
        col = pc.cast(col, pa.timestamp("us", tz=getattr(col.type, "tz", None)))
    x = pc.cast(col, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    return x.astype(np.int64, copy=False).view(np.uint64), valid


def bucket_of(table: pa.Table | pa.RecordBatch, keys: Sequence[str], kinds: Sequence[str], n_buckets: int) -> np.ndarray:
    """The bucket of each row: a hash of its key, modulo ``n_buckets`` (int64).

    Rows with a null key component all go to bucket 0 (they never match, so any one bucket
    will do, as long as it is always the same). Without a key nothing is joined or
    deduplicated, so rows are dealt round-robin.
    """
    n = table.num_rows
    if n_buckets == 1:
        return np.zeros(n, dtype=np.int64)
    if not keys:
        return np.arange(n, dtype=np.int64) % n_buckets
    h = np.zeros(n, dtype=np.uint64)
    valid = np.ones(n, dtype=bool)
    for i, (k, kind) in enumerate(zip(keys, kinds)):
        hk, vk = _column_hash(table.column(k), kind)
        h = hk if i == 0 else _mix(h) ^ hk  # one mix per key: the parts do not commute
        valid &= vk
    bucket = (_mix(h) % np.uint64(n_buckets)).astype(np.int64)
    bucket[~valid] = 0
    return bucket


@numba.njit(cache=True, nogil=True)
def _bucket_order(bucket: np.ndarray, n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers grouped by bucket, in row order within a bucket (a counting sort: one
    pass, where a stable argsort of int64 is a merge sort), and each bucket's bounds."""
    bounds = np.zeros(n_buckets + 1, dtype=np.int64)
    for b in bucket:
        bounds[b + 1] += 1
    for j in range(n_buckets):
        bounds[j + 1] += bounds[j]
    next_at = bounds[:-1].copy()
    order = np.empty(bucket.shape[0], dtype=np.int64)
    for i in range(bucket.shape[0]):
        b = bucket[i]
        order[next_at[b]] = i
        next_at[b] += 1
    return order, bounds


def split_table(table: pa.Table, keys: Sequence[str], kinds: Sequence[str], n_buckets: int) -> list[pa.Table]:
    """Cut ``table`` into ``n_buckets`` tables by :func:`bucket_of` (row order kept)."""
    if n_buckets == 1:
        return [table.unify_dictionaries()]  # one dictionary per column, as Arrow IPC files need
    order, bounds = _bucket_order(bucket_of(table, keys, kinds, n_buckets), n_buckets)
    # one take per bucket: each piece owns buffers of its own size (a slice of one big take
    # would be pickled, or sent to another worker, with the whole table's buffers)
    return [table.take(pa.array(order[bounds[j] : bounds[j + 1]])) for j in range(n_buckets)]


# ------------------------------------------------------------------------------- fragments


@dataclass(frozen=True)
class Fragment:
    """One readable part of an input: row groups of a Parquet file, a CSV file, or rows of
    an in-memory table.

    Attributes
    ----------
    side : str
        ``"online" | "offline" | "outcomes"``.
    source : TableSource
    index : int
        The file's position in ``source.files``; -1 for an in-memory table.
    row_groups : tuple of int
        The Parquet row groups read (empty: the whole file).
    rows : tuple of int
        ``(start, stop)`` rows of an in-memory table.
    partition : tuple of (str, str)
        The file's hive partition values (``(("date", "2026-11-05"),)``), as strings.
    expression : pyarrow.dataset.Expression, optional
        The file's partition expression (fills the hive columns when it is read).
    """

    side: str
    source: TableSource
    index: int = -1
    row_groups: tuple[int, ...] = ()
    rows: tuple[int, int] = (0, 0)
    partition: tuple[tuple[str, str], ...] = ()
    expression: Any = None

    @property
    def name(self) -> str:
        """The file path (with its row groups), or ``"<memory>[start:stop]"``."""
        if self.index >= 0:
            groups = f" row groups {self.row_groups[0]}-{self.row_groups[-1]}" if self.row_groups else ""
            return self.source.files[self.index] + groups
        return f"<memory>[{self.rows[0]}:{self.rows[1]}]"

    def read(
        self, columns: Sequence[str], schema: pa.Schema | None = None, use_threads: bool = True
    ) -> pa.Table:
        """The fragment's ``columns`` (hive partition columns included), cast to ``schema``."""
        src = self.source
        try:
            if self.index >= 0:
                file_format, file_schema = src.dataset.format, src.dataset.schema
                as_dictionary = [f.name for f in schema or () if pa.types.is_dictionary(f.type)]
                if as_dictionary and isinstance(file_format, ds.ParquetFileFormat):  # see wire_schema
                    file_format = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=as_dictionary))
                    for name in as_dictionary:
                        i = file_schema.get_field_index(name)
                        file_schema = file_schema.set(i, schema.field(name))
                # made from its path (a task never lists the dataset's other files)
                frag = file_format.make_fragment(
                    src.files[self.index], filesystem=src.dataset.filesystem,
                    partition_expression=self.expression,
                )
                if self.row_groups:
                    frag = frag.subset(row_group_ids=list(self.row_groups))
                table = frag.to_table(schema=file_schema, columns=list(columns), use_threads=use_threads)
            else:
                table = src.memory_rows(*self.rows, columns)
        except (pa.ArrowException, OSError) as exc:
            raise SchemaError(f"Could not read '{self.name}' of {src.where}: {exc}") from exc
        return table.cast(schema) if schema is not None and table.schema != schema else table

    def digest(self) -> str:
        """A content fingerprint of this fragment (see :meth:`TableSource.file_digest`)."""
        if self.index >= 0:
            return f"{self.source.file_digest(self.index)}:{','.join(map(str, self.row_groups))}"
        return f"{self.source.fingerprint().content_hash}:{self.rows[0]}:{self.rows[1]}"


def fragments(side: str, src: TableSource, rows: int = MEMORY_FRAGMENT_ROWS) -> list[Fragment]:
    """The fragments of one input, of about ``rows`` rows where the input allows.

    Parquet files are cut at row-group boundaries (consecutive row groups up to ``rows``
    rows); a CSV file is one fragment; an in-memory table is cut into ``rows``-row slices.
    """
    if not src.files:
        n = src.count_rows()
        return [Fragment(side, src, rows=(a, min(n, a + rows))) for a in range(0, max(n, 1), rows)]
    index = {f: i for i, f in enumerate(src.files)}
    out = []
    for frag in src.dataset.get_fragments():
        i = index[frag.path]
        expression = frag.partition_expression
        keys = ds.get_partition_keys(expression) or {}
        partition = tuple(sorted((k, str(v)) for k, v in keys.items()))
        if src.format != "parquet":
            out.append(Fragment(side, src, i, partition=partition, expression=expression))
            continue
        try:
            frag.ensure_complete_metadata()
            sizes = [rg.num_rows for rg in frag.row_groups]
        except (pa.ArrowException, OSError) as exc:
            raise SchemaError(f"Could not read the file '{frag.path}' of {src.where}: {exc}") from exc
        group: list[int] = []
        n = 0
        for g, size in enumerate(sizes):
            if group and n + size > rows:
                out.append(Fragment(side, src, i, tuple(group), partition=partition, expression=expression))
                group, n = [], 0
            group.append(g)
            n += size
        out.append(Fragment(side, src, i, tuple(group), partition=partition, expression=expression))
    return sorted(out, key=lambda f: (f.index, f.row_groups))


def fragments_by_value(
    sources: dict[str, TableSource], column: str, rows: int
) -> dict[str, dict[str, list[Fragment]]]:
    """``value -> side -> fragments`` of inputs co-partitioned on a hive partition column.

    Raises
    ------
    ConfigError
        When a table is not a directory partitioned by ``column``.
    """
    by_value: dict[str, dict[str, list[Fragment]]] = {}
    for side, src in sources.items():
        names = getattr(getattr(src.dataset, "partitioning", None), "schema", None)
        if not src.files or names is None or column not in names.names:
            raise ConfigError(
                f"partition_column is '{column}', but {src.where} is not a directory partitioned "
                f"by it (folders {column}=...). Partition every table by it, or unset "
                "partition_column to split the tables by key."
            )
        for frag in fragments(side, src, rows):
            value = dict(frag.partition).get(column, "__null__")
            by_value.setdefault(value, {}).setdefault(side, []).append(frag)
    return dict(sorted(by_value.items()))


def frame_to_arrow(frame: Any) -> pa.Table:
    """A partition of a Dask DataFrame as Arrow: pandas, or cuDF on GPU workers (its own
    ``to_arrow``), without the index."""
    if type(frame).__module__.startswith("cudf"):  # pragma: no cover - no cuDF here
        return frame.to_arrow(preserve_index=False)
    return pa.Table.from_pandas(frame, preserve_index=False)


def split_fragment(job: BucketJob, fragment: Fragment | Any, side: str) -> list[pa.Table]:
    """Read one fragment (or rows of a table, or a pandas partition of a Dask DataFrame) and
    split it by bucket."""
    columns, schema = job.columns[side], job.schemas.get(side)
    if isinstance(fragment, Fragment):
        table = fragment.read(columns, schema, use_threads=task_threads(job) is None)
    elif isinstance(fragment, pa.Table):
        table = fragment.select(columns)
    else:  # a pandas DataFrame: a partition of a Dask DataFrame
        table = frame_to_arrow(fragment[columns])
    if schema is not None and table.schema != schema:
        table = table.cast(schema)
    return split_table(table, job.spec.keys, job.key_kinds, job.n_buckets)


# --------------------------------------------------------------------- one bucket's work


def join_bucket(
    job: BucketJob,
    online: Sequence[pa.Table],
    offline: Sequence[pa.Table] | None = None,
    outcomes: Sequence[pa.Table] | None = None,
) -> Partial:
    """Join the pieces of one bucket and accumulate them: the bucket's :class:`Partial`.

    Parameters
    ----------
    job : BucketJob
    online, offline, outcomes : sequences of pyarrow.Table or Fragment
        The bucket's pieces of each table (split pieces, or whole fragments read here); None
        for a table the run does not join.

    Returns
    -------
    Partial
    """
    threads = task_threads(job)

    def table(side: str, pieces: Sequence[pa.Table | Fragment] | None) -> TableSource | None:
        if pieces is None:
            return None
        pieces = [
            p.read(job.columns[side], job.schemas.get(side), use_threads=threads is None)
            if isinstance(p, Fragment) else p
            for p in pieces
        ]
        pieces = [p for p in pieces if p.num_rows] or list(pieces[:1])
        if not pieces:
            return open_table(job.schemas[side].empty_table(), side)
        return open_table(_aligned(pa.concat_tables(pieces, promote_options="permissive")), side)

    stream = JoinedStream(
        table("online", online),  # type: ignore[arg-type]
        table("offline", offline),
        table("outcomes", outcomes),
        job.spec,
        batch_size=job.batch_size,
        memory_limit=job.memory_limit,
        threads=threads,
    )
    from engine.unit_bootstrap import accumulator

    acc = accumulator(
        job.layout, get_kernels(job.backend), job.unit, paired=job.paired, with_value=job.with_value, windows=job.windows
    )
    with _numba_threads(threads):
        stats = accumulate_joined(stream, acc)
    return Partial(stats, stream.report)


def task_threads(job: BucketJob) -> int | None:
    """Threads one piece of work may use: ``job.threads``; else one on a Dask worker (Dask
    runs a task per worker thread, as it sets ``OMP_NUM_THREADS=1`` for); else None (every
    core)."""
    if job.threads is not None:
        return job.threads
    if "distributed" in sys.modules:
        from distributed import get_worker

        try:
            get_worker()
            return 1
        except ValueError:
            pass
    return None


@contextlib.contextmanager
def _numba_threads(threads: int | None) -> Iterator[None]:
    """Numba's thread count for this thread (numba keeps it per thread) within the block."""
    if threads is None:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _aligned(table: pa.Table) -> pa.Table:
    """``table``, copied when a buffer is not 64-byte aligned (pieces deserialised from a
    Dask worker's network frames can be; Arrow's scanners warn about and may mishandle
    such buffers)."""
    for column in table.columns:
        for chunk in column.chunks:
            if any(b is not None and b.address % 64 for b in chunk.buffers()):
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, table.schema) as writer:
                    writer.write_table(table)
                return pa.ipc.open_stream(sink.getvalue()).read_all()
    return table


def n_buckets_for(rows: int, partition_rows: int) -> int:
    """Buckets of about ``partition_rows`` online rows each (at least one)."""
    return max(1, math.ceil(rows / max(1, partition_rows)))
