"""Join stage: online ⟕ offline ⟕ outcomes on the request key, streamed in record batches.

The online table drives the join: every online row comes out once (duplicates excepted, see
below), with the offline replay's score and the outcome's label attached where a row with the
same key exists, and null where none does. A missing outcome is unknown, never negative.

How each side is joined (reported as ``JoinReport.offline_join`` / ``outcome_join``)
----------------------------------------------------------------------------------------
``"in_place"``
    The online table already carries the column (``JoinSpec.online_offline_score`` /
    ``online_label``): it is used as is and no join is made.
``"aligned"`` (offline only)
    The offline table has the online table's row count and the same keys in the same order,
    as replay jobs usually write it. A key-only scan of both tables (cheap: two columns)
    proves it before anything is yielded; then the two scans are zipped and the keys are
    verified again batch by batch, and no hash table is built. Any difference in the proof
    pass (a key out of place, a different count, a duplicated key on either side) falls back
    to ``"hash"`` before the first row is yielded, so the consumer never sees a half-aligned
    stream.
``"hash"``
    A DuckDB hash join (out of core: DuckDB spills to a temporary directory past
    ``memory_limit``). The pyarrow datasets are registered with DuckDB, so only the needed
    columns are scanned, and the result streams out in batches.
``"none"``
    No table and no in-place column: the column is all null.

Duplicate keys (deterministic: independent of file order, partitioning and threads)
--------------------------------------------------------------------------------------
A duplicated key never multiplies rows; one row per key is kept on each side, chosen by a
total order over the row's values (never by its position):

- **online**: the row whose served score is closest to the key's replay score (a request
  logged twice gives equal rows; another request that reused the key must not be paired
  with this key's replay, or it reads as serving skew), then the earliest ``online_ts``
  (when the online table has that column), then the smallest online score, then the
  smallest values of the remaining carried columns in output order; nulls sort last
  everywhere. Rows equal in every carried column are interchangeable.
- **offline**: the smallest offline score (null last).
- **outcomes**: the latest ``outcome_ts`` (when given), then the largest label, then the
  largest value; nulls last. But a key whose rows disagree on the label (two different
  non-null labels among its rows, or among its rows of the latest ``outcome_ts`` when that is
  given: a later label is a correction, not a conflict) is not resolved: its label is null,
  i.e. missing (the row is matched but takes no part in label-based metrics), and the key is
  counted in ``JoinReport.conflicting_labels``.

Online rows whose key has a null component are all kept (they still count for drift), are
never duplicates, never match, and are counted in ``JoinReport.null_keys``. Offline and
outcome rows with a null key component match nothing; offline ones are counted in
``offline_without_online``.

Passes over the data
--------------------
Before the first row is yielded: one key-only DuckDB aggregate per joined table (duplicate
and null-key counts; the few duplicated keys are kept in a temporary table), and, for an
offline table with the online row count, the key-only alignment proof. Then one streaming
pass: the online scan probes hash tables built on the (deduplicated) offline and outcome
sides, so memory holds those build sides, never the online table. Online duplicates cost a
second online scan restricted to the duplicated keys. Without duplicates, hash joins or SQL
at all (in-place or aligned columns only) the batches are built in Arrow directly.

Output
------
Each batch holds: the key columns and ``JoinSpec.online_columns`` under their own names and
with their own Arrow types; ``score`` (float64, the online score); ``offline_score``
(float64); ``label`` (float64; invalid labels such as 2 or -1 are passed through for the
accumulator to count); ``value`` (float64, when asked); ``__has_offline`` and
``__has_outcome`` (bool, never null: whether the key found an offline / outcome row, or, in
place, whether the column is non-null). A matched outcome row with a null label thus has
``__has_outcome`` true and ``label`` null (an invalid label, not a missing one).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import ConfigError, JoinError, ParityError, SchemaError
from engine.io import TableSource

__all__ = ["JoinReport", "JoinSpec", "JoinedStream", "join"]

Aligned = Literal["auto", "never", "require"]

#: Output columns the join itself produces.
RESERVED = ("score", "offline_score", "label", "value", "__has_offline", "__has_outcome")

#: Scalar kinds a label may have: integers, booleans, floats (NaN-bearing pandas labels).
_LABEL_KINDS = ("integer_or_bool", "numeric")
_TS_KINDS = ("timestamp", "numeric")


@dataclass
class JoinSpec:
    """Which columns join and which travel.

    Parameters
    ----------
    keys : list of str
        The join key; several columns make a composite key. The same names in every table.
        An empty list is allowed only when nothing is joined (no offline and no outcome
        table); then no deduplication is made either.
    online_score : str
        The online table's score column (output as ``score``).
    offline_score : str
        The offline table's score column (output as ``offline_score``).
    label : str
        The outcomes table's label column (output as ``label``).
    value : str, optional
        An outcome value column (output as ``value``): read from the outcomes table when it
        is joined, otherwise from the online table.
    online_columns : list of str
        Further online columns to carry: slices, features, ``ts``, ``model_version``...
    online_label : str, optional
        An online column holding the label already: used in place, outcomes not joined.
    online_offline_score : str, optional
        An online column holding the offline score already: used in place, offline not
        joined.
    outcome_ts : str, optional
        The outcomes table's time column; the latest outcome of a duplicated key wins.
    online_ts : str, optional
        The online time column; the earliest row of a duplicated key wins when the online
        table has this column (it need not be carried).
    """

    keys: list[str] = field(default_factory=lambda: ["request_id"])
    online_score: str = "score"
    offline_score: str = "score"
    label: str = "label"
    value: str | None = None
    online_columns: list[str] = field(default_factory=list)
    online_label: str | None = None
    online_offline_score: str | None = None
    outcome_ts: str | None = None
    online_ts: str | None = "ts"
    #: Carried string columns the SQL join hands over as dictionary codes, computed in the
    #: query (in DuckDB's parallel pipeline, not by Arrow's dictionary encoding of every
    #: batch): ``(column, values, other seen values or None)``, see :func:`code_sql`.
    encoded: tuple[tuple[str, tuple[str, ...], tuple[str, ...] | None], ...] = ()


#: Most baseline values outside the top ones that a column may have to be coded in SQL (they
#: are members of the ENUM type every row is cast to).
MAX_SQL_OTHER_VALUES = 4096


def encoding(column: str, values: tuple[str, ...], seen: frozenset[str] | None) -> tuple | None:
    """The :attr:`JoinSpec.encoded` entry of a categorical column (its top ``values`` and the
    baseline's ``seen`` values), or None when the baseline saw too many other values (or a
    value no SQL string literal holds)."""
    if any("\x00" in v for v in (*values, *(seen or ()))):
        return None
    if seen is None:
        return (column, tuple(values), None)
    others = tuple(sorted(seen - set(values)))
    return (column, tuple(values), others) if len(others) <= MAX_SQL_OTHER_VALUES else None


def _sql_str(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def code_sql(expr: str, values: tuple[str, ...], others: tuple[str, ...] | None) -> str:
    """SQL for a string column's code: ``i`` for ``values[i]``, ``K`` for any other value the
    baseline saw (or any other value at all when ``others`` is None: unseen values are not
    tracked), ``K + 1`` for a value it never saw, NULL for null. :func:`code_dictionary`
    turns the codes into a dictionary array that encodes to the same codes and unseen flags
    as the strings would.

    The lookup is a cast to an ENUM of the known values (a hash lookup per row; a
    ``list_position`` over a list literal scans it, and made the join slower than Arrow's
    encoding it replaced at 10M rows)."""
    k = len(values)
    members = (*values, *(others or ()))
    rest = str(k) if others is None else str(k + 1)  # a value outside the members
    if not members:
        return f"CAST(CASE WHEN {expr} IS NULL THEN NULL ELSE {rest} END AS INTEGER)"
    enum = f"TRY_CAST({expr} AS ENUM({', '.join(map(_sql_str, members))}))"
    return (
        f"CAST(CASE WHEN {expr} IS NULL THEN NULL WHEN {enum} IS NULL THEN {rest} "
        f"ELSE least(enum_code({enum}), {k}) END AS INTEGER)"
    )


def code_dictionary(values: tuple[str, ...], others: tuple[str, ...] | None) -> pa.Array:
    """The dictionary of :func:`code_sql`'s codes: the values, then a value the baseline saw
    among the others (an ``__other__`` that is not unseen), then one it never saw."""
    taken = set(values) | set(others or ())
    other = others[0] if others else "\x00other"
    unseen = "\x00unseen"
    while unseen in taken:
        unseen += "\x00"
    return pa.array([*values, other, unseen], type=pa.string())


@dataclass
class JoinReport:
    """What the join saw: the data-quality counts of DESIGN §7 that the join can know.

    Attributes
    ----------
    online_rows, offline_rows, outcome_rows : int
        Rows read from each table (0 for a table not joined). The stream yields
        ``online_rows - duplicate_keys["online"]`` rows.
    matched_offline, matched_outcomes : int
        Yielded rows whose key found an offline / outcome row (in place: whose column is not
        null).
    offline_without_online : int
        Offline rows that no online row matched: distinct offline keys absent from the online
        table, plus offline rows with a null key component. So ``offline_rows ==
        matched_offline + offline_without_online + duplicate_keys["offline"]``.
    duplicate_keys : dict
        ``{"online", "offline", "outcomes"}``: rows beyond the first per (non-null) key.
    null_keys : int
        Online rows whose key has a null component.
    conflicting_labels : int
        Outcome keys (non-null) whose rows disagree on the label (see the module docstring):
        their label is treated as missing, never resolved. Counted over the outcomes table,
        like ``duplicate_keys["outcomes"]``, whether or not an online row matched the key.
    offline_join, outcome_join : str
        ``"aligned" | "hash" | "in_place" | "none"`` (outcomes: no ``"aligned"``).
    complete : bool
        True once the stream has been exhausted; matched counts and
        ``offline_without_online`` grow while it is consumed.
    """

    online_rows: int = 0
    offline_rows: int = 0
    outcome_rows: int = 0
    matched_offline: int = 0
    matched_outcomes: int = 0
    offline_without_online: int = 0
    duplicate_keys: dict[str, int] = field(
        default_factory=lambda: {"online": 0, "offline": 0, "outcomes": 0}
    )
    null_keys: int = 0
    conflicting_labels: int = 0
    offline_join: str = "none"
    outcome_join: str = "none"
    complete: bool = False

    def to_dict(self, *, include_paths: bool = False) -> dict[str, Any]:
        """The ``data_quality`` fields of the JSON result (DESIGN §7) this report holds.

        Parameters
        ----------
        include_paths : bool
            Also return ``offline_join`` and ``outcome_join`` (not part of the contract).

        Returns
        -------
        dict
        """
        d: dict[str, Any] = {
            "online_rows": self.online_rows,
            "offline_rows": self.offline_rows,
            "outcome_rows": self.outcome_rows,
            "matched_offline": self.matched_offline,
            "matched_outcomes": self.matched_outcomes,
            "offline_without_online": self.offline_without_online,
            "duplicate_keys": dict(self.duplicate_keys),
            "null_keys": self.null_keys,
            "conflicting_labels": self.conflicting_labels,
        }
        if include_paths:
            d["offline_join"] = self.offline_join
            d["outcome_join"] = self.outcome_join
        return d


# --------------------------------------------------------------------------------------------
# Helpers


def _register(con: duckdb.DuckDBPyConnection, name: str, src: TableSource) -> None:
    """Make ``src`` a relation of ``con`` named ``name``.

    Local Parquet files without partition columns are read by DuckDB's own Parquet reader
    (faster, and its memory stays under DuckDB's limit); anything else (CSV, hive
    partitions, remote filesystems, in-memory tables) through the pyarrow dataset.
    """
    import pyarrow.fs as pafs

    physical = (
        src.format == "parquet"
        and src.files
        and isinstance(getattr(src, "_fs", None), pafs.LocalFileSystem)
        and len(getattr(getattr(src.dataset, "partitioning", None), "schema", None) or []) == 0
    )
    if physical:
        files = ", ".join("'" + f.replace("'", "''") + "'" for f in src.files)
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM read_parquet([{files}])")
    else:
        con.register(name, src.dataset)


def _q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _key_family(t: pa.DataType) -> str | None:
    """Types that DuckDB compares exactly share a family; None (the null type) fits all."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        return None
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "temporal"
    return str(t)  # binary types: only the same type


def _any_null(keys: Sequence[str], alias: str = "") -> str:
    p = f"{alias}." if alias else ""
    return "(" + " OR ".join(f"{p}{_q(k)} IS NULL" for k in keys) + ")"


def _key_eq(keys: Sequence[str], a: str, b: str) -> str:
    return " AND ".join(f"{a}.{_q(k)} = {b}.{_q(k)}" for k in keys)


def _as_plain(arr: pa.Array) -> pa.Array:
    return arr.dictionary_decode() if pa.types.is_dictionary(arr.type) else arr


def _keys_equal(a: pa.RecordBatch, b: pa.RecordBatch, keys: Sequence[str]) -> bool:
    """Whether two equally long batches hold the same keys row by row (null equals null)."""
    if a.num_rows != b.num_rows:
        return False
    for k in keys:
        x, y = _as_plain(a.column(k)), _as_plain(b.column(k))
        if x.type != y.type:
            try:
                y = y.cast(x.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return False
        ok = pc.or_kleene(pc.equal(x, y), pc.and_(x.is_null(), y.is_null()))
        if not pc.all(pc.fill_null(ok, False)).as_py():
            return False
    return True


def _valid_keys(batch: pa.RecordBatch, keys: Sequence[str]) -> pa.Array:
    """Bool array: every key component non-null."""
    if not keys:
        return _const(batch.num_rows, True)
    mask = batch.column(keys[0]).is_valid()
    for k in keys[1:]:
        mask = pc.and_(mask, batch.column(k).is_valid())
    return mask


def _const(n: int, value: bool) -> pa.Array:
    return pa.array(np.full(n, value, dtype=bool))


class _Taker:
    """Re-chunks a batch stream: ``take(n)`` returns the next ``n`` rows (fewer at the end)."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self._it = batches
        self._cur: pa.RecordBatch | None = None
        self._off = 0

    def take(self, n: int) -> pa.RecordBatch | None:
        parts = []
        need = n
        while need > 0:
            if self._cur is None or self._off >= self._cur.num_rows:
                self._cur = next(self._it, None)
                self._off = 0
                if self._cur is None:
                    break
                continue
            k = min(need, self._cur.num_rows - self._off)
            parts.append(self._cur.slice(self._off, k))
            self._off += k
            need -= k
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else pa.concat_batches(parts)

    def exhausted(self) -> bool:
        return self.take(1) is None


# --------------------------------------------------------------------------------------------
# The stream


class JoinedStream:
    """The joined rows, streamed as ``pyarrow.RecordBatch`` es of at most ``batch_size`` rows.

    Iterating runs the join (again, for a second iteration); :attr:`report` is complete once
    an iteration has been exhausted. Columns are checked when the stream is built, so a
    missing or mistyped column fails before any row is read.

    Parameters
    ----------
    online : TableSource
        The online table (drives the join).
    offline, outcomes : TableSource, optional
        The replay and the outcomes. Ignored when the spec names an in-place column.
    spec : JoinSpec, optional
        Column names; defaults to DESIGN §2's.
    batch_size : int
        Most rows per yielded batch.
    memory_limit : str, optional
        DuckDB's memory limit (e.g. ``"4GB"``); past it DuckDB spills to a temporary
        directory. Default: DuckDB's (80% of RAM).
    threads : int, optional
        DuckDB threads; default: every core.
    aligned : {"auto", "never", "require"}
        ``"auto"`` proves alignment with a key-only scan and falls back to the hash join;
        ``"never"`` always hashes; ``"require"`` raises :class:`JoinError` when the tables
        are not aligned.
    temp_dir : str, optional
        Where DuckDB spills (a fresh folder inside it, removed afterwards). Default: the
        system temporary directory.

    Raises
    ------
    SchemaError
        A column is missing or of the wrong type.
    JoinError
        The key types differ between tables.
    ConfigError
        Output names collide, or the spec is inconsistent.
    """

    def __init__(
        self,
        online: TableSource,
        offline: TableSource | None = None,
        outcomes: TableSource | None = None,
        spec: JoinSpec | None = None,
        *,
        batch_size: int = 1 << 20,
        memory_limit: str | None = None,
        threads: int | None = None,
        aligned: Aligned = "auto",
        temp_dir: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"The join batch_size must be an int >= 1. Got {batch_size} instead.")
        if aligned not in ("auto", "never", "require"):
            raise ConfigError(
                "The 'aligned' option must be 'auto', 'never' or 'require'. "
                f"Got {aligned!r} instead."
            )
        self.spec = spec = spec or JoinSpec()
        self.online, self.batch_size = online, int(batch_size)
        self.memory_limit, self.threads = memory_limit, threads
        self.aligned, self.temp_dir = aligned, temp_dir
        keys = list(spec.keys)
        if len(set(keys)) != len(keys):
            raise ConfigError(f"The join keys {keys} name a column twice.")

        # Which way each side is joined, before looking at any row.
        if spec.online_offline_score is not None:
            self.offline_mode = "in_place"
        elif offline is not None:
            self.offline_mode = "join"  # "aligned" or "hash", decided when iterating
        else:
            self.offline_mode = "none"
        if spec.online_label is not None:
            self.outcome_mode = "in_place"
        elif outcomes is not None:
            self.outcome_mode = "hash"
        else:
            self.outcome_mode = "none"
        self.offline = offline if self.offline_mode == "join" else None
        self.outcomes = outcomes if self.outcome_mode == "hash" else None
        if not keys and (self.offline is not None or self.outcomes is not None):
            raise ConfigError(
                "A join key is needed to join the offline or outcomes table (keys is empty)."
            )

        # Online columns read, and the output names they take.
        value_online = spec.value is not None and self.outcome_mode != "hash"
        # A carried column that is also the source of the output of the same name (the usual
        # online "score") is output once, under that name.
        sources = {
            "score": spec.online_score,
            "offline_score": spec.online_offline_score,
            "label": spec.online_label,
            "value": spec.value if value_online else None,
        }
        self.carried = [
            c for c in _unique(keys + list(spec.online_columns)) if c in keys or sources.get(c) != c
        ]
        clash = [c for c in self.carried if c in RESERVED]
        if clash:
            raise ConfigError(
                f"The online column(s) {clash} would be overwritten by the join's own output "
                f"columns {list(RESERVED)}; rename them or leave them out of online_columns."
            )
        extra = [spec.online_score]
        if spec.online_label is not None:
            extra.append(spec.online_label)
        if spec.online_offline_score is not None:
            extra.append(spec.online_offline_score)
        if value_online:
            extra.append(spec.value)  # type: ignore[arg-type]
        self.online_read = _unique(self.carried + extra)

        # Column checks: metadata only.
        for k in keys:
            online.require(k, "key")
        for c in spec.online_columns:
            online.require(c, "any")
        online.require(spec.online_score, "numeric")
        if spec.online_label is not None:
            online.require(spec.online_label, _LABEL_KINDS)
        if spec.online_offline_score is not None:
            online.require(spec.online_offline_score, "numeric")
        if value_online:
            online.require(spec.value, "numeric")  # type: ignore[arg-type]
        if self.offline is not None:
            for k in keys:
                self.offline.require(k, "key")
            self.offline.require(spec.offline_score, "numeric")
        if self.outcomes is not None:
            for k in keys:
                self.outcomes.require(k, "key")
            self.outcomes.require(spec.label, _LABEL_KINDS)
            if spec.value is not None:
                self.outcomes.require(spec.value, "numeric")
            if spec.outcome_ts is not None:
                self.outcomes.require(spec.outcome_ts, _TS_KINDS)
        for other in (self.offline, self.outcomes):
            if other is None:
                continue
            for k in keys:
                a, b = online.schema.field(k).type, other.schema.field(k).type
                fa, fb = _key_family(a), _key_family(b)
                if fa is not None and fb is not None and fa != fb:
                    raise JoinError(
                        f"The key column '{k}' has type {a} in {online.where} but type {b} in "
                        f"{other.where}; the tables cannot be joined. Write the key with the "
                        "same type in both (e.g. both strings or both integers)."
                    )

        self.keys = keys
        self.value_online = value_online
        # The time column orders duplicates; it is read for that even when not carried
        # (carrying a timestamp through DuckDB into Arrow costs more than the join itself).
        self.online_ts = (
            spec.online_ts
            if spec.online_ts is not None and online.has(spec.online_ts)
            else None
        )
        fields = [pa.field(c, online.schema.field(c).type) for c in self.carried]
        fields += [pa.field("score", pa.float64()), pa.field("offline_score", pa.float64())]
        fields += [pa.field("label", pa.float64())]
        if spec.value is not None:
            fields.append(pa.field("value", pa.float64()))
        fields += [pa.field("__has_offline", pa.bool_()), pa.field("__has_outcome", pa.bool_())]
        #: The schema of every yielded batch (the SQL join hands the columns it codes,
        #: :attr:`encoded`, over as dictionary arrays instead).
        self.schema = pa.schema(fields)
        #: Carried columns the SQL join codes (``JoinSpec.encoded``): column -> (values, others).
        self.encoded = {c: (v, o) for c, v, o in spec.encoded if c in self.carried}
        self.report = JoinReport()
        self._stream_error: ParityError | None = None

    def columns_read(self) -> dict[str, list[str]]:
        """The columns the join reads from each table it joins (what a partition must hold).

        Returns
        -------
        dict
            ``"online"`` always; ``"offline"`` / ``"outcomes"`` when they are joined.
        """
        spec = self.spec
        cols = {"online": _unique(self.online_read + ([self.online_ts] if self.online_ts else []))}
        if self.offline is not None:
            cols["offline"] = _unique(self.keys + [spec.offline_score])
        if self.outcomes is not None:
            extra = [c for c in (spec.value, spec.outcome_ts) if c is not None]
            cols["outcomes"] = _unique(self.keys + [spec.label] + extra)
        return cols

    # ---------------------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return self._run()

    def read_all(self) -> pa.Table:
        """Run the join and collect every row (for tests and small inputs).

        Returns
        -------
        pyarrow.Table
        """
        # coded columns back to strings (values outside the top ones read as placeholders)
        return pa.Table.from_batches([b.cast(self.schema) for b in self], schema=self.schema)

    def _run(self) -> Iterator[pa.RecordBatch]:
        report = self.report = JoinReport()
        self._stream_error = None
        report.offline_join = self.offline_mode if self.offline_mode != "join" else "hash"
        report.outcome_join = self.outcome_mode
        tmp = tempfile.mkdtemp(prefix="parity-duckdb-", dir=self.temp_dir)
        con = duckdb.connect()
        try:
            self._configure(con, tmp)
            _register(con, "on_src", self.online)
            if self.offline is not None:
                _register(con, "off_src", self.offline)
            if self.outcomes is not None:
                _register(con, "oc_src", self.outcomes)
            report.online_rows = self.online.count_rows()
            dup_on = self._key_stats(con, "on_src", "__dup_on", "online")
            if self.offline is not None:
                report.offline_rows = self.offline.count_rows()
                if self._prove_aligned(dup_on):
                    report.offline_join = "aligned"
                else:
                    report.offline_join = "hash"
                    self._key_stats(con, "off_src", "__dup_off", "offline")
            if self.outcomes is not None:
                report.outcome_rows = self.outcomes.count_rows()
                if self._key_stats(con, "oc_src", "__dup_oc", "outcomes"):
                    self._label_conflicts(con)

            needs_sql = dup_on > 0 or report.offline_join == "hash" or report.outcome_join == "hash"
            if not needs_sql:
                source = self._arrow_stream(report.offline_join == "aligned")
            else:
                source = self._sql_stream(con, report)
            yield from self._counted(source, report)
        finally:
            con.close()
            shutil.rmtree(tmp, ignore_errors=True)

    def _counted(self, batches: Iterator[pa.RecordBatch], report: JoinReport) -> Iterator[pa.RecordBatch]:
        """Yield the joined batches in pieces of ``batch_size``, counting the matches as they
        pass; the report is complete once the last one has."""
        for batch in batches:
            for piece in self._split(batch):
                report.matched_offline += pc.sum(piece.column("__has_offline")).as_py() or 0
                report.matched_outcomes += pc.sum(piece.column("__has_outcome")).as_py() or 0
                yield piece
        if self.offline is not None:
            report.offline_without_online = (
                report.offline_rows - report.duplicate_keys["offline"] - report.matched_offline
            )
        report.complete = True

    def _split(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        """Conform to :attr:`schema` (columns coded by the SQL join stay dictionaries) and cut
        to ``batch_size`` rows."""
        schema = self.schema
        if self.encoded:
            schema = pa.schema(
                [batch.schema.field(f.name) if f.name in self.encoded and pa.types.is_dictionary(batch.schema.field(f.name).type) else f for f in schema]
            )
        if batch.schema != schema:
            try:
                batch = batch.cast(schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                # DuckDB maps a few Arrow types to types with no way back (durations become
                # intervals, ...): say which carried column cannot travel through the join.
                for f in self.schema:
                    col = batch.column(f.name)
                    try:
                        col.cast(f.type)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        raise SchemaError(
                            f"Column '{f.name}' of {self.online.where} has type {f.type}, which "
                            f"does not survive the join (it comes back as {col.type}). Leave it "
                            "out of the carried columns or convert it."
                        ) from exc
                raise
        for off in range(0, batch.num_rows, self.batch_size):
            yield batch.slice(off, self.batch_size)

    def _configure(self, con: duckdb.DuckDBPyConnection, tmp: str) -> None:
        threads = self.threads or os.cpu_count() or 1
        settings = [
            f"SET threads = {int(threads)}",
            f"SET temp_directory = '{tmp.replace(chr(39), chr(39) * 2)}'",
            # The stream's row order is not part of its contract; not keeping it saves memory.
            "SET preserve_insertion_order = false",
            "SET TimeZone = 'UTC'",
            # Arrow scans have no cardinality estimate, so DuckDB may build its hash table on
            # the online side (every carried column, all rows) and stream nothing until the
            # end. Every query here puts the side to build on the right: keep it there.
            "SET disabled_optimizers = 'build_side_probe_side'",
        ]
        if self.memory_limit is not None:
            settings.append(f"SET memory_limit = '{str(self.memory_limit).replace(chr(39), '')}'")
        for s in settings:
            try:
                con.execute(s)
            except duckdb.Error as exc:
                raise ConfigError(f"Invalid join setting ({s}): {exc}") from exc

    def _key_stats(self, con: duckdb.DuckDBPyConnection, src: str, table: str, side: str) -> int:
        """Count duplicate and null keys of one side; keep the duplicated keys in ``table``.

        One key-only aggregate. ``table`` holds every key seen more than once plus every key
        with a null component (few, in sane data), with its count ``__n``.
        """
        if not self.keys:
            return 0
        keys = ", ".join(_q(k) for k in self.keys)
        nul = _any_null(self.keys)
        self._exec(
            con,
            f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT {keys}, count(*) AS __n, "
            f"{nul} AS __null FROM {src} GROUP BY ALL HAVING count(*) > 1 OR {nul}",
        )
        ((dup, nulls),) = con.sql(
            f"SELECT coalesce(sum(__n - 1) FILTER (WHERE NOT __null), 0), "
            f"coalesce(sum(__n) FILTER (WHERE __null), 0) FROM {table}"
        ).fetchall()
        self.report.duplicate_keys[side] = int(dup)
        if side == "online":
            self.report.null_keys = int(nulls)
        return int(dup)

    def _label_conflicts(self, con: duckdb.DuckDBPyConnection) -> None:
        """Keys of duplicated outcome rows that disagree on the label, into ``__conf_oc``.

        Only the duplicated keys (``__dup_oc``, from :meth:`_key_stats`) are read again. With
        ``outcome_ts``, only the rows of a key's latest time are compared (``IS NOT DISTINCT
        FROM``: when every time is null, all the key's rows are).
        """
        keys = ", ".join(_q(k) for k in self.keys)
        skeys = ", ".join(f"s.{_q(k)}" for k in self.keys)
        label = f"CAST(s.{_q(self.spec.label)} AS DOUBLE)"
        eq = _key_eq(self.keys, "d", "s")
        rows = f"SELECT {skeys}, {label} AS __l"
        if self.spec.outcome_ts is not None:
            ts = f"s.{_q(self.spec.outcome_ts)}"
            rows += f", {ts} IS NOT DISTINCT FROM max({ts}) OVER (PARTITION BY {skeys}) AS __latest"
        else:
            rows += ", TRUE AS __latest"
        rows += f" FROM oc_src s WHERE EXISTS (SELECT 1 FROM __dup_oc d WHERE {eq} AND NOT d.__null)"
        self._exec(
            con,
            f"CREATE OR REPLACE TEMP TABLE __conf_oc AS SELECT {keys} FROM ({rows}) "
            f"WHERE __latest GROUP BY ALL HAVING min(__l) <> max(__l)",
        )
        ((n,),) = con.sql("SELECT count(*) FROM __conf_oc").fetchall()
        self.report.conflicting_labels = int(n)

    def _prove_aligned(self, dup_on: int) -> bool:
        """Whether offline holds online's keys in online's order (a key-only scan)."""
        assert self.offline is not None
        if self.aligned == "never":
            return False
        why = None
        if self.offline.count_rows() != self.online.count_rows():
            why = (
                f"it has {self.offline.count_rows()} rows and the online table "
                f"{self.online.count_rows()}"
            )
        elif dup_on:
            why = f"the online table has {dup_on} duplicated keys"
        else:
            a = self.online.batches(self.keys, self.batch_size)
            b = _Taker(self.offline.batches(self.keys, self.batch_size))
            for i, batch in enumerate(a):
                other = b.take(batch.num_rows)
                if other is None or not _keys_equal(batch, other, self.keys):
                    why = f"the keys differ from the online table's in batch {i}"
                    break
            else:
                if not b.exhausted():
                    why = "it has more rows than the online table"
        if why is None:
            return True
        if self.aligned == "require":
            raise JoinError(
                f"{self.offline.where[0].upper()}{self.offline.where[1:]} is not aligned with "
                f"{self.online.where}: {why}. Use aligned='auto' to hash-join instead."
            )
        return False

    # --------------------------------------------------------------------- no-SQL stream

    def _arrow_stream(self, aligned: bool) -> Iterator[pa.RecordBatch]:
        """Online rows (no duplicates) with in-place / aligned columns, built in Arrow alone."""
        spec = self.spec
        off_taker = None
        offline = self.offline
        if aligned:
            assert offline is not None
            cols = _unique(self.keys + [spec.offline_score])
            off_taker = _Taker(offline.batches(cols, self.batch_size))
        for batch in self.online.batches(self.online_read, self.batch_size):
            n = batch.num_rows
            out: dict[str, pa.Array] = {c: batch.column(c) for c in self.carried}
            out["score"] = batch.column(spec.online_score).cast(pa.float64())
            if off_taker is not None and offline is not None:
                other = off_taker.take(n)
                if other is None or not _keys_equal(batch, other, self.keys):
                    raise JoinError(
                        f"{offline.where} changed while it was read: its keys no longer "
                        f"match {self.online.where} row for row. Re-run the check."
                    )
                has = _valid_keys(batch, self.keys)
                score = other.column(spec.offline_score).cast(pa.float64())
                out["offline_score"] = pc.if_else(has, score, pa.scalar(None, pa.float64()))
                has_off = has
            elif self.offline_mode == "in_place":
                out["offline_score"] = batch.column(spec.online_offline_score).cast(pa.float64())
                has_off = out["offline_score"].is_valid()
            else:
                out["offline_score"] = pa.nulls(n, pa.float64())
                has_off = _const(n, False)
            if self.outcome_mode == "in_place":
                out["label"] = batch.column(spec.online_label).cast(pa.float64())
                has_oc = out["label"].is_valid()
            else:
                out["label"] = pa.nulls(n, pa.float64())
                has_oc = _const(n, False)
            if spec.value is not None:
                out["value"] = (
                    batch.column(spec.value).cast(pa.float64())
                    if self.value_online
                    else pa.nulls(n, pa.float64())  # joined from outcomes later, in SQL
                )
            out["__has_offline"] = has_off
            out["__has_outcome"] = has_oc
            yield pa.RecordBatch.from_arrays(list(out.values()), schema=self.schema)

    # ------------------------------------------------------------------------ SQL stream

    def _sql_stream(
        self, con: duckdb.DuckDBPyConnection, report: JoinReport
    ) -> Iterator[pa.RecordBatch]:
        spec, keys = self.spec, self.keys
        ctes = []
        # Online rows, one per key.
        if report.offline_join == "aligned":
            # The zipped Arrow stream (no online duplicates here: they disable alignment).
            zipped = self._guard(self._arrow_stream(aligned=True))
            con.register("on_zip", pa.RecordBatchReader.from_batches(self.schema, zipped))
            ctes.append("o AS (SELECT * FROM on_zip)")
        else:
            if report.offline_join == "hash":  # before ``o``: an online duplicate is paired by it
                ctes.append(f"f AS ({self._offline_sql(report.duplicate_keys['offline'] > 0)})")
            ctes.append(f"o AS ({self._dedup_online_sql(report.duplicate_keys['online'] > 0, report.offline_join)})")

        sel = [
            f"{code_sql('o.' + _q(c), *self.encoded[c])} AS {_q(c)}" if c in self.encoded else f"o.{_q(c)} AS {_q(c)}"
            for c in self.carried
        ]
        joins = []
        if report.offline_join == "aligned":
            sel += ["o.score AS score", "o.offline_score AS offline_score"]
            has_off = "o.__has_offline"
        else:
            sel.append(f"CAST(o.{_q(spec.online_score)} AS DOUBLE) AS score")
            if report.offline_join == "hash":
                joins.append(f"LEFT JOIN f ON {_key_eq(keys, 'o', 'f')}")
                sel.append("f.__offline_score AS offline_score")
                has_off = "(f.__m IS NOT NULL)"
            elif report.offline_join == "in_place":
                col = f"o.{_q(spec.online_offline_score)}"  # type: ignore[arg-type]
                sel.append(f"CAST({col} AS DOUBLE) AS offline_score")
                has_off = f"({col} IS NOT NULL)"
            else:
                sel.append("CAST(NULL AS DOUBLE) AS offline_score")
                has_off = "FALSE"
        if report.outcome_join == "hash":
            ctes.append(f"c AS ({self._outcomes_sql(report.duplicate_keys['outcomes'] > 0)})")
            joins.append(f"LEFT JOIN c ON {_key_eq(keys, 'o', 'c')}")
            sel.append("c.__label AS label")
            if spec.value is not None:
                sel.append("c.__value AS value")
            has_oc = "(c.__m IS NOT NULL)"
        else:
            # Not reached with the aligned stream: it goes through SQL only for outcomes.
            if report.outcome_join == "in_place":
                col = f"o.{_q(spec.online_label)}"  # type: ignore[arg-type]
                sel.append(f"CAST({col} AS DOUBLE) AS label")
                has_oc = f"({col} IS NOT NULL)"
            else:
                sel.append("CAST(NULL AS DOUBLE) AS label")
                has_oc = "FALSE"
            if spec.value is not None:
                sel.append(f"CAST(o.{_q(spec.value)} AS DOUBLE) AS value")
        sel += [f"{has_off} AS __has_offline", f"{has_oc} AS __has_outcome"]
        sql = f"WITH {', '.join(ctes)} SELECT {', '.join(sel)} FROM o {' '.join(joins)}"
        return self._decoded(self._fetch(con, sql))

    def _decoded(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """The SQL join's coded columns as dictionary arrays (:func:`code_dictionary`)."""
        if not self.encoded:
            yield from batches
            return
        dictionaries = {c: code_dictionary(*vo) for c, vo in self.encoded.items()}
        for batch in batches:
            arrays, fields = list(batch.columns), list(batch.schema)
            for c, dictionary in dictionaries.items():
                i = batch.schema.get_field_index(c)
                arrays[i] = pa.DictionaryArray.from_arrays(batch.column(i), dictionary)
                fields[i] = pa.field(c, arrays[i].type)
            yield pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))

    def _dedup_online_sql(self, has_dups: bool, offline_join: str = "none") -> str:
        cols = ", ".join(_q(c) for c in self.online_read)
        if not has_dups:
            return f"SELECT {cols} FROM on_src"
        # The row its replay was made from first: the one whose served score is closest to
        # the key's replay score (``f``, or the in-place column). Rows of one request logged
        # twice are equal, so this only matters when another request reused the key; pairing
        # that one with this key's replay would read as serving skew.
        order = []
        if offline_join == "hash":
            order.append(f"abs(CAST(s.{_q(self.spec.online_score)} AS DOUBLE) - f.__offline_score)")
        elif offline_join == "in_place":
            order.append(
                f"abs(CAST(s.{_q(self.spec.online_score)} AS DOUBLE) - "
                f"CAST(s.{_q(self.spec.online_offline_score)} AS DOUBLE))"  # type: ignore[arg-type]
            )
        if self.online_ts is not None:
            order.append(f"s.{_q(self.online_ts)}")
        order.append(f"s.{_q(self.spec.online_score)}")
        order += [f"s.{_q(c)}" for c in self.online_read if c not in (self.online_ts, self.spec.online_score) and c not in self.keys]
        order_sql = ", ".join(f"{c} ASC NULLS LAST" for c in order)
        part = ", ".join(f"s.{_q(k)}" for k in self.keys)
        eq = _key_eq(self.keys, "d", "s")
        paired = f" LEFT JOIN f ON {_key_eq(self.keys, 's', 'f')}" if offline_join == "hash" else ""
        qualified = ", ".join(f"s.{_q(c)}" for c in self.online_read)
        # Rows of unduplicated keys (and of null keys) stream through an anti join against the
        # few duplicated keys; only the duplicated ones are ranked.
        return (
            f"SELECT {cols} FROM on_src s WHERE NOT EXISTS (SELECT 1 FROM __dup_on d WHERE {eq}) "
            f"UNION ALL SELECT {cols} FROM ("
            f"SELECT {qualified}, row_number() OVER (PARTITION BY {part} ORDER BY {order_sql}) AS __rn "
            f"FROM on_src s{paired} WHERE EXISTS (SELECT 1 FROM __dup_on d WHERE {eq})"
            f") WHERE __rn = 1"
        )

    def _offline_sql(self, has_dups: bool) -> str:
        keys = ", ".join(_q(k) for k in self.keys)
        score = f"CAST({_q(self.spec.offline_score)} AS DOUBLE)"
        where = f"NOT {_any_null(self.keys)}"
        if has_dups:  # smallest score per key (min skips nulls: null sorts last)
            return (
                f"SELECT {keys}, min({score}) AS __offline_score, TRUE AS __m FROM off_src "
                f"WHERE {where} GROUP BY {keys}"
            )
        return f"SELECT {keys}, {score} AS __offline_score, TRUE AS __m FROM off_src WHERE {where}"

    def _outcomes_sql(self, has_dups: bool) -> str:
        spec = self.spec
        keys = ", ".join(_q(k) for k in self.keys)
        cols = [f"CAST({_q(spec.label)} AS DOUBLE) AS __label"]
        if spec.value is not None:
            cols.append(f"CAST({_q(spec.value)} AS DOUBLE) AS __value")
        cols.append("TRUE AS __m")
        sel = ", ".join(cols)
        where = f"NOT {_any_null(self.keys)}"
        if not has_dups:
            return f"SELECT {keys}, {sel} FROM oc_src WHERE {where}"
        order = []
        if spec.outcome_ts is not None:
            order.append(_q(spec.outcome_ts))
        order.append(_q(spec.label))
        if spec.value is not None:
            order.append(_q(spec.value))
        order_sql = ", ".join(f"{c} DESC NULLS LAST" for c in order)
        ranked = (
            f"SELECT {keys}, {sel} FROM oc_src WHERE {where} "
            f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {order_sql}) = 1"
        )
        if not self.report.conflicting_labels:
            return ranked
        # keys whose rows disagree on the label: the label is missing, not resolved
        eq = _key_eq(self.keys, "x", "r")
        rest = [c.rsplit(" AS ", 1)[1] for c in cols[1:]]
        return (
            f"SELECT {', '.join('r.' + _q(k) for k in self.keys)}, CASE WHEN EXISTS "
            f"(SELECT 1 FROM __conf_oc x WHERE {eq}) THEN NULL ELSE r.__label END AS __label, "
            f"{', '.join('r.' + c for c in rest)} FROM ({ranked}) r"
        )

    def _exec(self, con: duckdb.DuckDBPyConnection, sql: str) -> None:
        try:
            con.execute(sql)
        except duckdb.Error as exc:
            raise self._translate(exc) from exc

    def _fetch(self, con: duckdb.DuckDBPyConnection, sql: str) -> Iterator[pa.RecordBatch]:
        try:
            reader = con.sql(sql).to_arrow_reader(self.batch_size)
            yield from reader
        except duckdb.Error as exc:
            raise self._translate(exc) from exc

    def _guard(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Keep an error raised inside a stream DuckDB reads, which DuckDB would flatten."""
        try:
            yield from batches
        except ParityError as exc:
            self._stream_error = exc
            raise

    def _translate(self, exc: duckdb.Error) -> Exception:
        """DuckDB errors the user can cause, as ParityErrors; anything else is a bug."""
        if self._stream_error is not None:
            return self._stream_error
        msg = str(exc).strip().splitlines()[0]
        if isinstance(exc, duckdb.OutOfMemoryException):
            return JoinError(
                f"The join ran out of memory ({msg}). Raise duckdb_memory_limit in the "
                "config, or run partitioned (--checkpoint DIR, or --scheduler): each key "
                "bucket of about partition_rows rows is then joined on its own, so the memory "
                "needed does not grow with the tables."
            )
        if isinstance(
            exc, (duckdb.IOException, duckdb.InvalidInputException, duckdb.ConversionException)
        ):
            registered = {
                "on_src": self.online,
                "on_zip": self.online,
                "off_src": self.offline,
                "oc_src": self.outcomes,
            }
            for name, src in registered.items():
                if src is not None and f"registered as '{name}' failed: " in msg:
                    detail = msg.split(" failed: ", 1)[1]
                    return SchemaError(f"Could not read {src.where}: {detail}")
            return JoinError(f"The join failed while reading its inputs: {msg}")
        return exc


def join(
    online: TableSource,
    offline: TableSource | None = None,
    outcomes: TableSource | None = None,
    spec: JoinSpec | None = None,
    **options: Any,
) -> JoinedStream:
    """Build a :class:`JoinedStream` (see there for ``options``).

    Returns
    -------
    JoinedStream
    """
    return JoinedStream(online, offline, outcomes, spec, **options)
