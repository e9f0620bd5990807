"""Reference tests: every metric against an independent computation on the raw rows.

The real pipeline (LayoutBuilder -> Accumulator -> grids_from_statistics -> measure) runs on
random tables of 10^5 rows with two slice columns; each slice (the whole population and
every slice value, ``__other__`` and ``__null__`` included) is compared with a direct float64
computation on the rows of that slice, or with scikit-learn / SciPy.

Tolerances:

* count ratios (precision, recall, FPR, rates, flips): 1e-9 relative (they are exact);
* sums of bounded quantities are stored as fixed-point integers with 2**-32 resolution, so a
  mean of them (mean score of a bin, Brier, log loss, mean |delta|) may differ from float64
  by at most 2**-33 per row on average: 1e-9 relative *or* 2**-33 absolute;
* AUC: 0.002 of ``roc_auc_score`` (ties inside a fine bin count 1/2);
* PSI over the baseline's score deciles, JS over the coarse score grid (``coarse_edges``,
  the bootstrap's) and over a feature's PSI bins: 1e-9 relative;
* KS: the largest fine-bin mass; Wasserstein: the largest fine-bin width (and the tighter
  rigorous bound ``sum_b width_b * (p_b + q_b)``);
* p99 |delta|: inside the |delta| bin that holds the exact 99th percentile.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from engine import measure as ME
from engine import metrics as M
from engine.encode import NULL, OTHER, LayoutBuilder
from engine.stats import DQ_FLAGS, Accumulator
from kernels import get_kernels

RTOL = 1e-9
FIX = 2.0**-33  # worst-case mean rounding of a 2**-32 fixed-point sum
COUNTRIES = np.array([f"c{i}" for i in range(7)])
P_COUNTRY = np.array([0.3, 0.22, 0.15, 0.12, 0.09, 0.07, 0.05])
DEVICES = np.array(["ios", "android", "web"])
CH = np.array(list("abcdefghij"))
P_CH = np.array([0.25, 0.2, 0.15, 0.1, 0.08, 0.07, 0.06, 0.04, 0.03, 0.02])
TOP_K = 5  # country and ch fold their tail into __other__
SLICES = ["country", "device"]
FEATURES = {"f1": "numeric", "ch": "categorical"}


# ============================================================================ data
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def make_rows(seed: int, n: int, *, rare: bool = False, shift: float = 0.0, at=()) -> dict[str, np.ndarray]:
    """Raw columns as numpy arrays; strings come with a ``<col>__null`` mask.

    1% of the online and 1% of the offline scores are exactly one of ``at`` (the thresholds),
    where ``score >= t`` must hold.
    """
    rng = np.random.default_rng(seed)
    ci = rng.choice(len(COUNTRIES), p=P_COUNTRY, size=n)
    country = COUNTRIES[ci]
    device = DEVICES[rng.choice(3, p=[0.5, 0.3, 0.2], size=n)]
    if rare:
        score = rng.beta(0.5, 50, size=n) * (1.0 + 0.1 * ci)
        score = np.clip(score, 0.0, 1.0)
        label = (rng.random(n) < score).astype(np.float64)
    else:
        logit = -1.0 + 1.5 * rng.normal(size=n) + 0.15 * ci
        label = (rng.random(n) < _sigmoid(logit)).astype(np.float64)
        score = _sigmoid(logit + 0.6 * rng.normal(size=n) + shift)
    moved = rng.random(n) < 0.7  # 30% of the replays are identical
    offline = np.clip(score + moved * rng.normal(0.0, 0.03, n) * rng.choice([1.0, 1e-4], p=[0.9, 0.1], size=n), 0.0, 1.0)
    if len(at):
        score = np.where(rng.random(n) < 0.01, rng.choice(at, n), score)
        offline = np.where(rng.random(n) < 0.01, rng.choice(at, n), offline)
    f1 = rng.normal(size=n) + 0.5 * shift
    f1[rng.random(n) < 0.02] = np.nan
    ch = CH[rng.choice(len(CH), p=P_CH, size=n)]
    if shift:
        ch = np.where(rng.random(n) < 0.2, "a", ch)
    return {
        "score": score,
        "label": label,
        "offline_score": offline,
        "value": np.round(rng.gamma(2.0, 10.0, size=n), 2),
        "country": country,
        "country__null": rng.random(n) < 0.01,
        "device": device,
        "device__null": rng.random(n) < 0.03,
        "f1": f1,
        "ch": ch,
        "ch__null": rng.random(n) < 0.01,
    }


def to_table(rows: dict[str, np.ndarray], *, paired: bool = True, value: bool = True) -> pa.Table:
    cols = {}
    for name in ["score", "label", "f1"] + (["offline_score"] if paired else []) + (["value"] if value else []):
        mask = rows.get(f"{name}__null")
        cols[name] = pa.array(rows[name], mask=mask) if mask is not None else pa.array(rows[name])
    for name in ["country", "device", "ch"]:
        cols[name] = pa.array(rows[name], mask=rows[f"{name}__null"])
    if "__key_null" in rows:
        cols["__key_null"] = pa.array(rows["__key_null"])
    return pa.table(cols)


def slice_mask(rows, labels, layout) -> np.ndarray:
    """Independent slice membership: the value, ``__other__`` (not top-K) or ``__null__``."""
    n = len(rows["score"])
    m = np.ones(n, dtype=bool)
    for col, v in labels.items():
        null = rows[f"{col}__null"]
        if v == NULL:
            m &= null
        elif v == OTHER:
            m &= ~null & ~np.isin(rows[col], list(layout.slice_codes[col].values))
        else:
            m &= ~null & (rows[col] == v)
    return m


def valid_score(p):
    return np.isfinite(p) & (p >= 0) & (p <= 1)


def labelled(y):
    return (y == 0) | (y == 1)


@functools.cache
def scenario(name: str):
    """(layout, baseline rows, online rows, measured metrics, online grids, baseline grids)."""
    k = get_kernels("cpu")
    if name == "ordinary":
        thresholds = [0.3, 0.6]
        base, online = make_rows(1, 120_000), make_rows(2, 100_000, at=thresholds)
    elif name == "rare":
        thresholds = [0.02, 0.05]
        base, online = make_rows(3, 150_000, rare=True), make_rows(4, 150_000, rare=True, at=thresholds)
    elif name == "shifted":
        thresholds = [0.3, 0.6]
        base, online = make_rows(1, 120_000), make_rows(5, 100_000, shift=0.8, at=thresholds)
    else:
        raise KeyError(name)
    b = LayoutBuilder(SLICES, FEATURES, thresholds, top_k=TOP_K)
    base_table = to_table(base, paired=False, value=False)
    b.update(base_table)
    layout = b.build()
    sb = Accumulator(layout, k).accumulate(base_table.to_batches(40_000))
    so = Accumulator(layout, k, paired=True, with_value=True).accumulate(to_table(online).to_batches(40_000))
    go, gb = ME.grids_from_statistics(so, layout), ME.grids_from_statistics(sb, layout)
    m = ME.measure(go, gb, ME.fine_resolution(layout), layout)
    return layout, base, online, m, go, gb


@functools.cache
def dirty_scenario():
    """The ordinary layout, measuring an online table full of data-quality problems."""
    layout = scenario("ordinary")[0]
    rows = make_rows(11, 30_000, at=layout.thresholds)
    n = len(rows["score"])
    rng = np.random.default_rng(12)
    idx = rng.permutation(n)
    parts = np.array_split(idx[:6000], 12)
    score = rows["score"].copy()
    score[parts[0]] = np.nan
    score[parts[1]] = -0.1
    score[parts[2]] = 1.5
    score_null = np.zeros(n, bool)
    score_null[parts[3]] = True
    label = rows["label"].copy()
    label[parts[4]] = 2.0
    label[parts[5][: len(parts[5]) // 2]] = -1.0
    label_null = np.zeros(n, bool)
    label_null[parts[5][len(parts[5]) // 2:]] = True
    # overlap on purpose: invalid scores with invalid labels
    label[parts[0][:50]] = 2.0
    off = rows["offline_score"].copy()
    off[parts[6]] = np.nan
    off[parts[7]] = 1.2
    country = rows["country"].astype("<U8")
    country[parts[8]] = "zz_new"  # never seen in the baseline: __other__ + unseen
    device = rows["device"].astype("<U8")
    device[parts[9]] = "tablet"
    ch = rows["ch"].astype("<U8")
    ch[parts[10]] = "q"
    key_null = np.zeros(n, bool)
    key_null[parts[11]] = True
    rows.update(
        score=score, score__null=score_null, label=label, label__null=label_null, offline_score=off,
        country=country, device=device, ch=ch, __key_null=key_null,
    )
    # what the accumulator reads: nulls are NaN
    k = get_kernels("cpu")
    acc = Accumulator(layout, k, paired=True, with_value=True)
    stats = acc.accumulate(to_table(rows).to_batches(7_000))
    rows["score"] = np.where(score_null, np.nan, score)
    rows["label"] = np.where(label_null, np.nan, label)
    g = ME.grids_from_statistics(stats, layout)
    gb = scenario("ordinary")[5]
    m = ME.measure(g, gb, ME.fine_resolution(layout), layout)
    return layout, rows, acc, stats, m, g


def close(actual, expected, rtol=RTOL, atol=0.0, msg=""):
    np.testing.assert_allclose(np.asarray(actual, float), np.asarray(expected, float), rtol=rtol, atol=atol, equal_nan=True, err_msg=msg)


def ratio(a, b):
    return a / b if b > 0 else np.nan


# ============================================================================ performance
def check_auc(layout, rows, m, scores="online"):
    col = "score" if scores == "online" else "offline_score"
    p, y = rows[col], rows["label"]
    ok = valid_score(p) & labelled(y)
    auc = m[("auc", scores, None)]
    assert auc.shape == (layout.n_slices,)
    worst = 0.0
    for s, labels in enumerate(layout.slice_labels()):
        sel = ok & slice_mask(rows, labels, layout)
        ys = y[sel]
        if ys.size == 0 or ys.min() == ys.max():
            assert np.isnan(auc[s]), labels
            continue
        ref = roc_auc_score(ys, p[sel])
        worst = max(worst, abs(auc[s] - ref))
        assert abs(auc[s] - ref) <= 0.002, (labels, auc[s], ref)
    return worst


@pytest.mark.parametrize("name", ["ordinary", "rare", "shifted"])
def test_auc_matches_sklearn(name):
    layout, _, online, m, _, _ = scenario(name)
    check_auc(layout, online, m, "online")
    check_auc(layout, online, m, "offline")
    if name == "rare":
        rate = m[("positive_rate", "online", None)][0]
        assert 0.005 < rate < 0.02
        assert np.median(online["score"]) < 0.01


def direct_threshold_metrics(p, y, thresholds):
    ok = valid_score(p)
    lab = ok & labelled(y)
    out = {k: [] for k in ["precision", "recall", "fpr", "predicted_positive_rate"]}
    for t in thresholds:
        dec = p >= t
        tp = np.sum(dec & lab & (y == 1))
        fp = np.sum(dec & lab & (y == 0))
        fn = np.sum(~dec & lab & (y == 1))
        tn = np.sum(~dec & lab & (y == 0))
        out["precision"].append(ratio(tp, tp + fp))
        out["recall"].append(ratio(tp, tp + fn))
        out["fpr"].append(ratio(fp, fp + tn))
        out["predicted_positive_rate"].append(ratio(np.sum(dec & ok), np.sum(ok)))
    out = {k: np.array(v, dtype=float) for k, v in out.items()}
    out["positive_rate"] = ratio(np.sum(lab & (y == 1)), np.sum(lab))
    return out


def check_threshold_metrics(layout, rows, m, scores="online"):
    col = "score" if scores == "online" else "offline_score"
    T = len(layout.thresholds)
    for name in ["precision", "recall", "fpr", "predicted_positive_rate"]:
        assert m[(name, scores, None)].shape == (layout.n_slices, T)
    for s, labels in enumerate(layout.slice_labels()):
        sel = slice_mask(rows, labels, layout)
        ref = direct_threshold_metrics(rows[col][sel], rows["label"][sel], layout.thresholds)
        for name, expected in ref.items():
            close(m[(name, scores, None)][s], expected, msg=f"{name} {scores} {labels}")


@pytest.mark.parametrize("name", ["ordinary", "rare", "shifted"])
def test_threshold_metrics_exact(name):
    layout, _, online, m, _, _ = scenario(name)
    check_threshold_metrics(layout, online, m, "online")
    check_threshold_metrics(layout, online, m, "offline")


def check_flips(layout, rows, m):
    on, off = rows["score"], rows["offline_score"]
    both = valid_score(on) & valid_score(off)
    fr = m[("flip_rate", None, None)]
    assert fr.shape == (layout.n_slices, len(layout.thresholds))
    for s, labels in enumerate(layout.slice_labels()):
        sel = both & slice_mask(rows, labels, layout)
        expected = [ratio(np.sum((on[sel] >= t) != (off[sel] >= t)), sel.sum()) for t in layout.thresholds]
        close(fr[s], expected, msg=str(labels))
    assert np.nanmax(fr[0]) > 0  # the test data does flip


@pytest.mark.parametrize("name", ["ordinary", "rare", "shifted"])
def test_flip_rate_exact(name):
    layout, _, online, m, _, _ = scenario(name)
    check_flips(layout, online, m)


@pytest.mark.parametrize("name", ["ordinary", "rare"])
def test_reliability_bins(name):
    layout, _, rows, _, g, _ = scenario(name)
    edges = layout.calib_edges
    C = len(edges) + 1
    p, y = rows["score"], rows["label"]
    ok = valid_score(p) & labelled(y)
    count = g.calib["count"][:, 0] + g.calib["count"][:, 1]
    sum_p = g.calib["p"][:, 0] + g.calib["p"][:, 1]
    mean_p, obs = M.calibration_curve(count, sum_p, g.calib["count"][:, 1])
    assert mean_p.shape == (layout.n_slices, C)
    for s, labels in enumerate(layout.slice_labels()):
        sel = ok & slice_mask(rows, labels, layout)
        b = np.searchsorted(edges, p[sel], side="right")
        n_b = np.bincount(b, minlength=C)
        np.testing.assert_array_equal(count[s], n_b, err_msg=str(labels))
        with np.errstate(invalid="ignore", divide="ignore"):
            mp = np.bincount(b, weights=p[sel], minlength=C) / n_b
            oy = np.bincount(b, weights=y[sel], minlength=C) / n_b
        close(mean_p[s], mp, atol=FIX, msg=str(labels))
        close(obs[s], oy, msg=str(labels))


@pytest.mark.parametrize("name", ["ordinary", "rare", "shifted"])
def test_ece_over_deciles(name):
    layout, _, rows, m, _, _ = scenario(name)
    assert len(layout.decile_edges) == 9
    p, y = rows["score"], rows["label"]
    ok = valid_score(p) & labelled(y)
    ece = m[("ece", "online", None)]
    for s, labels in enumerate(layout.slice_labels()):
        sel = ok & slice_mask(rows, labels, layout)
        if not sel.any():
            assert np.isnan(ece[s])
            continue
        b = np.searchsorted(layout.decile_edges, p[sel], side="right")
        n_b = np.bincount(b, minlength=10)
        gap = np.abs(np.bincount(b, weights=p[sel], minlength=10) - np.bincount(b, weights=y[sel], minlength=10))
        expected = gap.sum() / n_b.sum()
        close(ece[s], expected, atol=FIX, msg=str(labels))


@pytest.mark.parametrize("name", ["ordinary", "rare", "shifted"])
def test_brier_and_log_loss(name):
    layout, _, rows, m, _, _ = scenario(name)
    for scores, col in [("online", "score"), ("offline", "offline_score")]:
        p, y = rows[col], rows["label"]
        ok = valid_score(p) & labelled(y)
        for s, labels in enumerate(layout.slice_labels()):
            sel = ok & slice_mask(rows, labels, layout)
            brier, ll = m[("brier", scores, None)][s], m[("log_loss", scores, None)][s]
            if not sel.any():
                assert np.isnan(brier) and np.isnan(ll)
                continue
            ps, ys = p[sel], y[sel]
            direct_brier = np.mean((ps - ys) ** 2)
            pc = np.clip(ps, 1e-15, 1 - 1e-15)
            direct_ll = -np.mean(ys * np.log(pc) + (1 - ys) * np.log(1 - pc))
            # Brier reads three fixed-point sums (p^2, p of positives, and exact counts)
            close(brier, direct_brier, atol=3 * FIX, msg=f"brier {scores} {labels}")
            close(ll, direct_ll, atol=FIX, msg=f"log_loss {scores} {labels}")
            close(brier, brier_score_loss(ys, ps), rtol=1e-8, atol=3 * FIX)
            if ys.min() != ys.max():
                # sklearn >= 1.5 clips at float64 eps, not 1e-15: hand it the clipped scores
                close(ll, log_loss(ys, pc), rtol=1e-8, atol=FIX)


def test_value_per_row():
    layout, _, rows, m, _, _ = scenario("ordinary")
    ok = labelled(rows["label"])
    v = m[("value_per_row", "online", None)]
    for s, labels in enumerate(layout.slice_labels()):
        sel = ok & slice_mask(rows, labels, layout)
        # values are stored with 2**-16 resolution
        close(v[s], rows["value"][sel].mean() if sel.any() else np.nan, atol=2.0**-17)


# ============================================================================ drift
def direct_psi(a, b, eps=1e-4):
    k = len(a)
    p = (a / a.sum() + eps) / (1 + k * eps)
    q = (b / b.sum() + eps) / (1 + k * eps)
    return float(np.sum((p - q) * np.log(p / q)))


def direct_js(a, b):
    return float(jensenshannon(a / a.sum(), b / b.sum(), base=2) ** 2)


@pytest.mark.parametrize("name", ["ordinary", "rare", "shifted"])
def test_score_drift(name):
    layout, base, online, m, _, _ = scenario(name)
    res = ME.fine_resolution(layout)
    widths = np.diff(res.score_edges)
    B = layout.n_fine
    for s, labels in enumerate(layout.slice_labels()):
        po = online["score"][valid_score(online["score"]) & slice_mask(online, labels, layout)]
        pb = base["score"][valid_score(base["score"]) & slice_mask(base, labels, layout)]
        keys = [(k, None, "score") for k in ["psi", "js_divergence", "ks", "wasserstein"]]
        if po.size == 0 or pb.size == 0:
            for key in keys:
                assert np.isnan(m[key][s]) or po.size == pb.size == 0
            continue
        dec_o = np.bincount(np.searchsorted(layout.decile_edges, po, side="right"), minlength=10)
        dec_b = np.bincount(np.searchsorted(layout.decile_edges, pb, side="right"), minlength=10)
        close(m[("psi", None, "score")][s], direct_psi(dec_o, dec_b), atol=1e-15, msg=str(labels))
        # JS of the score is measured on the bootstrap's coarse grid (commit 714f28e)
        Bc = len(layout.coarse_edges) + 1
        co = np.bincount(np.searchsorted(layout.coarse_edges, po, side="right"), minlength=Bc)
        cb = np.bincount(np.searchsorted(layout.coarse_edges, pb, side="right"), minlength=Bc)
        close(m[("js_divergence", None, "score")][s], direct_js(co, cb), atol=1e-14, msg=str(labels))
        fo = np.bincount(np.searchsorted(layout.score_edges, po, side="right"), minlength=B)
        fb = np.bincount(np.searchsorted(layout.score_edges, pb, side="right"), minlength=B)
        mass_o, mass_b = fo / fo.sum(), fb / fb.sum()
        ks_ref = sps.ks_2samp(po, pb).statistic
        ks = m[("ks", None, "score")][s]
        assert abs(ks - ks_ref) <= np.max(np.maximum(mass_o, mass_b)) + 1e-12, (labels, ks, ks_ref)
        assert ks <= ks_ref + 1e-12  # the binned statistic is the exact one at the bin edges
        w_ref = sps.wasserstein_distance(po, pb)
        w = m[("wasserstein", None, "score")][s]
        assert abs(w - w_ref) <= widths.max(), (labels, w, w_ref)
        assert abs(w - w_ref) <= np.sum(widths * (mass_o + mass_b)) + 1e-12, (labels, w, w_ref)
    if name == "shifted":
        assert m[("psi", None, "score")][0] > 0.1  # the shift is seen


@pytest.mark.parametrize("name", ["ordinary", "shifted"])
def test_feature_drift(name):
    layout, base, online, m, _, _ = scenario(name)
    f1, ch = layout.features
    assert (f1.name, f1.kind, ch.name, ch.kind) == ("f1", "numeric", "ch", "categorical")
    # f1: the baseline's deciles (inverted-cdf quantiles) for PSI, the fine edges for JS
    finite = base["f1"][np.isfinite(base["f1"])]
    dec = np.unique(np.quantile(finite, np.arange(1, 10) / 10, method="inverted_cdf"))
    dec = dec[dec > finite.min()]
    assert np.isin(dec, f1.edges).all()

    def num_bins(x, edges):
        return np.where(np.isnan(x), len(edges) + 1, np.searchsorted(edges, x, side="right"))

    def cat_bins(rows, sel):
        vals = list(ch.categories.values)
        x, null = rows["ch"][sel], rows["ch__null"][sel]
        idx = np.array([vals.index(v) if v in vals else len(vals) for v in x])
        return np.where(null, len(vals) + 1, idx)

    whole_base = np.sort(finite)
    whole_mass = np.bincount(np.searchsorted(f1.edges, whole_base, side="right"), minlength=len(f1.edges) + 1) / finite.size
    for s, labels in enumerate(layout.slice_labels()):
        so, sb = slice_mask(online, labels, layout), slice_mask(base, labels, layout)
        if not so.any() or not sb.any():
            continue
        xo, xb = online["f1"][so], base["f1"][sb]
        # PSI and JS of a numeric feature: over its deciles plus the missing bin
        a = np.bincount(num_bins(xo, dec), minlength=len(dec) + 2)
        b = np.bincount(num_bins(xb, dec), minlength=len(dec) + 2)
        close(m[("psi", None, "f1")][s], direct_psi(a, b), atol=1e-15, msg=f"f1 psi {labels}")
        close(m[("js_divergence", None, "f1")][s], direct_js(a, b), atol=1e-14, msg=f"f1 js {labels}")
        K = ch.categories.size
        a = np.bincount(cat_bins(online, so), minlength=K)
        b = np.bincount(cat_bins(base, sb), minlength=K)
        close(m[("psi", None, "ch")][s], direct_psi(a, b), atol=1e-15, msg=f"ch psi {labels}")
        close(m[("js_divergence", None, "ch")][s], direct_js(a, b), atol=1e-14, msg=f"ch js {labels}")
        # KS of the numeric feature: within the largest fine-bin mass of SciPy's
        fo, fb = xo[np.isfinite(xo)], xb[np.isfinite(xb)]
        ko = np.bincount(np.searchsorted(f1.edges, fo, side="right"), minlength=len(f1.edges) + 1) / fo.size
        kb = np.bincount(np.searchsorted(f1.edges, fb, side="right"), minlength=len(f1.edges) + 1) / fb.size
        ks_ref = sps.ks_2samp(fo, fb).statistic
        assert abs(m[("ks", None, "f1")][s] - ks_ref) <= np.max(np.maximum(ko, kb)) + 1e-12
        # Wasserstein of a feature in baseline quantile units (commit 714f28e): the distance
        # between the values mapped through the whole baseline's empirical CDF, within
        # sum_b mass_b * (p_b + q_b) (mass_b: the whole baseline's share of fine bin b)
        u_o = np.searchsorted(whole_base, fo, side="right") / whole_base.size
        u_b = np.searchsorted(whole_base, fb, side="right") / whole_base.size
        w_ref = sps.wasserstein_distance(u_o, u_b)
        bound = np.sum(whole_mass * (ko + kb))
        assert abs(m[("wasserstein", None, "f1")][s] - w_ref) <= bound + 1e-12, (labels, m[("wasserstein", None, "f1")][s], w_ref, bound)
    if name == "shifted":
        assert m[("psi", None, "f1")][0] > 0.05 and m[("psi", None, "ch")][0] > 0.02


# ============================================================================ skew
@pytest.mark.parametrize("name", ["ordinary", "rare", "shifted"])
def test_abs_delta(name):
    layout, _, rows, m, _, _ = scenario(name)
    on, off = rows["score"], rows["offline_score"]
    both = valid_score(on) & valid_score(off)
    res = ME.fine_resolution(layout)
    edges = res.delta_edges
    for s, labels in enumerate(layout.slice_labels()):
        sel = both & slice_mask(rows, labels, layout)
        mean_d, p99 = m[("mean_abs_delta", None, None)][s], m[("p99_abs_delta", None, None)][s]
        if not sel.any():
            assert np.isnan(mean_d) and np.isnan(p99)
            continue
        d = np.abs(on[sel] - off[sel])
        close(mean_d, d.mean(), atol=FIX, msg=str(labels))
        q = np.quantile(d, 0.99, method="inverted_cdf")
        b = np.searchsorted(layout.delta_edges, q, side="right")  # bin b spans edges[b], edges[b+1]
        assert edges[b] <= p99 <= edges[b + 1], (labels, p99, q, edges[b], edges[b + 1])
        assert edges[b] <= q < edges[b + 1] or q == edges[-1]


# ============================================================================ data quality
def test_dq_flags_order():
    layout = scenario("ordinary")[0]
    acc = Accumulator(layout, get_kernels("cpu"), paired=True)
    assert acc.dq_flags == DQ_FLAGS + ("unseen:country", "unseen:device", "unseen:ch")
    assert DQ_FLAGS == (
        "rows", "valid_score", "invalid_score", "has_offline", "invalid_offline_score",
        "has_label", "invalid_label", "null_key", "unseen_value",
    )


def test_dq_counts_exact():
    layout, rows, acc, _, _, g = dirty_scenario()
    p, y, off = rows["score"], rows["label"], rows["offline_score"]
    vs = valid_score(p)
    unseen = {
        c: ~rows[f"{c}__null"] & ~np.isin(rows[c], sorted(seen))
        for c, seen in [
            ("country", layout.slice_codes["country"].seen),
            ("device", layout.slice_codes["device"].seen),
            ("ch", layout.features[1].categories.seen),
        ]
    }
    flags = {
        "rows": np.ones(len(p), bool),
        "valid_score": vs,
        "invalid_score": ~vs,
        "has_offline": valid_score(off),
        "invalid_offline_score": ~np.isnan(off) & ~valid_score(off),
        "has_label": labelled(y),
        "invalid_label": ~np.isnan(y) & ~labelled(y),
        "null_key": rows["__key_null"],
        "unseen_value": unseen["country"] | unseen["device"] | unseen["ch"],
        "unseen:country": unseen["country"],
        "unseen:device": unseen["device"],
        "unseen:ch": unseen["ch"],
    }
    assert tuple(flags) == acc.dq_flags
    # every kind of problem is present
    assert all(f.sum() > 0 for f in flags.values())
    assert g.dq.shape == (layout.n_slices, len(acc.dq_flags))
    for s, labels in enumerate(layout.slice_labels()):
        sel = slice_mask(rows, labels, layout)
        expected = [int(np.sum(f & sel)) for f in flags.values()]
        np.testing.assert_array_equal(g.dq[s], expected, err_msg=str(labels))
    # score cells hold only valid scores: invalid ones are in no cell
    assert g.score[0].sum() == vs.sum()
    assert g.score[0][:2].sum() == np.sum(vs & labelled(y))


def test_dq_slices_null_other_unseen():
    layout, rows, acc, _, _, g = dirty_scenario()
    labels = layout.slice_labels()
    idx = {tuple(sorted(d.items())): i for i, d in enumerate(labels)}
    top = set(layout.slice_codes["country"].values)
    assert "c5" not in top and "c6" not in top and "c0" in top
    rows_flag = g.dq[:, 0]
    n_null = rows["country__null"].sum()
    n_other = np.sum(~rows["country__null"] & ~np.isin(rows["country"], sorted(top)))
    assert rows_flag[idx[(("country", NULL),)]] == n_null > 0
    assert rows_flag[idx[(("country", OTHER),)]] == n_other
    assert n_other > np.sum((rows["country"] == "zz_new") & ~rows["country__null"]) > 0  # tail + unseen
    # unseen values are counted, and land in __other__
    col = acc.dq_flags.index("unseen:country")
    n_new = np.sum((rows["country"] == "zz_new") & ~rows["country__null"])
    assert g.dq[0, col] == n_new
    assert g.dq[idx[(("country", OTHER),)], col] == n_new
    assert g.dq[idx[(("country", "c0"),)], col] == 0
    assert g.dq[idx[(("country", "c0"),)], acc.dq_flags.index("unseen_value")] > 0  # device / ch
    assert rows_flag[idx[(("device", OTHER),)]] == np.sum((rows["device"] == "tablet") & ~rows["device__null"])
    # the slices of one column partition the population
    off = layout.slice_offsets
    for d, dim in enumerate(layout.dims):
        assert rows_flag[off[d]: off[d] + layout.dim_size(dim)].sum() == rows_flag[0] == len(rows["score"])


def test_dq_metrics_on_valid_rows_only():
    layout, rows, _, _, m, _ = dirty_scenario()
    check_auc(layout, rows, m, "online")
    check_auc(layout, rows, m, "offline")
    check_threshold_metrics(layout, rows, m, "online")
    check_threshold_metrics(layout, rows, m, "offline")
    check_flips(layout, rows, m)
    for s, labels in enumerate(layout.slice_labels()):
        ok = valid_score(rows["score"]) & labelled(rows["label"]) & slice_mask(rows, labels, layout)
        if ok.any():
            ps, ys = rows["score"][ok], rows["label"][ok]
            close(m[("brier", "online", None)][s], np.mean((ps - ys) ** 2), atol=3 * FIX)
    assert np.isfinite(m[("auc", "online", None)][0])


# ============================================================================ undefined values
def test_undefined_values_are_nan():
    k = get_kernels("cpu")
    n = 2000
    rng = np.random.default_rng(7)
    score = rng.uniform(0, 0.9, n)
    seg = np.where(np.arange(n) < 1000, "mixed", "allneg")
    label = np.where(seg == "mixed", rng.random(n) < score, 0).astype(np.float64)
    table = pa.table({"score": score, "label": label, "seg": seg})
    b = LayoutBuilder(["seg"], {}, [0.5, 0.95])  # nobody scores >= 0.95
    b.update(table)
    layout = b.build()
    stats = Accumulator(layout, k).accumulate(table.to_batches(500))
    g = ME.grids_from_statistics(stats, layout)
    with np.errstate(all="raise"):
        m = ME.measure(g, g, ME.fine_resolution(layout), layout)
    labels = layout.slice_labels()
    mixed, allneg = labels.index({"seg": "mixed"}), labels.index({"seg": "allneg"})
    auc = m[("auc", "online", None)]
    assert np.isfinite(auc[0]) and np.isfinite(auc[mixed]) and np.isnan(auc[allneg])
    prec = m[("precision", "online", None)]
    assert np.isfinite(prec[mixed, 0]) and np.isnan(prec[mixed, 1]) and np.isnan(prec[0, 1])
    assert np.isnan(m[("recall", "online", None)][allneg]).all()  # no positive at all
    assert m[("positive_rate", "online", None)][allneg] == 0.0
    assert m[("predicted_positive_rate", "online", None)][0, 1] == 0.0
    empty = labels.index({"seg": NULL})
    for key in [("auc", "online", None), ("brier", "online", None), ("ece", "online", None), ("psi", None, "score")]:
        assert np.isnan(m[key][empty]) or key[0] == "psi", key


# ============================================================================ unit tests of engine.metrics
def test_auc_score_small():
    assert M.auc_score([1, 0], [0, 1]) == 1.0
    assert M.auc_score([0, 1], [1, 0]) == 0.0
    assert M.auc_score([1], [1]) == 0.5
    assert M.auc_score([3], [5]) == 0.5  # all tied
    assert np.isclose(M.auc_score([2, 1], [1, 2]), 6 / 9)
    # the same against sklearn on the expanded rows (bin index as the score)
    neg, pos = np.array([4, 0, 3, 1, 2]), np.array([1, 2, 0, 3, 5])
    y = np.r_[np.zeros(neg.sum()), np.ones(pos.sum())]
    s = np.r_[np.repeat(np.arange(5), neg), np.repeat(np.arange(5), pos)]
    assert np.isclose(M.auc_score(neg, pos), roc_auc_score(y, s), rtol=1e-12)
    assert np.isnan(M.auc_score([0, 0], [1, 2]))
    assert np.isnan(M.auc_score([1, 2], [0, 0]))


def test_confusion_and_rates_small():
    neg, pos = np.array([3, 2, 1]), np.array([0, 1, 4])
    tp, fp, fn, tn = M.confusion_at(neg, pos, np.array([0, 1, 2, 3]))
    np.testing.assert_array_equal(tp, [5, 5, 4, 0])
    np.testing.assert_array_equal(fp, [6, 3, 1, 0])
    np.testing.assert_array_equal(fn, [0, 0, 1, 5])
    np.testing.assert_array_equal(tn, [0, 3, 5, 6])
    tb = np.array([1, 2, 3])
    close(M.precision_score(neg, pos, tb), [5 / 8, 4 / 5, np.nan])
    close(M.recall_score(neg, pos, tb), [1.0, 4 / 5, 0.0])
    close(M.false_positive_rate(neg, pos, tb), [3 / 6, 1 / 6, 0.0])
    close(M.predicted_positive_rate(neg + pos, tb), [8 / 11, 5 / 11, 0.0])
    close(M.predicted_positive_rate(np.zeros(3), tb), [np.nan] * 3)
    assert M.positive_rate(3, 1) == 0.25
    assert np.isnan(M.positive_rate(0, 0))
    close(M.rate(np.array([1.0, 1.0]), np.array([2.0, 0.0])), [0.5, np.nan])


def test_calibration_small():
    mp, oy = M.calibration_curve(np.array([2, 0, 4]), np.array([1.0, 0.0, 3.0]), np.array([1, 0, 2]))
    close(mp, [0.5, np.nan, 0.75])
    close(oy, [0.5, np.nan, 0.5])
    # two bins of two rows: |0.4 - 0| + |1.6 - 2| over 4 rows
    assert np.isclose(M.expected_calibration_error(np.array([2, 2]), np.array([0.4, 1.6]), np.array([0, 2])), 0.2)
    assert np.isnan(M.expected_calibration_error(np.zeros(2), np.zeros(2), np.zeros(2)))
    # rows (p, y) = (0.2, 0), (0.8, 1), (0.6, 1)
    p, y = np.array([0.2, 0.8, 0.6]), np.array([0, 1, 1])
    assert np.isclose(M.brier_score_loss(1, 2, np.sum(p**2), 1.4), 0.08, rtol=1e-12)
    assert np.isclose(M.brier_score_loss(1, 2, np.sum(p**2), 1.4), brier_score_loss(y, p), rtol=1e-12)
    ll = -(np.log(0.8) + np.log(0.8) + np.log(0.6))
    assert np.isclose(M.log_loss(1, 2, ll), log_loss(y, p), rtol=1e-12)
    assert np.isnan(M.log_loss(0, 0, 0.0)) and np.isnan(M.brier_score_loss(0, 0, 0.0, 0.0))


def test_drift_small():
    a, b = np.array([60.0, 40.0]), np.array([40.0, 60.0])
    assert np.isclose(M.population_stability_index(a, b, eps=0.0), 0.4 * np.log(1.5), rtol=1e-12)
    assert np.isclose(M.population_stability_index(a, b), direct_psi(a, b), rtol=1e-12)
    assert abs(M.population_stability_index(a, b) - 0.4 * np.log(1.5)) < 1e-4
    assert M.population_stability_index(a, a) == 0.0
    # an empty bin stays finite thanks to the smoothing
    assert np.isfinite(M.population_stability_index(np.array([10.0, 0.0]), np.array([5.0, 5.0])))
    assert np.isclose(M.js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])), 1.0, rtol=1e-12)
    assert M.js_divergence(a, a) == 0.0
    assert np.isclose(M.js_divergence(a, b), direct_js(a, b), rtol=1e-12)
    assert M.ks_statistic(np.array([1, 0]), np.array([0, 1])) == 1.0
    assert M.ks_statistic(np.array([1, 1]), np.array([2, 0])) == 0.5
    # uniform on [0, .5) vs uniform on [.5, 1]: W1 = 0.5
    assert np.isclose(M.wasserstein_distance(np.array([1, 0]), np.array([0, 1]), np.array([0.0, 0.5, 1.0])), 0.5)
    assert M.wasserstein_distance(a, a, np.array([0.0, 0.5, 1.0])) == 0.0
    # point masses at bin centres of narrow bins approach SciPy
    edges = np.array([0.0, 0.001, 0.5, 0.501, 1.0])
    w = M.wasserstein_distance(np.array([1, 0, 0, 0]), np.array([0, 0, 1, 0]), edges)
    assert abs(w - 0.5) < 0.001


def test_skew_small():
    # T = 1: cells (a, b) = (0,0) 3, (0,1) 1, (1,0) 2, (1,1) 4: 3 flips of 10
    assert np.isclose(M.flip_rate(np.array([3, 1, 2, 4]), 1)[0], 0.3)
    # T = 2: a flip at threshold k iff (a > k) != (b > k)
    j = np.zeros(9)
    j[0 * 3 + 2] = 1  # below both online, above both offline: flips at both
    j[1 * 3 + 1] = 5  # same
    j[2 * 3 + 1] = 4  # flips at threshold 1 only
    close(M.flip_rate(j, 2), [1 / 10, 5 / 10])
    close(M.flip_rate(np.zeros(9), 2), [np.nan, np.nan])
    assert M.flip_rate(np.array([5.0]), 0).shape == (0,)
    edges = np.array([0.0, 1.0, 2.0])
    assert M.quantile_from_histogram(np.array([0, 10]), edges, 0.5) == 1.5
    assert M.quantile_from_histogram(np.array([10, 10]), edges, 0.5) == 1.0
    assert M.quantile_from_histogram(np.array([10, 10]), edges, 0.75) == 1.5
    assert np.isnan(M.quantile_from_histogram(np.array([0, 0]), edges, 0.5))
    out = M.skew_metrics(np.array([3, 1, 2, 4]), 1, np.array([0, 10]), 15.0, edges)
    assert np.isclose(out["flip_rate"][0], 0.3) and out["mean_abs_delta"] == 1.5
    assert out["p99_abs_delta"] == 1.99


def test_aggregate_bins_small():
    c = np.array([1, 2, 3, 4])
    np.testing.assert_array_equal(M.aggregate_bins(c, [0, 0, 1, 1], 2), [3, 7])
    np.testing.assert_array_equal(M.aggregate_bins(c, [0, 1, 1, 2], 3), [1, 5, 4])
    np.testing.assert_array_equal(M.aggregate_bins(c, [0, 0, 2, 2], 3), [3, 0, 7])  # empty inside
    np.testing.assert_array_equal(M.aggregate_bins(c, [1, 1, 2, 2], 3), [0, 3, 7])  # empty first
    np.testing.assert_array_equal(M.aggregate_bins(c, [0, 0, 1, 1], 4), [3, 7, 0, 0])  # empty last
    np.testing.assert_array_equal(M.aggregate_bins(np.stack([c, 10 * c]), [0, 0, 1, 1], 2), [[3, 7], [30, 70]])


def test_xp_of_is_numpy():
    assert M.xp_of(np.zeros(2), [1, 2]) is np


def test_leading_replicate_axes():
    """A (R, S, B) input gives (R, S) outputs equal to the per-(r, s) computation."""
    rng = np.random.default_rng(0)
    R, S, B, T = 4, 3, 12, 3
    neg = rng.integers(0, 20, (R, S, B))
    pos = rng.integers(0, 20, (R, S, B))
    q = rng.integers(0, 20, (R, S, B))
    tb = np.array([2, 6, 11])
    edges = np.linspace(0, 1, B + 1)
    joint = rng.integers(0, 9, (R, S, (T + 1) ** 2))
    cp = rng.uniform(0, 1, (R, S, B)) * (neg + pos)
    one = {
        "auc": lambda r, s: M.auc_score(neg[r, s], pos[r, s]),
        "precision": lambda r, s: M.precision_score(neg[r, s], pos[r, s], tb),
        "recall": lambda r, s: M.recall_score(neg[r, s], pos[r, s], tb),
        "fpr": lambda r, s: M.false_positive_rate(neg[r, s], pos[r, s], tb),
        "ppr": lambda r, s: M.predicted_positive_rate(neg[r, s] + pos[r, s], tb),
        "ece": lambda r, s: M.expected_calibration_error(neg[r, s] + pos[r, s], cp[r, s], pos[r, s]),
        "psi": lambda r, s: M.population_stability_index(pos[r, s], q[r, s]),
        "js": lambda r, s: M.js_divergence(pos[r, s], q[r, s]),
        "ks": lambda r, s: M.ks_statistic(pos[r, s], q[r, s]),
        "w": lambda r, s: M.wasserstein_distance(pos[r, s], q[r, s], edges),
        "flip": lambda r, s: M.flip_rate(joint[r, s], T),
        "p99": lambda r, s: M.quantile_from_histogram(q[r, s], edges, 0.99),
        "agg": lambda r, s: M.aggregate_bins(q[r, s], np.repeat(np.arange(4), 3), 4),
    }
    many = {
        "auc": M.auc_score(neg, pos),
        "precision": M.precision_score(neg, pos, tb),
        "recall": M.recall_score(neg, pos, tb),
        "fpr": M.false_positive_rate(neg, pos, tb),
        "ppr": M.predicted_positive_rate(neg + pos, tb),
        "ece": M.expected_calibration_error(neg + pos, cp, pos),
        "psi": M.population_stability_index(pos, q),
        "js": M.js_divergence(pos, q),
        "ks": M.ks_statistic(pos, q),
        "w": M.wasserstein_distance(pos, q, edges),
        "flip": M.flip_rate(joint, T),
        "p99": M.quantile_from_histogram(q, edges, 0.99),
        "agg": M.aggregate_bins(q, np.repeat(np.arange(4), 3), 4),
    }
    for name, arr in many.items():
        single = np.array([[one[name](r, s) for s in range(S)] for r in range(R)])
        assert arr.shape == single.shape, name
        assert arr.shape[:2] == (R, S), name
        close(arr, single, rtol=1e-12, msg=name)
    tp, fp, fn, tn = M.confusion_at(neg, pos, tb)
    assert tp.shape == (R, S, T)
    np.testing.assert_array_equal(tp + fp + fn + tn, np.broadcast_to((neg + pos).sum(-1)[..., None], (R, S, T)))

    # the composite functions, with the label-state axis: (R, S, 3, B)
    score = np.stack([neg, pos, q], axis=-2)
    C = 4
    calib_to_decile = np.array([0, 0, 1, 1])
    cc = rng.integers(1, 9, (R, S, 3, C)).astype(float)
    cpp = cc * rng.uniform(0, 1, cc.shape)
    perf = M.performance_metrics(score, tb, cc, cpp, cc * 0.3, cpp * 0.5, calib_to_decile)
    for name, arr in perf.items():
        assert arr.shape[:2] == (R, S), name
        for r in range(R):
            ref = M.performance_metrics(score[r], tb, cc[r], cpp[r], cc[r] * 0.3, cpp[r] * 0.5, calib_to_decile)[name]
            close(arr[r], ref, rtol=1e-12, msg=name)
    drift = M.score_drift(pos, q[0], edges, np.repeat(np.arange(4), 3))  # baseline without replicates
    for name, arr in drift.items():
        assert arr.shape == (R, S), name
        ref = M.score_drift(pos[1], q[0], edges, np.repeat(np.arange(4), 3))[name]
        close(arr[1], ref, rtol=1e-12, msg=name)
