"""Input stage: open the tables a run reads, check their columns, stream them, fingerprint them.

Every input (evaluation, online, offline, outcomes) goes through :func:`open_table`, which
returns a :class:`TableSource` over a :mod:`pyarrow.dataset` dataset. Nothing here loads a
whole table: :meth:`TableSource.batches` scans only the columns asked for, in batches, and
row counts come from Parquet metadata where there is some.

Only *structural* problems raise here (a missing or unreadable file, an unknown format, a
column that is absent or of the wrong type), always as :class:`~engine.errors.SchemaError`
with one paragraph naming the role, the file and what is wrong. Bad *values* (a score of
1.7, a label of 2, a null key) are not errors: later stages count them.

Accepted inputs
---------------
- a Parquet file, or a directory of Parquet files (hive partitioning, ``key=value``
  folders, is discovered; files and folders starting with ``.`` or ``_`` are ignored, as
  Spark's ``_SUCCESS`` markers should be);
- a CSV file (``.csv``, ``.tsv``, optionally ``.gz``/``.bz2``/``.zst``) or a directory of
  them; empty fields read as null, also in string columns, as pandas reads them;
- a URI any pyarrow filesystem understands (``s3://...``, ``gs://...``, ``file://...``);
- an in-memory :class:`pyarrow.Table` or :class:`pandas.DataFrame` (the index is dropped),
  for API users; its path is ``"<memory>"``.
"""

from __future__ import annotations

import difflib
import hashlib
import io as _pyio
import pathlib
import struct
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pyarrow.fs as pafs

from engine.errors import SchemaError

if TYPE_CHECKING:  # pandas is optional at run time: only DataFrame inputs need it
    import pandas as pd

__all__ = [
    "COLUMN_KINDS",
    "MEMORY_PATH",
    "InputFingerprint",
    "TableSource",
    "dtype_matches",
    "open_table",
]

#: The ``path`` of a table that came from memory rather than from a file.
MEMORY_PATH = "<memory>"

#: The kinds :meth:`TableSource.require` checks, and what each accepts.
COLUMN_KINDS: dict[str, str] = {
    "numeric": "an integer, floating-point or decimal column",
    "integer_or_bool": "an integer or boolean column",
    "key": "an integer, floating-point, decimal, string, binary, date or timestamp column",
    "string_like": "a string or dictionary-encoded (categorical) column",
    "timestamp": "a timestamp or date column",
    "any": "a column of any type",
}

_PARQUET_EXTS = (".parquet", ".parq", ".pq")
_CSV_EXTS = (".csv", ".tsv")
_COMPRESSED_EXTS = (".gz", ".bz2", ".zst", ".lz4")
_IGNORED_PREFIXES = (".", "_")
_HASH_CHUNK = 8 << 20
_IPC_ROWS = 1 << 16


# --------------------------------------------------------------------------------------------
# Column kinds


def dtype_matches(dtype: pa.DataType, kind: str) -> bool:
    """Whether an Arrow type is acceptable for a column kind.

    Parameters
    ----------
    dtype : pyarrow.DataType
        The column's type. Dictionary types are judged by their value type. The null type
        (a column with no value at all, e.g. an all-empty CSV column) matches every kind:
        its rows are counted as invalid later rather than failing the run.
    kind : str
        One of :data:`COLUMN_KINDS`.

    Returns
    -------
    bool
    """
    if kind not in COLUMN_KINDS:
        raise ValueError(f"unknown column kind {kind!r}; expected one of {sorted(COLUMN_KINDS)}")
    t = dtype.value_type if pa.types.is_dictionary(dtype) else dtype
    if pa.types.is_null(t) or kind == "any":
        return True
    is_int = pa.types.is_integer(t)
    is_num = is_int or pa.types.is_floating(t) or pa.types.is_decimal(t)
    is_str = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    is_bin = (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_binary_view(t)
    )
    is_time = pa.types.is_timestamp(t) or pa.types.is_date(t)
    if kind == "numeric":
        return is_num
    if kind == "integer_or_bool":
        return is_int or pa.types.is_boolean(t)
    if kind == "key":
        return is_num or is_str or is_bin or is_time
    if kind == "string_like":
        return is_str
    if kind == "timestamp":
        return is_time
    raise AssertionError(kind)  # pragma: no cover  (guarded above)


# --------------------------------------------------------------------------------------------
# Fingerprints


@dataclass(frozen=True)
class InputFingerprint:
    """What identifies one input of a run, for lineage (DESIGN §10).

    Attributes
    ----------
    role : str
        ``"online"``, ``"offline"``, ``"outcomes"``, ``"evaluation"``, ...
    path : str
        The path or URI as given, or ``"<memory>"``.
    size_bytes : int
        Sum of the data files' sizes (the Arrow IPC size for an in-memory table).
    rows : int
        Number of rows.
    schema_hash : str
        First 16 hex characters of the sha256 of the schema's canonical string (field
        names, types and nullability; no metadata, so pandas' metadata does not count).
    content_hash : str
        sha256 hex digest of the content: each Parquet file's relative path, size and footer
        (the footer holds every row group's statistics, so it changes when the data does);
        each CSV file's relative path, size and bytes; an in-memory table's Arrow IPC bytes.
        Relative paths are included because hive partition values live in them.
    """

    role: str
    path: str
    size_bytes: int
    rows: int
    schema_hash: str
    content_hash: str

    @property
    def fingerprint(self) -> str:
        """Combined hex digest (sha256) of :attr:`schema_hash` and :attr:`content_hash`."""
        return hashlib.sha256(f"{self.schema_hash}:{self.content_hash}".encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``role, path, rows, fingerprint`` (DESIGN §7) plus ``size_bytes`` and
        ``schema_hash``.

        Returns
        -------
        dict
        """
        d = asdict(self)
        return {
            "role": d["role"],
            "path": d["path"],
            "rows": d["rows"],
            "fingerprint": self.fingerprint,
            "size_bytes": d["size_bytes"],
            "schema_hash": d["schema_hash"],
        }


def _schema_hash(schema: pa.Schema) -> str:
    text = schema.remove_metadata().to_string(show_field_metadata=False, show_schema_metadata=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _HashSink(_pyio.RawIOBase):
    """A write-only file object that hashes what is written, so IPC bytes are never held."""

    def __init__(self, hasher: Any) -> None:
        super().__init__()
        self.hasher = hasher
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b)
        self.hasher.update(view)
        self.size += view.nbytes
        return view.nbytes


def _rechunk(table: pa.Table, rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``rows`` rows (the last fewer), whatever the table's chunking.

    The IPC bytes of a table depend on its chunk boundaries; re-cutting makes an in-memory
    fingerprint depend on the content alone. Only one batch is copied at a time.
    """
    for off in range(0, table.num_rows, rows):
        part = table.slice(off, rows).to_batches()
        if len(part) == 1:
            yield part[0]
        elif part:
            yield pa.concat_batches(part)


# --------------------------------------------------------------------------------------------
# The source


class TableSource:
    """One input table, opened but not read.

    Build it with :func:`open_table`.

    Attributes
    ----------
    role : str
        What the table is for (``"online"``, ``"offline"``, ...); used in every message.
    path : str
        The path or URI as given, or ``"<memory>"``.
    format : str
        ``"parquet"``, ``"csv"`` or ``"memory"``.
    schema : pyarrow.Schema
        The dataset's schema, hive partition columns included.
    dataset : pyarrow.dataset.Dataset
        The underlying dataset (``FileSystemDataset`` or ``InMemoryDataset``).
    files : list of str
        The data files, sorted (empty for in-memory tables).
    """

    def __init__(
        self,
        role: str,
        path: str,
        fmt: str,
        dataset: ds.Dataset,
        filesystem: pafs.FileSystem | None = None,
        table: pa.Table | None = None,
        base_dir: str | None = None,
    ) -> None:
        self.role = role
        self.path = path
        self.format = fmt
        self.dataset = dataset
        self.schema: pa.Schema = dataset.schema
        self.files: list[str] = sorted(getattr(dataset, "files", []) or [])
        self._fs = filesystem
        self._table = table
        self._base_dir = base_dir
        self._rows: int | None = None
        self._fingerprint: InputFingerprint | None = None
        self._file_digests: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"TableSource(role={self.role!r}, path={self.path!r}, format={self.format!r})"

    @property
    def where(self) -> str:
        """``"the online table 'x.parquet'"``: how messages name this table."""
        if self.path == MEMORY_PATH:
            return f"the {self.role} table (in memory)"
        return f"the {self.role} table '{self.path}'"

    @property
    def column_names(self) -> list[str]:
        """The names of the table's columns."""
        return list(self.schema.names)

    def has(self, column: str) -> bool:
        """Whether the table has a column of this name."""
        return self.schema.get_field_index(column) >= 0

    def require(self, column: str, kind: str | Sequence[str] = "any") -> pa.DataType:
        """Check that a column exists and has an acceptable type.

        Parameters
        ----------
        column : str
            The column name.
        kind : str or sequence of str
            One of :data:`COLUMN_KINDS`, or several (any of them will do).

        Returns
        -------
        pyarrow.DataType
            The column's type.

        Raises
        ------
        SchemaError
            When the column is absent (the message lists the columns that exist and a close
            match, if any) or its type fits none of the kinds.
        """
        kinds = [kind] if isinstance(kind, str) else list(kind)
        idx = self.schema.get_all_field_indices(column)
        if not idx:
            names = self.column_names
            close = difflib.get_close_matches(column, names, n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            shown = ", ".join(f"'{n}'" for n in names[:50])
            more = f" and {len(names) - 50} more" if len(names) > 50 else ""
            raise SchemaError(
                f"Column '{column}' was not found in {self.where}.{hint} "
                f"The columns that exist are: {shown or '(none)'}{more}."
            )
        if len(idx) > 1:
            raise SchemaError(
                f"Column '{column}' appears {len(idx)} times in {self.where}; "
                "column names must be unique."
            )
        dtype = self.schema.field(idx[0]).type
        if not any(dtype_matches(dtype, k) for k in kinds):
            expected = " or ".join(COLUMN_KINDS[k] for k in kinds)
            raise SchemaError(
                f"Column '{column}' of {self.where} has type {dtype}, but {expected} was "
                f"expected (kind: {'/'.join(kinds)}). Convert the column, or choose another "
                "column in the configuration."
            )
        return dtype

    def batches(
        self,
        columns: Sequence[str] | None = None,
        batch_size: int = 1 << 20,
        filter: ds.Expression | None = None,  # noqa: A002  (pyarrow's name)
    ) -> Iterator[pa.RecordBatch]:
        """Stream the table in record batches, reading only ``columns``.

        Parameters
        ----------
        columns : sequence of str, optional
            The columns to read, in this order; all when None.
        batch_size : int
            At most this many rows per batch (fewer at row-group and file ends).
        filter : pyarrow.dataset.Expression, optional
            A predicate pushed down to the scan (row groups are pruned by statistics).

        Yields
        ------
        pyarrow.RecordBatch
            Non-empty batches, in file order (files sorted by path).

        Raises
        ------
        SchemaError
            When a file cannot be read or decoded while scanning.
        """
        if columns is not None:
            for c in columns:
                self.require(c, "any")
        cols = None if columns is None else list(columns)
        try:
            for part in self._parts(filter):
                # a fragment is read with the dataset's (unified) schema; a dataset has its own
                extra = {"schema": self.dataset.schema} if part is not self.dataset else {}
                for batch in part.to_batches(columns=cols, filter=filter, batch_size=batch_size, **extra):
                    if batch.num_rows:
                        yield batch
        except (pa.ArrowException, OSError) as exc:
            raise SchemaError(f"Could not read {self.where}: {_short(exc)}") from exc

    def _parts(self, filter: ds.Expression | None) -> Iterator[Any]:  # noqa: A002
        """What :meth:`batches` scans one after the other: each Parquet row group (pruned by
        ``filter``), each CSV file, or the in-memory dataset.

        One scan of the whole dataset reads ahead without bound when its consumer is slower
        than the disk (its peak memory grew with the file: 0.8 GB at 10M rows, 2.7 GB at
        100M); a row group at a time keeps it to about one row group.
        """
        if not self.files:
            yield self.dataset
            return
        by_path = {f.path: f for f in self.dataset.get_fragments(filter=filter)}
        for path in self.files:
            frag = by_path.get(path)
            if frag is None:
                continue
            if self.format == "parquet":
                yield from frag.split_by_row_group(filter=filter, schema=self.dataset.schema)
            else:
                yield frag

    def memory_rows(self, start: int, stop: int, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows ``[start, stop)`` of an in-memory table (zero-copy: a slice of it).

        Raises
        ------
        ValueError
            When the table is not in memory (files are read by fragment).
        """
        if self._table is None:
            raise ValueError(f"{self.where} is not an in-memory table")
        table = self._table if columns is None else self._table.select(list(columns))
        return table.slice(start, stop - start)

    def min_max(self, column: str) -> pa.Array | None:
        """The column's smallest and largest non-null values, from the Parquet files' row
        group statistics (no scan), as a length-2 array of its type; ``[null, null]`` when
        every value is null. ``None`` when the footers cannot answer exactly: another format,
        a file or row group without statistics for it, a type whose statistics are not its
        values as stored (floats: NaN; INT96 timestamps), or a unit other than the schema's.
        """
        field = self.schema.field(column) if self.has(column) else None
        if self.format != "parquet" or not self.files or field is None:
            return None
        storage = _PARQUET_STORAGE.get(_type_key(field.type))
        if storage is None:
            return None
        lo = hi = None
        try:
            for f in self.files:
                meta = pq.read_metadata(f, filesystem=self._fs)
                names = meta.schema.names
                if column not in names:
                    return None  # e.g. a hive partition column
                index = names.index(column)
                for g in range(meta.num_row_groups):
                    chunk = meta.row_group(g).column(index)
                    if chunk.physical_type != storage[0] or not chunk.is_stats_set:
                        return None
                    stats = chunk.statistics
                    if storage[1] is not None and storage[1] not in stats.logical_type.to_json():
                        return None
                    if not stats.has_min_max:
                        if stats.null_count != meta.row_group(g).num_rows:
                            return None
                        continue  # all null
                    lo = stats.min_raw if lo is None else min(lo, stats.min_raw)
                    hi = stats.max_raw if hi is None else max(hi, stats.max_raw)
        except (pa.ArrowException, OSError):
            return None
        return pa.array([lo, hi], type=pa.int32() if storage[0] == "INT32" else pa.int64()).cast(field.type)

    def count_rows(self) -> int:
        """The number of rows (from Parquet metadata where possible; CSV files are parsed).

        Returns
        -------
        int
        """
        if self._rows is None:
            try:
                self._rows = int(self.dataset.count_rows())
            except (pa.ArrowException, OSError) as exc:
                raise SchemaError(f"Could not read {self.where}: {_short(exc)}") from exc
        return self._rows

    def fingerprint(self) -> InputFingerprint:
        """The table's fingerprint (computed once, then cached).

        Parquet costs two small reads per file (the footer); CSV reads every byte; an
        in-memory table is serialised to Arrow IPC into a hash, without a copy.

        Returns
        -------
        InputFingerprint
        """
        if self._fingerprint is not None:
            return self._fingerprint
        h = hashlib.sha256()
        size = 0
        if self._table is not None:
            sink = _HashSink(h)
            table = self._table.replace_schema_metadata(None)
            with pa.ipc.new_stream(sink, table.schema) as writer:
                for batch in _rechunk(table, _IPC_ROWS):
                    writer.write_batch(batch)
            size = sink.size
        else:
            for i in range(len(self.files)):
                size += self._hash_file(i, h)
        self._fingerprint = InputFingerprint(
            role=self.role,
            path=self.path,
            size_bytes=size,
            rows=self.count_rows(),
            schema_hash=_schema_hash(self.schema),
            content_hash=h.hexdigest(),
        )
        return self._fingerprint

    def file_digest(self, index: int) -> str:
        """The content fingerprint of one data file (``files[index]``): what
        :meth:`fingerprint` hashes for it (relative path, size, Parquet footer or CSV bytes).

        Returns
        -------
        str
            A hex digest.
        """
        if index not in self._file_digests:  # a file cut into several fragments: read once
            h = hashlib.sha256()
            self._hash_file(index, h)
            self._file_digests[index] = h.hexdigest()
        return self._file_digests[index]

    def _hash_file(self, index: int, h: Any) -> int:
        """Feed one file's identity and content summary to ``h``; return its size."""
        assert self._fs is not None
        f = self.files[index]
        try:
            with self._fs.open_input_file(f) as fh:
                fsize = fh.size()
                h.update(f"{self._relative(f)}\0{fsize}\0".encode())
                if self.format == "parquet":
                    h.update(_parquet_footer(fh, fsize, f))
                else:
                    while chunk := fh.read(_HASH_CHUNK):
                        h.update(chunk)
        except (pa.ArrowException, OSError) as exc:
            raise SchemaError(f"Could not read file '{f}' of {self.where}: {_short(exc)}") from exc
        return int(fsize)

    def _relative(self, f: str) -> str:
        if self._base_dir and f.startswith(self._base_dir):
            return f[len(self._base_dir) :].lstrip("/")
        return f.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------------------------
# Opening


#: Arrow types whose Parquet statistics are their values as stored (an int64/int32 count of
#: the type's unit): the physical type and a word the logical type must hold. Seconds are
#: stored as milliseconds (and nanoseconds as microseconds by older writers): the unit in
#: the logical type must be the schema's, or the footers are not used.
_PARQUET_STORAGE = {
    "timestamp[ms]": ("INT64", '"milliseconds"'),
    "timestamp[us]": ("INT64", '"microseconds"'),
    "timestamp[ns]": ("INT64", '"nanoseconds"'),
    "date32[day]": ("INT32", '"Date"'),
    "int64": ("INT64", None),
    "int32": ("INT32", None),
}


def _type_key(t: pa.DataType) -> str:
    """A type's name without its time zone (``timestamp[us, tz=UTC]`` -> ``timestamp[us]``)."""
    if pa.types.is_timestamp(t):
        return f"timestamp[{t.unit}]"
    return str(t)


def open_table(
    path: str | pathlib.Path | pa.Table | pd.DataFrame,
    role: str,
    *,
    format: str | None = None,  # noqa: A002  (the word users know)
) -> TableSource:
    """Open an input table without reading its rows.

    Parameters
    ----------
    path : str, pathlib.Path, pyarrow.Table or pandas.DataFrame
        A Parquet or CSV file, a directory of them (hive-partitioned or not), a URI, or an
        in-memory table.
    role : str
        What the table is for (``"online"``, ``"offline"``, ``"outcomes"``,
        ``"evaluation"``); it names the table in messages and fingerprints.
    format : {"parquet", "csv"}, optional
        Overrides detection by file extension.

    Returns
    -------
    TableSource

    Raises
    ------
    SchemaError
        When the path does not exist, a directory holds no data file, the format is unknown,
        or a file is not a readable Parquet/CSV file.
    """
    if isinstance(path, pa.RecordBatch):
        path = pa.Table.from_batches([path])
    if isinstance(path, pa.Table):
        return TableSource(role, MEMORY_PATH, "memory", ds.dataset(path), table=path)
    if _is_dataframe(path):
        try:
            table = pa.Table.from_pandas(path, preserve_index=False)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise SchemaError(
                f"The {role} DataFrame cannot be converted to Arrow: {_short(exc)}. "
                "Give each column a single type (object columns must hold only strings)."
            ) from exc
        return TableSource(role, MEMORY_PATH, "memory", ds.dataset(table), table=table)
    if not isinstance(path, (str, pathlib.PurePath)):
        raise SchemaError(
            f"The {role} input must be a path, a pyarrow.Table or a pandas.DataFrame; "
            f"got {type(path).__name__}."
        )
    given = str(path)
    if format is not None and format not in ("parquet", "csv"):
        raise SchemaError(
            f"Unknown format '{format}' for the {role} table '{given}'; "
            "expected 'parquet' or 'csv'."
        )
    fs, fspath = _resolve(given, role)
    try:
        info = fs.get_file_info(fspath)
    except (pa.ArrowException, OSError) as exc:
        raise SchemaError(f"Cannot access the {role} table '{given}': {_short(exc)}") from exc
    if info.type == pafs.FileType.NotFound:
        raise SchemaError(
            f"The {role} table '{given}' does not exist. Check the path (relative paths are "
            "taken from the current directory)."
        )

    if info.type == pafs.FileType.Directory:
        infos = _list_data_files(fs, fspath)
        if not infos:
            raise SchemaError(
                f"The {role} table '{given}' is a directory with no data file in it "
                "(files starting with '.' or '_' are ignored)."
            )
        files = [i.path for i in infos]
        fmt = format or _directory_format(files)
        base_dir: str | None = fspath.rstrip("/") + "/"
    else:
        infos = [info]
        files = [fspath]
        fmt = format or _file_format(fs, fspath, given, role)
        base_dir = None
    for i in infos:
        if i.size == 0:
            label = f"'{given}'" if base_dir is None else f"'{given}' (file '{i.path}')"
            raise SchemaError(
                f"The {role} table {label} is empty (0 bytes): "
                + ("a CSV file needs a header line naming its columns and at least one row. "
                   if fmt == "csv" else "a Parquet file holds its schema (the footer) even "
                   "when it has no rows. ")
                + "Was it still being written, or did the job that writes it fail?"
            )

    if fmt == "parquet":
        # Check every footer's magic now (one small read per file) so a corrupt file is
        # reported at open, naming it, rather than halfway through a scan.
        for f in files:
            _check_parquet(
                fs, f, f"'{given}'" if base_dir is None else f"'{given}' (file '{f}')", role
            )
        file_format: ds.FileFormat = ds.ParquetFileFormat()
    else:
        file_format = _csv_format(files)

    try:
        if base_dir is not None:
            dataset = ds.dataset(
                fspath,
                filesystem=fs,
                format=file_format,
                partitioning="hive",
                ignore_prefixes=list(_IGNORED_PREFIXES),
            )
        else:
            dataset = ds.dataset(fspath, filesystem=fs, format=file_format)
    except (pa.ArrowException, OSError) as exc:
        if fmt == "csv" and "Empty CSV file" in str(exc):  # e.g. a compressed empty file
            raise SchemaError(
                f"The {role} table '{given}' is empty: a CSV file in it has no header line "
                "naming its columns. Was it still being written, or did the job that writes "
                "it fail?"
            ) from exc
        raise SchemaError(
            f"The {role} table '{given}' cannot be read as {fmt.upper()}: {_short(exc)}"
        ) from exc
    if not dataset.schema.names:
        raise SchemaError(f"The {role} table '{given}' has no columns.")
    if fmt == "csv" and all(pa.types.is_null(f.type) for f in dataset.schema):
        # Column types come from the values; with none at all (a header line and no rows)
        # parity cannot know them. Counting is cheap here: no value was seen so far.
        try:
            rows = dataset.count_rows()
        except (pa.ArrowException, OSError):
            rows = None  # a later file has values the first file's (null) types cannot hold
        if rows == 0:
            shown = ", ".join(f"'{n}'" for n in dataset.schema.names[:20])
            raise SchemaError(
                f"The {role} table '{given}' has a header line ({shown}) but no rows, so the "
                "types of its columns are unknown. parity needs at least one row of a CSV "
                "table; write the table once it has rows (or as Parquet, which keeps the "
                "types of an empty table)."
            )
    return TableSource(role, given, fmt, dataset, filesystem=fs, base_dir=base_dir)


def _is_dataframe(obj: object) -> bool:
    # Checked by module name so CPU-only installs without pandas never import it.
    return any(
        c.__module__.startswith("pandas") and c.__name__ == "DataFrame" for c in type(obj).__mro__
    )


def _resolve(given: str, role: str) -> tuple[pafs.FileSystem, str]:
    if "://" in given:
        try:
            return pafs.FileSystem.from_uri(given)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise SchemaError(
                f"Cannot open the filesystem of the {role} table '{given}': {_short(exc)}"
            ) from exc
    return pafs.LocalFileSystem(), str(pathlib.Path(given).expanduser().absolute())


def _list_data_files(fs: pafs.FileSystem, root: str) -> list[pafs.FileInfo]:
    """The data files under ``root`` (sorted by path), hidden and ``_`` files left out."""
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    root = root.rstrip("/") + "/"
    out = []
    for i in infos:
        if i.type != pafs.FileType.File:
            continue
        rel = i.path[len(root) :] if i.path.startswith(root) else i.base_name
        if any(part.startswith(_IGNORED_PREFIXES) for part in rel.split("/")):
            continue
        out.append(i)
    return sorted(out, key=lambda i: i.path)


def _strip_compression(name: str) -> str:
    name = name.lower()
    for ext in _COMPRESSED_EXTS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _directory_format(files: list[str]) -> str:
    names = [_strip_compression(f) for f in files]
    if any(n.endswith(_PARQUET_EXTS) for n in names):
        return "parquet"
    if all(n.endswith(_CSV_EXTS) for n in names):
        return "csv"
    return "parquet"  # Spark and others write extension-less Parquet parts


def _file_format(fs: pafs.FileSystem, f: str, given: str, role: str) -> str:
    name = _strip_compression(f)
    if name.endswith(_PARQUET_EXTS):
        return "parquet"
    if name.endswith(_CSV_EXTS):
        return "csv"
    try:  # no known extension: sniff the Parquet magic
        with fs.open_input_file(f) as fh:
            if fh.read(4) == b"PAR1":
                return "parquet"
    except (pa.ArrowException, OSError):
        pass
    raise SchemaError(
        f"The format of the {role} table '{given}' is unknown: its extension is not one of "
        f"{', '.join(_PARQUET_EXTS + _CSV_EXTS)} and it is not Parquet. Pass the format "
        "explicitly (format='csv' or 'parquet')."
    )


def _csv_format(files: list[str]) -> ds.CsvFileFormat:
    tsv = all(_strip_compression(f).endswith(".tsv") for f in files)
    return ds.CsvFileFormat(
        parse_options=pacsv.ParseOptions(delimiter="\t" if tsv else ","),
        # Empty fields are missing values, as in pandas: a blank request_id is a null key.
        convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
    )


def _parquet_footer(fh: pa.NativeFile, size: int, f: str) -> bytes:
    """The footer (Thrift FileMetaData) bytes of an open Parquet file."""
    if size < 12:
        raise OSError(f"{size} bytes is too short for a Parquet file")
    fh.seek(size - 8)
    tail = fh.read(8)
    if tail[4:] != b"PAR1":
        raise OSError(
            "Parquet magic bytes not found at the end of the file (corrupt or not Parquet)"
        )
    (length,) = struct.unpack("<I", tail[:4])
    if length > size - 12:
        raise OSError(f"footer length {length} exceeds the file size {size}")
    fh.seek(size - 8 - length)
    return fh.read(length)


def _check_parquet(fs: pafs.FileSystem, f: str, label: str, role: str) -> None:
    try:
        with fs.open_input_file(f) as fh:
            size = fh.size()
            if size < 12:
                raise OSError(f"{size} bytes is too short for a Parquet file")
            fh.seek(size - 4)
            if fh.read(4) != b"PAR1":
                raise OSError(
                    "Parquet magic bytes not found at the end of the file "
                    "(corrupt, truncated, or not Parquet)"
                )
    except (pa.ArrowException, OSError) as exc:
        raise SchemaError(
            f"The {role} table {label} is not a readable Parquet file: {_short(exc)}"
        ) from exc


def _short(exc: BaseException) -> str:
    """The first line of an exception's message (Arrow appends C++ source locations)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
