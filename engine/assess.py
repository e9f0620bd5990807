"""From statistics to findings and incidents: the stages after "accumulate", on plain data.

``assess`` takes the merged online statistics of a check, the baseline, and what the join
counted, and runs: grids -> metrics -> bootstrap -> evidence -> verdicts (``engine.compare``)
-> localisation and incidents (``engine.incidents``). It never touches rows, so it is the
same whether the statistics came from one process, Dask or a checkpointed run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine import measure as ME
from engine import metrics as M
from engine.bootstrap import BaselineDraws, CellBootstrap, drift_null
from engine.compare import Evidence, Finding, Judge
from engine.config import Config
from engine.encode import Layout
from engine.expectation import Baseline
from engine.incidents import Localisation, SliceCells, build_incidents, localise, slice_json
from engine.measure import Grids
from engine.stats import Statistics
from engine.timeline import chart_records, judge_windows, time_incidents


#: Replicates of the remainders judged by localisation (their spread, not fine tails).
LOCALISATION_BOOTSTRAP = 100


@dataclass
class Sides:
    """The judged slices' and the atoms' grids of the online side and of the baseline."""

    online: SliceCells
    baseline: SliceCells

    @classmethod
    def of(cls, stats: Statistics, layout: Layout, baseline: Baseline) -> "Sides":
        base_layout = baseline.layout
        n, n_atoms = layout.n_slices, layout.n_atoms
        g_all = ME.grids_from_statistics(stats, layout, with_atoms=True)
        online = SliceCells(
            ME.select_slices(g_all, np.arange(n)),
            ME.select_slices(g_all, np.arange(n, n + n_atoms)) if n_atoms else None,
        )
        b_all = ME.grids_from_statistics(baseline.statistics, base_layout, with_atoms=True)
        b_n = base_layout.n_slices
        judged = np.arange(b_n) if layout is base_layout else baseline_slice_index(layout, base_layout)
        atoms = None
        if n_atoms and tuple(base_layout.atoms) == tuple(layout.atoms):
            atoms = ME.select_slices(b_all, np.arange(b_n, b_n + n_atoms))
        return cls(online, SliceCells(ME.select_slices(b_all, judged), atoms))


def baseline_slice_index(layout: Layout, base_layout: Layout) -> np.ndarray:
    """For each slice of ``layout``, its baseline slice (the population when it has none:
    a ``model_version`` column found online is compared with the baseline's population)."""
    position = {json.dumps(s, sort_keys=True): i for i, s in enumerate(base_layout.slice_labels())}
    return np.array(
        [position.get(json.dumps(s, sort_keys=True), 0) for s in layout.slice_labels()], dtype=np.int64
    )


@dataclass
class Context:
    """What the judging needs beyond the grids: the run's options and the join's counts."""

    layout: Layout
    config: Config
    kernels: Any
    dq_flags: tuple[str, ...]
    has_offline: bool
    has_outcomes: bool
    duplicate_online: int = 0
    online_rows: int = 0
    table_quality: dict = field(default_factory=dict)
    #: The unit-level bootstrap's online replicate counts (``engine.unit_bootstrap``), used
    #: for the whole period's judged slices; None: the cell-level bootstrap.
    unit_replicates: Any = None


def evidence(
    on: Grids,
    base: Grids,
    ctx: Context,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    whole_run: bool = False,
    slice_keys: np.ndarray | None = None,
    baseline_draws: BaselineDraws | None = None,
    need: ME.Need = ME.ALL,
) -> Evidence:
    """Measure the online and baseline grids, draw the replicates (``bootstrap`` > 0) and the
    drift statistics' null, and put it all in an :class:`Evidence`. ``whole_run`` adds the
    facts that belong to the whole run (duplicates, table-level data quality);
    ``slice_keys`` key the online draws of grids whose slices are not the layout's (derived
    ones). ``baseline_draws``: the baseline's bootstrap draws, made once by the caller (the
    time windows share one); ``need``: only the metric groups it asks for (localisation's
    remainders)."""
    layout = ctx.layout
    fine = ME.fine_resolution(layout)
    online_vals = ME.measure(on, base, fine, layout, need)
    boot = None
    if bootstrap > 0 and need.keys != frozenset():  # (data-quality tests need no replicates)
        unit = ctx.unit_replicates if whole_run else None  # windows, localisation: cell-level
        boot = CellBootstrap(layout, ctx.kernels, replicates=bootstrap, seed=seed, slice_keys=slice_keys, unit=unit)
        if baseline_draws is None:
            baseline_draws = boot.baseline_draws(base, need)
    # the baseline's draws carry its metrics, measured once (the windows share one draw)
    baseline_vals = (
        baseline_draws.fine if baseline_draws is not None else ME.measure(base, None, fine, layout, need.of_baseline())
    )
    reps_on = reps_base = null = None
    if boot is not None:
        reps = boot.run(on, base, shared=baseline_draws, fine_online=online_vals, need=need)
        reps_on, reps_base = reps.online, reps.baseline
    drift = need.drift("score") or need.any_feature()
    null = drift_null(on, base, layout, max(bootstrap, 1), seed) if drift else None
    events = {"online": (on.score[..., 0, :].sum(-1), on.score[..., 1, :].sum(-1))}
    offline_drift = {}
    if ctx.has_offline:
        events["offline"] = (on.offline[..., 0, :].sum(-1), on.offline[..., 1, :].sum(-1))
        offline_drift[("psi", None, "score")] = M.score_psi(on.offline.sum(-2), base.score.sum(-2), fine.decile_map)
    baseline_rows = {"score": base.score.sum((-1, -2))}
    for j, f in enumerate(layout.features):
        baseline_rows[f.name] = base.features[j].sum(-1)
    return Evidence(
        online=online_vals,
        baseline=baseline_vals,
        n=ME.denominators(on, fine, layout, online_vals.keys()),
        baseline_n=ME.denominators(base, fine, layout, baseline_vals.keys()),
        events=events,
        dq=on.dq,
        dq_flags=ctx.dq_flags,
        slice_rows=on.dq[:, 0],
        online_reps=reps_on,
        baseline_reps=reps_base,
        offline_drift=offline_drift,
        baseline_rows=baseline_rows,
        has_offline=ctx.has_offline,
        has_outcomes=ctx.has_outcomes,
        duplicate_online=ctx.duplicate_online if whole_run else 0,
        online_rows_raw=ctx.online_rows if whole_run else 0,
        baseline_events=(base.score[..., 0, :].sum(-1), base.score[..., 1, :].sum(-1)),
        drift_null=null,
        global_dq=ctx.table_quality if whole_run else {},
        unit_level=bootstrap > 0 and whole_run and ctx.unit_replicates is not None,
    )


@dataclass
class Assessment:
    """Findings, incidents, and what the run record says about them."""

    findings: list[Finding]
    incidents: list[dict[str, Any]]
    empty_slices: list[int]
    localisation: dict[str, Any]
    control_charts: list[dict[str, Any]] = field(default_factory=list)


def assess(sides: Sides, ctx: Context, windowed: tuple | None = None) -> Assessment:
    """Findings of the whole period, then localisation and incidents; with ``windowed``
    (the accumulator, its statistics and the :class:`WindowSpec`), findings per window,
    control charts, and each incident's onset and persistence."""
    cfg = ctx.config
    on, base = sides.online.judged, sides.baseline.judged
    ev = evidence(on, base, ctx, bootstrap=cfg.bootstrap, seed=cfg.seed, whole_run=True)
    if windowed is not None and cfg.label_horizon_seconds is not None:
        ev.label_rows = _rows_due(*windowed, cfg.label_horizon_seconds)
    judge = Judge(ctx.layout, cfg)
    findings = judge.findings(ev)
    loc: Localisation = localise(
        findings, sides.online, sides.baseline, ctx.layout, cfg,
        lambda d_on, d_base, keys, need: evidence(
            d_on, d_base, ctx, bootstrap=min(cfg.bootstrap, LOCALISATION_BOOTSTRAP), seed=cfg.seed, slice_keys=keys,
            need=need,
        ),
    )
    rows = np.asarray(on.dq[:, 0], dtype=np.float64)
    total = rows[0] if rows[0] else 1.0
    shares = {slice_json(s): float(rows[i] / total) for i, s in enumerate(ctx.layout.slice_labels())}
    incidents = build_incidents(findings, loc.explained_by, shares)
    control: list[dict[str, Any]] = []
    if windowed is not None:
        acc, stats, spec = windowed
        timeline = judge_windows(acc, stats, spec, base, ctx, evidence)
        time_incidents(incidents, findings, timeline)
        control = chart_records(incidents, findings, timeline)
        findings = sorted(findings + timeline.findings, key=Finding.sort_key)
    record = {
        "atoms": list(ctx.layout.atoms),
        "atom_cells": ctx.layout.n_atoms,
        "baseline_atoms": sides.baseline.atoms is not None,
        "remainders_judged": loc.pairs,
        "explained_findings": len(loc.explained_by),
    }
    return Assessment(findings, incidents, judge.empty_slices, record, control)


def _rows_due(acc, stats, spec, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, labelled rows) per judged slice over the windows whose outcomes are due (their
    end at least ``horizon`` before the latest time seen)."""
    inner = acc._per_window
    q_rows, q_label = inner.dq_flags.index("rows"), inner.dq_flags.index("has_label")
    rows = labelled = 0
    for k in range(spec.count):
        if spec.bounds(k)[1] <= spec.latest - horizon:
            dq = ME.grids_from_statistics(acc.window_statistics(stats, k), inner.layout).dq
            rows = rows + dq[:, q_rows].astype(np.float64)
            labelled = labelled + dq[:, q_label].astype(np.float64)
    n = inner.layout.n_slices
    if np.isscalar(rows):
        rows = labelled = np.zeros(n)
    return rows, labelled
