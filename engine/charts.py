"""Chart data from the statistics: what the report draws, without a second pass over rows.

:func:`chart_data` is a pure function of the fine grids a check already holds (online and
baseline :class:`~engine.measure.Grids`, slice axis first), the :class:`~engine.encode.Layout`
and the slice indices to chart. It returns small, JSON-able integer counts (and the exact
sums the calibration grid keeps), stored in the result under ``"charts"`` so that a stored run
can be drawn again (``parity report``). Curves are derived from those counts by the functions
below, the same ones the report calls, so a test can compare them with scikit-learn.

What is kept per charted slice
------------------------------
* ``roc``: per side (``online``, ``offline`` = the replay's scores of the same requests,
  ``baseline``), negatives and positives per bin of the *ROC grid*: a subset of the fine score
  edges (every k-th, so at most :data:`ROC_BINS` bins, plus the calibration edges and every
  threshold). Bins are half-open ``[lo, hi)`` like the fine ones, so ``score >= t`` is exact
  and :func:`roc_points` equals ``sklearn.metrics.roc_curve(y, bin)``.
* ``reliability``: per side, labelled rows, positives and the sum of the scores per bin of the
  calibration grid (score deciles split at every threshold), exact from the stored sums;
  :func:`reliability_points` equals ``sklearn.calibration.calibration_curve`` on those bins.
* ``hist``: per side, rows per bin of the coarse score grid (about 32 baseline quantiles plus
  deciles and thresholds).
* ``decisions``: the online x offline decision-band matrix ((T + 1)^2 counts: how many
  thresholds each score clears), from which flip rates follow.
* ``features``: per feature, online and baseline rows per PSI bin (deciles plus the missing
  bin for numeric features; top-K values, ``__other__`` and ``__null__`` for categorical ones).
* ``dq``: the data-quality flag counts of the slice's online rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from engine.encode import LABEL_NEG, LABEL_POS, Layout
from engine.measure import Grids

__all__ = [
    "CHARTS_VERSION",
    "MAX_CHART_SLICES",
    "ROC_BINS",
    "chart_data",
    "chart_slices",
    "flip_rates",
    "reliability_points",
    "roc_edges",
    "roc_points",
    "wilson_interval",
]

CHARTS_VERSION = 1
#: Most bins of the ROC grid (before the calibration edges and thresholds are added).
ROC_BINS = 200
#: Most slices whose chart data a result keeps (the population first, then by severity).
MAX_CHART_SLICES = 60


def roc_edges(layout: Layout, max_bins: int = ROC_BINS) -> np.ndarray:
    """Interior edges of the ROC grid: every k-th fine edge, the calibration edges, thresholds.

    Parameters
    ----------
    layout : Layout
    max_bins : int
        Bins taken from the fine grid before the calibration edges are added.

    Returns
    -------
    (E,) float64, strictly increasing, a subset of ``layout.score_edges``.
    """
    fine = np.asarray(layout.score_edges, dtype=np.float64)
    step = max(1, math.ceil((fine.size + 1) / max_bins))
    picked = fine[step - 1 :: step]
    return np.union1d(picked, layout.calib_edges)


def _aggregate(counts: np.ndarray, mapping: np.ndarray, n_out: int) -> np.ndarray:
    """Sum (B,) counts into coarser bins: ``out[mapping[b]] += counts[b]`` (exact below 2**53)."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.bincount(mapping, weights=counts, minlength=n_out).astype(np.int64)


def _ints(a: Any) -> list[int]:
    return [int(x) for x in np.asarray(a).ravel()]


def _side(score: np.ndarray, calib: Mapping[str, np.ndarray], roc_map: np.ndarray, n_roc: int,
          hist_map: np.ndarray, n_hist: int) -> dict[str, Any]:
    """The chart data of one side of one slice: ``score`` (3, B) and the calibration grid."""
    neg, pos = score[LABEL_NEG], score[LABEL_POS]
    cnt, psum = calib["count"], calib["p"]
    return {
        "roc": {"neg": _ints(_aggregate(neg, roc_map, n_roc)), "pos": _ints(_aggregate(pos, roc_map, n_roc))},
        "reliability": {
            "n": _ints(cnt[LABEL_NEG] + cnt[LABEL_POS]),
            "pos": _ints(cnt[LABEL_POS]),
            "sum_p": [float(x) for x in psum[LABEL_NEG] + psum[LABEL_POS]],
        },
        "hist": _ints(_aggregate(score.sum(0), hist_map, n_hist)),
    }


def chart_data(
    online: Grids,
    baseline: Grids | None,
    layout: Layout,
    slices: Iterable[int],
    *,
    dq_flags: Sequence[str] = (),
) -> dict[str, Any]:
    """The compact chart data of the given slices.

    Parameters
    ----------
    online : Grids
        The check's fine grids, slice axis first (``score`` (S, 3, B), ...).
    baseline : Grids or None
        The baseline's fine grids laid out on the same slices (``select_slices`` when the
        check added slices the baseline lacks).
    layout : Layout
        The check's layout (slice labels, edges, thresholds, features).
    slices : iterable of int
        Slice indices to keep, in display order (duplicates dropped).
    dq_flags : sequence of str
        Names of the columns of ``online.dq``.

    Returns
    -------
    dict
        JSON-able: ``version``, the grids' edges (``roc_edges``, ``hist_edges``,
        ``calib_edges``: interior edges), ``thresholds``, ``features`` (name, kind, bin labels)
        and ``slices``: one dict per slice with ``slice`` (the mapping), ``rows`` and, per
        side present, the counts described in the module docstring.
    """
    labels = layout.slice_labels()
    r_edges = roc_edges(layout)
    roc_map = layout.fine_to(r_edges)
    hist_edges = np.asarray(layout.coarse_edges, dtype=np.float64)
    hist_map = layout.fine_to(hist_edges)
    n_roc, n_hist = r_edges.size + 1, hist_edges.size + 1
    T = len(layout.thresholds)
    features = []
    psi_maps = []
    for f in layout.features:
        if f.kind == "numeric":
            dec = f.edges[np.nonzero(np.diff(f.decile_bins))[0]]
            n_dec = int(f.decile_bins.max()) + 1
            psi_maps.append(np.concatenate([f.decile_bins, [n_dec]]).astype(np.int32))
            features.append({"name": f.name, "kind": "numeric", "edges": [float(e) for e in dec],
                             "labels": _range_labels(dec) + ["missing"]})
        else:
            psi_maps.append(np.arange(f.categories.size, dtype=np.int32))
            features.append({"name": f.name, "kind": "categorical", "labels": list(f.categories.labels)})
    out_slices = []
    for s in dict.fromkeys(int(i) for i in slices):
        if not 0 <= s < len(labels):
            raise ValueError(f"The slice index of chart_data must be in [0, {len(labels)}). Got {s} instead.")
        entry: dict[str, Any] = {"index": s, "slice": dict(labels[s]), "rows": int(online.score[s].sum())}
        sides = {"online": _side(online.score[s], {k: v[s] for k, v in online.calib.items()},
                                 roc_map, n_roc, hist_map, n_hist)}
        if online.offline is not None:
            sides["offline"] = _side(online.offline[s], {k: v[s] for k, v in online.calib_off.items()},
                                     roc_map, n_roc, hist_map, n_hist)
        if baseline is not None:
            sides["baseline"] = _side(baseline.score[s], {k: v[s] for k, v in baseline.calib.items()},
                                      roc_map, n_roc, hist_map, n_hist)
        for key in ("roc", "reliability", "hist"):
            entry[key] = {side: d[key] for side, d in sides.items()}
        if online.joint is not None:
            entry["decisions"] = [_ints(row) for row in np.asarray(online.joint[s]).reshape(T + 1, T + 1)]
        feats = {}
        for j, f in enumerate(layout.features):
            n = int(psi_maps[j].max()) + 1
            feats[f.name] = {"online": _ints(_aggregate(online.features[j][s], psi_maps[j], n))}
            if baseline is not None:
                feats[f.name]["baseline"] = _ints(_aggregate(baseline.features[j][s], psi_maps[j], n))
        entry["features"] = feats
        if online.dq is not None and len(dq_flags):
            entry["dq"] = {name: int(online.dq[s, q]) for q, name in enumerate(dq_flags)}
        out_slices.append(entry)
    return {
        "version": CHARTS_VERSION,
        "roc_edges": [float(e) for e in r_edges],
        "hist_edges": [float(e) for e in hist_edges],
        "calib_edges": [float(e) for e in layout.calib_edges],
        "thresholds": [float(t) for t in layout.thresholds],
        "features": features,
        "slices": out_slices,
    }


def _range_labels(edges: np.ndarray) -> list[str]:
    if edges.size == 0:
        return ["all"]
    e = [f"{x:.4g}" for x in edges]
    return [f"< {e[0]}"] + [f"[{a}, {b})" for a, b in zip(e[:-1], e[1:])] + [f"\u2265 {e[-1]}"]


def chart_slices(
    layout: Layout,
    findings: Iterable[Any],
    incidents: Iterable[Mapping[str, Any]] = (),
    limit: int = MAX_CHART_SLICES,
) -> list[int]:
    """The slices a report drills into: the population, incident culprits, flagged slices.

    Parameters
    ----------
    layout : Layout
    findings : iterable of Finding
        Only ``alert`` and ``warn`` findings count; slices by their highest severity.
    incidents : iterable of dict
        Incident culprits come first (in the incidents' order).
    limit : int
        Most slices kept.

    Returns
    -------
    list of int
        Slice indices, the population (0) first.
    """
    position = {_key(s): i for i, s in enumerate(layout.slice_labels())}
    order: dict[int, None] = {0: None}
    for inc in incidents:
        i = position.get(_key(inc.get("slice") or {}))
        if i is not None:
            order.setdefault(i, None)
    severity: dict[int, float] = {}
    for f in findings:
        if f.status in ("alert", "warn"):
            i = position.get(_key(f.slice))
            if i is not None:
                rank = (1.0 if f.status == "alert" else 0.0, float(f.severity or 0.0))
                severity[i] = max(severity.get(i, (0.0, 0.0)), rank)  # type: ignore[arg-type]
    for i in sorted(severity, key=lambda i: (-severity[i][0], -severity[i][1], i)):  # type: ignore[index]
        order.setdefault(i, None)
    return list(order)[:limit]


def _key(s: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in s.items()))


# --------------------------------------------------------------------------------------
# Curves from the counts (what the report draws)
# --------------------------------------------------------------------------------------


def roc_points(neg: Sequence[int], pos: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve of binned scores, as ``sklearn.metrics.roc_curve`` computes it.

    Each bin is one distinct score (its index); the curve steps through the non-empty bins
    from the highest down, drops collinear points (``drop_intermediate=True``) and starts at
    (0, 0).

    Parameters
    ----------
    neg, pos : (B,) counts of negatives and positives per bin, in increasing score order.

    Returns
    -------
    fpr, tpr : (P,) float64 each; empty when a class is absent.
    """
    neg = np.asarray(neg, dtype=np.int64)[::-1]
    pos = np.asarray(pos, dtype=np.int64)[::-1]
    keep = (neg + pos) > 0
    fps, tps = np.cumsum(neg[keep]), np.cumsum(pos[keep])
    if fps.size == 0 or fps[-1] == 0 or tps[-1] == 0:
        return np.zeros(0), np.zeros(0)
    if fps.size > 2:
        idx = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps = fps[idx], tps[idx]
    fps, tps = np.r_[0, fps], np.r_[0, tps]
    return fps / fps[-1], tps / tps[-1]


def operating_points(neg: Sequence[int], pos: Sequence[int], edges: Sequence[float],
                     thresholds: Sequence[float]) -> list[tuple[float, float, float]]:
    """(threshold, fpr, tpr) of the decision ``score >= t`` at each threshold.

    ``edges`` are the interior edges of the bins of ``neg``/``pos``; each threshold is one of
    them, so the bins at or above it are exactly the rows with ``score >= t``.
    """
    neg = np.asarray(neg, dtype=np.int64)
    pos = np.asarray(pos, dtype=np.int64)
    n_neg, n_pos = int(neg.sum()), int(pos.sum())
    out = []
    for t in thresholds:
        b = int(np.searchsorted(np.asarray(edges), t, side="left")) + 1
        if n_neg and n_pos:
            out.append((float(t), int(neg[b:].sum()) / n_neg, int(pos[b:].sum()) / n_pos))
    return out


def reliability_points(n: Sequence[int], pos: Sequence[int], sum_p: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean predicted and observed positive rate of the non-empty bins.

    The same as ``sklearn.calibration.calibration_curve`` (``prob_true, prob_pred``) on rows
    binned the same way.

    Returns
    -------
    prob_true, prob_pred : (K,) float64 each
    nonempty : (K,) int64 bin indices
    """
    n = np.asarray(n, dtype=np.float64)
    nz = np.nonzero(n > 0)[0]
    return np.asarray(pos, dtype=np.float64)[nz] / n[nz], np.asarray(sum_p, dtype=np.float64)[nz] / n[nz], nz


def wilson_interval(k: Sequence[int], n: Sequence[int], level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial rate ``k / n`` (the reliability diagram's band).

    Returns
    -------
    lo, hi : float64 arrays; NaN where ``n`` is 0.
    """
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2)
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # exactly 0 / 1 at the ends (the formula leaves rounding dust there)
    lo = np.where(k == 0, 0.0, np.clip(centre - half, 0, 1))
    hi = np.where(k == n, 1.0, np.clip(centre + half, 0, 1))
    return lo, hi


def flip_rates(matrix: Sequence[Sequence[int]]) -> list[float | None]:
    """Share of paired rows whose decision differs at each threshold, from the band matrix.

    ``matrix[a][b]``: rows whose online score clears ``a`` thresholds and offline ``b``; the
    decision at threshold ``k`` is positive iff the band is above ``k``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    T = m.shape[0] - 1
    total = m.sum()
    a = np.arange(T + 1)[:, None]
    b = np.arange(T + 1)[None, :]
    return [float((m * ((a > k) != (b > k))).sum() / total) if total else None for k in range(T)]
