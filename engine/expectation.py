"""The baseline (`parity baseline`): the offline expectation, built from evaluation data.

A baseline directory is self-describing::

    manifest.json     id, created_at, engine version, inputs (fingerprints), rows, meta
    config.yaml       the configuration it was built with (slices, features, thresholds...)
    layout.json       the frozen cells: top-K values, score and feature edges
    statistics.npz    the evaluation data's sufficient statistics on that layout

``parity check`` takes slices, thresholds and edges from it, so every later run encodes the
same way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine import __version__
from engine.config import Config, load_config
from engine.encode import LayoutBuilder, Layout
from engine.errors import ConfigError, SchemaError
from engine.io import TableSource, open_table
from engine.stats import LABEL, SCORE, VALUE, Accumulator, Statistics
from kernels import get_kernels

LAYOUT_FILE, STATS_FILE, MANIFEST_FILE, CONFIG_FILE = "layout.json", "statistics.npz", "manifest.json", "config.yaml"


@dataclass
class Baseline:
    """A built (or loaded) baseline."""

    layout: Layout
    statistics: Statistics
    config: Config
    manifest: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def id(self) -> str:
        return self.manifest.get("id", "")

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write the directory atomically (a temporary sibling, then a rename)."""
        out = Path(out_dir)
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).is_file())):
            raise ConfigError(
                f"The baseline output '{out}' exists and is not a parity baseline; "
                "choose another directory (nothing was overwritten)."
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            self.write_files(tmp)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = str(out)

    def write_files(self, directory: Path) -> None:
        """Write the four files of a baseline directory into ``directory`` (which exists)."""
        (directory / LAYOUT_FILE).write_text(json.dumps(self.layout.to_dict()))
        self.statistics.to_npz(directory / STATS_FILE)
        (directory / CONFIG_FILE).write_text(self.config.to_yaml())
        (directory / MANIFEST_FILE).write_text(json.dumps(self.manifest, indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Baseline":
        """Read a baseline directory; a missing or foreign directory is a ConfigError.

        ``HISTORY_DIR/<run id>`` (or ``HISTORY_DIR/latest``) names a recorded run of a run
        history: its stored online statistics are the baseline (see :mod:`engine.store`).
        """
        p = Path(path)
        missing = [f for f in (LAYOUT_FILE, STATS_FILE, MANIFEST_FILE, CONFIG_FILE) if not (p / f).is_file()]
        if not p.is_dir():
            from engine.store import run_baseline_dir

            stored = run_baseline_dir(p)
            if stored is not None:
                return cls.load(stored)
        if not p.is_dir() or missing:
            raise ConfigError(
                f"The baseline directory '{path}' is not a parity baseline"
                + (f": {', '.join(missing)} missing." if p.is_dir() else ": it does not exist.")
                + " Build one with 'parity baseline DATA --out DIR'."
            )
        try:
            layout = Layout.from_dict(json.loads((p / LAYOUT_FILE).read_text()))
            stats = Statistics.from_npz(p / STATS_FILE)
            manifest = json.loads((p / MANIFEST_FILE).read_text())
        except (ValueError, KeyError, OSError) as exc:
            raise ConfigError(f"The baseline directory '{path}' is unreadable or corrupt ({exc}).") from None
        if stats.layout_id != layout.fingerprint():
            raise ConfigError(
                f"The baseline directory '{path}' is inconsistent: its statistics were built on "
                "another layout. Rebuild it with 'parity baseline'."
            )
        return cls(layout, stats, load_config(p / CONFIG_FILE), manifest, str(p))


def _require_columns(src: TableSource, config: Config) -> None:
    cols = config.columns.evaluation
    src.require(cols.score, "numeric")
    src.require(cols.label, ("integer_or_bool", "numeric"))
    for c in config.slices:
        src.require(c, "any")
    for f, kind in config.features.items():
        src.require(f, "numeric" if kind == "numeric" else "any")
    if cols.weight is not None:
        raise ConfigError(
            f"The 'columns.evaluation.weight' option names '{cols.weight}', but sample weights are not "
            "supported yet; remove the option (or downsample without weights)."
        )


def _renamed(batch: pa.RecordBatch, renames: dict[str, str]) -> pa.RecordBatch:
    """The batch with canonical names for score/label/value (other columns unchanged)."""
    names = [renames.get(n, n) for n in batch.schema.names]
    return pa.RecordBatch.from_arrays(batch.columns, names=names)


def _validate(src: TableSource, stats: Statistics, acc: Accumulator, config: Config) -> dict[str, int]:
    """Count the evaluation rows a baseline cannot use, and refuse above ``max_invalid_share``.

    Invalid scores (outside [0, 1], NaN) and labels (not 0/1, or missing) are excluded from
    the statistics that need them; a few are recorded in the manifest, many mean the data is
    not what the baseline assumes (logits instead of probabilities, labels coded 1/2) and
    would make every later check alert, so they are an error naming the column and a value.
    """
    flags = dict(zip(acc.dq_flags, stats.grid("dq")[0, 0].tolist()))
    rows = int(flags["rows"])
    quality = {
        "rows": rows,
        "invalid_scores": int(flags["invalid_score"]),
        "invalid_labels": int(flags["invalid_label"]),
        "missing_labels": rows - int(flags["has_label"]) - int(flags["invalid_label"]),
    }
    cols = config.columns.evaluation
    limit = config.max_invalid_share
    for column, count, what, bad in (
        (cols.score, quality["invalid_scores"], "scores outside [0, 1] or NaN", _bad_score),
        (cols.label, quality["invalid_labels"] + quality["missing_labels"], "labels that are not 0 or 1 (or missing)", _bad_label),
    ):
        if count > limit * rows:
            example = _first(src, column, bad)
            raise SchemaError(
                f"The evaluation data {src.where}: {count:,} of {rows:,} rows ({count / rows:.1%}) have "
                f"{what} in column '{column}' (for example {example!r}); at most "
                f"{limit:.1%} are accepted (max_invalid_share). Scores must be probabilities "
                "(apply the sigmoid to logits) and labels 0/1."
            )
    return quality


def _bad_score(values: pa.Array) -> pa.Array:
    x = pc.cast(values, pa.float64())
    return pc.or_kleene(pc.or_kleene(pc.is_nan(x), pc.less(x, 0.0)), pc.greater(x, 1.0)).fill_null(True)


def _bad_label(values: pa.Array) -> pa.Array:
    x = pc.cast(values, pa.float64())
    return pc.invert(pc.or_kleene(pc.equal(x, 0.0), pc.equal(x, 1.0))).fill_null(True)


def _first(src: TableSource, column: str, bad) -> Any:
    """The first value of ``column`` that ``bad`` flags (None for a null)."""
    for batch in src.batches([column]):
        col = batch.column(0)
        mask = bad(col)
        idx = pc.index(mask, True).as_py()
        if idx >= 0:
            return col[idx].as_py()
    return None


def build_baseline(
    data: Any,
    config: Config | None = None,
    *,
    out: str | os.PathLike | None = None,
    meta: dict[str, str] | None = None,
    backend: str = "auto",
) -> Baseline:
    """Build the baseline from evaluation data (two streaming passes).

    Pass 1 counts slice and categorical values exactly (top-K) and samples scores and
    numeric features for the quantile edges; pass 2 accumulates the statistics.

    Parameters
    ----------
    data : path, pyarrow.Table or pandas.DataFrame
        The evaluation set: score, label, slice and feature columns, optional value.
    config : Config
    out : path, optional
        Where to write the baseline directory.
    meta : dict, optional
        User metadata (``--meta key=value``), kept in the manifest.
    backend : {"auto", "cpu", "gpu"}
    """
    config = config or Config()
    kernels = get_kernels(backend)
    src = open_table(data, "evaluation")
    _require_columns(src, config)
    cols = config.columns.evaluation
    value_col = cols.value if cols.value is not None and src.has(cols.value) else None
    if value_col is not None:
        src.require(value_col, "numeric")
    slices, features = list(config.slices), dict(config.features)
    needed = list(dict.fromkeys([cols.score, cols.label, *slices, *features] + ([value_col] if value_col else [])))
    renames = {cols.score: SCORE, cols.label: LABEL}
    if value_col:
        renames[value_col] = VALUE

    builder = LayoutBuilder(
        slices,
        features,
        config.thresholds,
        score_column=cols.score,
        top_k=config.top_k,
        score_bins=config.score_bins,
        crosses=[tuple(c) for c in config.crosses],
        total_rows=src.count_rows(),
        max_atoms=config.max_atoms,
    )
    for batch in src.batches(needed, batch_size=config.batch_size):
        builder.update(batch)
    layout = builder.build()

    acc = Accumulator(layout, kernels, with_value=value_col is not None)
    stats = acc.zero()
    for batch in src.batches(needed, batch_size=config.batch_size):
        if batch.num_rows:
            stats = acc.update(stats, _renamed(batch, renames))
    stats.sync()  # on the GPU, the statistics' one copy back
    if stats.rows == 0:
        raise SchemaError(f"The evaluation data {src.where} has no rows; cannot build a baseline.")
    quality = _validate(src, stats, acc, config)

    fingerprint = src.fingerprint()
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    ident = hashlib.sha256(
        f"{fingerprint.fingerprint}|{config.config_hash()}|{layout.fingerprint()}".encode()
    ).hexdigest()[:16]
    manifest = {
        "id": ident,
        "created_at": created,
        "engine_version": __version__,
        "backend": kernels.name,
        "config_hash": config.config_hash(),
        "layout_id": layout.fingerprint(),
        "rows": stats.rows,
        "inputs": [fingerprint.to_dict()],
        "schema": {f.name: str(f.type) for f in src.schema},
        "has_value": value_col is not None,
        "data_quality": quality,
        "meta": dict(meta or {}),
    }
    baseline = Baseline(layout, stats, config, manifest)
    if out is not None:
        baseline.save(out)
    return baseline
