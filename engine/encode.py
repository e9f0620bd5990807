"""The encode stage: rows -> integer codes, with everything frozen in the baseline.

A :class:`Layout` fixes the cells of every statistic: slice values (top-K per column, by
exact count, ties broken by value, plus ``__other__`` and ``__null__``), the fine score
edges (baseline score quantiles plus every decile and decision threshold), feature edges and
categories. It is computed once from the evaluation data and stored in the baseline, so
every batch, file, partition and worker encodes the same way.

:func:`encode_batch` turns one Arrow batch into the codes the accumulator counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import ConfigError

OTHER = "__other__"
NULL = "__null__"

#: Log-loss clipping: p is clipped to [LOG_EPS, 1 - LOG_EPS] (sklearn's float64 habit).
LOG_EPS = 1e-15
#: At most this many distinct values per categorical column are remembered as "seen".
MAX_SEEN_VALUES = 100_000
#: Quantile bins of the bootstrap's coarse score grid (deciles and thresholds are added).
COARSE_SCORE_BINS = 32
#: A uniform grid of this many bins is always part of the fine score edges.
UNIFORM_SCORE_BINS = 256
#: Label states of a row.
LABEL_NEG, LABEL_POS, LABEL_MISSING = 0, 1, 2
N_LABEL_STATES = 3


def escape_value(value: str) -> str:
    """A real slice value as it appears in outputs: unchanged, unless it equals a sentinel
    (``__null__``, ``__other__``) or starts with a backslash, which gets one more leading
    backslash. So ``"__null__"`` is a null and ``"\\__null__"`` the string ``__null__``: the
    two can never collide, and every other value reads as itself."""
    return "\\" + value if value in (OTHER, NULL) or value.startswith("\\") else value


@dataclass(frozen=True)
class CategoricalCodes:
    """Top-K values of a categorical column and the codes of the folded tail and nulls.

    Codes are ``0..K-1`` for ``values`` (in order), ``K`` for ``__other__``, ``K+1`` for
    ``__null__``.
    """

    values: tuple[str, ...]
    #: Every value seen in the baseline (for unseen-value findings); None if too many.
    seen: frozenset[str] | None = None

    @property
    def size(self) -> int:
        return len(self.values) + 2

    @property
    def labels(self) -> tuple[str, ...]:
        """The slice value of each code; a real value that would read as a sentinel is
        escaped (see :func:`escape_value`)."""
        return tuple(escape_value(v) for v in self.values) + (OTHER, NULL)


@dataclass(frozen=True)
class FeatureLayout:
    """How one feature is binned.

    Numeric: ``edges`` are baseline quantiles (deciles are a subset: ``decile_bins`` maps
    each fine bin to its decile), bin ``len(edges) + 1`` holds NaN/null. Categorical:
    ``categories`` codes.
    """

    name: str
    kind: str  # "numeric" | "categorical"
    edges: np.ndarray | None = None
    decile_bins: np.ndarray | None = None
    low: float = 0.0
    high: float = 1.0
    categories: CategoricalCodes | None = None

    @property
    def n_bins(self) -> int:
        if self.kind == "numeric":
            return len(self.edges) + 2  # + the missing bin
        return self.categories.size


def _unique_sorted(values: Iterable[float]) -> np.ndarray:
    arr = np.unique(np.asarray(list(values), dtype=np.float64))
    return arr[np.isfinite(arr)]


def quantile_edges(
    sample: np.ndarray, n_bins: int, lo: float = -np.inf, hi: float = np.inf, *, presorted: bool = False
) -> np.ndarray:
    """Interior edges at the ``k / n_bins`` quantiles of ``sample``, de-duplicated.

    The quantiles are ``np.quantile(..., method="inverted_cdf")``'s, taken from the sorted
    sample (a sort is 3-6x faster than that call's multi-point partition at 1M values, and
    one sort serves every grid of a sample: ``presorted``). Edges equal to the sample minimum
    are dropped (the first bin would be empty), and only edges strictly inside ``(lo, hi)``
    are kept.
    """
    finite = sample[np.isfinite(sample)]
    ordered = finite if presorted else np.sort(finite)
    if ordered.size == 0:
        return np.zeros(0)
    # the inverted CDF at k/n: order statistic ceil(size k/n), numpy's index arithmetic
    virtual = ordered.size * (np.arange(1, n_bins) / n_bins) - 1
    below = np.floor(virtual)
    index = np.where(virtual - below == 0, below, below + 1).astype(np.intp)
    q = np.unique(ordered[np.maximum(index, 0)])
    q = q[(q > ordered[0]) & (q > lo) & (q < hi)]
    return q.astype(np.float64)


@dataclass(frozen=True)
class Layout:
    """Everything that fixes the cells; built from the baseline, then frozen.

    Slice index ``0`` is the whole population; slice dimension ``d`` (a slice column, or a
    cross of two) owns slices ``slice_offsets[d] .. slice_offsets[d] + n_d - 1``.
    """

    slice_columns: tuple[str, ...]
    slice_codes: dict[str, CategoricalCodes]
    crosses: tuple[tuple[str, str], ...]
    thresholds: tuple[float, ...]
    #: Fine score edges: quantiles, deciles and thresholds, strictly increasing, in (0, 1).
    score_edges: np.ndarray
    #: Score deciles (a subset of ``score_edges``).
    decile_edges: np.ndarray
    #: Coarse grid for the bootstrap: calibration edges plus ~32 quantiles (subset of fine).
    coarse_edges: np.ndarray
    features: tuple[FeatureLayout, ...] = ()
    delta_edges: np.ndarray = field(default_factory=lambda: default_delta_edges())
    #: Slice columns whose full cross is accumulated as *atoms* (DESIGN section 6a): cells
    #: that are never judged, from which "slice S without the rows of slice S'" is derived
    #: for localisation. Empty: no atoms.
    atoms: tuple[str, ...] = ()

    # ------------------------------------------------------------------ derived sizes
    @property
    def calib_edges(self) -> np.ndarray:
        """Calibration bins: score deciles split at every threshold (subset of fine edges)."""
        return np.union1d(self.decile_edges, np.asarray(self.thresholds, dtype=np.float64))

    @property
    def n_fine(self) -> int:
        return len(self.score_edges) + 1

    @property
    def dims(self) -> list[tuple[str, ...]]:
        """The slice dimensions: each column, then each cross."""
        return [(c,) for c in self.slice_columns] + [tuple(x) for x in self.crosses]

    def dim_size(self, dim: tuple[str, ...]) -> int:
        size = 1
        for col in dim:
            size *= self.slice_codes[col].size
        return size

    @property
    def stat_dims(self) -> list[tuple[str, ...]]:
        """The dimensions accumulated: the judged ones, then the atoms (when any)."""
        return self.dims + ([tuple(self.atoms)] if self.atoms else [])

    @property
    def n_atoms(self) -> int:
        return self.dim_size(tuple(self.atoms)) if self.atoms else 0

    def atom_codes(self) -> np.ndarray:
        """``(n_atoms, len(atoms))``: each atom's code in each of its columns (the order of
        its cells: the last column varies fastest)."""
        sizes = [self.slice_codes[c].size for c in self.atoms]
        grids = np.meshgrid(*[np.arange(n) for n in sizes], indexing="ij")
        return np.stack([g.ravel() for g in grids], axis=1) if sizes else np.zeros((0, 0), np.int64)

    @property
    def slice_offsets(self) -> np.ndarray:
        """First slice index of each dimension (slice 0 is the whole population)."""
        sizes = [self.dim_size(d) for d in self.dims]
        return (1 + np.concatenate([[0], np.cumsum(sizes)[:-1]])).astype(np.int64) if sizes else np.zeros(0, np.int64)

    @property
    def n_slices(self) -> int:
        return 1 + sum(self.dim_size(d) for d in self.dims)

    def slice_labels(self) -> list[dict[str, str]]:
        """The ``slice`` mapping of every slice index (``{}`` for the whole population)."""
        labels: list[dict[str, str]] = [{}]
        for dim in self.dims:
            per_col = [self.slice_codes[c].labels for c in dim]
            grids = np.meshgrid(*[np.arange(len(v)) for v in per_col], indexing="ij")
            for idx in zip(*[g.ravel() for g in grids]):
                labels.append({c: per_col[k][i] for k, (c, i) in enumerate(zip(dim, idx))})
        return labels

    def slice_keys(self) -> np.ndarray:
        """A stable 64-bit key per slice, from its meaning (column=value pairs)."""
        return np.array([stable_key(json.dumps(s, sort_keys=True)) for s in self.slice_labels()], dtype=np.uint64)

    def fine_to(self, edges: np.ndarray) -> np.ndarray:
        """Map each fine score bin to the bin of a coarser subset of its edges."""
        lower = np.concatenate([[-np.inf], self.score_edges])
        return np.searchsorted(edges, lower, side="right").astype(np.int32)

    def threshold_bins(self) -> np.ndarray:
        """Fine-bin index of each threshold: ``score >= t`` iff ``bin >= threshold_bins``."""
        return np.searchsorted(self.score_edges, np.asarray(self.thresholds), side="left").astype(np.int64) + 1

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        def cat(c: CategoricalCodes) -> dict[str, Any]:
            return {"values": list(c.values), "seen": None if c.seen is None else sorted(c.seen)}

        return {
            "slice_columns": list(self.slice_columns),
            "slice_codes": {k: cat(v) for k, v in self.slice_codes.items()},
            "crosses": [list(x) for x in self.crosses],
            "thresholds": list(self.thresholds),
            **({"atoms": list(self.atoms)} if self.atoms else {}),
            "score_edges": self.score_edges.tolist(),
            "decile_edges": self.decile_edges.tolist(),
            "coarse_edges": self.coarse_edges.tolist(),
            "delta_edges": self.delta_edges.tolist(),
            "features": [
                {
                    "name": f.name,
                    "kind": f.kind,
                    "edges": None if f.edges is None else f.edges.tolist(),
                    "decile_bins": None if f.decile_bins is None else f.decile_bins.tolist(),
                    "low": f.low,
                    "high": f.high,
                    "categories": None if f.categories is None else cat(f.categories),
                }
                for f in self.features
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Layout":
        def cat(c: dict[str, Any] | None) -> CategoricalCodes | None:
            if c is None:
                return None
            return CategoricalCodes(tuple(c["values"]), None if c["seen"] is None else frozenset(c["seen"]))

        arr = lambda x: None if x is None else np.asarray(x, dtype=np.float64)  # noqa: E731
        return cls(
            slice_columns=tuple(d["slice_columns"]),
            slice_codes={k: cat(v) for k, v in d["slice_codes"].items()},
            crosses=tuple(tuple(x) for x in d["crosses"]),
            thresholds=tuple(d["thresholds"]),
            atoms=tuple(d.get("atoms", ())),
            score_edges=arr(d["score_edges"]),
            decile_edges=arr(d["decile_edges"]),
            coarse_edges=arr(d["coarse_edges"]),
            delta_edges=arr(d["delta_edges"]),
            features=tuple(
                FeatureLayout(
                    name=f["name"],
                    kind=f["kind"],
                    edges=arr(f["edges"]),
                    decile_bins=None if f["decile_bins"] is None else np.asarray(f["decile_bins"], dtype=np.int32),
                    low=f["low"],
                    high=f["high"],
                    categories=cat(f["categories"]),
                )
                for f in d["features"]
            ),
        )

    def with_atoms(self, max_atoms: int) -> "Layout":
        """This layout with atoms over its slice columns (see :func:`choose_atoms`)."""
        return dataclasses.replace(self, atoms=choose_atoms(self.slice_columns, self.slice_codes, max_atoms))

    def with_slice_column(self, name: str, codes: CategoricalCodes) -> "Layout":
        """This layout with one more slice column (e.g. ``model_version``, found online)."""
        return dataclasses.replace(
            self, slice_columns=self.slice_columns + (name,), slice_codes={**self.slice_codes, name: codes}
        )

    def fingerprint(self) -> str:
        """A hash of the layout: statistics merge only when their layouts agree."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def choose_atoms(columns: Iterable[str], codes: dict[str, CategoricalCodes], max_atoms: int) -> tuple[str, ...]:
    """The slice columns whose cross makes the atoms, at most ``max_atoms`` cells.

    All of them when their cross fits; otherwise the column with the most values is left out
    until it fits (a localisation across a column left out can still use that column's
    own slices: "the population without S'" needs no atoms). Fewer than two columns need no
    atoms: every slice is then one already.
    """
    cols = list(columns)
    while len(cols) >= 2 and math.prod(codes[c].size for c in cols) > max_atoms:
        cols.remove(max(cols, key=lambda c: (codes[c].size, c)))
    return tuple(cols) if len(cols) >= 2 else ()


def stable_key(text: str) -> int:
    """A 64-bit key from text, the same on every machine and Python run."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def default_delta_edges(n_bins: int = 256) -> np.ndarray:
    """|online - offline| histogram edges: 0 gets its own bin, then log-spaced 1e-7 .. 1."""
    return np.concatenate([[1e-12], np.geomspace(1e-7, 1.0, n_bins - 1)])


# ---------------------------------------------------------------------- building the layout
class LayoutBuilder:
    """First pass over the evaluation data: exact value counts and a score/feature sample.

    Top-K uses exact counts over every row. Quantile edges come from a deterministic sample:
    every row while the table has at most ``max_sample`` rows, else every ``stride``-th row by
    its position in the table, so the sample (hence the layout) does not depend on how the
    table is cut into batches. Without ``total_rows`` (a stream of unknown length) the sample
    is thinned by half whenever it doubles past ``max_sample``, which depends on the batch
    boundaries. The edges need not be exact quantiles: counts are exact for whatever edges
    are frozen.
    """

    def __init__(
        self,
        slice_columns: Iterable[str],
        features: dict[str, str],
        thresholds: Iterable[float],
        *,
        score_column: str = "score",
        top_k: int = 100,
        score_bins: int = 1024,
        crosses: Iterable[tuple[str, str]] = (),
        max_sample: int = 4_000_000,
        total_rows: int | None = None,
        max_atoms: int = 1024,
    ) -> None:
        self.slice_columns = tuple(slice_columns)
        self.features = dict(features)
        self.thresholds = tuple(sorted(set(float(t) for t in thresholds)))
        self.score_column = score_column
        self.top_k = top_k
        self.score_bins = score_bins
        self.crosses = tuple(tuple(c) for c in crosses)
        self.max_sample = max_sample
        self.max_atoms = max_atoms
        cat_cols = list(self.slice_columns) + [f for f, k in self.features.items() if k == "categorical"]
        self._counts: dict[str, Counter] = {c: Counter() for c in cat_cols}
        self._samples: dict[str, list[np.ndarray]] = {self.score_column: []}
        self._samples.update({f: [] for f, k in self.features.items() if k == "numeric"})
        self._rows = 0
        self._stride = max(1, -(-int(total_rows) // max_sample)) if total_rows else None

    def update(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Count values and sample numbers from one batch."""
        n = batch.num_rows
        take = None
        if self._stride is not None and self._stride > 1:
            positions = np.arange(self._rows, self._rows + n)
            take = np.nonzero(positions % self._stride == 0)[0]
        self._rows += n
        for col, counter in self._counts.items():
            counter.update(count_values([batch], col))
        for col, chunks in self._samples.items():
            values = _to_float(batch.column(col))
            if take is not None:
                values = values[take]
            chunks.append(values[np.isfinite(values)])
        total = sum(c.size for c in self._samples[self.score_column])
        if self._stride is None and total > 2 * self.max_sample:  # bounded memory: thin by 2
            for col, chunks in self._samples.items():
                merged = np.concatenate(chunks) if chunks else np.zeros(0)
                self._samples[col] = [merged[::2]]

    def build(self) -> Layout:
        """Freeze the layout."""
        slice_codes = {c: self._top_k(c) for c in self.slice_columns}
        scores = np.concatenate(self._samples[self.score_column]) if self._samples[self.score_column] else np.zeros(0)
        scores = np.sort(scores[(scores >= 0) & (scores <= 1)])
        if scores.size == 0:
            raise ConfigError("The evaluation data has no valid score in [0, 1]; cannot build a baseline.")
        deciles = quantile_edges(scores, 10, 0.0, 1.0, presorted=True)
        fine = quantile_edges(scores, self.score_bins, 0.0, 1.0, presorted=True)
        thresholds = np.asarray(self.thresholds, dtype=np.float64)
        # Quantile edges resolve the baseline's own scores; a uniform 1/256 grid (and
        # log-spaced edges below the first quantile) keeps online scores that moved outside
        # the baseline's range resolved too (AUC stays within 0.002 under a shift).
        floor_grid = np.arange(1, UNIFORM_SCORE_BINS) / UNIFORM_SCORE_BINS
        low_tail = np.geomspace(1e-7, fine[0], 16)[:-1] if fine.size and fine[0] > 1e-7 else np.zeros(0)
        score_edges = _unique_sorted(np.concatenate([fine, deciles, thresholds, floor_grid, low_tail]))
        coarse = quantile_edges(scores, COARSE_SCORE_BINS, 0.0, 1.0, presorted=True)
        coarse_edges = _unique_sorted(np.concatenate([coarse, deciles, thresholds]))
        # the coarse grid must be a coarsening of the fine one (k/32 = 32k/1024 quantiles)
        coarse_edges = coarse_edges[np.isin(coarse_edges, score_edges)]
        features = []
        for name, kind in self.features.items():
            if kind == "numeric":
                values = np.sort(np.concatenate(self._samples[name])) if self._samples[name] else np.zeros(0)
                dec = quantile_edges(values, 10, presorted=True)
                edges = _unique_sorted(np.concatenate([quantile_edges(values, 32, presorted=True), dec]))
                lower = np.concatenate([[-np.inf], edges])
                decile_bins = np.searchsorted(dec, lower, side="right").astype(np.int32)
                low = float(values.min()) if values.size else 0.0
                high = float(values.max()) if values.size else 1.0
                features.append(FeatureLayout(name, "numeric", edges, decile_bins, low, high))
            elif kind == "categorical":
                features.append(FeatureLayout(name, "categorical", categories=self._top_k(name)))
            else:
                raise ConfigError(f"The kind of feature '{name}' must be 'numeric' or 'categorical'. Got {kind!r} instead.")
        return Layout(
            slice_columns=self.slice_columns,
            slice_codes=slice_codes,
            crosses=self.crosses,
            thresholds=self.thresholds,
            score_edges=score_edges,
            decile_edges=deciles,
            coarse_edges=coarse_edges,
            features=tuple(features),
            atoms=choose_atoms(self.slice_columns, slice_codes, self.max_atoms),
        )

    def _top_k(self, col: str) -> CategoricalCodes:
        return top_k_codes(self._counts[col], self.top_k)


def count_values(batches: Iterable[pa.RecordBatch], column: str) -> Counter:
    """Exact value counts of one column (as strings; None for null) over a stream."""
    counter: Counter = Counter()
    for batch in batches:
        for item in pc.value_counts(_as_string(batch.column(column))).to_pylist():
            counter[item["values"]] += item["counts"]
    return counter


def top_k_codes(counter: Counter, k: int) -> CategoricalCodes:
    """The ``k`` most frequent values by exact count, ties broken by value (the same top-K
    on any machine), and the set of every value seen (None past ``MAX_SEEN_VALUES``)."""
    items = [(v, n) for v, n in counter.items() if v is not None]
    items.sort(key=lambda vn: (-vn[1], vn[0]))
    values = tuple(v for v, _ in items[:k])
    seen = frozenset(v for v, _ in items) if len(items) <= MAX_SEEN_VALUES else None
    return CategoricalCodes(values, seen)


# ---------------------------------------------------------------------- encoding a batch
def _as_string(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.cast(pa.string()) if not pa.types.is_string(col.type.value_type) else col
        return col
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    return pc.cast(col, pa.string())


def _to_float(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric column as float64 numpy, nulls as NaN."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_boolean(col.type):
        col = pc.cast(col, pa.int8())
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_decimal(col.type)):
        col = pc.cast(col, pa.float64())
    out = col.to_numpy(zero_copy_only=False)
    if out.dtype != np.float64 and out.dtype != np.float32:
        out = out.astype(np.float64)
    return out


def dictionary_parts(col: pa.Array | pa.ChunkedArray, codes: CategoricalCodes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A column as dictionary indices plus per-entry code and unseen tables.

    Returns ``(indices, lut, unseen)``: ``indices`` (n,) int32 with -1 for null;
    ``lut[i]`` the code of dictionary entry ``i`` (``K`` for ``__other__``, ``K+1`` for a null
    entry); ``unseen[i]`` whether entry ``i`` was never seen in the baseline. Dictionary
    columns are mapped once per dictionary, not per row.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col if pa.types.is_integer(col.type) else _as_string(col))
    dictionary = _as_string(col.dictionary)
    k = len(codes.values)
    value_set = pa.array(list(codes.values), type=pa.string())
    found = pc.index_in(dictionary, value_set=value_set)
    lut = np.asarray(found.fill_null(k).to_numpy(zero_copy_only=False), dtype=np.int32)
    dict_null = dictionary.is_null().to_numpy(zero_copy_only=False)
    lut = np.where(dict_null, k + 1, lut).astype(np.int32)
    if codes.seen is not None:
        seen_set = pa.array(sorted(codes.seen), type=pa.string())
        unseen = ~pc.is_in(dictionary, value_set=seen_set).to_numpy(zero_copy_only=False) & ~dict_null
    else:
        unseen = np.zeros(len(dictionary), dtype=bool)
    indices = col.indices
    if indices.null_count:
        indices = indices.fill_null(-1)
    idx = np.asarray(indices.to_numpy(zero_copy_only=False), dtype=np.int32)
    return idx, lut, unseen


def categorical_codes(col: pa.Array | pa.ChunkedArray, codes: CategoricalCodes) -> tuple[np.ndarray, np.ndarray]:
    """Per-row codes of a column, and a mask of values never seen in the baseline."""
    idx, lut, unseen = dictionary_parts(col, codes)
    null = idx < 0
    safe = np.where(null, 0, idx)
    if lut.size == 0:  # an all-null column has an empty dictionary
        return np.full(idx.shape, len(codes.values) + 1, np.int32), np.zeros(idx.shape, bool)
    out = np.where(null, len(codes.values) + 1, lut[safe]).astype(np.int32)
    return out, np.where(null, False, unseen[safe])
