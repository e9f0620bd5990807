"""Metrics as pure functions of the statistics.

Every function takes cell arrays whose *last* axes are the cells of one slice (bins, label
states, thresholds) and any number of leading axes (slices, windows, bootstrap replicates),
and is written against an array namespace (numpy or CuPy: the namespace of its inputs), so
the same code scores a slice, a thousand slices, or a thousand replicates of each.

Undefined values (AUC of a one-class slice, precision with no predicted positive) are NaN,
never an exception; the compare stage says why.

Naming follows scikit-learn: ``*_score`` higher is better, ``*_loss``/``*_error`` lower is
better. Canonical output names are those of DESIGN section 5.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import numpy as np

#: PSI smoothing: proportions are (p + EPS) / (1 + k * EPS) before the log ratio.
PSI_EPS = 1e-4
ECE_BINS = 10


@contextlib.contextmanager
def quiet_runtime_warnings() -> Iterator[None]:
    """Ignore ``RuntimeWarning`` inside (empty or all-NaN columns in the nan-reductions)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def xp_of(*arrays: Any):
    """numpy or cupy: the namespace of the first array that is not numpy (lazy, no import)."""
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
    return np


def array_module() -> Any:
    """CuPy when it is installed and a device works, else numpy (the host stand-in)."""
    try:
        import cupy

        cupy.zeros(1).sum()
        return cupy
    except Exception:
        return np


def to_host(x: Any) -> np.ndarray:
    """``x`` as a numpy array: CuPy arrays are copied back (explicitly: CuPy refuses an
    implicit conversion), anything else is taken as it is."""
    xp = xp_of(x)
    return np.asarray(x) if xp is np else xp.asnumpy(x)


def _div(num, den):
    xp = xp_of(num, den)
    num = xp.asarray(num, dtype=xp.float64)
    den = xp.asarray(den, dtype=xp.float64)
    defined = den > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return xp.where(defined, num / xp.where(defined, den, 1.0), xp.nan)


# ----------------------------------------------------------------------------- ranking
def auc_score(neg, pos, totals=None):
    """Area under the ROC curve from per-bin counts of negatives and positives.

    Pairs in the same bin count as ties (1/2), as ``roc_auc_score`` counts equal scores.

    Parameters
    ----------
    neg, pos : (..., B) counts over score bins in increasing score order.
    totals : optional ``(neg.sum(-1), pos.sum(-1))``, when the caller has them.

    Returns
    -------
    (...,) float64; NaN when a class is absent.
    """
    xp = xp_of(neg, pos)
    neg, pos = _summable(neg), _summable(pos)
    n_neg, n_pos = (neg.sum(-1), pos.sum(-1)) if totals is None else totals
    below = xp.cumsum(neg, axis=-1) - neg  # negatives in strictly lower bins
    wins = (pos * (below + 0.5 * neg)).sum(axis=-1)
    return _div(wins, xp.asarray(n_pos, dtype=xp.float64) * xp.asarray(n_neg, dtype=xp.float64))


def confusion_at(neg, pos, threshold_bins, totals=None):
    """TP, FP, FN, TN at each threshold: ``score >= t`` iff ``bin >= threshold_bins[k]``.

    Parameters
    ----------
    neg, pos : (..., B) counts.
    threshold_bins : (T,) int, first bin at or above each threshold.
    totals : optional ``(neg.sum(-1), pos.sum(-1))``, when the caller has them.

    Returns
    -------
    tuple of four (..., T) float64 arrays.
    """
    xp = xp_of(neg, pos)
    neg, pos = _summable(neg), _summable(pos)
    n_neg, n_pos = (neg.sum(-1), pos.sum(-1)) if totals is None else totals
    tp, fp = _at_or_above(pos, threshold_bins), _at_or_above(neg, threshold_bins)
    fn = n_pos[..., None] - tp
    tn = n_neg[..., None] - fp
    return tuple(xp.asarray(x, dtype=xp.float64) for x in (tp, fp, fn, tn))


def _at_or_above(counts, threshold_bins):
    """``(..., T)``: the counts in the bins at or above each threshold's first bin, in the
    counts' own type (a suffix sum per threshold: few thresholds, cheaper than a reverse
    cumsum of every bin)."""
    xp = xp_of(counts)
    tb = [int(b) for b in np.asarray(threshold_bins)]
    if not tb:
        return xp.zeros(counts.shape[:-1] + (0,), dtype=counts.dtype)
    return xp.stack([counts[..., b:].sum(-1) for b in tb], -1)


def _summable(counts):
    """Counts as they are when integer (their sums are exact, and so the same as the sums
    of their float64 copies, without copying the whole grid), else as float64."""
    xp = xp_of(counts)
    counts = xp.asarray(counts)
    return counts if counts.dtype.kind in "iu" else xp.asarray(counts, dtype=xp.float64)


def precision_score(neg, pos, threshold_bins):
    tp, fp, _, _ = confusion_at(neg, pos, threshold_bins)
    return _div(tp, tp + fp)


def recall_score(neg, pos, threshold_bins):
    tp, _, fn, _ = confusion_at(neg, pos, threshold_bins)
    return _div(tp, tp + fn)


def false_positive_rate(neg, pos, threshold_bins):
    _, fp, _, tn = confusion_at(neg, pos, threshold_bins)
    return _div(fp, fp + tn)


def predicted_positive_rate(counts, threshold_bins):
    """Share of rows with ``score >= t``; ``counts`` (..., B) over all rows."""
    counts = _summable(counts)
    return _div(_at_or_above(counts, threshold_bins), counts.sum(-1)[..., None])


def positive_rate(neg_total, pos_total):
    return _div(pos_total, neg_total + pos_total)


# ----------------------------------------------------------------------------- calibration
def calibration_curve(count, sum_p, sum_y):
    """Reliability bins: mean predicted and observed rate per bin, (..., C) each."""
    return _div(sum_p, count), _div(sum_y, count)


def expected_calibration_error(count, sum_p, sum_y):
    """ECE: ``sum_b n_b / n * |mean_p_b - mean_y_b|`` over (..., C) bins of labelled rows."""
    xp = xp_of(count, sum_p, sum_y)
    count = xp.asarray(count, dtype=xp.float64)
    gap = xp.abs(xp.asarray(sum_p, dtype=xp.float64) - xp.asarray(sum_y, dtype=xp.float64))
    return _div(gap.sum(-1), count.sum(-1))


def brier_score_loss(n_neg, n_pos, sum_p2, sum_p_pos):
    """Brier score ``mean((p - y)**2) = (sum p^2 - 2 sum_{y=1} p + n_pos) / n``."""
    return _div(sum_p2 - 2.0 * sum_p_pos + n_pos, n_neg + n_pos)


def log_loss(n_neg, n_pos, sum_ll):
    """Mean negative log-likelihood (natural log, p clipped to [1e-15, 1 - 1e-15])."""
    return _div(sum_ll, n_neg + n_pos)


# ----------------------------------------------------------------------------- drift
def _proportions(counts):
    xp = xp_of(counts)
    counts = xp.asarray(counts, dtype=xp.float64)
    return _div(counts, counts.sum(-1, keepdims=True))


def population_stability_index(p_counts, q_counts, eps: float = PSI_EPS):
    """PSI ``sum (p - q) ln(p / q)`` with additive smoothing ``(x + eps) / (1 + k eps)``.

    ``p_counts`` (online) and ``q_counts`` (baseline), (..., k) counts over the same bins.
    """
    xp = xp_of(p_counts, q_counts)
    k = p_counts.shape[-1]
    p = (_proportions(p_counts) + eps) / (1.0 + k * eps)
    q = (_proportions(q_counts) + eps) / (1.0 + k * eps)
    return ((p - q) * xp.log(p / q)).sum(-1)


def js_divergence(p_counts, q_counts):
    """Jensen-Shannon divergence in bits (base 2; the divergence, not its square root)."""
    return _js_of_proportions(_proportions(p_counts), _proportions(q_counts))


def _js_of_proportions(p, q):
    xp = xp_of(p, q)
    m = 0.5 * (p + q)

    def kl(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = xp.where(a > 0, a * xp.log2(xp.where(a > 0, a, 1.0) / xp.where(b > 0, b, 1.0)), 0.0)
        return terms.sum(-1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def cdf_difference(p_counts, q_counts):
    """``F_p - F_q`` at the upper edge of every bin (what KS and Wasserstein read)."""
    xp = xp_of(p_counts, q_counts)
    return xp.cumsum(_proportions(p_counts), -1) - xp.cumsum(_proportions(q_counts), -1)


def ks_statistic(p_counts, q_counts, cdf_diff=None):
    """Two-sample Kolmogorov-Smirnov statistic over bins: ``max |F_p - F_q|``
    (``cdf_diff``: :func:`cdf_difference` of the counts, when the caller has it)."""
    d = cdf_difference(p_counts, q_counts) if cdf_diff is None else cdf_diff
    return xp_of(d).abs(d).max(-1)


def wasserstein_distance(p_counts, q_counts, bin_edges, cdf_diff=None):
    """Wasserstein-1 between two binned distributions.

    Mass is spread uniformly inside each bin, so the CDFs are piecewise linear and the
    integral of ``|F_p - F_q|`` is the trapezoid rule on the bin edges.

    Parameters
    ----------
    bin_edges : (B + 1,) float, the outer edges included (e.g. 0 and 1 for scores).
    cdf_diff : array, optional
        :func:`cdf_difference` of the counts, when the caller has it.
    """
    d = cdf_difference(p_counts, q_counts) if cdf_diff is None else cdf_diff
    xp = xp_of(d)
    zero = xp.zeros(d.shape[:-1] + (1,))
    d = xp.abs(xp.concatenate([zero, d], -1))
    widths = xp.diff(xp.asarray(bin_edges, dtype=xp.float64))
    return (0.5 * (d[..., 1:] + d[..., :-1]) * widths).sum(-1)


# ----------------------------------------------------------------------------- skew
def flip_rate(joint, n_thresholds: int):
    """Share of paired rows whose decision differs at each threshold.

    ``joint`` (..., (T+1)**2): cell ``a * (T+1) + b`` holds rows with ``a`` thresholds at or
    below the online score and ``b`` at or below the offline score; the decision at
    threshold ``k`` is positive iff ``a > k``.

    Returns
    -------
    (..., T) float64
    """
    xp = xp_of(joint)
    T = n_thresholds
    j = xp.asarray(joint, dtype=xp.float64).reshape(joint.shape[:-1] + (T + 1, T + 1))
    a = np.arange(T + 1)[:, None]
    b = np.arange(T + 1)[None, :]
    flips = [
        (j * xp.asarray(((a > k) != (b > k)).astype(np.float64))).sum((-1, -2)) for k in range(T)
    ]
    total = j.sum((-1, -2))
    if T == 0:
        return xp.zeros(joint.shape[:-1] + (0,))
    return _div(xp.stack(flips, -1), total[..., None])


def quantile_from_histogram(counts, edges, q: float):
    """The ``q`` quantile of a histogram, linear inside the bin that holds it.

    ``edges`` (B + 1,) are the outer edges of the B bins.
    """
    xp = xp_of(counts)
    counts = xp.asarray(counts, dtype=xp.float64)
    cum = xp.cumsum(counts, -1)
    total = cum[..., -1:]
    target = q * total
    b = (cum < target).sum(-1, keepdims=True)
    b = xp.minimum(b, counts.shape[-1] - 1)
    below = xp.take_along_axis(cum, b, -1) - xp.take_along_axis(counts, b, -1)
    in_bin = xp.take_along_axis(counts, b, -1)
    edges = xp.asarray(edges, dtype=xp.float64)
    lo, hi = edges[b], edges[b + 1]
    frac = _div(target - below, in_bin)
    frac = xp.where(xp.isnan(frac), 0.0, xp.clip(frac, 0.0, 1.0))
    out = (lo + frac * (hi - lo))[..., 0]
    return xp.where(total[..., 0] > 0, out, xp.nan)


def rate(numerator, denominator):
    """``numerator / denominator``, NaN where the denominator is 0."""
    return _div(numerator, denominator)


# ----------------------------------------------------------------------------- aggregation
def aggregate_bins(counts, mapping, n_out: int):
    """Sum the last axis into coarser bins: ``out[..., mapping[b]] += counts[..., b]``.

    ``mapping`` is non-decreasing (coarse edges are a subset of the fine ones), so this is a
    segmented sum.
    """
    xp = xp_of(counts)
    counts = xp.asarray(counts)
    mapping = np.asarray(mapping)
    starts = np.searchsorted(mapping, np.arange(n_out), side="left")
    # coarse bins past the last mapped one are empty: reduce only the others, pad with 0
    # (clipping their starts to B - 1 would cut the last non-empty bin short)
    m = max(1, int(np.sum(starts < counts.shape[-1])))
    out = xp.add.reduceat(counts, xp.asarray(np.minimum(starts[:m], counts.shape[-1] - 1)), axis=-1)
    if m < n_out:
        out = xp.concatenate([out, xp.zeros(out.shape[:-1] + (n_out - m,), dtype=out.dtype)], axis=-1)
    empty = np.searchsorted(mapping, np.arange(n_out), side="left") == np.searchsorted(
        mapping, np.arange(n_out), side="right"
    )
    if empty.any():
        out = xp.where(xp.asarray(empty), 0, out)
    return out


def performance_metrics(score, threshold_bins, calib_count, calib_p, calib_ll, calib_p2, calib_to_decile, value=None):
    """Every performance metric of one side and one score source.

    Parameters
    ----------
    score : (..., S, 3, B) counts by label state (0, 1, missing) and score bin.
    threshold_bins : (T,) first bin at or above each threshold in that grid.
    calib_count, calib_p, calib_ll, calib_p2 : (..., S, 3, C) count and sums (float64) of
        p, the log-loss term and p^2 in the calibration bins.
    calib_to_decile : (C,) decile of each calibration bin.
    value : optional ((..., S, 3) count, (..., S, 3) sum of value).

    Returns
    -------
    dict of metric name -> (..., S) or (..., S, T) arrays.
    """
    score = _summable(score)
    neg, pos, missing = score[..., 0, :], score[..., 1, :], score[..., 2, :]
    # each sum over the bins once (integer counts: exact, so in any grouping the same)
    n_neg, n_pos = neg.sum(-1), pos.sum(-1)
    tp, fp, fn, tn = confusion_at(neg, pos, threshold_bins, totals=(n_neg, n_pos))
    # rows of every label state at or above each threshold, over all rows (whole numbers
    # below 2**53: the float sum is the integer one)
    above = tp + fp + _at_or_above(missing, threshold_bins)
    out = {
        "auc": auc_score(neg, pos, totals=(n_neg, n_pos)),
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "fpr": _div(fp, fp + tn),
        "predicted_positive_rate": _div(above, (n_neg + n_pos + missing.sum(-1))[..., None]),
        "positive_rate": positive_rate(n_neg, n_pos),
    }
    labelled_count = calib_count[..., 0, :] + calib_count[..., 1, :]
    labelled_p = calib_p[..., 0, :] + calib_p[..., 1, :]
    n_dec = int(np.max(calib_to_decile)) + 1
    out["ece"] = expected_calibration_error(
        aggregate_bins(labelled_count, calib_to_decile, n_dec),
        aggregate_bins(labelled_p, calib_to_decile, n_dec),
        aggregate_bins(calib_count[..., 1, :], calib_to_decile, n_dec),
    )
    cn, cp_ = calib_count[..., 0, :].sum(-1), calib_count[..., 1, :].sum(-1)
    out["brier"] = brier_score_loss(cn, cp_, calib_p2[..., :2, :].sum((-1, -2)), calib_p[..., 1, :].sum(-1))
    out["log_loss"] = log_loss(cn, cp_, calib_ll[..., :2, :].sum((-1, -2)))
    if value is not None:
        vcount, vsum = value
        out["value_per_row"] = rate(vsum[..., :2].sum(-1), vcount[..., :2].sum(-1))
    return out


def score_drift(online, baseline, bin_edges, decile_map, js_map=None):
    """Drift of the score distribution: psi (deciles), js_divergence, ks, wasserstein.

    ``online``, ``baseline``: (..., S, B) counts over the same score bins, all label states.
    ``bin_edges``: (B + 1,) outer edges (0 and 1 included). ``js_map``: the bins' groups for
    the JS divergence (each bin its own without it).
    """
    xp = xp_of(online, baseline)
    baseline = xp.broadcast_to(baseline, online.shape) if baseline.ndim < online.ndim else baseline
    if js_map is None:
        js = js_divergence(online, baseline)
    else:
        n_js = int(np.max(js_map)) + 1
        js = js_divergence(aggregate_bins(online, js_map, n_js), aggregate_bins(baseline, js_map, n_js))
    d = cdf_difference(online, baseline)  # one for KS and Wasserstein
    return {
        "psi": score_psi(online, baseline, decile_map),
        "js_divergence": js,
        "ks": ks_statistic(None, None, cdf_diff=d),
        "wasserstein": wasserstein_distance(None, None, bin_edges, cdf_diff=d),
    }


def score_psi(online, baseline, decile_map):
    """PSI of the score over the baseline's deciles (``decile_map``: each bin's decile)."""
    n_dec = int(np.max(decile_map)) + 1
    return population_stability_index(aggregate_bins(online, decile_map, n_dec), aggregate_bins(baseline, decile_map, n_dec))


def skew_metrics(joint, n_thresholds, delta_count, delta_sum, delta_edges):
    """flip_rate (..., S, T), mean_abs_delta and p99_abs_delta (..., S)."""
    return {
        "flip_rate": flip_rate(joint, n_thresholds),
        "mean_abs_delta": rate(delta_sum, delta_count.sum(-1)),
        "p99_abs_delta": quantile_from_histogram(delta_count, delta_edges, 0.99),
    }
