"""``parity check``: scan -> join -> encode/accumulate -> measure -> bootstrap -> compare.

Every arrow is one of the stage modules; this module only wires them and keeps the run
record (inputs, fingerprints, seed, config hash) that goes into the result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import math
import os
import time
import uuid
import warnings
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from engine import __version__
from engine.assess import Context, Sides, assess
from engine.charts import chart_data, chart_slices
from engine.checkpoint import run_checkpointed
from engine.cluster import client_for, count_column, is_dask_frame, run_job
from engine.compare import verdict
from engine.config import Config, load_config, refuse_label_horizon_without_windows
from engine.encode import Layout, count_values, top_k_codes
from engine.errors import ConfigError, SchemaError
from engine.expectation import Baseline
from engine.io import TableSource, open_table
from engine.join import JoinSpec, encoding, join
from engine.owners import assign_owners, check_owners
from engine.result import CheckResult
from engine.partition import BucketJob, Partial, accumulate_joined, frame_to_arrow, n_buckets_for
from engine.stats import WindowSpec, epoch_seconds
from engine.timeline import DESIGNED_FALSE_ALARM_RATE, iso
from engine.unit_bootstrap import UnitAccumulator, UnitSpec, accumulator, cost_message, take_replicates
from kernels import get_kernels, gpu_problem


def _resolve_config(bl: Baseline, config: Config | str | os.PathLike | None, overrides: dict[str, Any]) -> Config:
    if config is None:
        cfg = bl.config
    else:
        cfg = config if isinstance(config, Config) else load_config(config)
        _refuse_other_layout(cfg, bl.layout, where="" if isinstance(config, Config) else f" ({config})")
    # slices, features and thresholds are frozen in the baseline's layout
    frozen = {
        "slices": list(bl.layout.slice_columns),
        "crosses": [list(c) for c in bl.layout.crosses],
        "features": {f.name: f.kind for f in bl.layout.features},
        "thresholds": list(bl.layout.thresholds),
    }
    return cfg.with_overrides(**frozen, **{k: v for k, v in overrides.items() if v is not None})


def _refuse_other_layout(cfg: Config, layout: Layout, where: str) -> None:
    """A check-time config that asks for slices or features the baseline lacks is an error:
    the baseline froze the cells, so they would be silently ignored."""
    known = set(layout.slice_columns)
    extra = [c for c in cfg.slices if c not in known]
    if extra:
        raise ConfigError(
            f"The config{where} lists slice column(s) {extra} that the baseline was not built "
            f"with (its slices: {sorted(known)}). Slices are frozen in the baseline: rebuild it "
            "with 'parity baseline ... --slice COL', or remove them from the config."
        )
    features = {f.name for f in layout.features}
    extra = [c for c in cfg.features if c not in features]
    if extra:
        raise ConfigError(
            f"The config{where} lists feature(s) {extra} that the baseline was not built with "
            f"(its features: {sorted(features)}); rebuild the baseline or remove them."
        )


def _refuse_empty(report: Any, sources: dict[str, TableSource]) -> None:
    """Nothing to judge is an error, never a pass: an empty online log, an empty replay or
    outcomes table, or one whose keys match no online row."""
    if report.online_rows == 0:
        raise SchemaError(
            f"The online log {sources['online'].where} has 0 rows: there is nothing to check. "
            "Was the upstream job that writes it empty or pointed at the wrong partition?"
        )
    for side, rows, matched in (
        ("offline", report.offline_rows, report.matched_offline),
        ("outcomes", report.outcome_rows, report.matched_outcomes),
    ):
        src = sources.get(side)
        if src is None:
            continue
        if rows == 0:
            raise SchemaError(f"The {side} table {src.where} has 0 rows; give one with rows, or leave it out.")
        if matched == 0:
            raise SchemaError(
                f"None of the {rows:,} keys of the {side} table {src.where} matches a key of the "
                f"{report.online_rows:,} online rows. Check that --key names the same request id "
                "in both tables and that they cover the same period."
            )
def _config_source(bl: Baseline, config: Config | str | os.PathLike | None) -> str:
    """How messages name the configuration a check uses."""
    if config is None:
        where = f" '{bl.path}'" if bl.path else ""
        return f"the configuration stored with the baseline{where} (used when no --config is given)"
    return "the configuration" if isinstance(config, Config) else f"{os.fspath(config)}"


def _fewer_collections(check: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``check`` with the cyclic garbage collector's work cut down, as it was before.

    A check allocates many small objects (its tests and findings, tens of thousands with
    time windows) and keeps most of them, so the collector's passes find little; its full
    passes also walk everything alive before the check (modules, the baseline). What exists
    at the start is frozen (left out of every pass) and the youngest generation is
    collected after 10,000 allocations instead of 700. Measured at 3M rows with 8 windows:
    0.1-0.2 s of collections per check, about 0.13 s saved (benchmarks/RESULTS.md).
    """

    @functools.wraps(check)
    def run(*args: Any, **kwargs: Any) -> Any:
        threshold = gc.get_threshold()
        # a caller that froze objects itself (a server before forking) keeps them frozen
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        gc.set_threshold(max(threshold[0], 10_000), *threshold[1:])
        try:
            return check(*args, **kwargs)
        finally:
            gc.set_threshold(*threshold)
            if freeze:
                gc.unfreeze()

    return run


@_fewer_collections
def run_check(
    baseline: Baseline | str | os.PathLike,
    online: Any,
    *,
    offline: Any = None,
    outcomes: Any = None,
    keys: list[str] | None = None,
    score: str | None = None,
    offline_score: str | None = None,
    label: str | None = None,
    time_column: str | None = None,
    window: str | None = None,
    backend: str = "auto",
    bootstrap: int | None = None,
    seed: int | None = None,
    bootstrap_unit: str | None = None,
    config: Config | str | os.PathLike | None = None,
    meta: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    scheduler: Any = None,
    checkpoint: str | os.PathLike | None = None,
) -> CheckResult:
    """Compare online traffic (and its replay and outcomes) with a baseline.

    Parameters
    ----------
    baseline : Baseline or path of a baseline directory
    online, offline, outcomes : path, pyarrow.Table, pandas.DataFrame or dask DataFrame
        A Dask DataFrame runs the check on a Dask cluster (``scheduler``, or the current
        ``distributed`` client). Dask DataFrames indexed by the (single) key with the same
        known divisions are taken as co-partitioned: nothing is shuffled.
    keys : list of str, optional
        Join key (composite when several); default from the config (``request_id``).
    score, offline_score, label : str, optional
        Column names, overriding the config. ``offline_score``/``label`` name columns of the
        offline/outcomes tables; to use a column the online table already carries, set
        ``columns.online.offline_score`` / ``columns.online.label`` in the config.
    time_column, window : str, optional
        Time windows are not supported yet: a window is a ConfigError.
    backend : {"auto", "cpu", "gpu"}
    bootstrap, seed : int, optional
        Replicates (0: no intervals) and seed; default from the config.
    bootstrap_unit : str, optional
        A column of the online log naming correlated rows' unit (a user id): the online
        side's bootstrap resamples units (unit-level Poisson bootstrap, cost rows x
        replicates; see :mod:`engine.unit_bootstrap`) for the whole period's findings of the
        judged slices; default from the config (``bootstrap_unit``).
    config : Config or path, optional
        Tolerances, minimums, columns; the slices, features and thresholds always come from
        the baseline.
    meta : dict, optional
        ``--meta key=value`` pairs, recorded in the run.
    progress : callable, optional
        Called after each batch (each key bucket when partitioned) with (online rows done,
        online rows in all). On Dask, any callable turns on Dask's own progress bar instead.
    scheduler : str or distributed.Client, optional
        Run on Dask: ``"local"`` (a ``LocalCluster``, one worker process per core), a
        scheduler address (``"tcp://host:8786"``), or a ``Client``. The inputs are split by a
        hash of the key into buckets of about ``partition_rows`` online rows, each bucket is
        joined and accumulated by a worker, and the statistics are merged: the result equals
        the single-process one exactly (see :mod:`engine.partition`).
    checkpoint : path, optional
        Run partitioned in this process, recording progress in this directory; a run killed
        and started again with the same arguments resumes (see :mod:`engine.checkpoint`).

    Returns
    -------
    CheckResult
    """
    started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    t0 = time.perf_counter()
    bl = baseline if isinstance(baseline, Baseline) else Baseline.load(baseline)
    overrides: dict[str, Any] = {"bootstrap": bootstrap, "seed": seed, "bootstrap_unit": bootstrap_unit}
    if keys:
        overrides["columns.online.key"] = list(keys)
    if score:
        overrides["columns.online.score"] = score
    if offline_score:
        overrides["columns.offline.score"] = offline_score
    if label:
        overrides["columns.outcomes.label"] = label
    if time_column:
        overrides["columns.online.ts"] = time_column
    cfg = _resolve_config(bl, config, overrides)
    refuse_label_horizon_without_windows(cfg, window, _config_source(bl, config))
    if window:
        cfg = cfg.with_overrides(window=window)
    kernels = get_kernels(backend)
    given = {"online": online, "offline": offline, "outcomes": outcomes}
    if scheduler is None and any(is_dask_frame(x) for x in given.values()):
        scheduler = _current_client()
    if scheduler is not None and checkpoint is not None:
        raise ConfigError(
            "--checkpoint is for single-process runs; on a Dask cluster a lost task is "
            "simply run again. Use one or the other."
        )
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(client_for(scheduler)) if scheduler is not None else None
        sources = {side: _open(x, side) for side, x in given.items() if x is not None}
        src_on, src_off, src_out = (sources.get(s) for s in ("online", "offline", "outcomes"))
        layout = _with_model_version(bl.layout, cfg, src_on, given["online"], client)
        if not layout.atoms:  # a baseline without atoms (older, or max_atoms 0): online only
            layout = layout.with_atoms(cfg.max_atoms)
        windows = _window_spec(cfg, src_on, given["online"]) if cfg.window else None
        spec = _join_spec(cfg, layout, src_on, src_off, src_out, windows)
        unit = _unit_spec(cfg, src_on, spec)
        check_owners(cfg, layout.slice_columns, baseline=bl.path)
        has_offline = src_off is not None or spec.online_offline_score is not None
        has_outcomes = src_out is not None or spec.online_label is not None
        with_value = spec.value is not None and bool(bl.manifest.get("has_value"))
        if not with_value:
            spec.value = None
        # the GPU backend matches rows on the device (engine.gpu_join; cuDF is not used)
        join_fn = join
        if kernels.name == "gpu":
            from engine.gpu_join import device_join as join_fn
        stream = join_fn(
            src_on, src_off, src_out, spec,
            batch_size=cfg.batch_size, memory_limit=cfg.duckdb_memory_limit,
        )
        acc = accumulator(layout, kernels, unit, paired=has_offline, with_value=with_value, windows=windows)
        if unit is not None and kernels.name == "cpu":
            _warn_unit_cost(src_on, given["online"], unit, acc)
        execution: dict[str, Any] = {"mode": "stream"}
        if client is None and checkpoint is None:
            advance = _rows_done(progress, lambda: stream.report.online_rows)
            partial = Partial(accumulate_joined(stream, acc, advance), stream.report)
        else:
            joined = {s: given[s] if client is not None and is_dask_frame(given[s]) else sources[s]
                      for s in stream.columns_read()}
            job = _bucket_job(
                stream, cfg, layout, given["online"],
                backend=backend, paired=has_offline, with_value=with_value, windows=windows, unit=unit,
            )
            if client is not None:
                partial, n_buckets = run_job(client, job, joined, progress=progress is not None)
                execution = {"mode": "dask", "scheduler": _scheduler_name(client), "buckets": n_buckets}
            else:
                advance = _rows_done(progress, src_on.count_rows)
                partial, info = run_checkpointed(job, joined, checkpoint, baseline_id=bl.id, progress=advance)
                execution = {"mode": "checkpoint", **info}
    stats, report = partial.stats, partial.report
    _refuse_empty(report, sources)
    # the unit-level replicate counts leave the statistics here: a run history keeps the rest
    unit_replicates = take_replicates(stats, layout) if unit is not None else None

    ctx = Context(
        layout=layout, config=cfg, kernels=kernels, dq_flags=acc.dq_flags,
        has_offline=has_offline, has_outcomes=has_outcomes,
        duplicate_online=int(report.duplicate_keys.get("online", 0)),
        online_rows=int(report.online_rows),
        table_quality=_table_quality(report, sources),
        unit_replicates=unit_replicates,
    )
    sides = Sides.of(stats, layout, bl)
    outcome = assess(sides, ctx, windowed=None if windows is None else (acc, stats, windows))
    findings = outcome.findings

    inputs = [_input_record(side, given[side], src, report) for side, src in sources.items()]
    run = {
        "id": uuid.uuid4().hex[:16],
        "started_at": started.isoformat().replace("+00:00", "Z"),
        "engine_version": __version__,
        "backend": "gpu" if kernels.name == "gpu" else "cpu",
        # additive: what was asked for, and why auto ran on the CPU (it falls back silently)
        "backend_requested": backend,
        "backend_reason": _backend_reason(backend, kernels),
        "baseline_id": bl.id,
        "config_hash": cfg.config_hash(),
        "seed": cfg.seed,
        "bootstrap": cfg.bootstrap,
        "ci_level": cfg.ci_level,
        # additive: the online rows' unit of the bootstrap (null: rows, the cell-level one)
        "bootstrap_unit": None if unit is None else unit.column,
        "inputs": inputs,
        "meta": dict(meta or {}),
        "duration_s": round(time.perf_counter() - t0, 3),
        "joins": {"offline": report.offline_join, "outcomes": report.outcome_join, **_join_engine(stream)},
        "execution": execution,
        "localisation": outcome.localisation,
    }
    whole = {name: int(sides.online.judged.dq[0, q]) for q, name in enumerate(acc.dq_flags)}
    data_quality = {
        "online_rows": int(report.online_rows),
        "offline_rows": int(report.offline_rows),
        "outcome_rows": int(report.outcome_rows),
        "matched_offline": int(report.matched_offline),
        "matched_outcomes": int(report.matched_outcomes),
        "offline_without_online": int(report.offline_without_online),
        "duplicate_keys": {k: int(v) for k, v in report.duplicate_keys.items()},
        "invalid_scores": whole["invalid_score"],
        "invalid_labels": whole["invalid_label"],
        "null_keys": int(report.null_keys),
        "conflicting_labels": int(report.conflicting_labels),
        "unseen_values": {name.split(":", 1)[1]: v for name, v in whole.items() if name.startswith("unseen:")},
        "invalid_offline_scores": whole["invalid_offline_score"],
        # slices of the baseline with no online row: no findings, one line per column
        "empty_slices": _empty_slices(layout, outcome.empty_slices),
    }
    result = CheckResult(
        _verdict(outcome.incidents, findings), findings, run, data_quality,
        # what a run history keeps so that a later check can use this run as its baseline
        extras={"statistics": stats, "layout": layout, "config": cfg},
        incidents=assign_owners(outcome.incidents, cfg),
    )
    # the report's pictures, from the grids already here (additive JSON key "charts")
    if windows is not None:
        result.extras["control_charts"] = outcome.control_charts
        run["windows"] = {
            "column": windows.column, "width": cfg.window, "count": windows.count,
            "start": iso(windows.origin), "end": iso(windows.bounds(windows.count - 1)[1]),
            "designed_false_alarm_rate": DESIGNED_FALSE_ALARM_RATE,
            "label_horizon": cfg.label_horizon,
        }
    result.extras["charts"] = chart_data(
        sides.online.judged, sides.baseline.judged, layout,
        chart_slices(layout, findings, result.incidents), dq_flags=acc.dq_flags,
    )
    return result


def _verdict(incidents: list[dict[str, Any]], findings: list[Any]) -> str:
    """The worst incident's status (every flagged whole-period finding belongs to one);
    findings of single windows do not decide it (their incidents do)."""
    if incidents:
        return "alert" if any(i["status"] == "alert" for i in incidents) else "warn"
    return verdict([f for f in findings if f.window is None])


def _empty_slices(layout: Layout, empty: list[int]) -> dict[str, list[str]]:
    """``{column (or "a x b" for a cross): [values]}`` of the slices without online rows."""
    labels = layout.slice_labels()
    out: dict[str, list[str]] = {}
    for s in empty:
        label = labels[s]
        out.setdefault(" x ".join(label), []).append(" x ".join(label.values()))
    return out


def _table_quality(report: Any, sources: dict[str, TableSource]) -> dict[tuple[str, str], tuple[int, int]]:
    """Data-quality facts of whole tables: duplicated keys in the replay and the outcomes,
    and outcome keys whose rows disagree on the label (counted and excluded by the join)."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    rows = {"offline": report.offline_rows, "outcomes": report.outcome_rows}
    for side in ("offline", "outcomes"):
        if side in sources:
            out[("duplicate_key_rate", side)] = (int(report.duplicate_keys.get(side, 0)), int(rows[side]))
    if "outcomes" in sources and hasattr(report, "conflicting_labels"):
        out[("conflicting_label_rate", "outcomes")] = (int(report.conflicting_labels), int(report.outcome_rows))
    return out


def _with_model_version(
    layout: Layout, cfg: Config, src_on: TableSource, online: Any, client: Any = None
) -> Layout:
    """The layout plus the online ``model_version`` column as a slice, when there is one.

    Logs that mix versions during a rollout are compared per version (DESIGN section 7). The
    versions are read from the online table (one column, a cheap pre-pass; on the cluster
    when there is one) since the evaluation data usually holds one; every version is
    compared with the baseline's population.
    """
    column = cfg.columns.online.model_version
    if column is None or not src_on.has(column) or column in layout.slice_columns:
        return layout
    if client is not None:
        counts = count_column(client, online if is_dask_frame(online) else src_on, column, cfg.partition_rows)
    else:
        counts = count_values(src_on.batches([column], batch_size=cfg.batch_size), column)
    return layout.with_slice_column(column, top_k_codes(counts, cfg.top_k))


def _rows_done(progress: Callable[[int, int], None] | None, total: Callable[[], int]) -> Callable[[int], None]:
    """A counter of rows done that reports ``(done, total())`` to ``progress``."""
    done = 0

    def advance(rows: int) -> None:
        nonlocal done
        done += rows
        if progress is not None:
            progress(done, total())

    return advance


def _open(table: Any, role: str) -> TableSource:
    """The input as a TableSource; a Dask DataFrame as its (empty) schema, for the checks."""
    if is_dask_frame(table):
        meta = table._meta_nonempty
        if table.index.name is not None and table.index.name not in meta.columns:
            meta = meta.reset_index()  # a key kept as the index (co-partitioned inputs)
        return open_table(frame_to_arrow(meta).schema.empty_table(), role)
    return open_table(table, role)


def _current_client() -> Any:
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError) as exc:
        raise ConfigError(
            "Dask DataFrame inputs need a Dask cluster: create a distributed.Client first, or "
            "pass scheduler='local' or a scheduler address."
        ) from exc


def _scheduler_name(client: Any) -> str:
    address = getattr(getattr(client, "scheduler", None), "address", None)
    return str(address or "local")


def _backend_reason(requested: str, kernels: Any) -> str | None:
    """Why ``auto`` took the CPU (None when it took the GPU, or a backend was named)."""
    if requested != "auto" or kernels.name == "gpu":
        return None
    return f"auto took the CPU: {gpu_problem(allow_simulator=False) or 'no usable GPU'}"


def _input_record(side: str, given: Any, src: TableSource, report: Any) -> dict[str, Any]:
    """The run record's fingerprint of one input (a Dask DataFrame: its Dask token)."""
    if not is_dask_frame(given):
        return src.fingerprint().to_dict()
    from dask.base import tokenize

    rows = {"online": report.online_rows, "offline": report.offline_rows, "outcomes": report.outcome_rows}
    record = src.fingerprint().to_dict()
    record.update(path="<dask>", rows=int(rows[side]), content_hash=tokenize(given))
    return record


def _bucket_job(stream: Any, cfg: Config, layout: Layout, online: Any, **options: Any) -> BucketJob:
    """The partitioned plan's job, with buckets of about ``partition_rows`` online rows (a
    Dask DataFrame: one bucket per partition)."""
    if is_dask_frame(online):
        n_buckets = online.npartitions
    else:
        n_buckets = n_buckets_for(stream.online.count_rows(), cfg.partition_rows)
    return BucketJob.for_join(
        stream, layout, n_buckets,
        batch_size=cfg.batch_size, memory_limit=cfg.duckdb_memory_limit,
        fragment_rows=cfg.partition_rows, partition_column=cfg.partition_column, **options,
    )


#: Most time windows one check judges (each is a full set of findings).
MAX_WINDOWS = 1000


def _window_spec(cfg: Config, src_on: TableSource, online: Any) -> WindowSpec:
    """The windows of ``cfg.window`` over the online table's time range (from the Parquet
    files' statistics, else one scan of the time column; windows are aligned to the Unix
    epoch, in UTC)."""
    column = cfg.columns.online.ts
    if column is None or not src_on.has(column):
        raise SchemaError(
            f"Windows ('--window {cfg.window}') need the online table's time column: '{column}' is not a "
            f"column of {src_on.where}. Name it with --time COL (or columns.online.ts)."
        )
    src_on.require(column, ("timestamp", "numeric"))
    width = cfg.window_seconds
    if is_dask_frame(online):
        col = online[column]
        lo, hi = (pa.array([x]) for x in (col.min().compute(), col.max().compute()))
        lo_s, hi_s = float(epoch_seconds(lo)[0]), float(epoch_seconds(hi)[0])
    elif (stored := src_on.min_max(column)) is not None:  # Parquet statistics: no scan
        lo_s, hi_s = (float(x) for x in epoch_seconds(stored)) if stored.null_count == 0 else (math.inf, -math.inf)
    else:
        lo_s, hi_s = math.inf, -math.inf
        for batch in src_on.batches([column], batch_size=cfg.batch_size):
            seconds = epoch_seconds(batch.column(0))
            if np.isfinite(seconds).any():
                lo_s, hi_s = min(lo_s, float(np.nanmin(seconds))), max(hi_s, float(np.nanmax(seconds)))
    if not (math.isfinite(lo_s) and math.isfinite(hi_s)):
        raise SchemaError(f"The time column '{column}' of {src_on.where} is empty or all null: no window can be formed.")
    first, last = math.floor(lo_s / width), math.floor(hi_s / width)
    count = last - first + 1
    if count > MAX_WINDOWS:
        raise ConfigError(
            f"'--window {cfg.window}' over the time range of '{column}' in {src_on.where} makes {count:,} windows, "
            f"more than the {MAX_WINDOWS} one check judges; use a longer window or check a shorter period."
        )
    return WindowSpec(column=column, origin=first * width, width=width, count=count, latest=hi_s)


def _join_spec(cfg: Config, layout, src_on: TableSource, src_off, src_out, windows: WindowSpec | None = None) -> JoinSpec:
    """Validate the columns each table needs and say what travels through the join."""
    cols = cfg.columns
    keys = cols.key("online")
    for table, src in (("offline", src_off), ("outcomes", src_out)):
        if src is not None and cols.key(table) != keys:
            raise ConfigError(
                f"The key of the {table} table ({cols.key(table)}) differs from the online key ({keys}); "
                "rename the columns so that every table uses the same key names."
            )
    src_on.require(cols.online.score, "numeric")
    if src_off is not None or src_out is not None:
        for k in keys:
            src_on.require(k, "key")
    try:
        for c in layout.slice_columns:
            src_on.require(c, "any")
        for f in layout.features:
            src_on.require(f.name, "numeric" if f.kind == "numeric" else "any")
    except SchemaError as exc:
        raise SchemaError(
            f"{exc} The baseline was built with slice columns {list(layout.slice_columns)} and "
            f"features {[f.name for f in layout.features]}, so the online table must have them; "
            "was the baseline built for another model or schema?"
        ) from None
    if src_off is not None:
        for k in keys:
            src_off.require(k, "key")
        src_off.require(cols.offline.score, "numeric")
    value = None
    outcome_ts = None
    if src_out is not None:
        for k in keys:
            src_out.require(k, "key")
        src_out.require(cols.outcomes.label, ("integer_or_bool", "numeric"))
        if cols.outcomes.value is not None and src_out.has(cols.outcomes.value):
            src_out.require(cols.outcomes.value, "numeric")
            value = cols.outcomes.value
        if cols.outcomes.ts is not None and src_out.has(cols.outcomes.ts):
            outcome_ts = cols.outcomes.ts
    online_label = cols.online.label
    if online_label is not None:
        src_on.require(online_label, ("integer_or_bool", "numeric"))
    online_off = cols.online.offline_score
    if online_off is not None:
        src_on.require(online_off, "numeric")
    carried = list(dict.fromkeys([*layout.slice_columns, *[f.name for f in layout.features]]))
    if windows is not None:  # the accumulator reads each row's window from it
        carried.append(windows.column)
    # the time column orders duplicated keys inside the join; nothing downstream reads it yet
    ts = cols.online.ts if cols.online.ts is not None and src_on.has(cols.online.ts) else None
    carried = [c for c in dict.fromkeys(carried) if c not in keys]
    encoded = tuple(e for c in carried if (e := _sql_encoding(layout, src_on, c)) is not None)
    return JoinSpec(
        keys=keys if (src_off is not None or src_out is not None) else [k for k in keys if src_on.has(k)],
        online_score=cols.online.score,
        offline_score=cols.offline.score,
        label=cols.outcomes.label,
        value=value,
        online_columns=carried,
        online_label=online_label,
        online_offline_score=online_off,
        outcome_ts=outcome_ts,
        online_ts=ts,
        encoded=encoded,
    )


def _sql_encoding(layout: Layout, src_on: TableSource, column: str) -> tuple | None:
    """How the SQL join codes a carried string column (``JoinSpec.encoded``): a slice column
    or a categorical feature, with one set of codes; None for anything else."""
    kind = src_on.schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return None
    codes = [layout.slice_codes[column]] if column in layout.slice_codes else []
    codes += [f.categories for f in layout.features if f.name == column and f.kind == "categorical"]
    if not codes or any(c != codes[0] for c in codes):
        return None
    return encoding(column, codes[0].values, codes[0].seen)


def _unit_spec(cfg: Config, src_on: TableSource, spec: JoinSpec) -> UnitSpec | None:
    """The unit-level bootstrap's settings, its column checked and carried through the join
    (None without ``bootstrap_unit``, or without a bootstrap)."""
    column = cfg.bootstrap_unit
    if column is None or cfg.bootstrap == 0:
        return None
    try:
        src_on.require(column, "any")
    except SchemaError as exc:
        raise SchemaError(
            f"{exc} The unit-level bootstrap (--bootstrap-unit {column}, or 'bootstrap_unit' in the config) "
            "reads each online row's unit (a user or session id) from it."
        ) from None
    if column not in spec.online_columns and column not in spec.keys:
        spec.online_columns.append(column)
    # the unit ids travel as they are, not coded
    spec.encoded = tuple(e for e in spec.encoded if e[0] != column)
    return UnitSpec(column=column, replicates=cfg.bootstrap, seed=cfg.seed)


def _warn_unit_cost(src_on: TableSource, online: Any, unit: UnitSpec, acc: UnitAccumulator) -> None:
    """Warn once when the CPU's unit-level bootstrap is costly (rows x replicates)."""
    from kernels.cpu import UNIT_COST_WARN, UnitBootstrapCostWarning

    try:
        rows = int(online.shape[0].compute()) if is_dask_frame(online) else int(src_on.count_rows())
    except Exception:  # a source that cannot count cheaply: no estimate, no warning
        return
    if rows * unit.replicates > UNIT_COST_WARN:
        warnings.warn(cost_message(rows, unit.replicates, acc.cells_per_row, unit.column), UnitBootstrapCostWarning, stacklevel=3)


def _join_engine(stream: Any) -> dict[str, str]:
    """Which join made the rows, for the run record: DuckDB, or the device's sort-based join
    (CuPy, or numpy standing in) and why it handed back to DuckDB if it did."""
    xp = getattr(stream, "xp", None)
    if xp is None:
        return {"engine": "duckdb"}
    fallback = getattr(stream, "fallback", None)
    if fallback:
        return {"engine": "duckdb", "device_join_fallback": fallback}
    return {"engine": f"sort join on the device ({xp.__name__})"}
