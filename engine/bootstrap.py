"""The cell-level Poisson bootstrap.

For any statistic that is a function of cell counts, the total Poisson(1) weight of the rows
in a cell is Poisson(n_cell), independently across cells. Drawing one Poisson(n_cell) per
cell and replicate is therefore *exactly* the row-level Poisson bootstrap, at a cost of
cells x replicates, whatever the number of rows.

Choices, documented:

* **Coarse grid.** Replicates are drawn on the coarse grid of the layout (calibration edges,
  i.e. score deciles and thresholds, plus 32 score quantiles; feature deciles;
  every 8th |delta| edge). Threshold metrics, PSI, ECE, Brier and log loss are exact on it.
  For metrics that the fine grid sharpens (AUC, KS, JS, Wasserstein, p99 of |delta|), the
  replicate is ``fine point + (coarse replicate - coarse point)``: the fine grid fixes the
  estimate, the coarse grid its sampling spread.
* **Sums inside a cell** (sum of p, p^2, log-loss terms, |delta|, value): a replicate's sum is
  ``n* mean + sqrt(n*) sd Z`` with ``n*`` the cell's Poisson draw and ``Z`` standard normal,
  which keeps the within-cell variance (the row-level bootstrap's variance of a cell sum is
  ``n (mean^2 + sd^2)``; this has the same). One ``Z`` per cell drives p and p^2 (comonotone);
  the log-loss term moves against p for positives and with p for negatives.
* **Keys.** Draws are keyed by ``(seed, role, cell key, replicate)``; the cell key hashes the
  grid, the slice's meaning (column=value pairs) and the bin index, not an array position, so
  results do not depend on partitioning or on which slices exist. Role 0 is the baseline,
  role 1 online: the two sides' replicates are independent.
* **Degenerate rates.** Where a rate's numerator is 0 or its denominator, the percentile
  interval collapses to a point: the exact Clopper-Pearson interval is used instead.
* **Rates with few events.** The cell bootstrap of a proportion ``k / n`` is exactly the
  row-level one, but its *percentile* interval is, in effect, a Wald interval: centred on
  ``k / n`` with the spread of ``k / n``, so with fewer than about a hundred events (or
  non-events) its two tails are unbalanced. Measured in ``tests/test_bootstrap.py`` (4000
  simulated data sets, 95 % intervals, 2.5 % expected on each side): a 0.3 % flip rate on
  20,000 paired rows (60 flips) lies above the percentile interval 3.8 % of the time and
  below it 2.0 %; with 20 flips 4.3 % and 1.7 %; an FPR with about 21 false positives 4.4 %
  and 1.7 %; the difference of two flip rates of about 20 flips each lies above the percentile
  interval of the difference 3.8 % of the time. :func:`rate_interval` (Jeffreys,
  equal-tailed) and :func:`rate_difference_interval` (MOVER on Jeffreys intervals) keep each
  tail within 2.5 +- 1 % there (measured 2.0-2.9 % with 20 or more events; with fewer, the
  binomial's discreteness makes any equal-tailed interval oscillate). They are the intervals
  to use for ``RATE_METRICS`` under the cell (row-level) bootstrap; the replicates still give
  the standard error of the p-values. (They assume independent rows: under the unit-level
  bootstrap of correlated rows the judge widens them to the percentile interval.)
* **Where replicates live.** On the GPU backend the draws stay on the device and the
  replicates' grids and metrics are computed there with CuPy (``CellBootstrap.xp``; the
  metrics are written against an array namespace); only the metric values per replicate
  come back. Without CuPy (CI, Numba's CUDA simulator) the same code runs on numpy, the
  draws copied back as they are made.
* **Unit-level bootstrap** (``--bootstrap-unit COL``, ``engine.unit_bootstrap``): the online
  side's replicate counts ``n*`` of every coarse grid come from the rows' unit weights,
  accumulated while the rows streamed (``unit``), instead of independent Poisson(n) draws
  per cell; everything downstream (calibration counts from the score counts, sums inside a
  cell conditional on ``n*``, the shift onto the fine estimates) is unchanged. The sums'
  within-cell noise ``Z`` stays independent per cell: the clustering is carried by the
  counts. The baseline side, whose rows a check does not see, keeps the cell-level draws.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field

import numba
import numpy as np

from engine import _cache
from engine import measure as ME
from engine.encode import Layout, stable_key
from engine.metrics import aggregate_bins, array_module, quiet_runtime_warnings, to_host
from engine.measure import Grids, MetricKey

_cache.announce_compiles()

ROLE_BASELINE = 0
ROLE_ONLINE = 1

_GRID_IDS = {"score": 1, "offline": 2, "calib": 3, "calib_off": 4, "feature": 5, "joint": 6, "delta": 7, "value": 8}
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

#: Default replicate chunk: about this many draws of the largest grid at once. On the host
#: small chunks keep each temporary at 4 MB: the 300k-row demo check's first run in a process
#: took 0.3-0.6 s less than with 4M (its drift and calibration replicates; RESULTS), same
#: numbers. On a device, few large launches (each has a fixed cost).
CHUNK_ELEMENTS = 500_000
CHUNK_ELEMENTS_ON_DEVICE = 4_000_000

#: Metrics whose value is a proportion k / n (exact intervals when k is 0 or n).
RATE_METRICS = frozenset(
    {"precision", "recall", "fpr", "predicted_positive_rate", "positive_rate", "flip_rate"}
)


def _mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def cell_keys(slice_keys: np.ndarray, grid: str, inner_shape: tuple[int, ...], sub: int = 0) -> np.ndarray:
    """Keys of the cells ``(slice, *inner)`` of a grid: a hash of their meaning."""
    gid = np.uint64((_GRID_IDS[grid] << 8) + sub)
    n_inner = int(np.prod(inner_shape)) if inner_shape else 1
    inner = np.arange(n_inner, dtype=np.uint64)
    with np.errstate(over="ignore"):
        base = _mix(slice_keys.astype(np.uint64) ^ (gid * _GOLDEN))
        keys = _mix(base[:, None] + (inner[None, :] + np.uint64(1)) * _GOLDEN)
    return keys.reshape((len(slice_keys),) + tuple(inner_shape))


@dataclass
class Replicates:
    """Bootstrap replicates of every metric: ``values[key]`` is (B, S[, T])."""

    online: dict[MetricKey, np.ndarray]
    baseline: dict[MetricKey, np.ndarray] = field(default_factory=dict)


class CellBootstrap:
    """Poisson bootstrap on cells, in chunks of replicates (memory bounded by the chunk).

    Parameters
    ----------
    layout : Layout
    kernels : kernels._api.Kernels
    replicates : int
        B, default 1000.
    seed : int
    chunk : int, optional
        Replicates drawn at once; by default as many as keep about ``CHUNK_ELEMENTS`` cell
        draws per grid in memory (``CHUNK_ELEMENTS_ON_DEVICE`` where the draws stay on a
        device: few large calls, each launch has a fixed cost).
    slice_keys : (S,) uint64, optional
        The meaning of each slice of the grids (default: the layout's slices).
    unit : Grids, optional
        The unit-level bootstrap's online replicate counts of the coarse grids, ``(B, S,
        ...)`` (``engine.unit_bootstrap.take_replicates``): the online side's ``n*`` are
        taken from them instead of drawn.
    """

    def __init__(
        self,
        layout: Layout,
        kernels,
        *,
        replicates: int = 1000,
        seed: int = 0,
        chunk: int | None = None,
        slice_keys: np.ndarray | None = None,
        unit: Grids | None = None,
    ) -> None:
        self.layout = layout
        self.kernels = kernels
        self.B = int(replicates)
        self.seed = int(seed)
        self.chunk = None if chunk is None else max(1, int(chunk))
        self.fine = ME.fine_resolution(layout)
        self.coarse_res = ME.coarse_resolution(layout)
        self._fine_to_coarse = layout.fine_to(layout.coarse_edges)
        self._coarse_to_calib = np.searchsorted(
            layout.calib_edges, np.concatenate([[-np.inf], layout.coarse_edges]), side="right"
        ).astype(np.int32)
        self._n_coarse = len(layout.coarse_edges) + 1
        self._n_calib = len(layout.calib_edges) + 1
        n_delta = len(self.fine.delta_edges) - 1
        self._delta_map = (np.arange(n_delta) // 8).astype(np.int32)  # every 8th edge
        self._n_delta_coarse = int(self._delta_map.max()) + 1
        # the meaning of each slice on the grids' slice axis (derived slices bring their own)
        self.slice_keys = layout.slice_keys() if slice_keys is None else np.asarray(slice_keys, dtype=np.uint64)
        self.unit = unit
        if unit is not None and unit.score.shape[0] != self.B:
            raise ValueError(f"The unit-level replicate counts hold {unit.score.shape[0]} replicates, not B = {self.B}.")
        #: The array module of the replicates: CuPy where the backend draws on the device
        #: and CuPy is installed, else numpy.
        self.on_device = bool(getattr(kernels, "draws_on_device", False))
        self.xp = array_module() if self.on_device else np

    # ------------------------------------------------------------------ coarse point
    def coarsen(self, g: Grids) -> Grids:
        """The same statistics on the coarse grid (no resampling)."""
        agg = aggregate_bins
        out = Grids(
            score=agg(g.score, self._fine_to_coarse, self._n_coarse),
            calib=g.calib,
            features=[agg(f, m, int(m.max()) + 1) for f, m in zip(g.features, self.fine.feature_psi_maps)],
            dq=g.dq,
        )
        if g.offline is not None:
            out.offline = agg(g.offline, self._fine_to_coarse, self._n_coarse)
            out.calib_off = g.calib_off
            out.joint = g.joint
            out.delta = tuple(agg(a, self._delta_map, self._n_delta_coarse) for a in g.delta)
        out.value = g.value
        return out

    # ------------------------------------------------------------------ resampling
    def _draws(self, draw, *args):
        """``draw(*args)`` (a kernel's draws) as an array of :attr:`xp`: left on the device
        and wrapped where the backend draws there, copied back when numpy stands in."""
        if not self.on_device:
            return draw(*args)
        d = draw(*args, on_device=True)
        return self.xp.asarray(d) if self.xp is not np else d.copy_to_host()

    def _on_xp(self, x):
        """Host statistics (arrays, and the dicts, lists and tuples of Grids) on :attr:`xp`."""
        if x is None or self.xp is np:
            return x
        if isinstance(x, dict):
            return {k: self._on_xp(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(self._on_xp(v) for v in x)
        return self.xp.asarray(x)

    def _poisson(self, counts: np.ndarray, keys: np.ndarray, role: int, rep_start: int, n_reps: int):
        # empty cells draw 0 without touching the generator (counts stay on the host: the
        # kernel takes them from there)
        draws = self._draws(
            self.kernels.poisson_cells, self.seed, role, keys.reshape(-1), to_host(counts).reshape(-1), rep_start, n_reps
        )
        return draws.reshape((n_reps,) + tuple(counts.shape))

    def _counts(self, counts: np.ndarray, keys: np.ndarray, role: int, r0: int, R: int, unit: np.ndarray | None) -> np.ndarray:
        """The replicates' counts ``n*`` of a grid: the unit-level ones of the online side
        when there are any, else Poisson(n) per cell."""
        if unit is None or role != ROLE_ONLINE:
            return self._poisson(counts, keys, role, r0, R)
        star = unit[r0 : r0 + R]
        if star.shape[1:] != counts.shape:
            raise ValueError(f"Unit-level replicate counts of shape {star.shape[1:]} for a grid of shape {counts.shape}.")
        return self._on_xp(star)

    def _normal(self, keys: np.ndarray, role: int, rep_start: int, n_reps: int):
        z = self._draws(self.kernels.normal_cells, self.seed, role, keys.reshape(-1), rep_start, n_reps)
        return z.reshape((n_reps,) + keys.shape)

    def _sum_star(self, n_star, count, total, total_sq, z, root=None):
        """``n* mean + sqrt(n*) sd Z`` per cell (0 where the cell is empty); ``root``:
        ``sqrt(n*)`` where the caller has it (the calibration sums share one)."""
        xp = self.xp
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = xp.where(count > 0, total / xp.maximum(count, 1), 0.0)
            var = xp.where(count > 0, total_sq / xp.maximum(count, 1) - mean * mean, 0.0)
        sd = xp.sqrt(xp.maximum(var, 0.0))
        # (sqrt(n*) sd) Z + n* mean, with no temporary more than needed
        out = (xp.sqrt(n_star) if root is None else root) * sd
        out *= z
        out += n_star * mean
        return out

    def _calib_star(self, score_star, calib: dict, grid: str, role: int, r0: int, R: int):
        xp = self.xp
        count = aggregate_bins(score_star, self._coarse_to_calib, self._n_calib)
        root = xp.sqrt(count)
        z = self._normal(cell_keys(self.slice_keys, grid, calib["count"].shape[1:]), role, r0, R)
        sign = xp.asarray([1.0, -1.0, 1.0])[:, None]  # log-loss term falls with p for positives
        c = calib["count"]
        p = self._sum_star(count, c, calib["p"], calib["p2"], z, root)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_p = xp.where(c > 0, calib["p"] / xp.maximum(c, 1), 0.0)
            var_p = xp.where(c > 0, calib["p2"] / xp.maximum(c, 1) - mean_p**2, 0.0)
        # sd of p^2 by the delta method (the fourth moment is not stored)
        p2_sd_sq = (2.0 * mean_p) ** 2 * xp.maximum(var_p, 0.0)
        p2_mean = xp.where(c > 0, calib["p2"] / xp.maximum(c, 1), 0.0)
        p2 = root * xp.sqrt(p2_sd_sq)
        p2 *= z
        p2 += count * p2_mean
        ll = self._sum_star(count, c, calib["ll"], calib["ll2"], z * sign, root)
        return {"count": count, "p": p, "p2": p2, "ll": ll}

    def resample(self, g: Grids, role: int, rep_start: int, n_reps: int, need: ME.Need = ME.ALL) -> Grids:
        """``n_reps`` replicates of coarse grids ``g``, with a leading replicate axis (of the
        grids the metrics ``need`` asks for read; each cell's draw is the same either way),
        as arrays of :attr:`xp`."""
        sk, r0, R = self.slice_keys, rep_start, n_reps
        u = self.unit if role == ROLE_ONLINE else None
        # the sums' statistics where the draws are (the counts go to the kernels as they are)
        g = dataclasses.replace(
            g, calib=self._on_xp(g.calib), calib_off=self._on_xp(g.calib_off), delta=self._on_xp(g.delta),
            value=self._on_xp(g.value),
        )

        def unit(name: str, j: int | None = None) -> np.ndarray | None:
            # the online side's unit-level counts of a grid (a grid without them is a bug)
            if u is None:
                return None
            arr = getattr(u, name)
            if arr is None:
                raise ValueError(f"The unit-level replicate counts lack the '{name}' grid.")
            return arr[j] if j is not None else arr

        score = self._counts(g.score, cell_keys(sk, "score", g.score.shape[1:]), role, r0, R, unit("score"))
        out = Grids(
            score=score,
            calib=self._calib_star(score, g.calib, "calib", role, r0, R) if need.performance("online") else None,
            features=[
                self._counts(f, cell_keys(sk, "feature", f.shape[1:], sub=j), role, r0, R, unit("features", j))
                if need.drift(self.layout.features[j].name) else None
                for j, f in enumerate(g.features)
            ],
        )
        if g.offline is not None and need.performance("offline"):
            off = self._counts(g.offline, cell_keys(sk, "offline", g.offline.shape[1:]), role, r0, R, unit("offline"))
            out.offline = off
            out.calib_off = self._calib_star(off, g.calib_off, "calib_off", role, r0, R)
        if g.offline is not None and need.skew():
            out.joint = self._counts(g.joint, cell_keys(sk, "joint", g.joint.shape[1:]), role, r0, R, unit("joint"))
            dkeys = cell_keys(sk, "delta", g.delta[0].shape[1:])
            n_star = self._counts(g.delta[0], dkeys, role, r0, R, unit("delta", 0))
            z = self._normal(dkeys, role, r0, R)
            out.delta = (n_star, self._sum_star(n_star, *g.delta, z), None)
        if g.value is not None and need.performance("online"):
            vkeys = cell_keys(sk, "value", g.value[0].shape[1:])
            n_star = self._counts(g.value[0], vkeys, role, r0, R, unit("value", 0))
            out.value = (n_star, self._sum_star(n_star, *g.value, self._normal(vkeys, role, r0, R)), None)
        return out

    # ------------------------------------------------------------------ all metrics
    def _chunk(self, coarse: Grids) -> int:
        elements = CHUNK_ELEMENTS_ON_DEVICE if self.on_device else CHUNK_ELEMENTS
        return self.chunk or int(np.clip(elements // max(1, coarse.score.size), 20, 1000))

    def baseline_draws(self, baseline: Grids, need: ME.Need = ME.ALL) -> "BaselineDraws":
        """The baseline's side of :meth:`run`, drawn once: checks of several online grids
        against one baseline (the time windows) share it, as they share the baseline's
        sample."""
        layout, res = self.layout, self.coarse_res
        c_base = self.coarsen(baseline)
        # the drift metrics need the baseline's replicate grids; its own metrics, performance
        base_need = need.of_baseline()
        fine = ME.measure(baseline, None, self.fine, layout, base_need)
        coarse = ME.measure(c_base, None, res, layout, base_need)
        chunk = self._chunk(c_base)
        stars = []
        for r0 in range(0, self.B, chunk):
            star = self.resample(c_base, ROLE_BASELINE, r0, min(chunk, self.B - r0), _union(need, base_need))
            # the grids stay where they were drawn (the online drift metrics read them), the
            # metric values come back
            stars.append((star, _to_host(ME.measure(star, None, res, layout, base_need))))
        return BaselineDraws(c_base, fine, coarse, chunk, stars)

    def run(
        self,
        online: Grids,
        baseline: Grids | None,
        shared: "BaselineDraws | None" = None,
        fine_online: dict | None = None,
        need: ME.Need = ME.ALL,
    ) -> Replicates:
        """Replicates of every metric of ``measure``, shifted onto the fine point estimates.

        Online metrics (drift included, which resamples both sides) come in
        ``Replicates.online``; the baseline's own performance metrics in ``.baseline``.
        ``shared``: the baseline's draws from :meth:`baseline_draws` (of ``baseline``, with
        this bootstrap's ``B``), reused instead of drawn again; ``fine_online``: the online
        metrics on the fine grid (``measure(online, baseline)``), when the caller has them;
        ``need``: only the metric groups it asks for (``shared`` drawn for at least those).
        """
        layout, res = self.layout, self.coarse_res
        if baseline is not None and shared is None:
            shared = self.baseline_draws(baseline, need)
        c_on = self.coarsen(online)
        c_base = shared.coarse if shared is not None else None
        fine_on = ME.measure(online, baseline, self.fine, layout, need) if fine_online is None else fine_online
        coarse_on = ME.measure(c_on, c_base, res, layout, need)
        fine_base = shared.fine if shared is not None else {}
        coarse_base = shared.coarse_values if shared is not None else {}
        reps_on: dict[MetricKey, list] = {k: [] for k in fine_on}
        reps_base: dict[MetricKey, list] = {k: [] for k in fine_base}
        chunk = shared.chunk if shared is not None else self._chunk(c_on)
        for i, r0 in enumerate(range(0, self.B, chunk)):
            R = min(chunk, self.B - r0)
            star_on = self.resample(c_on, ROLE_ONLINE, r0, R, need)
            star_base, m_base = shared.stars[i] if shared is not None else (None, None)
            m_on = _to_host(ME.measure(star_on, star_base, res, layout, need))  # what comes back
            for k in reps_on:
                reps_on[k].append(m_on[k] - coarse_on[k][None] + fine_on[k][None])
            if m_base is not None:
                for k in reps_base:
                    reps_base[k].append(m_base[k] - coarse_base[k][None] + fine_base[k][None])
        return Replicates(
            online={k: np.concatenate(v) for k, v in reps_on.items()},
            baseline={k: np.concatenate(v) for k, v in reps_base.items()},
        )


def _to_host(values: dict) -> dict:
    """Metric values (per replicate) as numpy arrays: the small result that comes back."""
    return {k: to_host(v) for k, v in values.items()}


def _union(a: ME.Need, b: ME.Need) -> ME.Need:
    return ME.ALL if a.keys is None or b.keys is None else ME.Need(a.keys | b.keys)


@dataclass
class BaselineDraws:
    """The baseline's side of a :class:`CellBootstrap`: its coarse grids, metrics (fine and
    coarse) and replicates, chunk by chunk (``stars``: grids and their metrics)."""

    coarse: Grids
    fine: dict
    coarse_values: dict
    chunk: int
    stars: list

    def repeated(self, times: int) -> "BaselineDraws":
        """The same draws for ``times`` copies of the slices laid one after the other (the
        windows judged at once all compare with one baseline sample): the metric values
        repeated, the grids as they are (``measure`` compares blocks of online slices with
        them, computing the baseline's side once)."""
        stack = ME.stack_slices
        return BaselineDraws(
            self.coarse,
            stack([self.fine] * times),
            stack([self.coarse_values] * times),
            self.chunk,
            [(g, stack([m] * times, axis=1)) for g, m in self.stars],
        )


# ---------------------------------------------------------------------- intervals
def percentile_interval(reps: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, ignoring NaN replicates (undefined in a replicate).

    Columns without NaN take ``np.quantile`` (vectorised), the others ``np.nanquantile``:
    ``np.nanquantile`` over the whole array loops over the columns in Python as soon as one of
    them holds a NaN (and its numbers then depend, in the last bit, on whether another column
    does); this way each column's interval depends on that column only.
    """
    alpha = (1.0 - level) / 2.0
    reps = np.asarray(reps, dtype=np.float64)
    if reps.ndim == 0 or reps.shape[0] == 0:
        nan = np.full(reps.shape[1:], np.nan)
        return nan, nan.copy()
    flat = reps.reshape(reps.shape[0], -1)
    lo = np.empty(flat.shape[1])
    hi = np.empty(flat.shape[1])
    has_nan = np.isnan(flat).any(0)
    clean = ~has_nan
    # both ends in one call: one partition of each column (the same numbers as two calls);
    # no copy of the replicates where every column is clean (the common case)
    if clean.all():
        lo[:], hi[:] = np.quantile(flat, [alpha, 1.0 - alpha], axis=0)
    elif clean.any():
        lo[clean], hi[clean] = np.quantile(flat[:, clean], [alpha, 1.0 - alpha], axis=0)
    if has_nan.any():
        with np.errstate(all="ignore"), quiet_runtime_warnings():
            lo[has_nan], hi[has_nan] = np.nanquantile(flat[:, has_nan], [alpha, 1.0 - alpha], axis=0)
    return lo.reshape(reps.shape[1:]), hi.reshape(reps.shape[1:])


def standard_error(reps: np.ndarray) -> np.ndarray:
    """Bootstrap standard error over axis 0, ignoring NaN replicates: ``np.nanstd(reps,
    axis=0, ddof=1)``; replicates without any NaN (most of them) skip its NaN bookkeeping,
    with its arithmetic step for step (the same numbers, in a third of the time)."""
    reps = np.asarray(reps, dtype=np.float64)
    if reps.ndim > 0 and reps.shape[0] >= 2 and not np.isnan(reps).any():
        return _clean_std(reps)
    # (a subset of the columns would not do: numpy sums one column alone in another order)
    with quiet_runtime_warnings():
        return np.nanstd(reps, axis=0, ddof=1)


def _clean_std(reps: np.ndarray) -> np.ndarray:
    """``np.nanstd(reps, axis=0, ddof=1)`` of replicates without NaN (at least 2): numpy's
    ``nanvar`` steps (sum, divide by the count, subtract, square, sum, divide by count - 1,
    square root) without the mask, on the same memory layout."""
    count = np.intp(reps.shape[0])
    mean = np.true_divide(np.sum(reps, axis=0, keepdims=True), count)
    dev = np.subtract(reps, mean)
    np.multiply(dev, dev, out=dev)
    return np.sqrt(np.true_divide(np.sum(dev, axis=0), count - 1))


def clopper_pearson_degenerate(k: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact intervals for the degenerate cases ``k == 0`` and ``k == n`` (closed form).

    ``k == 0``: ``[0, 1 - (alpha/2)**(1/n)]``; ``k == n``: ``[(alpha/2)**(1/n), 1]``.
    Elsewhere NaN (use the bootstrap), and NaN at both ends without rows (``n == 0``).
    """
    alpha = 1.0 - level
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        edge = np.where(n > 0, (alpha / 2.0) ** (1.0 / np.where(n > 0, n, 1.0)), np.nan)
    lo = np.where(n > 0, np.where(k == 0, 0.0, np.where(k == n, edge, np.nan)), np.nan)
    hi = np.where(n > 0, np.where(k == 0, 1.0 - edge, np.where(k == n, 1.0, np.nan)), np.nan)
    return lo, hi


_LGAMMA = np.vectorize(math.lgamma, otypes=[np.float64])


def _log_beta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _LGAMMA(a) + _LGAMMA(b) - _LGAMMA(a + b)


def _beta_cf(a: np.ndarray, b: np.ndarray, x: np.ndarray, max_iter: int = 2000) -> np.ndarray:
    """The continued fraction of the incomplete beta function (modified Lentz), elementwise.

    Converges fast for ``x < (a + 1) / (a + b + 2)`` (a few dozen terms near the 2.5 % and
    97.5 % quantiles, even for ``a`` and ``b`` in the billions). Each value stops at its own
    convergence, so it does not depend on the other values of the batch.
    """
    a, b, x = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, b, x)))
    out = np.empty(x.shape, dtype=np.float64)
    _beta_cf_kernel(a.ravel(), b.ravel(), x.ravel(), max_iter, out.reshape(-1))
    return out


@numba.njit(cache=True, nogil=True)
def _beta_cf_kernel(a, b, x, max_iter, out):  # pragma: no cover - compiled
    tiny = 1e-300
    for i in range(x.size):
        ai, bi, xi = a[i], b[i], x[i]
        qab, qap, qam = ai + bi, ai + 1.0, ai - 1.0
        c = 1.0
        d = 1.0 - qab * xi / qap
        d = 1.0 / (tiny if abs(d) < tiny else d)
        h = d
        for m in range(1, max_iter + 1):
            m2 = 2.0 * m
            step = 1.0
            for half in range(2):
                if half == 0:
                    aa = m * (bi - m) * xi / ((qam + m2) * (ai + m2))
                else:
                    aa = -(ai + m) * (qab + m) * xi / ((ai + m2) * (qap + m2))
                d = 1.0 + aa * d
                d = 1.0 / (tiny if abs(d) < tiny else d)
                c = 1.0 + aa / c
                c = tiny if abs(c) < tiny else c
                step = d * c
                h = h * step
            if abs(step - 1.0) < 1e-13:  # rounding noise is ~1e-12 for b ~ 1e9
                break
        out[i] = h


def _beta_cdf(x: np.ndarray, a: np.ndarray, b: np.ndarray, log_beta: np.ndarray) -> np.ndarray:
    """The regularized incomplete beta function ``I_x(a, b)`` for ``0 < x < 1``."""
    swap = x > (a + 1.0) / (a + b + 2.0)
    a2, b2 = np.where(swap, b, a), np.where(swap, a, b)
    x2 = np.where(swap, 1.0 - x, x)
    with np.errstate(divide="ignore", under="ignore"):
        front = np.exp(a2 * np.log(x2) + b2 * np.log1p(-x2) - log_beta) / a2
    value = front * _beta_cf(a2, b2, x2)
    return np.where(swap, 1.0 - value, value)


def _beta_ppf(q: float | np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The ``q`` quantile of Beta(a, b), ``a, b > 0`` (``q``: one, or one per value).

    Newton's method on ``log x`` from a logit-normal start, kept inside a bracket (a step
    that leaves it is replaced by a geometric bisection), iterating only on the values not yet
    converged: a few steps each, also for tiny rates over billions of rows.
    """
    from statistics import NormalDist

    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    q = np.broadcast_to(np.asarray(q, dtype=np.float64), a.shape)
    log_beta = _log_beta(a, b)
    inv_cdf = {v: NormalDist().inv_cdf(v) for v in np.unique(q).tolist()}
    z = np.array([inv_cdf[v] for v in q.tolist()], dtype=np.float64)
    x = 1.0 / (1.0 + np.exp(-(np.log(a / b) + z * np.sqrt(1.0 / a + 1.0 / b))))
    x = np.clip(x, 1e-300, 1.0 - 1e-16)
    lo, hi = np.zeros_like(a), np.ones_like(a)
    active = np.arange(a.size)
    for _ in range(200):
        if active.size == 0:
            break
        xa, aa, ba, lb = x[active], a[active], b[active], log_beta[active]
        f = _beta_cdf(xa, aa, ba, lb) - q[active]
        la = np.where(f < 0, xa, lo[active])
        ha = np.where(f >= 0, xa, hi[active])
        lo[active], hi[active] = la, ha
        with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
            # d I / d log x = x * pdf(x)
            slope = np.exp(aa * np.log(xa) + (ba - 1.0) * np.log1p(-xa) - lb)
            new = xa * np.exp(-f / slope)
        fallback = np.where(la > 0, np.where(ha < 1.0, np.sqrt(la * ha), 1.0 - 0.1 * (1.0 - la)), 0.1 * ha)
        new = np.where((new > la) & (new < ha), new, fallback)
        x[active] = new
        active = active[np.abs(new - xa) > 1e-12 * xa]
    return x


def rate_interval(k: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Interval of a proportion ``k / n``: Jeffreys, or Clopper-Pearson where ``k`` is 0 or ``n``.

    The Jeffreys interval is the equal-tailed ``level`` interval of Beta(k + 1/2, n - k + 1/2)
    (Brown, Cai & DasGupta 2001); unlike the percentile interval of a bootstrapped rate, its
    two tails stay balanced with few events (see the module docstring). ``k`` is rounded to
    an integer; NaN where ``n <= 0``.
    """
    alpha = 1.0 - level
    k = np.rint(np.asarray(k, dtype=np.float64))
    n = np.asarray(n, dtype=np.float64)
    k, n = np.broadcast_arrays(k, n)
    lo = np.full(k.shape, np.nan)
    hi = np.full(k.shape, np.nan)
    inner = (n > 0) & (k > 0) & (k < n)
    if inner.any():
        # each distinct (k, n) once (stacked time windows repeat the baseline's counts; a
        # value's quantile depends on its own (a, b) only), both ends in one call
        pairs, back = np.unique(np.stack([k[inner], n[inner]], axis=1), axis=0, return_inverse=True)
        a, b = pairs[:, 0] + 0.5, pairs[:, 1] - pairs[:, 0] + 0.5
        q = np.repeat([alpha / 2.0, 1.0 - alpha / 2.0], a.size)
        ends = _beta_ppf(q, np.tile(a, 2), np.tile(b, 2)).reshape(2, -1)
        lo[inner], hi[inner] = ends[0][back.ravel()], ends[1][back.ravel()]
    edge = (n > 0) & ((k == 0) | (k == n))
    if edge.any():
        cl, ch = clopper_pearson_degenerate(k[edge], n[edge], level)
        lo[edge], hi[edge] = cl, ch
    return lo, hi


def rate_difference_interval(
    k_on: np.ndarray,
    n_on: np.ndarray,
    k_base: np.ndarray,
    n_base: np.ndarray,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Interval of ``k_on / n_on - k_base / n_base`` for independent samples.

    MOVER (Newcombe 1998; Zou & Donner 2008) on the :func:`rate_interval` of each side::

        lo = d - sqrt((p_on - l_on)**2 + (u_base - p_base)**2)
        hi = d + sqrt((u_on - p_on)**2 + (p_base - l_base)**2)

    NaN where either denominator is 0.
    """
    k_on, n_on = np.rint(np.asarray(k_on, dtype=np.float64)), np.asarray(n_on, dtype=np.float64)
    k_base, n_base = np.rint(np.asarray(k_base, dtype=np.float64)), np.asarray(n_base, dtype=np.float64)
    k_on, n_on, k_base, n_base = np.broadcast_arrays(k_on, n_on, k_base, n_base)
    # both sides in one call
    lows, ups = rate_interval(np.stack([k_on, k_base]), np.stack([n_on, n_base]), level)
    (l_on, l_b), (u_on, u_b) = lows, ups
    with np.errstate(divide="ignore", invalid="ignore"):
        p_on = np.where(n_on > 0, k_on / np.where(n_on > 0, n_on, 1.0), np.nan)
        p_b = np.where(n_base > 0, k_base / np.where(n_base > 0, n_base, 1.0), np.nan)
    d = p_on - p_b
    lo = d - np.sqrt((p_on - l_on) ** 2 + (u_b - p_b) ** 2)
    hi = d + np.sqrt((u_on - p_on) ** 2 + (p_b - l_b) ** 2)
    return lo, hi


def norm_sf(z):
    """Standard normal upper tail ``P(Z > z)`` through erfc: accurate far in the tail (tiny
    p-values stay positive), for a float or an array."""
    if np.ndim(z) == 0:  # the verdicts' one test at a time: the same arithmetic, no vectorize
        return 0.5 * math.erfc(float(z) / math.sqrt(2.0))
    return 0.5 * np.vectorize(math.erfc, otypes=[np.float64])(np.asarray(z, dtype=np.float64) / math.sqrt(2.0))


@dataclass
class DifferenceTest:
    """Interval and one-sided p-value of ``online - baseline`` (or ``value - expected``)."""

    diff: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    se: np.ndarray
    p_value: np.ndarray


def difference_test(
    diff: np.ndarray,
    diff_reps: np.ndarray,
    tolerance: np.ndarray,
    bad: str,
    level: float = 0.95,
    floor_se: np.ndarray | None = None,
) -> DifferenceTest:
    """Percentile interval of a difference and the one-sided p-value of exceeding tolerance.

    H0 is "the divergence in the bad direction is within tolerance": for ``increase``,
    ``diff <= tol``; for ``decrease``, ``diff >= -tol``; for ``either``, ``|diff| <= tol``
    (the smaller of the two one-sided p-values). The p-value is ``P(Z > (diff - tol) / se)``
    with the bootstrap standard error, so it is not floored at 1 / (B + 1).

    Parameters
    ----------
    diff : (...) point difference.
    diff_reps : (B, ...) replicates of the difference.
    tolerance : (...) absolute tolerance (relative ones already scaled).
    floor_se : optional (...) lower bound of the standard error (exact-interval cases).
    """
    lo, hi = percentile_interval(diff_reps, level)
    se = standard_error(diff_reps)
    if floor_se is not None:
        se = np.fmax(se, floor_se)
    return DifferenceTest(np.asarray(diff), lo, hi, se, one_sided_p_value(diff, tolerance, se, bad))


def one_sided_p_value(diff, margin, se, bad: str):
    """P-value of H0 "the divergence in the bad direction is within ``margin``".

    ``P(Z > (diff - margin) / se)`` for ``increase``, ``P(Z > (-margin - diff) / se)`` for
    ``decrease``, the smaller of the two for ``either``; float or array. The verdicts
    (``engine.compare``) and :func:`difference_test` both use it.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        z_up = (diff - margin) / se
        z_down = (-margin - diff) / se
    p_up, p_down = norm_sf(z_up), norm_sf(z_down)
    if bad == "increase":
        return p_up
    if bad == "decrease":
        return p_down
    return np.fmin(p_up, p_down)


def benjamini_hochberg(p_values: np.ndarray, q: float = 0.05) -> np.ndarray:
    """Which tests survive the Benjamini-Hochberg procedure at FDR ``q`` (NaN never does)."""
    p = np.asarray(p_values, dtype=np.float64).ravel()
    ok = ~np.isnan(p)
    m = int(ok.sum())
    survive = np.zeros(p.shape, dtype=bool)
    if m == 0:
        return survive.reshape(np.shape(p_values))
    idx = np.nonzero(ok)[0]
    order = idx[np.argsort(p[idx], kind="stable")]
    ranked = p[order]
    passing = np.nonzero(ranked <= q * np.arange(1, m + 1) / m)[0]
    if passing.size:
        survive[order[: passing.max() + 1]] = True
    return survive.reshape(np.shape(p_values))


# ---------------------------------------------------------------------- drift under H0
@dataclass
class DriftNull:
    """The null distributions of the drift statistics at each slice's two sample sizes.

    ``replicates[key]`` is ``(B, S)``: draws of KS or Wasserstein between two samples of the
    slice's online and baseline sizes from one distribution (the baseline's);
    ``expected[key]`` is ``(S,)``: the null expectation (the mean of those draws, or the
    analytic value for JS).
    """

    replicates: dict = field(default_factory=dict)
    expected: dict = field(default_factory=dict)


#: Least number of draws of each drift statistic's null distribution.
NULL_DRAWS = 2000


_BRIDGE_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _bridge_functionals(p: np.ndarray, widths: np.ndarray, replicates: int, seed: int, key: int):
    """Memoised :func:`_draw_bridge_functionals`: the windows of a check share one baseline,
    hence one bridge per statistic."""
    ident = (int(seed), int(key), int(replicates), hashlib.sha1(p.tobytes()).digest(), hashlib.sha1(widths.tobytes()).digest())
    hit = _BRIDGE_CACHE.get(ident)
    if hit is None:
        if len(_BRIDGE_CACHE) > 64:
            _BRIDGE_CACHE.clear()
        hit = _BRIDGE_CACHE[ident] = _draw_bridge_functionals(p, widths, replicates, seed, key)
    return hit


def _draw_bridge_functionals(p: np.ndarray, widths: np.ndarray, replicates: int, seed: int, key: int):
    """``sup |B|`` and ``integral |B|`` of ``replicates`` Brownian bridges on the binned CDF ``p``.

    The increments of ``sqrt(n) (F_n - F)`` over bins are multinomial, asymptotically
    ``sqrt(p_i) Z_i - p_i sum_j sqrt(p_j) Z_j``; their cumulative sums are the bridge at the
    bin edges. The integral uses the trapezoid rule on the edges, as the Wasserstein
    distance of :func:`engine.metrics.wasserstein_distance` does. Drawn on the host with
    numpy's PCG64 keyed by (seed, key): the same numbers on every backend.
    """
    rng = np.random.Generator(np.random.PCG64([int(seed) & 0xFFFFFFFF, int(key) & 0xFFFFFFFFFFFFFFFF]))
    sp = np.sqrt(p)
    sup = np.empty(replicates)
    integral = np.empty(replicates)
    step = max(1, 2_000_000 // max(1, p.size))
    for r0 in range(0, replicates, step):
        z = rng.standard_normal((min(step, replicates - r0), p.size))
        cum = np.cumsum(sp * z - p * (z @ sp)[:, None], axis=1)
        d = np.abs(np.concatenate([np.zeros((cum.shape[0], 1)), cum], axis=1))
        sup[r0 : r0 + cum.shape[0]] = d.max(axis=1)
        integral[r0 : r0 + cum.shape[0]] = (0.5 * (d[:, 1:] + d[:, :-1]) * widths).sum(axis=1)
    return sup, integral


def _spread(counts: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """``integral sqrt(F (1 - F))`` per row of ``counts`` (the scale of integral |B(F)|)."""
    total = counts.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        cdf = np.cumsum(counts, -1) / total
        mid = 0.5 * (cdf + np.concatenate([np.zeros_like(cdf[..., :1]), cdf[..., :-1]], -1))
    return (np.sqrt(np.clip(mid * (1 - mid), 0, None)) * widths).sum(-1)


def _js_null(base_counts: np.ndarray, inv_eff: np.ndarray) -> np.ndarray:
    """``(k - 1) (1 / n_on + 1 / n_base) / (8 ln 2)``, ``k`` the occupied baseline bins."""
    k = (base_counts > 0).sum(-1)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(inv_eff), np.maximum(k - 1, 0) * inv_eff, np.nan) / (8 * math.log(2))


def drift_null(
    online: Grids, baseline: Grids, layout: Layout, replicates: int, seed: int
) -> DriftNull:
    """Null distributions of KS and Wasserstein, and the null expectation of JS.

    Under H0 (online and baseline rows from one distribution) ``sqrt(n_eff) KS`` tends to
    ``sup |B(F)|`` and ``sqrt(n_eff) W`` to ``integral |B(F(x))| dx`` for a Brownian bridge
    ``B``, with ``n_eff = n_on n_base / (n_on + n_base)``: both samples' noise, not only the
    online side's. The bridge is drawn once per statistic on the population baseline's
    binned CDF (which carries the discreteness of the bins) and scaled to each slice by
    ``n_eff`` and, for Wasserstein, by the slice's ``integral sqrt(F (1 - F))``. JS divergence
    (bits) between two such multinomial samples has expectation
    ``(k - 1) (1 / n_on + 1 / n_base) / (8 ln 2)`` over its ``k`` occupied bins.
    """
    fine = ME.fine_resolution(layout)
    out = DriftNull()
    items = [("score", online.score.sum(-2), baseline.score.sum(-2), np.diff(fine.score_edges), fine.js_map)]
    for j, f in enumerate(layout.features):
        if f.kind != "numeric":
            continue
        base_v = ME._feature_values_only(baseline.features[j], f)
        on_v = ME._feature_values_only(online.features[j], f)
        items.append((f.name, on_v, base_v, np.diff(ME._baseline_quantile_edges(base_v)), None))
    for name, on, base, widths, js_map in items:
        on = np.asarray(on, dtype=np.float64)
        base = np.asarray(base, dtype=np.float64)
        n_on, n_base = on.sum(-1), base.sum(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_eff = 1.0 / n_on + 1.0 / n_base
        pop = base[0]
        if pop.sum() <= 0:
            continue
        p = pop / pop.sum()
        # the null's tails need more draws than a bootstrap of B = 200 gives (its 2.5%
        # quantiles would be the 5th draw): drawing the bridge is cheap
        draws = max(int(replicates), NULL_DRAWS)
        sup, integral = _bridge_functionals(p, widths, draws, seed, stable_key(f"drift-null:{name}"))
        # a slice without rows on a side has no null (its tests are insufficient): 0
        scale = np.where(np.isfinite(inv_eff), np.sqrt(np.where(np.isfinite(inv_eff), inv_eff, 0.0)), 0.0)
        spread = _spread(base, widths)
        with np.errstate(divide="ignore", invalid="ignore"):
            w_scale = np.where(spread[0] > 0, scale * spread / spread[0], 0.0)
            w_scale = np.where(np.isfinite(w_scale), w_scale, 0.0)
        # Stephens' (1970) finite-sample correction of the KS scale: sqrt(n) -> sqrt(n) + 0.12
        # + 0.11 / sqrt(n); the asymptotic scale overstates the null at a few hundred rows
        with np.errstate(divide="ignore", invalid="ignore"):
            root = np.where(scale > 0, 1.0 / scale, np.inf)
            ks_scale = np.where(scale > 0, 1.0 / (root + 0.12 + 0.11 / root), 0.0)
        out.replicates[("ks", None, name)] = sup[:, None] * ks_scale[None, :]
        out.replicates[("wasserstein", None, name)] = integral[:, None] * w_scale[None, :]
        for key in (("ks", None, name), ("wasserstein", None, name)):
            out.expected[key] = out.replicates[key].mean(axis=0)
        if js_map is not None:  # the score's JS: on the coarse bins
            out.expected[("js_divergence", None, name)] = _js_null(
                aggregate_bins(base, js_map, int(js_map.max()) + 1), inv_eff
            )
    for j, f in enumerate(layout.features):  # features' JS: on the PSI bins
        m = fine.feature_psi_maps[j]
        base = aggregate_bins(np.asarray(baseline.features[j], dtype=np.float64), m, int(m.max()) + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_eff = 1.0 / np.asarray(online.features[j], dtype=np.float64).sum(-1) + 1.0 / base.sum(-1)
        out.expected[("js_divergence", None, f.name)] = _js_null(base, inv_eff)
    return out
