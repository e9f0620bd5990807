"""Proofs of the cell-level Poisson bootstrap (DESIGN sections 4 and 6).

What is shown, and how:

(a) **Row-level equivalence.** On 3,000 paired, labelled rows the replicates of
    ``CellBootstrap.run`` have the standard deviation of a row-level Poisson bootstrap
    (numpy Poisson(1) weight per row and replicate, metrics recomputed from the weighted rows
    on the same bins), B = 2000 each: the Monte Carlo standard error of the ratio of two
    independent standard deviations of 2000 near-normal replicates is
    ``sqrt(2 / (2 * 2000)) = 2.2 %``, so the band 0.9-1.1 is 4.5 standard errors wide.
(b) **Coverage.** Simulated data sets with known truth. A finite population is a set of
    support points (score, optional offline score) with a mass and a probability of a
    positive label each; drawing ``n`` rows from it with replacement is *exactly* a multinomial
    draw of ``n`` over its (point, label) cells, so each simulated data set is one multinomial
    draw, turned into the cell arrays the accumulator would have produced (checked against the
    real ``Accumulator`` below). "Truth" is the metric of the population's cell probabilities
    on the same bins. Every simulated data set is one *slice* of one layout (a slice is just a
    leading axis of the cell arrays), so one bootstrap covers thousands of simulations.
    N = 4000 simulated data sets per study: the standard error of a 2.5 % tail rate is then
    0.25 % (0.17 % for one-sample rates pooled over the two sides), so the band 2.5 +- 1 % is
    4 (5.7) standard errors wide: a failure is a flaw, not bad luck among the ~100 bands.
    Studies: ``shifted`` (baseline and online from different miscalibrated populations, 3,000
    and 2,000 rows, continuous scores), ``same_small`` (600 rows a side from one population,
    rates down to ~21 events) and ``flips`` (flip rates of 0.1-0.6 % with 20-60 flips).
(c) **Null p-values** of ``difference_test`` (same population both sides, tolerance 0) are
    uniform: KS p > 0.01 and a rejection rate at 0.05 of 0.05 +- 0.015 (4.4 SE at N = 4000);
    for the discrete flip counts, the CDF at the decision levels (see that test).
(d) **Independent roles**: baseline and online replicates of the same data are uncorrelated.
(e) **Determinism**: seed, chunking and partitioning.
(f) **Exact intervals and BH** against SciPy.
(g) **Poisson draws**: moments within Monte Carlo error, replicate chunks compose.

The coverage simulations of ``shifted`` and ``same_small`` use B = 400 replicates (the
default is 1000; ``flips`` uses 1000) to fit the CI budget: the Monte Carlo noise of a
percentile endpoint then raises each tail rate of a near-normal statistic by about 0.06
points over B = 1000 (2.60 % instead of 2.54 %), far inside the band.

Finding (and the fix in ``engine.bootstrap``): the percentile interval of a *rate* with few
events (a rare flip rate, precision at a high threshold, FPR at a high threshold) is, in
effect, a Wald interval and its tails are unbalanced, one of them beyond 3.5 %; so rates use
``rate_interval`` (Jeffreys) and ``rate_difference_interval`` (MOVER-Jeffreys), whose tails
are asserted here. The percentile numbers are printed (``pytest -s``) for the record.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats as sps

from engine import measure as ME
from engine import metrics as M
from engine.bootstrap import (
    ROLE_BASELINE,
    ROLE_ONLINE,
    CellBootstrap,
    benjamini_hochberg,
    cell_keys,
    clopper_pearson_degenerate,
    difference_test,
    percentile_interval,
    rate_difference_interval,
    rate_interval,
    standard_error,
)
from engine.encode import LOG_EPS, LayoutBuilder
from engine.measure import Grids
from engine.stats import Accumulator
from kernels import get_kernels
from kernels import _rng
from kernels import reference as ref

K = get_kernels("cpu")
LEVEL = 0.95
TAIL, BAND = 0.025, 0.010  # each tail of a 95 % interval misses 2.5 % +- 1 %
N_SIMS = 4000  # simulated data sets per coverage study
B_SIM = 400  # replicates per simulated data set (see the module docstring)


# ====================================================================== finite populations
class Population:
    """Support points ``score[j]`` (and ``offline[j]``) with masses and P(label = 1).

    Rows are drawn with replacement, so a data set of ``n`` rows is a multinomial draw over
    the cells (point j, label state 0/1/2), 2 meaning "no outcome".
    """

    def __init__(self, score, prob, *, offline=None, mass=None, missing=0.0):
        self.score = np.asarray(score, dtype=np.float64)
        self.offline = None if offline is None else np.asarray(offline, dtype=np.float64)
        m = np.ones(self.score.size) if mass is None else np.asarray(mass, dtype=np.float64)
        m = m / m.sum()
        p = np.asarray(prob, dtype=np.float64)
        self.cell_p = np.stack([m * (1 - missing) * (1 - p), m * (1 - missing) * p, m * missing], -1)

    def draw(self, rng, n: int, size: int) -> np.ndarray:
        """(size, points, 3) counts of ``size`` independent data sets of ``n`` rows."""
        return rng.multinomial(n, self.cell_p.ravel(), size=size).reshape(size, -1, 3)

    def layout(self, thresholds, n_slices_wanted: int, *others: "Population"):
        """A layout whose score edges come from the support, with ``n_slices_wanted`` slices."""
        scores = np.concatenate([self.score] + [o.score for o in others])
        k = n_slices_wanted - 3  # + the whole population, __other__ and __null__
        rows = max(scores.size, k)
        b = LayoutBuilder(["sim"], {}, thresholds, top_k=k)
        b.update(pa.table({"sim": [f"{i % k:05d}" for i in range(rows)], "score": np.resize(scores, rows)}))
        layout = b.build()
        assert layout.n_slices == n_slices_wanted
        return layout

    def grids(self, layout, counts, *, integer: bool = True) -> Grids:
        return grids_from_counts(layout, counts, self.score, self.offline, integer=integer)

    def truth(self, layout) -> Grids:
        """The population's cell probabilities as (1-slice) grids: metrics of them are truths."""
        return self.grids(layout, self.cell_p[None], integer=False)


def _bin_sum(values: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Sum the last axis of ``values`` (..., points) into ``n_bins`` bins."""
    order = np.argsort(bins, kind="stable")
    b, v = bins[order], values[..., order]
    cs = np.concatenate([np.zeros(v.shape[:-1] + (1,)), np.cumsum(v, -1)], -1)
    return cs[..., np.searchsorted(b, np.arange(n_bins), side="right")] - cs[..., np.searchsorted(b, np.arange(n_bins))]


def grids_from_counts(layout, counts, score, offline=None, *, integer: bool = True) -> Grids:
    """The grids ``Accumulator`` + ``grids_from_statistics`` give for ``counts[s, j, label]``
    rows at ``score[j]`` (``offline[j]``), up to the 2**-32 fixed-point rounding of sums."""
    S = counts.shape[0]
    cf = counts.astype(np.float64)
    as_count = (lambda a: np.rint(a).astype(np.int64)) if integer else (lambda a: a)

    def side(sc):
        fine = np.searchsorted(layout.score_edges, sc, side="right")
        cal = np.searchsorted(layout.calib_edges, sc, side="right")
        nf, nc = layout.n_fine, len(layout.calib_edges) + 1
        clipped = np.clip(sc, LOG_EPS, 1 - LOG_EPS)
        ll = np.stack([-np.log1p(-clipped), -np.log(clipped), np.zeros_like(sc)], -1)

        def per_label(weight, bins, nb):
            return np.stack([_bin_sum(cf[..., lab] * weight(lab), bins, nb) for lab in range(3)], -2)

        grid = as_count(per_label(lambda lab: 1.0, fine, nf))
        calib = {
            "count": as_count(per_label(lambda lab: 1.0, cal, nc)),
            "p": per_label(lambda lab: sc, cal, nc),
            "p2": per_label(lambda lab: sc * sc, cal, nc),
            "ll": per_label(lambda lab: ll[:, lab], cal, nc),
            "ll2": per_label(lambda lab: ll[:, lab] ** 2, cal, nc),
        }
        return grid, calib

    score_grid, calib = side(score)
    g = Grids(score=score_grid, calib=calib, features=[], dq=np.zeros((S, 1), np.int64))
    if offline is not None:
        g.offline, g.calib_off = side(offline)
        th = np.asarray(layout.thresholds, dtype=np.float64)
        T = len(th)
        a = np.searchsorted(th, score, side="right")
        b = np.searchsorted(th, offline, side="right")
        rows = cf.sum(-1)
        g.joint = as_count(_bin_sum(rows, a * (T + 1) + b, (T + 1) ** 2))
        d = np.abs(score - offline)
        db = np.searchsorted(layout.delta_edges, d, side="right")
        nd = len(layout.delta_edges) + 1
        g.delta = (as_count(_bin_sum(rows, db, nd)), _bin_sum(rows * d, db, nd), _bin_sum(rows * d * d, db, nd))
    return g


def beta_support(m: int, a: float, b: float, shift: float = 0.5) -> np.ndarray:
    """``m`` equal-mass support points at the quantiles of Beta(a, b)."""
    return sps.beta.ppf((np.arange(m) + shift) / m, a, b)


# ====================================================================== the replicates
SCALAR = ("auc", "ece", "brier")  # per slice
RATES = ("precision", "recall", "fpr")  # per slice and threshold


def point_metrics(g: Grids, res) -> dict[str, np.ndarray]:
    """The metrics under test, with the functions ``measure`` uses; rates also as (k, n)."""
    neg, pos = g.score[..., 0, :], g.score[..., 1, :]
    # what ``M.confusion_at`` gives (sums of integer counts are exact in any order), cheaper
    tp = np.stack([pos[..., t:].sum(-1) for t in res.threshold_bins], -1).astype(np.float64)
    fp = np.stack([neg[..., t:].sum(-1) for t in res.threshold_bins], -1).astype(np.float64)
    fn = pos.sum(-1)[..., None] - tp
    tn = neg.sum(-1)[..., None] - fp
    c = g.calib
    n_dec = int(np.max(res.calib_to_decile)) + 1

    def dec(a):
        return M.aggregate_bins(a, res.calib_to_decile, n_dec)

    cnt, p = c["count"], c["p"]
    return {
        "auc": M.auc_score(neg, pos),
        "precision": M.rate(tp, tp + fp),
        "recall": M.rate(tp, tp + fn),
        "fpr": M.rate(fp, fp + tn),
        "ece": M.expected_calibration_error(
            dec(cnt[..., 0, :] + cnt[..., 1, :]), dec(p[..., 0, :] + p[..., 1, :]), dec(cnt[..., 1, :])
        ),
        "brier": M.brier_score_loss(
            cnt[..., 0, :].sum(-1), cnt[..., 1, :].sum(-1), c["p2"][..., :2, :].sum((-1, -2)), p[..., 1, :].sum(-1)
        ),
        # (k, n) of each rate
        "k": {"precision": tp, "recall": tp, "fpr": fp},
        "n": {"precision": tp + fp, "recall": tp + fn, "fpr": fp + tn},
    }


def lean_replicates(cb: CellBootstrap, online: Grids, baseline: Grids):
    """``CellBootstrap.run`` restricted to the metrics under test (no drift metrics).

    The same steps: coarsen, ``resample`` each role, metric of the replicate minus the coarse
    point plus the fine point. ``test_lean_replicates_are_run`` shows they are ``run``'s.
    """
    res = cb.coarse_res
    names = SCALAR + RATES
    out = {}
    for role, g in ((ROLE_ONLINE, online), (ROLE_BASELINE, baseline)):
        coarse = cb.coarsen(g)
        fine_m, coarse_m = point_metrics(g, cb.fine), point_metrics(coarse, res)
        chunks = {k: [] for k in names}
        chunk = cb.chunk or 50
        for r0 in range(0, cb.B, chunk):
            R = min(chunk, cb.B - r0)
            m = point_metrics(cb.resample(coarse, role, r0, R), res)
            for k in names:
                chunks[k].append(m[k] - coarse_m[k][None] + fine_m[k][None])
        out[role] = ({k: np.concatenate(v) for k, v in chunks.items()}, fine_m)
    return out[ROLE_ONLINE], out[ROLE_BASELINE]


def flip_replicates(cb: CellBootstrap, joint: np.ndarray, role: int) -> np.ndarray:
    """Flip-rate replicates from the joint grid alone: the joint cells' Poisson draws (the
    joint grid is not coarsened, so ``run``'s shift is the identity); see
    ``test_lean_replicates_are_run``."""
    keys = cell_keys(cb.slice_keys, "joint", joint.shape[1:])
    T = len(cb.layout.thresholds)
    chunk = cb.chunk or 100
    reps = [M.flip_rate(cb._poisson(joint, keys, role, r0, min(chunk, cb.B - r0)), T) for r0 in range(0, cb.B, chunk)]
    return np.concatenate(reps)


def misses(lo, hi, truth):
    """(lower, upper) tail rates: the truth below the interval, the truth above it."""
    lo, hi = np.asarray(lo), np.asarray(hi)
    ok = ~(np.isnan(lo) | np.isnan(hi))
    lower = ((lo > truth) & ok).sum(0) / ok.sum(0)
    upper = ((hi < truth) & ok).sum(0) / ok.sum(0)
    return np.atleast_1d(lower), np.atleast_1d(upper)


def assert_tails(name, lower, upper):
    for lo_rate, up_rate in zip(lower, upper):
        assert abs(lo_rate - TAIL) <= BAND and abs(up_rate - TAIL) <= BAND, (
            f"{name}: the truth lies below the interval {lo_rate:.2%} and above it {up_rate:.2%} "
            f"of the time; expected {TAIL:.1%} +- {BAND:.1%} each"
        )


def report(name, lower, upper):
    print(f"  {name:42s} lower {' '.join(f'{x:6.2%}' for x in lower)}   upper {' '.join(f'{x:6.2%}' for x in upper)}")


# ====================================================================== helper checks
def _expand(counts, pop: Population, sims: int):
    """The rows behind ``counts`` (sims, points, 3) as a table (one 'sim' value per set)."""
    sim, score, off, label = [], [], [], []
    for i in range(sims):
        for lab, y in enumerate([0.0, 1.0, np.nan]):
            idx = np.repeat(np.arange(pop.score.size), counts[i, :, lab])
            sim += [f"{i:05d}"] * idx.size
            score.append(pop.score[idx])
            off.append(pop.offline[idx])
            label.append(np.full(idx.size, y))
    return pa.table(
        {"sim": sim, "score": np.concatenate(score), "offline_score": np.concatenate(off), "label": np.concatenate(label)}
    )


def test_grids_from_counts_match_the_accumulator():
    """The simulation's shortcut (multinomial counts -> grids) is what the accumulator gives."""
    rng = np.random.default_rng(1)
    s = beta_support(300, 2, 5)
    pop = Population(s, s**0.7, offline=np.clip(s + rng.normal(0, 0.01, s.size), 0, 1), missing=0.1)
    counts = pop.draw(rng, 3000, 3)
    table = _expand(counts, pop, 3)
    b = LayoutBuilder(["sim"], {}, [0.3, 0.6], top_k=10)
    b.update(table)
    layout = b.build()
    g = ME.grids_from_statistics(Accumulator(layout, K, paired=True).accumulate(table.to_batches(2000)), layout)
    h = pop.grids(layout, counts)
    rows = [1, 2, 3]  # slices of sim 00000, 00001, 00002 (slice 0 is the whole population)
    for name in ("score", "offline", "joint"):
        np.testing.assert_array_equal(getattr(g, name)[rows], getattr(h, name))
    for calib in ("calib", "calib_off"):
        for k in ("count", "p", "p2", "ll"):
            np.testing.assert_allclose(getattr(g, calib)[k][rows], getattr(h, calib)[k], rtol=0, atol=3000 * 2.0**-32)
    np.testing.assert_array_equal(g.delta[0][rows], h.delta[0])
    np.testing.assert_allclose(g.delta[1][rows], h.delta[1], rtol=0, atol=3000 * 2.0**-32)


def test_lean_replicates_are_run():
    """``lean_replicates`` and ``flip_replicates`` reproduce ``CellBootstrap.run``."""
    rng = np.random.default_rng(2)
    s = beta_support(400, 2, 5)
    off = np.clip(s + rng.normal(0, 0.02, s.size), 0, 1)
    pop = Population(s, s**0.7, offline=off, missing=0.1)
    layout = pop.layout([0.3, 0.6], 8)
    go, gb = pop.grids(layout, pop.draw(rng, 2000, 8)), pop.grids(layout, pop.draw(rng, 3000, 8))
    cb = CellBootstrap(layout, K, replicates=60, seed=3, chunk=25)
    reps = cb.run(go, gb)
    (on, _), (base, _) = lean_replicates(cb, go, gb)
    for name in SCALAR + RATES:
        np.testing.assert_allclose(on[name], reps.online[(name, "online", None)], rtol=0, atol=1e-12)
        np.testing.assert_allclose(base[name], reps.baseline[(name, "online", None)], rtol=0, atol=1e-12)
    np.testing.assert_allclose(flip_replicates(cb, go.joint, ROLE_ONLINE), reps.online[("flip_rate", None, None)], atol=1e-15)
    np.testing.assert_allclose(flip_replicates(cb, gb.joint, ROLE_BASELINE), reps.baseline[("flip_rate", None, None)], atol=1e-15)


# ====================================================================== (b) coverage
def _study(pop_on: Population, n_on: int, pop_base: Population, n_base: int, thresholds, seed: int, n_sims: int = N_SIMS):
    """``n_sims`` independent (online, baseline) data sets, their replicates and the truths."""
    layout = pop_on.layout(thresholds, n_sims, pop_base)
    rng = np.random.default_rng(seed)
    go = pop_on.grids(layout, pop_on.draw(rng, n_on, n_sims))
    gb = pop_base.grids(layout, pop_base.draw(rng, n_base, n_sims))
    cb = CellBootstrap(layout, K, replicates=B_SIM, seed=seed, chunk=25)
    (r_on, f_on), (r_base, f_base) = lean_replicates(cb, go, gb)
    t_on = point_metrics(pop_on.truth(layout), cb.fine)
    t_base = point_metrics(pop_base.truth(layout), cb.fine)
    return {"online": (r_on, f_on, t_on), "baseline": (r_base, f_base, t_base)}


@pytest.fixture(scope="module")
def shifted():
    """Baseline and online from different, miscalibrated populations.

    Baseline: 3,000 rows, scores ~ Beta(2, 5), P(y = 1 | s) = s**0.6 (ECE 0.17); online: 2,000
    rows, scores ~ Beta(2.5, 4), P(y = 1 | s) = min(s + 0.15, 0.97). Every calibration decile
    is miscalibrated by several standard errors (ECE "well away from 0"). 600 support points
    each: the fine grid separates them, the bootstrap's coarse grid does not (AUC is shifted).

    10,000 simulated data sets, not 4,000: the AUC difference's lower tail truly misses about
    2.9 % of the time (2.3, 2.9, 3.5 % over three seeds of 4,000, 2.8 % over 10,000: a mild
    skew of the percentile interval, inside the 2.5 +- 1 % asked for), which leaves that band
    only 2.4 standard errors at 4,000 simulations and 3.6 at 10,000.
    """
    s_b, s_o = beta_support(600, 2, 5), beta_support(600, 2.5, 4, shift=0.37)
    base = Population(s_b, s_b**0.6)
    online = Population(s_o, np.minimum(s_o + 0.15, 0.97))
    return _study(online, 2000, base, 3000, [0.3, 0.6], seed=11, n_sims=10_000)


@pytest.fixture(scope="module")
def same_small():
    """Baseline and online of 600 rows each from one population (the null of part (c)).

    Scores ~ Beta(1.5, 5), P(y = 1 | s) = s**0.4 (each decile off by more than 0.2, ECE 0.29);
    thresholds 0.3 and 0.4: the fewest events of a rate are about 21 (false positives at 0.4,
    of about 89 predicted positives), the design's minimum being 20.
    """
    s = beta_support(600, 1.5, 5)
    pop = Population(s, s**0.4)
    return _study(pop, 600, pop, 600, [0.3, 0.4], seed=12)


def _one_sample(study, name):
    lows, ups = [], []
    for side in ("online", "baseline"):
        reps, fine, truth = study[side]
        lo, hi = percentile_interval(reps[name], LEVEL)
        lw, up = misses(lo, hi, truth[name])
        lows.append(lw)
        ups.append(up)
    return lows, ups


def _rate_one_sample(study, name):
    lows, ups, pct_lows, pct_ups = [], [], [], []
    for side in ("online", "baseline"):
        reps, fine, truth = study[side]
        lo, hi = rate_interval(fine["k"][name], fine["n"][name], LEVEL)
        lw, up = misses(lo, hi, truth[name])
        lows.append(lw)
        ups.append(up)
        lo, hi = percentile_interval(reps[name], LEVEL)
        lw, up = misses(lo, hi, truth[name])
        pct_lows.append(lw)
        pct_ups.append(up)
    return lows, ups, pct_lows, pct_ups


@pytest.mark.slow
@pytest.mark.parametrize("study_name", ["shifted", "same_small"])
def test_one_sample_coverage(study_name, request):
    """Each tail of the 95 % interval misses the truth 2.5 % +- 1 % of the time (pooled over
    the online and the baseline side, 2 x N_SIMS data sets: SE 0.17 %): percentile intervals
    for AUC, ECE and Brier, ``rate_interval`` for the rates."""
    study = request.getfixturevalue(study_name)
    print(f"\n{study_name}: one-sample tail rates, online and baseline pooled")
    for name in SCALAR:
        lows, ups = _one_sample(study, name)
        lw, up = np.mean(lows, 0), np.mean(ups, 0)
        report(f"{name} percentile", lw, up)
        assert_tails(f"{study_name} {name}", lw, up)
    for name in RATES:
        lows, ups, pct_lows, pct_ups = _rate_one_sample(study, name)
        lw, up = np.mean(lows, 0), np.mean(ups, 0)
        report(f"{name} rate_interval", lw, up)
        report(f"{name} (percentile, for the record)", np.mean(pct_lows, 0), np.mean(pct_ups, 0))
        assert_tails(f"{study_name} {name}", lw, up)


@pytest.mark.slow
@pytest.mark.parametrize("study_name", ["shifted", "same_small"])
def test_difference_coverage(study_name, request):
    """The interval of online - baseline (independent data, independent replicates) misses
    the difference of the population values 2.5 % +- 1 % on each side: the percentile interval
    of ``reps.online - reps.baseline`` for AUC, ECE and Brier, ``rate_difference_interval``
    for the rates."""
    study = request.getfixturevalue(study_name)
    r_on, f_on, t_on = study["online"]
    r_b, f_b, t_b = study["baseline"]
    print(f"\n{study_name}: difference tail rates")
    for name in SCALAR:
        lo, hi = percentile_interval(r_on[name] - r_b[name], LEVEL)
        lw, up = misses(lo, hi, t_on[name] - t_b[name])
        report(f"{name} difference percentile", lw, up)
        assert_tails(f"{study_name} {name} difference", lw, up)
    for name in RATES:
        truth = t_on[name] - t_b[name]
        lo, hi = percentile_interval(r_on[name] - r_b[name], LEVEL)
        report(f"{name} difference (percentile, for the record)", *misses(lo, hi, truth))
        lo, hi = rate_difference_interval(f_on["k"][name], f_on["n"][name], f_b["k"][name], f_b["n"][name], LEVEL)
        lw, up = misses(lo, hi, truth)
        report(f"{name} difference rate_difference_interval", lw, up)
        assert_tails(f"{study_name} {name} difference", lw, up)


# ---------------------------------------------------------------------- (c) null p-values
BAD = {"auc": "decrease", "ece": "increase", "brier": "increase", "precision": "decrease", "recall": "decrease", "fpr": "increase"}


@pytest.mark.slow
def test_null_p_values_are_uniform(same_small):
    """Baseline and online from the same population, tolerance 0: the one-sided p-values of
    ``difference_test`` (bootstrap standard error of the difference) are uniform."""
    r_on, f_on, _ = same_small["online"]
    r_b, f_b, _ = same_small["baseline"]
    print("\nnull p-values: KS p, rejection rate at 0.05")
    for name in SCALAR + RATES:
        test = difference_test(f_on[name] - f_b[name], r_on[name] - r_b[name], np.zeros_like(f_on[name]), BAD[name], LEVEL)
        p = test.p_value.reshape(test.p_value.shape[0], -1)
        for j in range(p.shape[1]):
            pj = p[:, j][~np.isnan(p[:, j])]
            ks = sps.kstest(pj, "uniform").pvalue
            rej = float(np.mean(pj < 0.05))
            print(f"  {name}[{j}] KS p = {ks:.3f}, rejection rate {rej:.2%} (n = {pj.size})")
            assert ks > 0.01, f"{name}[{j}]: the null p-values are not uniform (KS p = {ks:.2g})"
            assert abs(rej - 0.05) <= 0.015, f"{name}[{j}]: the rejection rate at 0.05 is {rej:.2%}"


# ---------------------------------------------------------------------- flip rates
N_FLIP = 4000


def flip_population(flip_t1: float, flip_t2: float) -> Population:
    """Paired scores that agree except for a mass ``flip_t1`` of requests whose offline score
    sits 0.03 above the online one just below the threshold 0.3, and ``flip_t2`` likewise at
    0.6: the true flip rates at (0.3, 0.6)."""
    s = beta_support(600, 2, 5)
    near1 = np.linspace(0.275, 0.299, 25)
    near2 = np.linspace(0.575, 0.599, 25)
    score = np.concatenate([s, near1, near2])
    offline = np.concatenate([s, near1 + 0.03, near2 + 0.03])
    mass = np.concatenate([np.full(s.size, (1 - flip_t1 - flip_t2) / s.size), np.full(25, flip_t1 / 25), np.full(25, flip_t2 / 25)])
    return Population(score, score**0.7, offline=offline, mass=mass)


def joint_from_counts(layout, counts, pop: Population) -> np.ndarray:
    th = np.asarray(layout.thresholds)
    T = len(th)
    cell = np.searchsorted(th, pop.score, side="right") * (T + 1) + np.searchsorted(th, pop.offline, side="right")
    return _bin_sum(counts.sum(-1).astype(np.float64), cell, (T + 1) ** 2)


def _flip_study(pop_on, n_on, pop_base, n_base, seed):
    layout = pop_on.layout([0.3, 0.6], N_FLIP, pop_base)
    rng = np.random.default_rng(seed)
    j_on = np.rint(joint_from_counts(layout, pop_on.draw(rng, n_on, N_FLIP), pop_on)).astype(np.int64)
    j_base = np.rint(joint_from_counts(layout, pop_base.draw(rng, n_base, N_FLIP), pop_base)).astype(np.int64)
    cb = CellBootstrap(layout, K, replicates=1000, seed=seed, chunk=100)
    T = 2
    out = {}
    for side, pop, j, role in (("online", pop_on, j_on, ROLE_ONLINE), ("baseline", pop_base, j_base, ROLE_BASELINE)):
        truth = M.flip_rate(joint_from_counts(layout, pop.cell_p[None], pop), T)[0]
        value = M.flip_rate(j, T)
        n = j.sum(-1)[:, None] * np.ones(T)
        out[side] = (flip_replicates(cb, j, role), value, np.rint(value * n), n, truth)
    return out


@pytest.fixture(scope="module")
def flips():
    """Rare flips: baseline 20,000 paired rows with true flip rates 0.3 % and 0.1 % at the
    thresholds 0.3 and 0.6 (60 and 20 flips expected), online 10,000 rows with 0.6 % and 0.2 %
    (60 and 20 flips). B = 1000 (the default: the joint grid is small)."""
    return _flip_study(flip_population(0.006, 0.002), 10_000, flip_population(0.003, 0.001), 20_000, seed=13)


@pytest.mark.slow
def test_rare_flip_rate_coverage(flips):
    """Flip rates of 0.1-0.6 % with 20-60 flips: ``rate_interval`` and
    ``rate_difference_interval`` keep each tail at 2.5 % +- 1 %; the percentile intervals of
    the same replicates are printed (their tails are unbalanced: see engine.bootstrap)."""
    print("\nrare flip rates: tail rates at thresholds 0.3, 0.6")
    for side in ("online", "baseline"):
        reps, value, k, n, truth = flips[side]
        report(f"flip_rate {side} (percentile, for the record)", *misses(*percentile_interval(reps, LEVEL), truth))
        lw, up = misses(*rate_interval(k, n, LEVEL), truth)
        report(f"flip_rate {side} rate_interval", lw, up)
        assert_tails(f"flip_rate {side}", lw, up)
    r_on, v_on, k_on, n_on, t_on = flips["online"]
    r_b, v_b, k_b, n_b, t_b = flips["baseline"]
    report("flip_rate difference (percentile, for the record)", *misses(*percentile_interval(r_on - r_b, LEVEL), t_on - t_b))
    lw, up = misses(*rate_difference_interval(k_on, n_on, k_b, n_b, LEVEL), t_on - t_b)
    report("flip_rate difference rate_difference_interval", lw, up)
    assert_tails("flip_rate difference", lw, up)


@pytest.mark.slow
def test_rare_flip_rate_null_p_values():
    """Both sides 20,000 rows from the 0.3 % / 0.1 % population: the p-values of
    ``difference_test`` for an increase of the flip rate are uniform at the levels that decide
    alerts (0.01 to 0.1, each within 3 SE) and the rejection rate at 0.05 is 0.05 +- 0.015.

    No KS test here: a difference of two counts of 20-60 flips is discrete, and ``k_on ==
    k_base`` (probability about 1 / sqrt(4 pi k), 6 % at 20 flips a side) gives p = 0.5
    exactly; that atom alone puts the KS distance to the continuous uniform at about 0.03,
    which 4000 simulations detect. The atom is a property of the data, not of the test.
    """
    pop = flip_population(0.003, 0.001)
    study = _flip_study(pop, 20_000, pop, 20_000, seed=14)
    r_on, v_on, k_on, *_ = study["online"]
    r_b, v_b, k_b, *_ = study["baseline"]
    p = difference_test(v_on - v_b, r_on - r_b, np.zeros_like(v_on), "increase", LEVEL).p_value
    print("\nrare flip rates, null p-values")
    for j in range(p.shape[1]):
        pj = p[:, j]
        atom = float(np.mean(k_on[:, j] == k_b[:, j]))
        cdf = {a: float(np.mean(pj <= a)) for a in (0.01, 0.025, 0.05, 0.1)}
        print(f"  flip_rate[{j}] P(p <= a): {cdf}, P(k_on == k_base) = {atom:.2%}")
        assert abs(cdf[0.05] - 0.05) <= 0.015, f"flip_rate[{j}]: the rejection rate at 0.05 is {cdf[0.05]:.2%}"
        for a, f in cdf.items():
            assert abs(f - a) <= 3 * np.sqrt(a * (1 - a) / pj.size), f"flip_rate[{j}]: P(p <= {a}) = {f:.4f}"


# ====================================================================== (a) row-level spread
def _paired_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    score = rng.beta(2, 5, n)
    offline = np.clip(score + rng.normal(0, 0.02, n), 0, 1)
    label = (rng.random(n) < score**0.7).astype(np.float64)
    label[rng.random(n) < 0.1] = np.nan  # no outcome
    group = rng.choice(["a", "b"], n, p=[0.6, 0.4])
    return pa.table({"g": group, "score": score, "offline_score": offline, "label": label})


def _row_level_replicates(table: pa.Table, layout, B: int, seed: int) -> dict[str, np.ndarray]:
    """Row-level Poisson bootstrap of the whole population: a Poisson(1) weight per row and
    replicate (numpy), the metrics recomputed from the weighted rows on the layout's bins."""
    from scipy import sparse

    score = table.column("score").to_numpy()
    offline = table.column("offline_score").to_numpy()
    y = table.column("label").to_numpy()
    n = score.size
    w = np.random.default_rng(seed).poisson(1.0, (B, n)).astype(np.float64)
    lab = ~np.isnan(y)
    yl = np.where(lab, y, 0.0)
    # AUC on the fine score bins: weighted counts of (label, bin) cells
    nf = layout.n_fine
    cell = np.where(lab, yl.astype(int) * nf + np.searchsorted(layout.score_edges, score, side="right"), 0)
    onehot = sparse.csr_matrix((lab.astype(float), (np.arange(n), cell)), shape=(n, 2 * nf))
    counts = np.asarray((sparse.csr_matrix(w) @ onehot).todense()).reshape(B, 2, nf)
    out = {"auc": M.auc_score(counts[:, 0], counts[:, 1])}
    th = np.asarray(layout.thresholds)
    above = score[:, None] >= th[None, :]
    tp = w @ (lab[:, None] & (yl[:, None] == 1) & above).astype(float)
    fp = w @ (lab[:, None] & (yl[:, None] == 0) & above).astype(float)
    out["precision"] = tp / (tp + fp)
    flips = (above != (offline[:, None] >= th[None, :])).astype(float)
    out["flip_rate"] = (w @ flips) / w.sum(1)[:, None]
    dec = np.searchsorted(layout.decile_edges, score, side="right")
    nd = len(layout.decile_edges) + 1
    ind = (dec[:, None] == np.arange(nd)[None, :]) & lab[:, None]
    n_d = w @ ind
    gap = np.abs(w @ (ind * score[:, None]) - w @ (ind * yl[:, None]))
    out["ece"] = gap.sum(1) / n_d.sum(1)
    out["brier"] = (w @ (lab * (score - yl) ** 2)) / (w @ lab.astype(float))
    return out


KEYS_A = {
    "auc": ("auc", "online", None),
    "precision": ("precision", "online", None),
    "flip_rate": ("flip_rate", None, None),
    "ece": ("ece", "online", None),
    "brier": ("brier", "online", None),
}


def test_cell_draws_reproduce_the_row_level_bootstrap():
    """3,000 paired rows (10 % without outcome), B = 2000 each: the replicates of
    ``CellBootstrap.run`` (whole population) have the standard deviation of the row-level
    Poisson bootstrap within 0.9-1.1 (4.5 Monte Carlo SE of the ratio, 2.2 % each), and the
    same centre within 0.15 standard deviations (SE of the difference of means 0.03)."""
    table = _paired_table(3000, seed=4)
    b = LayoutBuilder(["g"], {}, [0.3, 0.6])
    b.update(table)
    layout = b.build()
    grids = ME.grids_from_statistics(Accumulator(layout, K, paired=True).accumulate(table.to_batches(1000)), layout)
    B = 2000
    cell = CellBootstrap(layout, K, replicates=B, seed=5).run(grids, None).online
    row = _row_level_replicates(table, layout, B, seed=6)
    fine = ME.measure(grids, None, ME.fine_resolution(layout), layout)
    ones = _row_level_replicates(table, layout, 1, seed=0)  # weights 1..: check the definitions
    print("\nsd(cell) / sd(row), (mean(cell) - mean(row)) / sd(row)")
    for name, key in KEYS_A.items():
        c, r = cell[key][:, 0], row[name]
        sd_c, sd_r = np.nanstd(c, 0), np.nanstd(r, 0)
        ratio = np.atleast_1d(sd_c / sd_r)
        shift = np.atleast_1d((np.nanmean(c, 0) - np.nanmean(r, 0)) / sd_r)
        print(f"  {name:10s} {np.round(ratio, 3)} {np.round(shift, 3)}")
        assert np.all(np.abs(ratio - 1) <= 0.1), (name, ratio)
        assert np.all(np.abs(shift) <= 0.15), (name, shift)
        assert np.isfinite(fine[key][0]).all() and np.all(np.isfinite(ones[name]))


# ====================================================================== (d) independent roles
def test_baseline_and_online_replicates_are_uncorrelated():
    """The same data on both sides: online and baseline replicates of the same metric and
    slice have a correlation within 3 / sqrt(B) of 0 (they would be 1 with shared keys)."""
    table = _paired_table(3000, seed=7)
    b = LayoutBuilder(["g"], {}, [0.3, 0.6])
    b.update(table)
    layout = b.build()
    g = ME.grids_from_statistics(Accumulator(layout, K, paired=True).accumulate(table.to_batches()), layout)
    B = 2000
    reps = CellBootstrap(layout, K, replicates=B, seed=8).run(g, g)
    bound = 3 / np.sqrt(B)
    for name in ("auc", "ece", "brier", "precision"):
        on, base = reps.online[(name, "online", None)], reps.baseline[(name, "online", None)]
        for s in (0, 1, 2):  # the whole population, g=a, g=b
            for j in range(on[:, s].reshape(B, -1).shape[1]):
                x, y = on[:, s].reshape(B, -1)[:, j], base[:, s].reshape(B, -1)[:, j]
                r = np.corrcoef(x, y)[0, 1]
                assert abs(r) < bound, f"{name} slice {s} [{j}]: correlation {r:.3f}"


def test_roles_give_independent_draws_for_the_same_keys():
    """``poisson_cells`` and ``normal_cells`` under role 0 and role 1 with the same keys: the
    per-cell correlations across 2000 replicates average 0 (within 3 SE) and none is
    beyond 4.5 / sqrt(B)."""
    B, C = 2000, 400
    keys = cell_keys(np.array([11, 12], dtype=np.uint64), "score", (C // 2,)).ravel()
    lam = np.rint(np.linspace(1, 80, C))
    for draw in (
        lambda role: K.poisson_cells(9, role, keys, lam, 0, B).astype(np.float64),
        lambda role: K.normal_cells(9, role, keys, 0, B),
    ):
        x, y = draw(0), draw(1)
        assert not np.array_equal(x, y)
        xs, ys = (x - x.mean(0)) / x.std(0), (y - y.mean(0)) / y.std(0)
        corr = (xs * ys).mean(0)
        assert abs(corr.mean()) < 3 / np.sqrt(B * C), corr.mean()
        assert np.abs(corr).max() < 4.5 / np.sqrt(B), np.abs(corr).max()


# ====================================================================== (e) determinism
@pytest.fixture(scope="module")
def small_paired():
    table = _paired_table(3000, seed=10)
    b = LayoutBuilder(["g"], {}, [0.3, 0.6])
    b.update(table)
    return table, b.build()


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


def test_same_seed_same_replicates_and_chunking_does_not_matter(small_paired):
    table, layout = small_paired
    g = ME.grids_from_statistics(Accumulator(layout, K, paired=True).accumulate(table.to_batches()), layout)
    ref = CellBootstrap(layout, K, replicates=150, seed=21, chunk=100).run(g, g)
    again = CellBootstrap(layout, K, replicates=150, seed=21, chunk=100).run(g, g)
    chunked = CellBootstrap(layout, K, replicates=150, seed=21, chunk=7).run(g, g)
    for other in (again, chunked):
        _assert_same(ref.online, other.online)
        _assert_same(ref.baseline, other.baseline)
    other_seed = CellBootstrap(layout, K, replicates=150, seed=22, chunk=100).run(g, g)
    for k in ref.online:
        if np.isfinite(ref.online[k]).any() and np.nanstd(ref.online[k]) > 0:
            assert not np.array_equal(ref.online[k], other_seed.online[k], equal_nan=True), k


def test_partitioning_does_not_change_the_replicates(small_paired):
    """Statistics accumulated over other batch boundaries, or rows in another order, are
    identical, and so are the replicates."""
    table, layout = small_paired
    acc = Accumulator(layout, K, paired=True)
    whole = acc.accumulate(table.to_batches())
    perm = np.random.default_rng(0).permutation(table.num_rows)
    parts = [
        acc.accumulate(table.to_batches(max_chunksize=997)),
        acc.accumulate(table.take(perm).to_batches(max_chunksize=1500)),
        acc.accumulate(table.slice(2000).to_batches()) + acc.accumulate(table.slice(0, 2000).to_batches(333)),
    ]
    g = ME.grids_from_statistics(whole, layout)
    ref = CellBootstrap(layout, K, replicates=60, seed=3, chunk=25).run(g, g)
    for stats in parts:
        assert stats.equal(whole)
        h = ME.grids_from_statistics(stats, layout)
        other = CellBootstrap(layout, K, replicates=60, seed=3, chunk=25).run(h, h)
        _assert_same(ref.online, other.online)
        _assert_same(ref.baseline, other.baseline)


# ====================================================================== (f) exact intervals, BH
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_clopper_pearson_degenerate_is_exact(level):
    alpha = 1 - level
    n = np.array([1, 2, 5, 10, 100, 10_000, 10**6], dtype=np.float64)
    lo, hi = clopper_pearson_degenerate(np.zeros_like(n), n, level)
    np.testing.assert_array_equal(lo, 0.0)
    np.testing.assert_allclose(hi, sps.beta.ppf(1 - alpha / 2, 1, n), rtol=1e-10)
    lo, hi = clopper_pearson_degenerate(n, n, level)
    np.testing.assert_allclose(lo, sps.beta.ppf(alpha / 2, n, 1), rtol=1e-10)
    np.testing.assert_array_equal(hi, 1.0)
    lo, hi = clopper_pearson_degenerate(np.array([1.0, 3.0, 0.0]), np.array([5.0, 4.0, 0.0]), level)
    assert np.isnan(lo).all() and np.isnan(hi).all()  # not degenerate, or no rows: NaN


@pytest.mark.parametrize("level", [0.9, 0.95])
def test_rate_intervals_against_scipy(level):
    """``rate_interval``: Jeffreys (SciPy's beta quantiles) inside, Clopper-Pearson at k = 0
    and k = n, NaN without rows, the same value whatever else is in the batch;
    ``rate_difference_interval``: MOVER on those intervals."""
    alpha = 1 - level
    rng = np.random.default_rng(1)
    n = np.concatenate([[1, 2, 7, 40, 500, 20_000, 10**7, 3 * 10**9], rng.integers(1, 10**6, 30)]).astype(np.float64)
    k = np.concatenate([[0, 1, 3, 20, 2, 60, 5, 1_500_000], [rng.integers(0, m + 1) for m in n[8:]]]).astype(np.float64)
    k = np.concatenate([k, np.zeros(3), n[:3]])
    n = np.concatenate([n, n[:3], n[:3]])
    lo, hi = rate_interval(k, n, level)
    inner = (k > 0) & (k < n)
    jl = sps.beta.ppf(alpha / 2, k + 0.5, n - k + 0.5)
    jh = sps.beta.ppf(1 - alpha / 2, k + 0.5, n - k + 0.5)
    width = jh - jl
    # to 1e-5 of the interval's width: lgamma's precision with billions of rows
    np.testing.assert_array_less(np.abs(lo - jl)[inner], 1e-5 * width[inner])
    np.testing.assert_array_less(np.abs(hi - jh)[inner], 1e-5 * width[inner])
    small = inner & (n < 10**7)
    np.testing.assert_allclose(lo[small], jl[small], rtol=1e-9)
    np.testing.assert_allclose(hi[small], jh[small], rtol=1e-9)
    cl, ch = clopper_pearson_degenerate(k[~inner], n[~inner], level)
    np.testing.assert_array_equal(lo[~inner], cl)
    np.testing.assert_array_equal(hi[~inner], ch)
    assert np.isnan(rate_interval(np.array([0.0]), np.array([0.0]), level)[0]).all()
    # 2-d inputs keep their shape
    lo2, hi2 = rate_interval(k[:8].reshape(2, 4), n[:8].reshape(2, 4), level)
    np.testing.assert_array_equal(lo2.ravel(), lo[:8])
    # the difference
    k2, n2 = k[::-1].copy(), n[::-1].copy()
    dl, dh = rate_difference_interval(k, n, k2, n2, level)
    l2, h2 = rate_interval(k2, n2, level)
    p1, p2 = k / n, k2 / n2
    np.testing.assert_allclose(dl, p1 - p2 - np.sqrt((p1 - lo) ** 2 + (h2 - p2) ** 2), rtol=0, atol=1e-15)
    np.testing.assert_allclose(dh, p1 - p2 + np.sqrt((hi - p1) ** 2 + (p2 - l2) ** 2), rtol=0, atol=1e-15)


@pytest.mark.parametrize("m", [1, 2, 7, 100, 2000])
@pytest.mark.parametrize("q", [0.05, 0.2])
def test_benjamini_hochberg_against_scipy(m, q):
    rng = np.random.default_rng(m)
    p = np.where(rng.random(m) < 0.3, rng.random(m) * 1e-3, rng.random(m))
    p[: m // 10] = p[0]  # ties
    expected = sps.false_discovery_control(p, method="bh") <= q
    np.testing.assert_array_equal(benjamini_hochberg(p, q), expected)
    # NaN never survives and does not count among the m tests
    with_nan = np.concatenate([p, np.full(5, np.nan)])
    got = benjamini_hochberg(with_nan.reshape(-1, 1), q)
    assert got.shape == (m + 5, 1)
    np.testing.assert_array_equal(got[:m, 0], expected)
    assert not got[m:].any()


# ====================================================================== (g) Poisson draws
@pytest.mark.parametrize("lam", [1, 5, 31, 32, 100, 10_000])
def test_poisson_cells_moments(lam):
    """Mean and variance of 2,000,000 draws within 4 Monte Carlo SE. From lam = 32 the draws
    use the documented Cornish-Fisher normal approximation, whose rounding adds 1/12 + 1/18
    to the variance (0.4 % at lam = 32): that allowance is added there."""
    C, R = 20_000, 100
    keys = cell_keys(np.arange(4, dtype=np.uint64), "score", (C // 4,)).ravel()
    x = K.poisson_cells(17, 1, keys, np.full(C, lam), 0, R).astype(np.float64).ravel()
    N = x.size
    se_mean = np.sqrt(lam / N)
    se_var = np.sqrt((2 * lam**2 + lam) / N)  # Var of the sample variance: (mu4 - sigma^4) / N
    allowance = 1 / 12 + 1 / 18 if lam >= 32 else 0.0
    assert abs(x.mean() - lam) < 4 * se_mean, (x.mean(), lam)
    assert abs(x.var() - lam) < 4 * se_var + allowance, (x.var(), lam)
    if lam < 32:  # exact inversion: the whole distribution
        ks = np.arange(int(lam + 8 * np.sqrt(lam) + 10))
        observed = np.bincount(x.astype(np.int64), minlength=ks.size)[: ks.size]
        expected = sps.poisson.pmf(ks, lam) * N
        keep = expected > 20
        chi2 = (((observed - expected) ** 2 / expected)[keep]).sum()
        assert sps.chi2.sf(chi2, keep.sum() - 1) > 1e-3, chi2


def test_poisson_cells_take_whole_counts():
    keys = np.arange(3, dtype=np.uint64)
    for bad in ([1.0, 0.5, 2.0], [1, -1, 2], [1.0, np.nan, 2.0], [0, 0, 2**42]):
        with pytest.raises(ValueError, match="whole numbers"):
            K.poisson_cells(1, 0, keys, np.array(bad), 0, 3)
    # integer and float counts draw alike
    np.testing.assert_array_equal(
        K.poisson_cells(1, 0, keys, np.array([0, 7, 40]), 0, 5),
        K.poisson_cells(1, 0, keys, np.array([0.0, 7.0, 40.0]), 0, 5),
    )


# ====================================================================== (h) generator tables
def test_normal_table_is_the_inverse_cdf_and_safe_to_round():
    """Every entry is ``round(-Phi^-1(p) 2**24)`` (SciPy's ppf) and lies over 1e-6 units from
    a rounding boundary, so any accurate inverse CDF on any machine gives the same table."""
    segments = 1 << _rng.NORMAL_SEGMENT_BITS
    lead = np.arange(63)[:, None]
    p = np.ldexp(1.0 + np.arange(segments + 1)[None, :] / segments, lead - 64)[::-1]
    exact = np.where(p < 0.5, -sps.norm.ppf(p), 0.0) * 2.0**_rng.NORMAL_BITS
    np.testing.assert_array_equal(_rng.NORMAL_TABLE, np.round(exact).astype(np.int64))
    frac = np.abs(exact - np.floor(exact) - 0.5)
    assert frac.min() > 1e-6


def test_normal_draws_follow_the_inverse_cdf():
    """A draw is ``Phi^-1`` of its hash's tail probability to within 4e-6, in every octave."""
    h = np.random.default_rng(5).integers(0, 2**64, 200_000, dtype=np.uint64)
    shift = np.random.default_rng(6).integers(0, 63, h.size).astype(np.uint64)
    h = (h & np.uint64(1 << 63)) | ((h & np.uint64((1 << 63) - 1)) >> shift)  # all octaves
    z = ref._normal(h)
    v = (h & np.uint64((1 << 63) - 1)).astype(np.float64)
    p = np.maximum(v, 1.0) / 2.0**64
    exact = np.where((h >> np.uint64(63)) != 0, -sps.norm.ppf(p), sps.norm.ppf(p))
    assert np.abs(z - exact).max() < 4e-6


def test_poisson_table_is_the_cdf():
    """``POISSON_TABLE[n, k] = floor(P(X <= k) 2**53)`` (SciPy's cdf, within its float error)."""
    table = _rng.POISSON_TABLE.astype(np.float64)
    for n in range(1, _rng.POISSON_INVERSION_CUTOFF):
        row = table[n][table[n] < 2**53]
        cdf = sps.poisson.cdf(np.arange(row.size), n) * 2.0**53
        assert np.all(np.abs(row - np.floor(cdf)) <= 8), n
        assert row[-1] == 2**53 - 1
    assert np.all(table[0] == 2**53)


def test_replicate_chunks_compose():
    """Replicates 0..99 are replicates 0..49 followed by 50..99: for the draws and for
    ``CellBootstrap.resample``."""
    keys = cell_keys(np.array([5, 6], dtype=np.uint64), "calib", (3, 11)).ravel()
    lam = np.rint(np.linspace(0, 60, keys.size))
    whole = K.poisson_cells(3, 0, keys, lam, 0, 100)
    np.testing.assert_array_equal(whole, np.concatenate([K.poisson_cells(3, 0, keys, lam, 0, 50), K.poisson_cells(3, 0, keys, lam, 50, 50)]))
    z = K.normal_cells(3, 0, keys, 0, 100)
    np.testing.assert_array_equal(z, np.concatenate([K.normal_cells(3, 0, keys, 0, 50), K.normal_cells(3, 0, keys, 50, 50)]))
    # permuting the cells permutes the draws (keys, not positions)
    perm = np.random.default_rng(0).permutation(keys.size)
    np.testing.assert_array_equal(K.poisson_cells(3, 0, keys[perm], lam[perm], 0, 100), whole[:, perm])

    rng = np.random.default_rng(3)
    s = beta_support(200, 2, 5)
    pop = Population(s, s**0.7, offline=np.clip(s + rng.normal(0, 0.02, s.size), 0, 1))
    layout = pop.layout([0.3, 0.6], 6)
    cb = CellBootstrap(layout, K, replicates=100, seed=4)
    g = cb.coarsen(pop.grids(layout, pop.draw(rng, 2000, 6)))
    full = cb.resample(g, ROLE_ONLINE, 0, 100)
    halves = [cb.resample(g, ROLE_ONLINE, 0, 50), cb.resample(g, ROLE_ONLINE, 50, 50)]
    np.testing.assert_array_equal(full.score, np.concatenate([h.score for h in halves]))
    np.testing.assert_array_equal(full.joint, np.concatenate([h.joint for h in halves]))
    for k in full.calib:
        np.testing.assert_array_equal(full.calib[k], np.concatenate([h.calib[k] for h in halves]))
    np.testing.assert_array_equal(full.delta[1], np.concatenate([h.delta[1] for h in halves]))


def test_percentile_interval_per_column():
    """Each column's interval is ``np.quantile`` of that column, NaN replicates ignored; a
    column of NaN gives NaN."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 30, 2))
    x[rng.random(x.shape) < 0.01] = np.nan
    x[:, 3, 1] = np.nan
    lo, hi = percentile_interval(x, 0.9)
    for i in range(30):
        for j in range(2):
            col = x[:, i, j][~np.isnan(x[:, i, j])]
            if col.size == 0:
                assert np.isnan(lo[i, j]) and np.isnan(hi[i, j])
            else:
                np.testing.assert_allclose([lo[i, j], hi[i, j]], np.quantile(col, [0.05, 0.95]), rtol=1e-14)
    lo1, hi1 = percentile_interval(x[:, 0, 0], 0.9)
    assert lo1.shape == () and lo1 == lo[0, 0] and hi1 == hi[0, 0]


def test_standard_error_and_percentile_interval_are_numpys_numbers():
    """The shortcuts for replicates without NaN give numpy's numbers bit for bit:
    ``standard_error`` is ``np.nanstd(reps, axis=0, ddof=1)``, and ``percentile_interval``
    of the columns without NaN is ``np.quantile`` of those columns (taken out of the others),
    for any shape, scale, memory layout, and with NaN in some columns, in all of them or
    nowhere."""
    rng = np.random.default_rng(7)
    for trial in range(300):
        B = int(rng.choice([2, 3, 37, 100, 1000]))
        shape = (B,) + tuple(int(x) for x in rng.integers(1, 20, rng.integers(0, 3)))
        reps = rng.normal(rng.normal(), rng.exponential(), shape) * 10.0 ** rng.uniform(-8, 4)
        if trial % 3 == 0:
            reps[rng.random(shape) < rng.choice([0.01, 0.3, 1.0])] = np.nan
        if trial % 5 == 0 and reps.ndim == 3:  # a non-contiguous view
            reps = reps.transpose(0, 2, 1)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = np.nanstd(reps, axis=0, ddof=1)
        assert np.array_equal(standard_error(reps), expected, equal_nan=True)
        lo, hi = (x.reshape(-1) for x in percentile_interval(reps, 0.95))
        flat = reps.reshape(B, -1)
        clean = ~np.isnan(flat).any(0)
        if clean.any():
            alpha = (1.0 - 0.95) / 2.0
            ref_lo, ref_hi = np.quantile(flat[:, clean], [alpha, 1.0 - alpha], axis=0)
            assert np.array_equal(lo[clean], ref_lo) and np.array_equal(hi[clean], ref_hi)
