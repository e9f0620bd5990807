"""From statistics to metric values, at a given grid resolution.

The same functions measure the point estimates (on the fine grid of the statistics) and the
bootstrap replicates (on the coarse grid, with a leading replicate axis): a
:class:`Resolution` says where the bins are, :class:`Grids` holds the cell arrays.

Every metric comes out as an array with the slice axis, and a threshold or feature axis
where it has one, keyed by ``(metric, scores, feature)``; ``scores`` is ``"online"`` or
``"offline"`` for performance metrics and None otherwise, ``feature`` is ``"score"`` or a
feature name for drift metrics and None otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine import metrics as M
from engine.encode import Layout
from engine.stats import LL2_BITS, LL_BITS, P_BITS, VALUE2_BITS, VALUE_BITS, Statistics, from_fixed

MetricKey = tuple[str, "str | None", "str | None"]  # (metric, scores, feature)


@dataclass
class Grids:
    """Cell arrays of one side; every array may carry leading (replicate) axes."""

    score: Any  # (..., S, 3, B)
    calib: dict[str, Any]  # count, p, p2, ll, ll2: (..., S, 3, C)
    features: list[Any]  # per feature (..., S, B_j)
    offline: Any = None
    calib_off: dict[str, Any] | None = None
    joint: Any = None  # (..., S, (T+1)^2)
    delta: tuple[Any, Any, Any] | None = None  # counts, sums of |d| and d^2: (..., S, D)
    value: tuple[Any, Any, Any] | None = None  # counts, sums of value and value^2: (..., S, 3)
    dq: Any = None  # (..., S, Q) flags (point estimates only)


@dataclass
class Resolution:
    """Where the bins of a :class:`Grids` are."""

    score_edges: np.ndarray  # (B + 1,) outer edges 0 and 1 included
    threshold_bins: np.ndarray  # (T,)
    decile_map: np.ndarray  # (B,) score bin -> decile
    calib_to_decile: np.ndarray  # (C,)
    feature_value_edges: list  # per feature: (B_j_values + 1,) outer edges, or None
    feature_psi_maps: list  # per feature: (B_j,) bin -> PSI bin (deciles + missing)
    delta_edges: np.ndarray  # (D + 1,)
    #: score bin -> JS bin (the bootstrap's coarse grid, so that its bias estimate applies)
    js_map: np.ndarray | None = None
    n_thresholds: int = 0
    extra: dict = field(default_factory=dict)


def _outer(edges: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.concatenate([[lo], np.asarray(edges, dtype=np.float64), [hi]])


def fine_resolution(layout: Layout) -> Resolution:
    """The resolution of the statistics as accumulated."""
    return _resolution(layout, layout.score_edges, fine_features=True)


def coarse_resolution(layout: Layout) -> Resolution:
    """The bootstrap's grid: coarse score bins, feature deciles, coarse |delta| bins."""
    return _resolution(layout, layout.coarse_edges, fine_features=False)


def _resolution(layout: Layout, score_edges: np.ndarray, fine_features: bool) -> Resolution:
    thresholds = np.asarray(layout.thresholds, dtype=np.float64)
    calib = layout.calib_edges
    lower = np.concatenate([[-np.inf], score_edges])
    value_edges, psi_maps = [], []
    for f in layout.features:
        if f.kind == "numeric":
            dec_edges = f.edges[np.nonzero(np.diff(f.decile_bins))[0]]  # where the decile changes
            edges = f.edges if fine_features else dec_edges
            value_edges.append(_outer(edges, min(f.low, edges[0]) if len(edges) else f.low, max(f.high, edges[-1]) if len(edges) else f.high))
            n_dec = int(f.decile_bins.max()) + 1
            if fine_features:
                psi_maps.append(np.concatenate([f.decile_bins, [n_dec]]).astype(np.int32))
            else:
                psi_maps.append(np.arange(n_dec + 1, dtype=np.int32))
        else:
            value_edges.append(None)
            psi_maps.append(np.arange(f.categories.size, dtype=np.int32))
    delta = layout.delta_edges if fine_features else layout.delta_edges[::8]
    return Resolution(
        score_edges=_outer(score_edges, 0.0, 1.0),
        threshold_bins=np.searchsorted(score_edges, thresholds, side="left").astype(np.int64) + 1,
        decile_map=np.searchsorted(layout.decile_edges, lower, side="right").astype(np.int32),
        calib_to_decile=np.searchsorted(layout.decile_edges, np.concatenate([[-np.inf], calib]), side="right").astype(np.int32),
        feature_value_edges=value_edges,
        feature_psi_maps=psi_maps,
        delta_edges=np.concatenate([[0.0], delta, [1.0]]),
        js_map=layout.fine_to(layout.coarse_edges) if fine_features else np.arange(len(score_edges) + 1, dtype=np.int32),
        n_thresholds=len(thresholds),
    )


def grids_from_statistics(stats: Statistics, layout: Layout, *, with_atoms: bool = False) -> Grids:
    """The fine grids of a :class:`Statistics`, sums converted back to float64: the judged
    slices, and after them the atoms (``layout.atoms``) with ``with_atoms``."""

    def calib(name: str) -> dict[str, np.ndarray]:
        g = stats.grid(name)
        return {
            "count": g[0],
            "p": from_fixed(g[1], P_BITS),
            "p2": from_fixed(g[2], P_BITS),
            "ll": from_fixed(g[3], LL_BITS),
            "ll2": from_fixed(g[4], LL2_BITS),
        }

    feature_grid = stats.grid("feature")[0]
    features = [feature_grid[:, j, : f.n_bins] for j, f in enumerate(layout.features)]
    paired = "offline" in stats.raw
    grids = Grids(
        score=stats.grid("score")[0],
        calib=calib("calib"),
        features=features,
        dq=stats.grid("dq")[0],
    )
    if paired:
        grids.offline = stats.grid("offline")[0]
        grids.calib_off = calib("calib_off")
        grids.joint = stats.grid("joint")[0]
        d = stats.grid("delta")
        grids.delta = (d[0], from_fixed(d[1], P_BITS), from_fixed(d[2], P_BITS))
    if "value" in stats.raw:
        v = stats.grid("value")
        grids.value = (v[0], from_fixed(v[1], VALUE_BITS), from_fixed(v[2], VALUE2_BITS))
    if not with_atoms and layout.n_atoms and grids.score.shape[0] == layout.n_slices + layout.n_atoms:
        grids = select_slices(grids, np.arange(layout.n_slices))
    return grids


def _feature_values_only(counts, layout_feature) -> Any:
    # drop the missing-value bin of a numeric feature (KS and Wasserstein need order)
    return counts[..., :-1] if layout_feature.kind == "numeric" else counts


@dataclass(frozen=True)
class Need:
    """Which groups of metrics a measurement needs: all of them (``keys`` None), or those
    holding one of ``keys`` (metric keys). Localisation judges remainders on the few metrics
    that moved, and skips measuring (and resampling) the rest."""

    keys: frozenset | None = None

    def performance(self, scores: str) -> bool:
        return self.keys is None or any(k[1] == scores for k in self.keys)

    def skew(self) -> bool:
        return self.keys is None or any(k[1] is None and k[2] is None for k in self.keys)

    def drift(self, column: str) -> bool:
        return self.keys is None or any(k[1] is None and k[2] == column for k in self.keys)

    def any_feature(self) -> bool:
        return self.keys is None or any(k[1] is None and k[2] not in (None, "score") for k in self.keys)

    def of_baseline(self) -> "Need":
        """What the baseline's own measurement needs: its served-score performance for any
        performance metric (the replay's expectations are the baseline's)."""
        if self.keys is None:
            return self
        return Need(frozenset(self.keys | {(k[0], "online", k[2]) for k in self.keys if k[1] == "offline"}))


ALL = Need()


def measure(
    online: Grids, baseline: Grids | None, res: Resolution, layout: Layout, need: Need = ALL
) -> dict[MetricKey, Any]:
    """Every metric the inputs allow (of the groups ``need`` asks for), as arrays over
    (..., S[, T])."""
    out: dict[MetricKey, Any] = {}

    def side(score, calib, value, scores: str) -> None:
        perf = M.performance_metrics(
            score, res.threshold_bins, calib["count"], calib["p"], calib["ll"], calib["p2"], res.calib_to_decile,
            None if value is None else value[:2],
        )
        for name, arr in perf.items():
            out[(name, scores, None)] = arr

    if online.calib is not None and need.performance("online"):
        side(online.score, online.calib, online.value, "online")
    if online.offline is not None and online.calib_off is not None and need.performance("offline"):
        side(online.offline, online.calib_off, None, "offline")
    if online.joint is not None and need.skew():
        skew = M.skew_metrics(online.joint, res.n_thresholds, online.delta[0], online.delta[1].sum(-1), res.delta_edges)
        for name, arr in skew.items():
            out[(name, None, None)] = arr
    if baseline is not None and need.drift("score"):
        on_score, base_score, flat = _aligned(online.score.sum(-2), baseline.score.sum(-2))
        drift = M.score_drift(on_score, base_score, res.score_edges, res.decile_map, js_map=res.js_map)
        for name, arr in drift.items():
            out[(name, None, "score")] = flat(arr)
    if baseline is not None:
        for j, f in enumerate(layout.features):
            if not need.drift(f.name):
                continue
            on, base, flat = _aligned(online.features[j], baseline.features[j])
            n_psi = int(res.feature_psi_maps[j].max()) + 1
            on_psi = M.aggregate_bins(on, res.feature_psi_maps[j], n_psi)
            base_psi = M.aggregate_bins(base, res.feature_psi_maps[j], n_psi)
            out[("psi", None, f.name)] = flat(M.population_stability_index(on_psi, base_psi))
            out[("js_divergence", None, f.name)] = flat(M.js_divergence(on_psi, base_psi))
            if f.kind == "numeric":
                on_v, base_v = _feature_values_only(on, f), _feature_values_only(base, f)
                d = M.cdf_difference(on_v, base_v)  # one for KS and Wasserstein
                out[("ks", None, f.name)] = flat(M.ks_statistic(on_v, base_v, cdf_diff=d))
                out[("wasserstein", None, f.name)] = flat(
                    M.wasserstein_distance(on_v, base_v, _baseline_quantile_edges(base_v), cdf_diff=d)
                )
    return out


def _aligned(on, base):
    """Online counts ``(..., W * S, B)`` against the baseline's ``(..., S, B)``: ``W`` blocks
    of the same ``S`` slices (the time windows) compared with one baseline.

    Returns them as ``(..., W, S, B)`` and ``(..., 1, S, B)``, so the baseline's side of a
    drift metric is computed once and broadcast, not once per block (the same numbers), and
    a function laying a result ``(..., W, S)`` back out as ``(..., W * S)``. With as many
    slices on both sides, all three are as they were.
    """
    slices, total = base.shape[-2], on.shape[-2]
    if total == slices:
        return on, base, lambda x: x
    if total % slices:
        raise ValueError(f"{total} online slices are not blocks of the baseline's {slices}.")
    blocks = total // slices
    lead = on.shape[:-2]
    return (
        on.reshape(lead + (blocks, slices, on.shape[-1])),
        base.reshape(base.shape[:-2] + (1, slices, base.shape[-1])),
        lambda x: x.reshape(lead + (total,)),
    )


def _baseline_quantile_edges(base_counts) -> np.ndarray:
    """Bin edges on the baseline's quantile scale: ``[0, F(e_1), ..., 1]``.

    Feature Wasserstein distances are measured in baseline quantile units (scale-free: 0.05
    means five percentile points), from the whole population's baseline CDF, the same for
    every slice. Scores keep their own [0, 1] units.
    """
    xp = M.xp_of(base_counts)
    whole = xp.asarray(base_counts, dtype=xp.float64)
    while whole.ndim > 1:
        whole = whole[0] if whole.ndim == 2 else whole.reshape((-1,) + whole.shape[-2:])[0]
    total = float(whole.sum())
    cdf = xp.cumsum(whole) / total if total > 0 else xp.linspace(0, 1, whole.size + 1)[1:]
    return xp.concatenate([xp.zeros(1), cdf])


def denominators(online: Grids, res: Resolution, layout: Layout, keys) -> dict[MetricKey, np.ndarray]:
    """``n`` of each metric (its denominator), for the finding and the exact intervals."""
    T = res.n_thresholds

    def perf(score) -> dict[str, np.ndarray]:
        neg, pos = score[..., 0, :], score[..., 1, :]
        tp, fp, fn, tn = M.confusion_at(neg, pos, res.threshold_bins)
        labelled = neg.sum(-1) + pos.sum(-1)
        return {
            "auc": labelled,
            "precision": tp + fp,
            "recall": tp + fn,
            "fpr": fp + tn,
            "predicted_positive_rate": np.repeat(score.sum((-1, -2))[..., None], T, -1),
            "positive_rate": labelled,
            "ece": labelled,
            "brier": labelled,
            "log_loss": labelled,
        }

    by_scores = {"online": perf(online.score)}
    if online.offline is not None:
        by_scores["offline"] = perf(online.offline)
    if online.value is not None:
        by_scores["online"]["value_per_row"] = online.value[0][..., :2].sum(-1)
    rows = online.score.sum((-1, -2))
    out: dict[MetricKey, np.ndarray] = {}
    for key in keys:
        name, scores, feature = key
        if scores is not None:
            out[key] = np.asarray(by_scores[scores][name], dtype=np.float64)
        elif feature == "score":
            out[key] = rows.astype(np.float64)
        elif feature is not None:
            j = [f.name for f in layout.features].index(feature)
            out[key] = online.features[j].sum(-1).astype(np.float64)
        elif name == "flip_rate":
            out[key] = np.repeat(online.joint.sum(-1)[..., None], T, -1).astype(np.float64)
        else:  # mean_abs_delta, p99_abs_delta
            out[key] = online.delta[0].sum(-1).astype(np.float64)
    return out


def stack_slices(parts: list[Any], axis: int = 0) -> Any:
    """Grids (or metric dicts, lists, arrays) laid one after the other along their slice
    axis (``axis``: 1 for replicates, whose first axis is the replicate): several time
    windows judged as one evidence."""
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, Grids):
        return Grids(**{f: stack_slices([getattr(p, f) for p in parts], axis) for f in first.__dataclass_fields__})
    if isinstance(first, dict):
        return {k: stack_slices([p[k] for p in parts], axis) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(stack_slices([p[i] for p in parts], axis) for i in range(len(first)))
    xp = M.xp_of(*parts)
    return xp.concatenate([xp.asarray(p) for p in parts], axis=axis)


def select_slices(g: Grids, index: np.ndarray) -> Grids:
    """The grids of the slices ``index`` (rows may repeat), slice axis first in every array.

    Used to lay the baseline out on a check's layout that has slices the baseline lacks (a
    ``model_version`` column found online): each such slice is compared with the baseline's
    population.
    """

    def take(a):
        if a is None:
            return None
        if isinstance(a, dict):
            return {k: take(v) for k, v in a.items()}
        if isinstance(a, (list, tuple)):
            return type(a)(take(v) for v in a)
        return np.take(a, index, axis=0)

    return Grids(**{f: take(getattr(g, f)) for f in g.__dataclass_fields__})
