"""``parity check --bootstrap-unit COL``: the unit-level bootstrap wired into the check.

The accumulator's per-row coarse cells against the statistics' coarse grids, the CUDA path
(under the simulator) against the CPU, the replicates' statistics on iid and on clustered
rows, and the check end to end: identical findings for any batch size and partitioning, the
run record, and a missing column as a usage error.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine import measure as ME
from engine.bootstrap import CellBootstrap, percentile_interval
from engine.config import Config
from engine.encode import LayoutBuilder
from engine.expectation import build_baseline
from engine.pipeline import run_check
from engine.synthetic import generate
from engine.unit_bootstrap import UnitAccumulator, UnitSpec, take_replicates
from kernels import gpu_problem
from kernels.cpu import CpuKernels
from kernels.cuda import CudaKernels
from test_accumulate_paths import _table, build_layout
from test_cli import parity, python_c, usage_error

CPU = CpuKernels()
KEY = ("positive_rate", "online", None)


class _WeightOne(CpuKernels):
    """Every unit weight 1: the unit-level counts must then be the statistics' own."""

    def unit_histogram(self, seed, unit_ids, cells, n_cells, rep_start, n_reps, out=None):
        cells = np.atleast_2d(cells)
        counts = np.bincount(cells[cells >= 0], minlength=n_cells).astype(np.int64)
        counts = np.repeat(counts[None], n_reps, axis=0)
        if out is None:
            return counts
        out += counts
        return out


def _with_users(table: pa.Table, users: int, seed: int = 0) -> pa.Table:
    ids = np.random.default_rng(seed).integers(0, users, table.num_rows)
    return table.append_column("user_id", pa.array([f"u{i}" for i in ids]))


@pytest.fixture(scope="module")
def layout():
    return build_layout(5_000)


@pytest.mark.parametrize("paired,with_value", [(True, True), (False, False)])
def test_row_cells_are_the_coarse_grids(layout, paired, with_value):
    """With every weight 1 the unit-level counts equal ``CellBootstrap.coarsen`` of the
    accumulated statistics, on every grid and slice (crosses, NaN and invalid scores and
    labels, unseen values and missing features included)."""
    batch = _with_users(_table(3_000, 2), 50).to_batches()[0]
    spec = UnitSpec("user_id", replicates=2, seed=0)
    acc = UnitAccumulator(layout, _WeightOne(), unit=spec, paired=paired, with_value=with_value)
    stats = acc.update(acc.update(acc.zero(), batch), batch.slice(0, 700))
    unit = take_replicates(stats, layout)
    assert not any(k.startswith("unit/") for k in stats.raw)
    coarse = CellBootstrap(layout, CPU, replicates=2).coarsen(ME.grids_from_statistics(stats, layout))
    assert np.array_equal(unit.score[1], coarse.score)
    assert len(unit.features) == len(coarse.features) == 3
    for u, c in zip(unit.features, coarse.features):
        assert np.array_equal(u[0], c)
    if paired:
        for u, c in ((unit.offline, coarse.offline), (unit.joint, coarse.joint), (unit.delta[0], coarse.delta[0])):
            assert np.array_equal(u[0], c)
    else:
        assert unit.offline is None and unit.joint is None
    if with_value:
        assert np.array_equal(unit.value[0][0], coarse.value[0])


@pytest.mark.cudasim
def test_gpu_counts_equal_the_cpu(layout):
    """The CUDA kernel (the simulator here) gives the CPU's replicate counts bit for bit."""
    batch = _with_users(_table(60, 4), 7).to_batches()[0]
    spec = UnitSpec("user_id", replicates=3, seed=9)
    cpu = UnitAccumulator(layout, CPU, unit=spec, paired=True, with_value=True).unit_counts(batch)
    gpu = UnitAccumulator(layout, CudaKernels(blocks=2, threads=16), unit=spec, paired=True, with_value=True)
    got = gpu.unit_counts(batch)
    assert set(got) == set(cpu) and all(np.array_equal(got[k], cpu[k]) for k in cpu)
    assert sum(int(v.sum()) for v in cpu.values()) > 0


@pytest.mark.cudasim
def test_gpu_keeps_the_counts_on_the_device_across_batches(layout):
    """The accumulate stage on the GPU adds every batch's replicate counts (and statistics)
    on the device; they come back once, equal to the CPU's."""
    batches = _with_users(_table(60, 4), 7).to_batches(max_chunksize=20)
    spec = UnitSpec("user_id", replicates=3, seed=9)
    k = CudaKernels(blocks=2, threads=16)
    k.profile = {}
    acc = UnitAccumulator(layout, k, unit=spec, paired=True)
    stats = acc.zero()
    for b in batches:
        acc.update(stats, b)
    assert stats.on_device and k.profile.get("downloads", 0) == 0
    cpu = UnitAccumulator(layout, CPU, unit=spec, paired=True).accumulate(batches)
    assert stats.equal(cpu) and any(k.startswith("unit/") for k in cpu.raw)
    assert k.profile["downloads"] == 1


def test_batch_size_changes_nothing(layout):
    """A unit's weight depends on (seed, unit id, replicate) only: batches of any size, in
    any order, give the same counts."""
    table = _with_users(_table(2_000, 5), 30)
    spec = UnitSpec("user_id", replicates=20, seed=3)
    acc = UnitAccumulator(layout, CPU, unit=spec, paired=True)
    whole = acc.accumulate(table.to_batches())
    pieces = acc.accumulate(reversed(table.to_batches(max_chunksize=333)))
    assert whole.equal(pieces)


# --------------------------------------------------------------------------- statistics
def _rate_layout():
    """A layout without slices or features (the population only): the simulations' cells."""
    rng = np.random.default_rng(0)
    builder = LayoutBuilder([], {}, [0.5], top_k=4)
    builder.update(pa.table({"score": rng.random(5_000), "label": (rng.random(5_000) < 0.3).astype(float)}))
    return builder.build()


def _reps(layout, table: pa.Table, B: int, seed: int, unit: bool) -> np.ndarray:
    """Bootstrap replicates of the whole population's positive rate."""
    spec = UnitSpec("user_id", replicates=B, seed=seed)
    acc = UnitAccumulator(layout, CPU, unit=spec) if unit else None
    if acc is None:
        from engine.stats import Accumulator

        acc = Accumulator(layout, CPU)
    stats = acc.accumulate(table.to_batches())
    reps = take_replicates(stats, layout) if unit else None
    on = ME.grids_from_statistics(stats, layout)
    boot = CellBootstrap(layout, CPU, replicates=B, seed=seed, unit=reps)
    return boot.run(on, None).online[KEY][:, 0]


def test_iid_units_agree_with_the_cell_level_bootstrap():
    """Each row its own unit: the two bootstraps' spreads of a rate and of the AUC agree
    within Monte Carlo error (B = 2000: the sd of an sd estimate is 1.6%, of their ratio
    2.2%)."""
    layout = _rate_layout()
    rng = np.random.default_rng(1)
    n, B = 4_000, 2_000
    score = rng.random(n)
    label = (rng.random(n) < 0.15 + 0.3 * score).astype(float)
    table = pa.table({"score": score, "label": label, "user_id": np.arange(n)})
    unit, cell = _reps(layout, table, B, 2, True), _reps(layout, table, B, 2, False)
    assert abs(unit.std() / cell.std() - 1) < 0.08, (unit.std(), cell.std())
    assert abs(unit.mean() - cell.mean()) < 4 * cell.std() / np.sqrt(B)


def test_clustered_units_keep_nominal_coverage_where_cells_do_not():
    """100 users x 15 rows, each user's rate from Beta(1.5, 3.5) (mean 0.3): over 200 data
    sets the unit-level 95% interval of the population's positive rate covers 0.3 near
    nominally; the cell-level one, which takes the rows as independent, far less often, and
    it is about half as wide. Through the check's own accumulator and bootstrap."""
    layout = _rate_layout()
    rng = np.random.default_rng(7)
    users, per_user, sims, B = 100, 15, 200, 300
    ids = np.repeat(np.arange(users), per_user)
    covered = {True: 0, False: 0}
    width = {True: [], False: []}
    for s in range(sims):
        p_user = rng.beta(1.5, 3.5, users)
        label = (rng.random(users * per_user) < np.repeat(p_user, per_user)).astype(float)
        table = pa.table({"score": rng.random(users * per_user), "label": label, "user_id": ids})
        for unit in (True, False):
            lo, hi = percentile_interval(_reps(layout, table, B, s, unit)[:, None])
            covered[unit] += bool(lo[0] <= 0.3 <= hi[0])
            width[unit].append(hi[0] - lo[0])
    coverage = {k: v / sims for k, v in covered.items()}
    # binomial sd of a coverage near 0.95 over 200 sets: 1.5%
    assert coverage[True] >= 0.9, coverage
    assert coverage[False] <= 0.85, coverage  # measured: unit 0.955, cell 0.76
    assert np.mean(width[True]) > 1.5 * np.mean(width[False]), (np.mean(width[True]), np.mean(width[False]))
    # and as wide as the sampling spread: var = (Var p_user + E[p (1 - p)] / rows) / users
    a, b = 1.5, 3.5
    var_p = a * b / ((a + b) ** 2 * (a + b + 1))
    within = a / (a + b) * (1 - a / (a + b)) - var_p
    spread = 2 * 1.96 * np.sqrt((var_p + within / per_user) / users)
    assert abs(np.mean(width[True]) / spread - 1) < 0.1, (np.mean(width[True]), spread)


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small synthetic deployment whose online log has a user column (5 rows a user)."""
    root = tmp_path_factory.mktemp("unit")
    sc = generate(root / "data", rows=6_000, seed=21)
    online = pq.read_table(sc.online)
    online = online.append_column("user_id", pa.array(online.column("request_id").to_numpy() // 5))
    pq.write_table(online, root / "online.parquet")
    config = Config(slices=sc.slices, features=sc.features, thresholds=sc.thresholds)
    build_baseline(sc.evaluation, config, out=root / "bl", backend="cpu")
    return root, sc, config


def test_findings_are_identical_for_any_batch_size_and_partitioning(world, tmp_path):
    root, sc, config = world
    kwargs = dict(offline=sc.offline, outcomes=sc.outcomes, bootstrap=100, seed=5, backend="cpu")
    one = run_check(root / "bl", root / "online.parquet", bootstrap_unit="user_id",
                    config=config.with_overrides(bootstrap_unit="user_id"), **kwargs)
    small = run_check(root / "bl", root / "online.parquet", config=config.with_overrides(batch_size=1_111, bootstrap_unit="user_id"), **kwargs)
    parts = run_check(root / "bl", root / "online.parquet", bootstrap_unit="user_id",
                      config=config.with_overrides(partition_rows=2_000), checkpoint=tmp_path / "ck", **kwargs)
    plain = run_check(root / "bl", root / "online.parquet", config=config, **kwargs)
    dicts = [[f.to_dict() for f in r.findings] for r in (one, small, parts)]
    assert dicts[0] == dicts[1] == dicts[2]
    assert parts.run["execution"]["buckets"] > 1
    assert one.run["bootstrap_unit"] == "user_id" and plain.run["bootstrap_unit"] is None
    # the unit-level percentile intervals differ from the cell-level ones (other draws);
    # the values do not (rates keep their binomial interval where it is the wider one)
    def key(f):
        return json.dumps([f.metric, f.scores, f.slice, f.feature, f.threshold], sort_keys=True)

    a = {key(f): f for f in one.findings}
    b = {key(f): f for f in plain.findings}
    assert a.keys() == b.keys()
    assert all(a[k].value == b[k].value or (a[k].value != a[k].value) for k in a)
    boot = [k for k in a if a[k].metric in ("auc", "brier", "mean_abs_delta") and a[k].ci and a[k].ci[0] < a[k].ci[1]]
    same = [(k, a[k].ci) for k in boot if a[k].ci == b[k].ci]
    assert len(boot) > 30 and not same, same
    # the run history keeps no replicate counts
    assert not any(k.startswith("unit/") for k in one.extras["statistics"].raw)


def test_cli_missing_unit_column_is_a_usage_error(world, tmp_path):
    root, sc, _ = world
    proc = parity("check", "--baseline", str(root / "bl"), "--online", str(root / "online.parquet"),
                  "--bootstrap", "20", "--bootstrap-unit", "user", "--quiet")
    message = usage_error(proc, "user", "online.parquet", "--bootstrap-unit")
    assert "user_id" in message  # the close match


def test_cli_records_the_unit(world, tmp_path):
    root, sc, _ = world
    out = tmp_path / "r.json"
    proc = parity("check", "--baseline", str(root / "bl"), "--online", str(root / "online.parquet"),
                  "--outcomes", str(sc.outcomes), "--bootstrap", "20", "--bootstrap-unit", "user_id",
                  "--json", str(out), "--fail-on", "never", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["run"]["bootstrap_unit"] == "user_id"



def test_the_cpu_warns_once_on_stderr(world):
    """Past ``UNIT_COST_WARN`` row-replicates the CPU run prints one warning with the cost
    (not one per batch), and the run goes on."""
    root, sc, _ = world
    code = (
        "import sys, kernels.cpu as k; k.UNIT_COST_WARN = 1000; from engine.cli import app; "
        "sys.argv = ['parity'] + sys.argv[1:]; app()"
    )
    proc = python_c(code, "check", "--baseline", root / "bl", "--online", root / "online.parquet",
                    "--bootstrap", "20", "--bootstrap-unit", "user_id", "--fail-on", "never", "--quiet",
                    "--backend", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if "unit-level bootstrap" in x]
    assert len(lines) == 1 and "parity: warning:" in lines[0], proc.stderr
    assert "6,000 rows x 20 replicates" in lines[0]


@pytest.mark.cudasim
@pytest.mark.skipif(gpu_problem() is not None, reason="no CUDA device or simulator")
def test_the_check_gives_identical_replicates_on_both_backends(monkeypatch):
    """``--bootstrap-unit`` end to end on the GPU backend (the simulator here: its fused
    accumulation, device join and unit kernel) and on the CPU: identical unit-level
    replicate counts and findings."""
    import engine.pipeline
    from test_backends import _tables

    taken = []

    def take(stats, layout):
        taken.append(take_replicates(stats, layout))
        return taken[-1]

    monkeypatch.setattr(engine.pipeline, "take_replicates", take)

    evaluation, online, offline, outcomes = _tables(300)
    # few online rows and replicates: the simulator runs an atomic add in about a millisecond
    online = online.slice(0, 60)
    online = online.append_column("user", pa.array(online.column("request_id").to_numpy() // 4))
    config = Config(slices=["country"], features={"f1": "numeric", "channel": "categorical"}, thresholds=[0.3, 0.6])
    bl = build_baseline(evaluation, config, backend="cpu")
    kwargs = dict(offline=offline, outcomes=outcomes, bootstrap=6, seed=3, bootstrap_unit="user")
    a = run_check(bl, online, backend="cpu", **kwargs)
    b = run_check(bl, online, backend="gpu", **kwargs)
    assert b.run["backend"] == "gpu" and b.run["bootstrap_unit"] == "user"
    assert [f.to_dict() for f in a.findings] == [f.to_dict() for f in b.findings]
    cpu, gpu = taken
    for name in ("score", "offline", "joint"):
        assert np.array_equal(getattr(cpu, name), getattr(gpu, name)) and getattr(cpu, name).sum() > 0
    assert np.array_equal(cpu.delta[0], gpu.delta[0])
    assert all(np.array_equal(x, y) for x, y in zip(cpu.features, gpu.features)) and len(cpu.features) == 2
