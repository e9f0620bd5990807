"""The time stage: findings per window, control charts, and when each incident began.

Windows are one more dimension of the statistics (``Accumulator(windows=...)``): one pass
over the rows gives every window, and the whole period is judged as before. Here each window
is judged like the whole period (its own, smaller, bootstrap: the charts need each window's
spread, not fine tails: 100 replicates), and every test is followed across windows on a control chart.

The chart
---------
Per (metric, scores, slice, feature, threshold), window ``k`` gives ``z_k``: the one-sided
test statistic of "the divergence in the bad direction is beyond the tolerance" (the
window's excess over the tolerance over its bootstrap standard error; ``z_k`` is N(0, 1)
at the tolerance's edge). Two rules together:

* **EWMA** with a reflecting barrier at 0: ``E_k = max(0, LAMBDA z_k + (1 - LAMBDA) E_{k-1})``,
  out of control above ``EWMA_L`` times its asymptotic spread ``sqrt(LAMBDA / (2 - LAMBDA))``;
* **k of n**: at least ``K_OF_N[0]`` of the last ``K_OF_N[1]`` windows are individually
  beyond (``z > Z_BEYOND``, one-sided 5%).

A window *signals* when both hold. The designed false-alarm rate per window, for a metric
sitting exactly at its tolerance with independent windows, is that of the k-of-n rule alone,
``P(at least 2 of 3 beyond) = 3 (0.05)^2 (0.95) + 0.05^3 = 0.725%`` (the EWMA condition only
lowers it); inside the tolerance (clean data) it is far lower. One noisy window never
signals. The **onset** of a signal is the first window of the run of beyond-windows that
leads to it; an incident is **ongoing** when its latest window with data is beyond.

Windows younger than the label horizon (their end within ``label_horizon`` of the latest
time seen) are not judged on label-based metrics: outcomes are still arriving.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from engine import measure as ME
from engine.bootstrap import CellBootstrap
from engine.catalogue import METRICS, Tolerance
from engine.compare import Finding, Judge
from engine.encode import stable_key
from engine.stats import Accumulator, Statistics, WindowSpec

#: EWMA weight and limit (in units of its asymptotic spread).
LAMBDA = 0.3
EWMA_L = 2.0
#: A window is "beyond" when its one-sided z exceeds this (5%).
Z_BEYOND = NormalDist().inv_cdf(0.95)
#: k of the last n windows beyond.
K_OF_N = (2, 3)
#: Replicates of each window's bootstrap.
WINDOW_BOOTSTRAP = 100
#: The designed false-alarm rate per window at the tolerance's edge (see the docstring).
DESIGNED_FALSE_ALARM_RATE = 3 * 0.05**2 * 0.95 + 0.05**3


def iso(seconds: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def window_label(spec: WindowSpec, k: int) -> dict[str, str]:
    start, end = spec.bounds(k)
    return {"start": iso(start), "end": iso(end)}


def label_based(metric: str) -> bool:
    return METRICS[metric].family == "performance" or metric in ("label_coverage", "invalid_label_rate")


@dataclass
class Timeline:
    """Per-window findings and the control charts of the series that matter."""

    findings: list[Finding]
    series: dict[tuple, list[dict[str, Any]]]  # series key -> points (one per window with data)
    spec: WindowSpec

    def chart(self, f: Finding) -> list[dict[str, Any]]:
        return self.series.get(series_key(f), [])


def series_key(f: Finding) -> tuple:
    return (f.metric, f.scores, tuple(sorted(f.slice.items())), f.feature, f.threshold)


def judge_windows(acc: Accumulator, stats: Statistics, spec: WindowSpec, baseline, ctx, evidence) -> Timeline:
    """Judge every window with rows, and chart every test across them.

    ``baseline`` are the baseline's grids of the judged slices, ``ctx`` the whole period's
    :class:`engine.assess.Context`, ``evidence`` its recipe (``engine.assess.evidence``).
    The windows are judged at once: their grids laid one after the other along the slice
    axis, one evidence (one bootstrap call, one pass over the tests) in which each window is
    a block of its own (its population, its multiple-testing family, its draws keyed by its
    start), all compared with one draw of the baseline (one baseline sample). That is what
    judging each window alone gives, in one call instead of one per window.
    """
    cfg = ctx.config
    inner = acc._per_window
    ctx_w = dataclasses.replace(ctx, layout=inner.layout, dq_flags=inner.dq_flags)
    horizon = cfg.label_horizon_seconds
    per_window = [(k, acc.window_statistics(stats, k)) for k in range(spec.count)]
    per_window = [(k, st) for k, st in per_window if st.rows]
    if not per_window:
        return Timeline([], {}, spec)
    W = len(per_window)
    on = ME.stack_slices([ME.grids_from_statistics(st, inner.layout) for _, st in per_window])
    keys = inner.layout.slice_keys()
    window_keys = np.concatenate(
        [keys ^ np.uint64(stable_key(f"window:{spec.bounds(k)[0]}")) for k, _ in per_window]
    )
    bootstrap = min(cfg.bootstrap, WINDOW_BOOTSTRAP)
    draws = None
    if bootstrap > 0:
        draws = CellBootstrap(inner.layout, ctx.kernels, replicates=bootstrap, seed=cfg.seed).baseline_draws(baseline)
        draws = draws.repeated(W)
    ev = evidence(
        on, ME.stack_slices([baseline] * W), ctx_w, bootstrap=bootstrap, seed=cfg.seed, slice_keys=window_keys,
        baseline_draws=draws,
    )
    labels = [window_label(spec, k) for k, _ in per_window]
    young = {lab["start"] for (k, _), lab in zip(per_window, labels) if horizon is not None and spec.bounds(k)[1] > spec.latest - horizon}
    findings = Judge(inner.layout, cfg, blocks=W).findings(ev, windows=labels)
    for f in findings:
        if f.window["start"] in young and label_based(f.metric):
            f.status, f.cause, f.p_value, f.ci = "insufficient_data", None, None, None
            f.reason = (
                f"the window ends within the label horizon ({cfg.label_horizon}) of the latest time "
                "seen: its outcomes are still arriving"
            )
        elif horizon is not None and f.metric == "label_coverage" and f.status in ("alert", "warn"):
            f.cause = "label_delay"
    return Timeline(findings, control_series(findings), spec)


_STANDARD_NORMAL = NormalDist()


def _z(f: Finding) -> float:
    """The window's one-sided z of "beyond tolerance" (NaN when it was not judged)."""
    if f.status == "insufficient_data" or f.p_value is None:
        return math.nan
    p = min(max(f.p_value, 1e-300), 1 - 1e-16)
    return -_STANDARD_NORMAL.inv_cdf(p)


def control_series(findings: list[Finding]) -> dict[tuple, list[dict[str, Any]]]:
    """Each test's points across windows with its EWMA, beyond and signal flags."""
    by_key: dict[tuple, list[Finding]] = {}
    for f in findings:
        by_key.setdefault(series_key(f), []).append(f)
    spread = math.sqrt(LAMBDA / (2 - LAMBDA))
    k_min, n_last = K_OF_N
    out: dict[tuple, list[dict[str, Any]]] = {}
    for key, items in by_key.items():
        items.sort(key=lambda f: f.window["start"])
        ewma, recent, points = 0.0, [], []
        for f in items:
            z = _z(f)
            beyond = bool(z > Z_BEYOND)
            if math.isfinite(z):
                ewma = max(0.0, LAMBDA * z + (1 - LAMBDA) * ewma)
            recent = (recent + [beyond])[-n_last:]
            signal = sum(recent) >= k_min and ewma > EWMA_L * spread
            points.append({"finding": f, "z": z, "ewma": ewma, "beyond": beyond, "signal": signal})
        out[key] = points
    return out


def onset(points: list[dict[str, Any]]) -> int | None:
    """Index of the first window of the run of beyond-windows that leads to the first
    signal (None: no signal)."""
    first = next((i for i, p in enumerate(points) if p["signal"]), None)
    if first is None:
        return None
    i = first
    while i > 0 and points[i - 1]["beyond"]:
        i -= 1
    return i


def time_incidents(incidents: list[dict[str, Any]], findings: list[Finding], timeline: Timeline) -> None:
    """Fill each incident's windows, start, last window, ongoing flag and persistence.

    An incident whose findings never signal on their charts (a single noisy window, or a
    change not yet persistent) is a warning, not an alert.
    """
    by_id = {f.id: f for f in findings}
    latest = max((f.window["start"] for f in timeline.findings), default=None)
    for inc in incidents:
        charts = [timeline.chart(by_id[i]) for i in inc["finding_ids"] if i in by_id]
        charts = [c for c in charts if c]
        beyond = sorted({p["finding"].window["start"] for c in charts for p in c if p["beyond"]})
        starts = []
        for c in charts:
            i = onset(c)
            if i is not None:
                starts.append(c[i]["finding"].window["start"])
        seen = _unique_windows(charts)  # one point per window with data, in time order
        inc["windows"] = [p["finding"].window for p in seen if p["finding"].window["start"] in beyond]
        inc["started"] = min(starts) if starts else None
        inc["last_seen"] = beyond[-1] if beyond else None
        inc["ongoing"] = bool(beyond) and beyond[-1] == latest
        span = [p for p in seen if inc["started"] and p["finding"].window["start"] >= inc["started"]]
        persistence = (sum(p["finding"].window["start"] in beyond for p in span) / len(span)) if span else 0.0
        inc["persistence"] = persistence
        if not starts:  # never signalled: a warning, weighed by how often it was beyond
            inc["status"] = "warn"
            inc["severity"] *= len(beyond) / max(len(seen), 1)
        else:
            inc["severity"] *= persistence
    incidents.sort(key=lambda i: ({"alert": 0, "warn": 1}[i["status"]], -i["severity"], i["id"]))


def _unique_windows(charts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for c in charts:
        for p in c:
            seen.setdefault(p["finding"].window["start"], p)
    return [seen[k] for k in sorted(seen)]


def chart_records(incidents: list[dict[str, Any]], findings: list[Finding], timeline: Timeline) -> list[dict[str, Any]]:
    """The control charts of the incidents' own findings, in the report's shape."""
    by_id = {f.id: f for f in findings}
    out = []
    for inc in incidents:
        for fid in inc["finding_ids"]:
            f = by_id.get(fid)
            points = timeline.chart(f) if f is not None else []
            if not points:
                continue
            i = onset(points)
            out.append({
                "incident": inc["id"],
                "metric": f.metric, "scores": f.scores, "slice": f.slice, "feature": f.feature,
                "threshold": f.threshold, "center": f.expected, "tolerance": f.tolerance,
                "onset": None if i is None else points[i]["finding"].window["start"],
                "points": [_point(p) for p in points],
            })
    return out


def _point(p: dict[str, Any]) -> dict[str, Any]:
    f: Finding = p["finding"]
    tol = f.tolerance
    lo = hi = lcl = ucl = None
    if f.ci is not None and f.expected is not None:
        lo, hi = f.expected + f.ci[0], f.expected + f.ci[1]
    if f.expected is not None and tol["kind"] != "floor" and f.ci is not None:
        # where the window's value would be significantly beyond the tolerance
        margin = float(Tolerance.from_dict(tol).margin(f.expected))
        se = (f.ci[1] - f.ci[0]) / (2 * 1.96)
        if tol["bad"] in ("increase", "either"):
            ucl = f.expected + margin + Z_BEYOND * se
        if tol["bad"] in ("decrease", "either"):
            lcl = f.expected - margin - Z_BEYOND * se
    elif tol["kind"] == "floor":
        lcl, ucl = (tol["value"], None) if tol["bad"] == "decrease" else (None, tol["value"])
    return {
        **f.window, "value": f.value, "lo": lo, "hi": hi, "lcl": lcl, "ucl": ucl,
        "z": None if not math.isfinite(p["z"]) else p["z"], "ewma": p["ewma"],
        "beyond": p["beyond"], "signal": p["signal"], "status": f.status,
    }
