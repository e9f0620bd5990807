"""The same inputs and seed give the same result on every backend.

The CUDA path runs here under Numba's CUDA simulator (tests/conftest.py), through the
fused CUDA kernel (``kernels.cuda._fused``) and the draw kernels; the CPU path through the
fused one-pass Numba kernel. Statistics must be bit-identical and the findings identical.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from engine.config import Config
from engine.expectation import build_baseline
from engine.pipeline import run_check
from kernels import gpu_problem

pytestmark = pytest.mark.cudasim


def _tables(n: int = 400):
    def make(seed: int) -> pa.Table:
        r = np.random.default_rng(seed)
        p = r.beta(1, 5, n)
        p[:3] = [np.nan, 1.5, -0.1]
        return pa.table(
            {
                "request_id": np.arange(n),
                "score": p,
                "label": (r.random(n) < np.nan_to_num(p)).astype(np.int8),
                "country": r.choice(["US", "BR", "DE"], n),
                "channel": r.choice(["web", "app"], n),
                "f1": r.normal(size=n),
            }
        )

    r = np.random.default_rng(9)
    evaluation, online = make(1), make(2)
    offline = pa.table(
        {"request_id": np.arange(n), "score": np.where(r.random(n) < 0.1, r.random(n), online["score"].to_numpy())}
    )
    outcomes = online.select(["request_id", "label"])
    return evaluation, online.drop_columns(["label"]), offline, outcomes


@pytest.mark.skipif(gpu_problem() is not None, reason="no CUDA device or simulator")
def test_cpu_and_gpu_give_identical_statistics_and_findings():
    evaluation, online, offline, outcomes = _tables()
    config = Config(slices=["country"], features={"f1": "numeric", "channel": "categorical"}, thresholds=[0.3, 0.6])
    cpu = build_baseline(evaluation, config, backend="cpu")
    gpu = build_baseline(evaluation, config, backend="gpu")
    assert cpu.statistics.equal(gpu.statistics)

    kwargs = dict(offline=offline, outcomes=outcomes, bootstrap=50, seed=3)
    a = run_check(cpu, online, backend="cpu", **kwargs)
    b = run_check(cpu, online, backend="gpu", **kwargs)
    assert a.run["backend"] == "cpu" and b.run["backend"] == "gpu"
    assert [f.to_dict() for f in a.findings] == [f.to_dict() for f in b.findings]
    assert a.data_quality == b.data_quality
    # the GPU backend joined on the device (numpy standing in for CuPy here)
    assert a.run["joins"]["engine"] == "duckdb"
    assert b.run["joins"]["engine"].startswith("sort join on the device"), b.run["joins"]
    assert b.run["joins"]["offline"] == b.run["joins"]["outcomes"] == "device_sort"


@pytest.mark.skipif(gpu_problem() is not None, reason="no CUDA device or simulator")
def test_the_gpu_check_brings_its_statistics_back_once(monkeypatch):
    """End to end on the GPU backend, batch after batch adds on the device: the online
    statistics come back in one copy, and the findings are the CPU's."""
    from kernels.cuda import _staging

    calls = {"download": 0}
    real = _staging.DeviceStatistics.download

    def download(self):
        calls["download"] += 1
        return real(self)

    monkeypatch.setattr(_staging.DeviceStatistics, "download", download)
    evaluation, online, offline, outcomes = _tables(300)
    config = Config(slices=["country"], features={"f1": "numeric"}, thresholds=[0.3], batch_size=70)
    bl = build_baseline(evaluation, config, backend="cpu")
    kwargs = dict(offline=offline, outcomes=outcomes, bootstrap=20, seed=5, config=config)
    a = run_check(bl, online, backend="cpu", **kwargs)
    from kernels import get_kernels

    k = get_kernels("gpu")
    k.profile = {}
    try:
        b = run_check(bl, online, backend="gpu", **kwargs)
        batches = k.profile["batches"]
    finally:
        k.profile = None
    assert batches >= 4 and calls["download"] == 1
    assert [f.to_dict() for f in a.findings] == [f.to_dict() for f in b.findings]
    assert a.data_quality == b.data_quality


@pytest.mark.skipif(gpu_problem() is not None, reason="no CUDA device or simulator")
def test_the_gpu_check_keeps_replicates_on_the_device_with_windows(monkeypatch):
    """With CuPy (``tests/strict_cupy.py`` standing in: it refuses numpy where CuPy does)
    the GPU check joins on the device and draws and reduces its replicates there, time
    windows and localisation included: the CPU's findings and incidents exactly."""
    import strict_cupy

    evaluation, online, offline, outcomes = _tables(300)
    seconds = 1_700_000_000 + np.random.default_rng(1).integers(0, 3 * 86400, online.num_rows)
    online = online.append_column("ts", pa.array(seconds, pa.int64()).cast(pa.timestamp("s")))
    config = Config(slices=["country"], features={"f1": "numeric", "channel": "categorical"}, thresholds=[0.3, 0.6])
    bl = build_baseline(evaluation, config, backend="cpu")
    kwargs = dict(offline=offline, outcomes=outcomes, bootstrap=20, seed=3, time_column="ts", window="1d")
    a = run_check(bl, online, backend="cpu", **kwargs)
    strict_cupy.install(monkeypatch)
    from kernels.cuda import CudaKernels

    monkeypatch.setattr(CudaKernels, "draws_on_device", True)  # the opt-in (PARITY_GPU_BOOTSTRAP=device)
    b = run_check(bl, online, backend="gpu", **kwargs)
    assert b.run["joins"]["engine"] == "sort join on the device (cupy)"
    assert any(f.window for f in a.findings)
    assert [f.to_dict() for f in a.findings] == [f.to_dict() for f in b.findings]
    assert a.incidents == b.incidents


def test_auto_falls_back_to_the_cpu_silently_and_the_run_record_says_why():
    """``--backend auto`` never takes the simulator: on a machine without a GPU it runs on
    the CPU without a warning, and the run record says what was asked for and why."""
    if gpu_problem(allow_simulator=False) is None:
        pytest.skip("this machine has a working GPU")
    evaluation, online, offline, outcomes = _tables()
    config = Config(slices=["country"], features={"f1": "numeric"}, thresholds=[0.5])
    bl = build_baseline(evaluation, config, backend="cpu")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silently: no warning on the way
        auto = run_check(bl, online, offline=offline, outcomes=outcomes, bootstrap=20, backend="auto")
    cpu = run_check(bl, online, offline=offline, outcomes=outcomes, bootstrap=20, backend="cpu")
    assert auto.run["backend"] == "cpu" and auto.run["backend_requested"] == "auto"
    assert auto.run["backend_reason"].startswith("auto took the CPU: ")
    assert len(auto.run["backend_reason"]) > len("auto took the CPU: ")
    assert cpu.run["backend_requested"] == "cpu" and cpu.run["backend_reason"] is None
    assert [f.to_dict() for f in auto.findings] == [f.to_dict() for f in cpu.findings]


def test_auto_on_a_machine_without_nvidia_devices_never_imports_numba_cuda():
    """Without an NVIDIA device node (no GPU, known from the file system) ``auto`` takes the
    CPU without importing numba.cuda (0.05-0.1 s of every run), and ``gpu`` says why."""
    import os
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from kernels import _dispatch\n"
        "_dispatch.NVIDIA_DEVICE_PATHS = ('/nonexistent/nvidiactl',)\n"
        "from kernels import get_kernels\n"
        "k = get_kernels('auto')\n"
        "print(type(k).__name__, 'numba.cuda' in sys.modules)\n"
        "print(_dispatch.gpu_problem(False))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    first, reason = out.stdout.splitlines()[:2]
    if sys.platform.startswith("linux"):
        assert first == "CpuKernels False"
        assert reason == "no CUDA device was found (none of /nonexistent/nvidiactl exists)"
    else:  # elsewhere numba.cuda is asked
        assert first.startswith("CpuKernels")


def test_a_check_leaves_the_garbage_collector_as_it_found_it():
    """run_check collects less often while it runs (engine.pipeline._fewer_collections) and
    restores the thresholds after; objects a caller froze stay frozen."""
    import gc

    evaluation, online, offline, outcomes = _tables()
    config = Config(slices=["country"], features={"f1": "numeric"}, thresholds=[0.5])
    bl = build_baseline(evaluation, config, backend="cpu")
    threshold = gc.get_threshold()
    run_check(bl, online, offline=offline, outcomes=outcomes, bootstrap=20, backend="cpu")
    assert gc.get_threshold() == threshold and gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        run_check(bl, online, offline=offline, outcomes=outcomes, bootstrap=20, backend="cpu")
        # still frozen (a few of the caller's frozen objects may have died meanwhile)
        assert gc.get_freeze_count() > frozen // 2 and gc.get_threshold() == threshold
    finally:
        gc.unfreeze()
