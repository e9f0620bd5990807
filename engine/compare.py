"""The compare stage: every (metric, slice, threshold/feature) against its expectation.

For each test this module decides the expected value, the difference and its interval, the
one-sided p-value, the status (DESIGN section 6, in order of precedence:
``insufficient_data``, ``alert``, ``warn``, ``ok``), the severity and the likely cause.

Expectations
------------
* performance metrics: the baseline's value of the same metric and slice (for
  ``scores="offline"`` too: what offline promised). ECE is bias-corrected on both sides with
  the bootstrap bias estimate, so ``expected`` is the baseline's ECE as it would read at the
  online sample size.
* drift metrics: their own null expectation at these sample sizes: analytic for PSI,
  ``(k - 1) (1 / n_online + 1 / n_baseline)``; the bootstrap bias estimate for JS, KS and
  Wasserstein.
* skew metrics: 0 (the same request scored twice should agree).
* data-quality rates: 0, or the floor for coverages.

Intervals are bootstrap percentile intervals of the difference, except for rates (k / n),
whose percentile intervals have unbalanced tails with few events: a rate judged against 0
(flip rate, data-quality rates) gets the Jeffreys interval (exact Clopper-Pearson when k is 0
or n), a rate against the baseline's the MOVER combination of the two sides' intervals.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from engine.bootstrap import (
    RATE_METRICS,
    one_sided_p_value,
    benjamini_hochberg,
    percentile_interval,
    rate_difference_interval,
    rate_interval,
    standard_error,
)
from engine.catalogue import MetricSpec, Tolerance
from engine.config import Config
from engine.encode import Layout
from engine.metrics import quiet_runtime_warnings

STATUS_ORDER = {"ok": 0, "warn": 1, "alert": 2}


@dataclass
class Finding:
    """One row of the result: a (metric, scores, slice, window, feature, threshold) test."""

    metric: str
    scores: str | None
    slice: dict[str, str]
    window: dict[str, str] | None
    feature: str | None
    threshold: float | None
    value: float | None
    expected: float | None
    diff: float | None
    ci: list[float] | None
    tolerance: dict[str, Any]
    n: int
    p_value: float | None
    status: str
    cause: str | None
    severity: float
    reason: str | None = None
    #: A stable id from the finding's key (metric, scores, slice, window, feature, threshold).
    id: str = ""
    #: The culprit slice whose rows explain this finding (DESIGN section 6a), or None.
    explained_by: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.id:
            self.id = finding_id(self.metric, self.scores, self.slice, self.window, self.feature, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of DESIGN section 7 (strict JSON: no NaN)."""
        return asdict(self)

    def sort_key(self) -> tuple:
        def k(x: Any) -> tuple:
            return (x is not None, "" if x is None else x)

        return (
            self.metric,
            k(self.scores),
            tuple(sorted(self.slice.items())),
            k(None if self.window is None else self.window.get("start")),
            k(self.feature),
            k(self.threshold),
        )


#: ``json.dumps(..., separators=(",", ":"))`` without building an encoder per call.
_ID_ENCODER = json.JSONEncoder(separators=(",", ":"))


def finding_id(
    metric: str,
    scores: str | None,
    slice_: dict[str, str],
    window: dict[str, str] | None,
    feature: str | None,
    threshold: float | None,
) -> str:
    """``f-`` and 12 hex digits of a hash of the finding's key: the same test in two runs (or
    two windows' findings and their incident) always has the same id.

    The key is the compact JSON of ``[metric, scores, sorted slice items, window start,
    feature, threshold]``; a JSON array is its items' JSON joined by commas, so the parts
    that repeat across slices and windows are encoded once (the same bytes)."""
    head = _id_head(metric, scores, tuple(sorted(slice_.items())))
    key = f"{head},{_id_part(None if window is None else window.get('start'))},{_id_tail(feature, threshold)}]"
    return "f-" + hashlib.sha1(key.encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=65536)
def _id_head(metric: str, scores: str | None, items: tuple) -> str:
    return _ID_ENCODER.encode([metric, scores, [list(kv) for kv in items]])[:-1]


@functools.lru_cache(maxsize=4096)
def _id_part(value: str | None) -> str:
    return _ID_ENCODER.encode(value)


@functools.lru_cache(maxsize=4096)
def _id_tail(feature: str | None, threshold: float | None) -> str:
    return _ID_ENCODER.encode([feature, threshold])[1:-1]


def _clean(x: Any) -> float | None:
    """A finite float, or None (strict JSON)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass
class _Test:
    """A finding under construction (flat, one per slice x threshold/feature)."""

    key: tuple
    spec: MetricSpec
    s: int
    threshold: float | None
    feature: str | None
    value: float
    expected: float
    diff: float
    lo: float
    hi: float
    se: float
    n: int
    n_base: float = float("inf")  # the baseline's denominator (inf: not applicable)
    reason: str | None = None
    insufficient: bool = False
    #: Byte-identical to the online test of the same slice (the replay equals the served
    #: scores there): judged with it, never emitted, and not counted twice in its family.
    duplicate: bool = False
    p_warn: float = float("nan")
    p_value: float = float("nan")
    status: str = "ok"
    cause: str | None = None
    share: float = 0.0  # the slice's share of the run's rows
    severity: float = 0.0
    beyond: bool = False  # the point estimate is beyond tolerance in the bad direction
    ci_beyond: bool = False  # the whole interval is
    survives_fdr: bool = False  # Benjamini-Hochberg in the test's family
    warn_fdr: bool = False  # ... of "beyond half the tolerance"
    label_delay: bool = False  # label coverage of rows whose outcomes are due


@dataclass
class Evidence:
    """Everything the compare stage needs, already measured.

    ``online[key]``/``baseline[key]`` are (S[, X]) values at the fine grid,
    ``online_reps``/``baseline_reps`` the (B, S[, X]) replicates (None without a bootstrap),
    ``n[key]`` the denominators, ``events`` per scores source the (S,) negatives and
    positives, ``dq`` the (S, Q) data-quality flag counts named by ``dq_flags``.
    """

    online: dict
    baseline: dict
    n: dict
    events: dict
    dq: np.ndarray
    dq_flags: tuple[str, ...]
    slice_rows: np.ndarray
    online_reps: dict | None = None
    baseline_reps: dict | None = None
    offline_drift: dict = field(default_factory=dict)
    baseline_rows: dict | None = None
    baseline_n: dict = field(default_factory=dict)
    has_offline: bool = False
    has_outcomes: bool = False
    duplicate_online: int = 0
    online_rows_raw: int = 0
    #: The baseline's (negatives, positives) per slice.
    baseline_events: tuple | None = None
    #: Null distributions of the drift statistics (``engine.bootstrap.drift_null``).
    drift_null: Any = None
    #: Global data-quality counts: (metric, table) -> (count, rows) (duplicates per table...).
    global_dq: dict = field(default_factory=dict)
    #: With a label horizon: (rows, labelled rows) per slice of the windows whose outcomes
    #: are due; label coverage is judged on them alone, and a shortfall is ``label_delay``.
    label_rows: tuple | None = None
    #: The online replicates come from the unit-level bootstrap (correlated rows): rate
    #: intervals are widened to the replicates' percentile interval.
    unit_level: bool = False


class Judge:
    """Turns :class:`Evidence` into sorted findings."""

    def __init__(self, layout: Layout, config: Config, blocks: int = 1) -> None:
        self.layout = layout
        self.config = config
        self.level = config.ci_level
        self.z = NormalDist().inv_cdf(0.5 + config.ci_level / 2.0)
        # ``blocks``: the evidence holds that many copies of the layout's slices one after
        # the other (the time windows, judged at once); each block is judged as a run of
        # its own: its population is its first slice, its tests are their own family
        self.block = len(layout.slice_labels())
        self.labels = layout.slice_labels() * blocks
        self.thresholds = list(layout.thresholds)

    # ------------------------------------------------------------------ public
    def findings(self, ev: Evidence, windows: list[dict[str, str]] | None = None) -> list[Finding]:
        """The findings of ``ev``, sorted (``windows``: the time window of each block)."""
        tests = self.judged_tests(ev)
        out = [self._finding(t, None if windows is None else windows[t.s // self.block]) for t in tests if not t.duplicate]
        out.sort(key=Finding.sort_key)
        return out

    def _totals(self, rows: np.ndarray) -> np.ndarray:
        """Each slice's block population's rows (1 where it has none): the share's whole."""
        rows = np.asarray(rows, dtype=np.float64)
        pop = rows[(np.arange(rows.size) // self.block) * self.block]
        return np.where(pop > 0, pop, 1.0)

    def judged_tests(self, ev: Evidence) -> list[_Test]:
        """Every test with its status and cause (duplicates included, flagged)."""
        b = self.block
        self.empty_slices = [s for s in range(len(ev.slice_rows)) if ev.slice_rows[s] == 0 and s % b]
        tests = self._metric_tests(ev) + self._dq_tests(ev)
        tests = [t for t in tests if t.s % b == 0 or ev.slice_rows[t.s] > 0]  # empty slices: not tests
        self._decide(tests, ev)
        self._causes(tests, ev)
        return tests

    # ------------------------------------------------------------------ tests
    def _spec(self, name: str) -> MetricSpec | None:
        spec = self.config.resolved_metric(name)
        return spec if spec.enabled else None

    def _metric_tests(self, ev: Evidence) -> list[_Test]:
        tests: list[_Test] = []
        shares = (np.asarray(ev.slice_rows, dtype=np.float64) / self._totals(ev.slice_rows)).tolist()
        for key, value in ev.online.items():
            name, scores, feature = key
            spec = self._spec(name)
            if spec is None:
                continue
            if spec.family == "performance" and not ev.has_outcomes:
                continue
            value = np.asarray(value, dtype=np.float64)
            reps = None if ev.online_reps is None else ev.online_reps.get(key)
            expected, diff_reps = self._expectation(key, spec, value, reps, ev)
            n = np.asarray(ev.n[key], dtype=np.float64)
            diff = value - expected
            lo, hi, se = self._interval(key, spec, value, diff, diff_reps, n, ev)
            n_base = self._baseline_n(key, spec, value.shape, ev)
            n_int = np.where(np.isfinite(n), n, 0).astype(np.int64)
            # the tests of this metric, slice by slice (and threshold by threshold), as flat
            # lists of Python numbers: one conversion per array, not one per test
            per_x = value.ndim == 2
            X = value.shape[1] if per_x else 1
            slice_of = np.repeat(np.arange(value.shape[0]), X)
            duplicate = np.zeros(value.size, dtype=bool)
            if scores == "offline" and (name, "online", feature) in ev.online:
                # byte-identical to the served scores' test (the replay equals them here)
                twin_key = (name, "online", feature)
                tv, tn = np.asarray(ev.online[twin_key]), np.asarray(ev.n[twin_key])
                same_value = (tv == value) | (np.isnan(tv) & np.isnan(value))
                duplicate = (same_value & (tn == n)).reshape(-1)
            # tests that may lack data: the checks of _sufficiency, vectorised; each of these
            # goes through _sufficiency itself (which gives the reason)
            maybe_short = (
                ~np.isfinite(value) | ~np.isfinite(expected) | (n_int < spec.min_rows) | (n_base < spec.min_rows)
            ).reshape(-1)
            if spec.min_events and scores is not None:
                few = np.minimum(*ev.events[scores]) < spec.min_events
                if ev.baseline_events is not None:
                    few = few | (np.minimum(*ev.baseline_events) < spec.min_events)
                maybe_short |= np.asarray(few)[slice_of]
            thresholds = self.thresholds if per_x else [None]
            columns = zip(
                slice_of.tolist(), value.reshape(-1).tolist(), expected.reshape(-1).tolist(),
                diff.reshape(-1).tolist(), lo.reshape(-1).tolist(), hi.reshape(-1).tolist(),
                se.reshape(-1).tolist(), n_int.reshape(-1).tolist(), n_base.reshape(-1).tolist(),
                duplicate.tolist(), maybe_short.tolist(),
            )
            for i, (s, v, e, d, l, h, sd, k, kb, dup, short) in enumerate(columns):
                t = _Test(
                    key=key, spec=spec, s=s, threshold=thresholds[i % X], feature=feature,
                    value=v, expected=e, diff=d, lo=l, hi=h, se=sd, n=k, n_base=kb, duplicate=dup,
                )
                t.share = shares[s]
                if short:
                    self._sufficiency(t, ev, scores)
                tests.append(t)
        return tests

    def _expectation(self, key, spec: MetricSpec, value, reps, ev: Evidence):
        """Expected value and replicates of the difference."""
        name, scores, feature = key
        if spec.family == "performance":
            base = np.asarray(ev.baseline[(name, "online", None)], dtype=np.float64)
            base_reps = None if ev.baseline_reps is None else ev.baseline_reps.get((name, "online", None))
            if reps is None:
                return base, None
            if spec.bias_corrected:
                b_on = _nanmean(reps) - value
                b_base = _nanmean(base_reps) - base
                return base - b_base + b_on, (reps - 2 * b_on) - (base_reps - 2 * b_base)
            return base, reps - base_reps
        if spec.family == "drift":
            if name == "psi":
                k = self._psi_bins(feature)
                n_on = np.asarray(ev.n[key], dtype=np.float64)
                n_base = self._baseline_rows(feature, ev)
                with np.errstate(divide="ignore", invalid="ignore"):
                    expected = (k - 1) * (1.0 / n_on + 1.0 / n_base)
                expected = np.where(np.isfinite(expected), expected, 0.0)
            elif ev.drift_null is not None and key in ev.drift_null.expected:
                expected = np.asarray(ev.drift_null.expected[key], dtype=np.float64)
                expected = np.where(np.isfinite(expected), expected, 0.0)
            elif reps is not None:
                expected = np.maximum(_nanmean(reps) - value, 0.0)
            else:
                expected = np.zeros_like(value)
            return expected, None if reps is None else reps - 2 * expected
        return np.zeros_like(value), reps  # skew: the null expectation is 0

    def _psi_bins(self, feature: str) -> int:
        if feature == "score":
            return len(self.layout.decile_edges) + 1
        f = next(f for f in self.layout.features if f.name == feature)
        return int(f.decile_bins.max()) + 2 if f.kind == "numeric" else f.categories.size

    def _baseline_rows(self, feature: str, ev: Evidence) -> np.ndarray:
        rows = ev.baseline_rows.get(feature) if isinstance(ev.baseline_rows, dict) else None
        return np.asarray(rows if rows is not None else ev.slice_rows, dtype=np.float64)

    def _interval(self, key, spec, value, diff, diff_reps, n, ev: Evidence):
        """(lo, hi, se) of the difference.

        Rates use binomial intervals, whose tails stay balanced with few events (the
        percentile interval of a bootstrapped rate does not; see ``engine.bootstrap``):
        Jeffreys / Clopper-Pearson for a rate judged against 0 (flip rate), MOVER for a rate
        against the baseline's. Other metrics use the bootstrap percentile interval.
        """
        if diff_reps is None:
            nan = np.full(value.shape, np.nan)
            return nan, nan, nan
        se = standard_error(diff_reps)
        name = key[0]
        null = None if ev.drift_null is None else ev.drift_null.replicates.get(key)
        if null is not None:
            # The statistic's noise is its null distribution (both samples' noise): the
            # interval of its excess over the null expectation is that distribution turned
            # around the value, [value - q_hi, value - q_lo]. It covers 0 at the nominal rate
            # on clean data (the bootstrap around the value would not: the statistic sits
            # on the boundary of its range); under real drift its lower end is conservative
            # (the null's upper quantile exceeds the statistic's own spread).
            q_lo, q_hi = percentile_interval(null, self.level)
            return value - q_hi, value - q_lo, standard_error(null)
        if name not in RATE_METRICS:
            lo, hi = percentile_interval(diff_reps, self.level)
            return lo, hi, se
        if spec.family == "performance":
            base = value - diff
            n_base = np.asarray(ev.baseline_n[(name, "online", None)], dtype=np.float64)
            lo, hi = rate_difference_interval(value * n, n, base * n_base, n_base, self.level)
        else:
            lo, hi = rate_interval(value * n, n, self.level)
        if ev.unit_level:
            # the binomial intervals assume independent rows; the unit-level replicates carry
            # the rows' correlation: the hull of the two keeps the tails of both
            p_lo, p_hi = percentile_interval(diff_reps, self.level)
            lo, hi = np.fmin(lo, p_lo), np.fmax(hi, p_hi)
        # the p-value's standard error: the bootstrap's, never below the interval's width
        return lo, hi, np.fmax(se, (hi - lo) / (2 * self.z))

    def _baseline_n(self, key, spec: MetricSpec, shape: tuple, ev: Evidence) -> np.ndarray:
        """The baseline's denominator of each test (inf where the metric has none)."""
        name, scores, feature = key
        n = None
        if spec.family == "performance":
            n = ev.baseline_n.get((name, "online", None))
        elif spec.family == "drift":
            n = self._baseline_rows(feature, ev)
        if n is None:
            return np.full(shape, np.inf)
        return np.broadcast_to(np.asarray(n, dtype=np.float64), shape)

    def _sufficiency(self, t: _Test, ev: Evidence, scores: str | None) -> None:
        spec = t.spec
        if not math.isfinite(t.value):
            t.insufficient = True
            t.reason = self._undefined_reason(t, ev, scores)
            return
        if not math.isfinite(t.expected):
            t.insufficient = True
            t.reason = "undefined in the baseline for this slice: nothing to compare with"
            return
        if t.n < spec.min_rows:
            t.insufficient = True
            t.reason = f"n = {t.n} is below the minimum of {spec.min_rows}"
            return
        if t.n_base < spec.min_rows:
            t.insufficient = True
            t.reason = (
                f"the baseline has n = {int(t.n_base)} in this slice, below the minimum of "
                f"{spec.min_rows}: its own sampling noise would decide"
            )
            return
        if spec.min_events and scores is not None:
            sides = [("", ev.events[scores])]
            if ev.baseline_events is not None:
                sides.append(("the baseline has ", ev.baseline_events))
            for prefix, (neg, pos) in sides:
                if min(neg[t.s], pos[t.s]) < spec.min_events:
                    t.insufficient = True
                    t.reason = (
                        f"{prefix}{int(pos[t.s])} positives and {int(neg[t.s])} negatives; "
                        f"at least {spec.min_events} of each are needed"
                    )
                    return

    def _undefined_reason(self, t: _Test, ev: Evidence, scores: str | None) -> str:
        if scores is not None:
            neg, pos = ev.events[scores]
            if neg[t.s] + pos[t.s] == 0:
                return "undefined: no row of the slice has an outcome (yet)"
            if t.key[0] == "auc" and min(neg[t.s], pos[t.s]) == 0:
                return "undefined: the slice has only one class of outcome"
            if t.n == 0:
                return "undefined: the denominator is 0 (no row qualifies)"
        if t.n == 0:
            return "undefined: no rows"
        return "undefined for this slice"

    def _dq_tests(self, ev: Evidence) -> list[_Test]:
        flags = {name: ev.dq[:, q].astype(np.float64) for q, name in enumerate(ev.dq_flags)}
        rows = flags["rows"]
        total = self._totals(rows)
        specs: list[tuple[str, np.ndarray, str | None]] = []
        tests_due: list[_Test] = []
        if ev.has_offline:
            # matched rows: a replay score that is there but invalid is no coverage loss
            specs.append(("join_coverage", flags["has_offline"] + flags["invalid_offline_score"], None))
        if ev.has_outcomes:
            if ev.label_rows is not None:  # a label horizon: only rows whose outcomes are due
                rows_due, labelled_due = ev.label_rows
                spec = self._spec("label_coverage")
                if spec is not None:
                    total_due = rows_due[0] if rows_due[0] else 1.0
                    for s in range(len(rows)):
                        t = self._rate_test(spec, s, labelled_due[s], rows_due[s], None, rows_due[s] / total_due)
                        t.label_delay = True
                        tests_due.append(t)
            else:
                specs.append(("label_coverage", flags["has_label"], None))
            specs.append(("invalid_label_rate", flags["invalid_label"], None))
        specs.append(("invalid_score_rate", flags["invalid_score"], None))
        specs.append(("null_key_rate", flags["null_key"], None))
        # a column both slice and categorical feature has two (equal) flags: one test
        per_column = list(dict.fromkeys(name for name in ev.dq_flags if name.startswith("unseen:")))
        if len(per_column) != 1:  # with one categorical column the total is that column's
            specs.append(("unseen_value_rate", flags["unseen_value"], None))
        for name in per_column:
            specs.append(("unseen_value_rate", flags[name], name.split(":", 1)[1]))
        tests = tests_due
        specs = [(self._spec(name), counts, column) for name, counts, column in specs]
        specs = [x for x in specs if x[0] is not None]
        if specs:  # every slice of every metric in one call
            k_all = np.stack([counts for _, counts, _ in specs])
            lo_all, hi_all = (np.asarray(x, dtype=np.float64) for x in rate_interval(k_all, np.broadcast_to(rows, k_all.shape), self.level))
        for (spec, counts, column), lo, hi in zip(specs, lo_all if specs else [], hi_all if specs else []):
            for s in range(len(rows)):
                tests.append(self._rate_test(spec, s, counts[s], rows[s], column, rows[s] / total[s], (float(lo[s]), float(hi[s]))))
        spec = self._spec("duplicate_key_rate")
        if spec is not None and ev.online_rows_raw:
            tests.append(
                self._rate_test(spec, 0, float(ev.duplicate_online), float(ev.online_rows_raw), None, 1.0)
            )
        # facts of a whole table (duplicates in the replay or the outcomes, conflicting
        # labels): one test on the population, ``feature`` naming the table
        for (name, table), (k, n) in sorted(ev.global_dq.items()):
            spec = self._spec(name)
            if spec is not None and n:
                tests.append(self._rate_test(spec, 0, float(k), float(n), table, 1.0))
        return tests

    def _rate_test(
        self, spec: MetricSpec, s: int, k: float, n: float, column: str | None, share: float,
        interval: tuple[float, float] | None = None,
    ) -> _Test:
        value = k / n if n > 0 else float("nan")
        floor = spec.tolerance_kind == "floor"
        expected = spec.tolerance if floor else 0.0
        if interval is None:
            interval = tuple(float(x) for x in rate_interval(np.array(k), np.array(n), self.level))
        lo_v, hi_v = interval
        se = max(math.sqrt(max(value * (1 - value), 0.0) / n) if n > 0 else float("nan"), (hi_v - lo_v) / (2 * self.z))
        t = _Test(
            key=(spec.name, None, column),
            spec=spec,
            s=s,
            threshold=None,
            feature=column,
            value=value,
            expected=expected,
            diff=value - expected,
            lo=lo_v - expected,
            hi=hi_v - expected,
            se=se,
            n=int(n),
        )
        t.share = share
        self._sufficiency(t, None, None)  # type: ignore[arg-type]
        return t

    # ------------------------------------------------------------------ status
    def _decide(self, tests: list[_Test], ev: Evidence) -> None:
        """Status of every test (DESIGN section 6, as refined here).

        * ``alert``: the whole interval of the difference lies beyond the tolerance and the
          one-sided test of "within tolerance" survives Benjamini-Hochberg at ``fdr_q`` in
          its family;
        * ``warn``: not an alert, but the test of "within *half* the tolerance" survives
          Benjamini-Hochberg in its family: a real divergence, not yet shown beyond
          tolerance;
        * ``ok`` otherwise: a point estimate beyond tolerance that noise explains is ``ok``.

        The multiple-testing scheme is grouped by slice (:func:`grouped_fdr`): a slice is
        selected when its tests together (Simes) survive Benjamini-Hochberg across slices,
        and its own tests are then judged at the level that selection leaves. Byte-identical
        duplicates (the replay equal to the served scores) are judged with their twin, never
        counted twice.
        Without a bootstrap (no standard errors) a point estimate beyond tolerance is a
        warning.
        """
        judged, margins, bads = [], [], []
        for t in tests:
            if t.insufficient:
                continue
            tol: Tolerance = t.spec.tolerance_spec
            t.beyond = bool(tol.beyond(t.diff, t.expected, value=t.value if tol.kind == "floor" else None))
            t.ci_beyond = bool(tol.ci_beyond(t.lo, t.hi, t.expected)) if math.isfinite(t.lo) else False
            judged.append(t)
            margins.append(0.0 if tol.kind == "floor" else float(tol.margin(t.expected)))
            bads.append(tol.bad)
            # severity = |diff| / tolerance x share; a floor's scale is the room it leaves
            scale = float(tol.scale(t.expected))
            t.severity = abs(t.diff) / (scale if scale > 0 else 1.0) * t.share
        # the p-values of all tests at once (a floor's half-margin test is its test: margin 0)
        diff = np.array([t.diff for t in judged], dtype=np.float64)
        se = np.array([t.se for t in judged], dtype=np.float64)
        margin, bad = np.array(margins, dtype=np.float64), np.array(bads, dtype=object)
        p_full = tolerance_p_values(diff, margin, se, bad)
        p_halves = tolerance_p_values(diff, margin / 2, se, bad)
        for t, p, p_half in zip(judged, p_full, p_halves):
            t.p_value, t.p_warn = float(p), float(p_half)
        testable = [t for t in tests if not t.insufficient and not t.duplicate and math.isfinite(t.p_value)]
        by_block: dict[int, list[_Test]] = {}
        for t in testable:
            by_block.setdefault(t.s // self.block, []).append(t)
        for family in by_block.values():
            for flag, attr in (("survives_fdr", "p_value"), ("warn_fdr", "p_warn")):
                passed = grouped_fdr([getattr(t, attr) for t in family], [t.s for t in family], self.config.fdr_q)
                for t, ok in zip(family, passed):
                    setattr(t, flag, bool(ok))
        for t in tests:
            if t.insufficient:
                t.status = "insufficient_data"
            elif t.ci_beyond and t.survives_fdr:
                t.status = "alert"
            elif t.warn_fdr or (t.beyond and not math.isfinite(t.se)):
                t.status = "warn"
            else:
                t.status = "ok"
        twins = {(t.key[0], "online", t.key[2], t.s, t.threshold): t for t in tests if t.key[1] == "online"}
        for t in tests:
            if t.duplicate:
                twin = twins.get((t.key[0], "online", t.key[2], t.s, t.threshold))
                if twin is not None:
                    t.status, t.p_value, t.severity = twin.status, twin.p_value, twin.severity

    # ------------------------------------------------------------------ causes
    def _causes(self, tests: list[_Test], ev: Evidence) -> None:
        by_slice: dict[int, list[_Test]] = {}
        for t in tests:
            by_slice.setdefault(t.s, []).append(t)
        for s, group in by_slice.items():
            flagged = [t for t in group if t.status in ("warn", "alert")]
            skew_beyond = any(t.spec.family == "skew" for t in flagged)
            feature_drift = any(t.spec.family == "drift" and t.feature != "score" and not self._unseen_explained(t, group) for t in flagged)
            offline_moved = self._offline_score_moved(s, ev)
            input_drift = feature_drift or offline_moved
            # In a skewed slice the replay is "within tolerance" unless it is itself an alert:
            # a noisy (warn) or unmeasurable (insufficient) offline counterpart is no evidence
            # that the outcomes moved rather than the serving path.
            offline_alerts = {
                (t.key[0], t.threshold) for t in group if t.key[1] == "offline" and t.status == "alert"
            }
            for t in group:
                if t.status not in ("warn", "alert"):
                    t.cause = None
                    continue
                fam = t.spec.family
                name, scores, feature = t.key
                if fam == "data_quality":
                    t.cause = "label_delay" if t.label_delay else "data_quality"
                elif fam == "skew":
                    t.cause = "serving_skew"
                elif fam == "drift" and feature != "score":
                    t.cause = "data_quality" if self._unseen_explained(t, group) else "data_drift"
                elif fam == "drift":  # the score's own distribution
                    if ev.has_offline:
                        t.cause = "data_drift" if offline_moved else "serving_skew"
                    else:
                        t.cause = "data_drift"
                elif scores == "online" and skew_beyond and (name, t.threshold) not in offline_alerts:
                    t.cause = "serving_skew"
                elif input_drift:
                    t.cause = "data_drift"
                else:
                    t.cause = "concept_drift"

    def _unseen_explained(self, t: _Test, group: list[_Test]) -> bool:
        """A categorical drift explained by values the baseline never saw."""
        return any(
            u.key[0] == "unseen_value_rate" and u.feature == t.feature and u.status in ("warn", "alert")
            for u in group
        )

    def _offline_score_moved(self, s: int, ev: Evidence) -> bool:
        """Whether the replay's scores of the same requests drifted beyond tolerance.

        Judged on PSI (its null expectation is analytic, so no bootstrap is needed).
        """
        value = ev.offline_drift.get(("psi", None, "score"))
        spec = self._spec("psi")
        if value is None or spec is None:
            return False
        v = float(np.asarray(value)[s])
        n_on = float(ev.n[("psi", None, "score")][s])
        n_base = float(self._baseline_rows("score", ev)[s])
        if not (math.isfinite(v) and n_on >= spec.min_rows and n_base > 0):
            return False
        expected = (self._psi_bins("score") - 1) * (1 / n_on + 1 / n_base)
        return bool(spec.tolerance_spec.beyond(v - expected, expected))

    # ------------------------------------------------------------------ output
    def _finding(self, t: _Test, window: dict[str, str] | None = None) -> Finding:
        ci = None
        if math.isfinite(t.lo) and math.isfinite(t.hi) and not t.insufficient:
            ci = [_clean(t.lo), _clean(t.hi)]
        value = _clean(t.value)
        return Finding(
            metric=t.key[0],
            scores=t.key[1],
            slice=self.labels[t.s],
            window=window,
            feature=t.feature,
            threshold=t.threshold,
            value=value,
            expected=_clean(t.expected),
            diff=_clean(t.diff),
            ci=ci,
            tolerance=t.spec.tolerance_spec.to_dict(),
            n=int(t.n),
            p_value=None if t.insufficient else _clean(t.p_value),
            status=t.status,
            cause=t.cause,
            severity=_clean(t.severity) or 0.0,
            reason=t.reason,
        )


def tolerance_p_values(diff: np.ndarray, margin: np.ndarray, se: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """One-sided p-values of exceeding the tolerance, test by test (``bad``: the direction
    of each; :func:`engine.bootstrap.one_sided_p_value`'s arithmetic): NaN without a
    standard error; a degenerate interval (``se`` 0): the point decides."""
    p_up = one_sided_p_value(diff, margin, se, "increase")
    p_down = one_sided_p_value(diff, margin, se, "decrease")
    degenerate = se <= 0
    p_up = np.where(degenerate, np.where(diff - margin > 0, 0.0, 1.0), p_up)
    p_down = np.where(degenerate, np.where(-margin - diff > 0, 0.0, 1.0), p_down)
    p = np.where(bad == "increase", p_up, np.where(bad == "decrease", p_down, np.fmin(p_up, p_down)))
    return np.where(np.isfinite(se), p, np.nan)


def simes(p_values: np.ndarray) -> float:
    """Simes' combination ``min_i p_(i) k / i`` of ``k`` p-values: valid for the global null
    of the group under independence and positive dependence (PRDS), as a slice's metrics are
    (they move together)."""
    p = np.sort(np.asarray(p_values, dtype=np.float64))
    return float(np.min(p * p.size / np.arange(1, p.size + 1))) if p.size else 1.0


def grouped_fdr(p_values: list[float], groups: list[Any], q: float) -> np.ndarray:
    """Which tests are discoveries under the two-stage procedure of Benjamini and Bogomolov
    (2014, "Selective inference on multiple families of hypotheses").

    Stage 1 selects groups (slices) by Benjamini-Hochberg at ``q`` on each group's Simes
    p-value; stage 2 runs Benjamini-Hochberg inside each selected group at ``q R / G``
    (``R`` selected of ``G`` groups). This controls the expected average false discovery
    proportion over the selected groups at ``q``. The cost of a slice is one hypothesis at
    stage 1 whatever its number of metrics, thresholds and features, and a problem that moves
    several metrics of one slice together is found where a run-wide procedure over every
    test would drown it.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.zeros(p.size, dtype=bool)
    by_group: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    if not by_group:
        return out
    names = list(by_group)
    selected = benjamini_hochberg(np.array([simes(p[by_group[g]]) for g in names]), q)
    level = q * int(selected.sum()) / len(names)
    for g, chosen in zip(names, selected):
        if chosen:
            idx = np.array(by_group[g])
            out[idx] = benjamini_hochberg(p[idx], level)
    return out


def _nanmean(a: np.ndarray) -> np.ndarray:
    with quiet_runtime_warnings():
        return np.nanmean(a, axis=0)


def verdict(findings: list[Finding]) -> str:
    """The worst status among the findings: ``alert``, ``warn`` or ``ok``."""
    worst = max((STATUS_ORDER.get(f.status, 0) for f in findings), default=0)
    return {0: "ok", 1: "warn", 2: "alert"}[worst]
