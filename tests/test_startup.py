"""Fixed costs of a run: lazy imports, and compiled kernels kept in the user's cache directory.

Each case runs in a fresh interpreter (``subprocess``): what a process imports, compiles and
writes is only observable from the outside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import _cache

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("numba", "duckdb", "dask", "distributed", "cupy", "cudf")


def _env(**extra: str | None) -> dict[str, str]:
    """This process's environment without Numba/parity cache settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PARITY_CACHE_DIR")}
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def _python(code: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout
    )


# ------------------------------------------------------------------------------- imports
@pytest.mark.parametrize(
    "code",
    [
        "import engine",
        "import engine.cli",
        "import kernels",
        # what `parity check --help` runs, up to its exit (`main` then leaves with os._exit)
        "import sys, engine.cli; sys.argv = ['parity', 'check', '--help']\n"
        "try:\n    engine.cli.app(standalone_mode=True)\nexcept SystemExit:\n    pass",
    ],
    ids=["engine", "engine.cli", "kernels", "check --help"],
)
def test_light_entry_points_import_no_heavy_package(code):
    probe = code + f"\nimport sys, json; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)"
    proc = _python(probe, _env())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []


def test_version_works_without_compiling_anything(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--version"], capture_output=True, text=True, cwd=REPO,
        env=_env(PARITY_CACHE_DIR=str(tmp_path)), timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("parity ")
    assert proc.stderr == ""
    assert not (tmp_path / "numba").exists() or not any((tmp_path / "numba").iterdir())


# ------------------------------------------------------------------------------- cache directory
def test_user_cache_dir_follows_xdg(monkeypatch, tmp_path):
    if sys.platform in ("win32", "darwin"):
        pytest.skip("the XDG rule is the Linux one")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _cache.user_cache_dir() == tmp_path / "parity"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # not absolute: ignored, as the spec says
    assert _cache.user_cache_dir() == Path.home() / ".cache" / "parity"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _cache.user_cache_dir() == Path.home() / ".cache" / "parity"


def test_cache_dir_rules(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "p"))
    assert _cache.numba_cache_dir() == tmp_path / "p" / "numba"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "n"))  # the user's own setting wins
    assert _cache.numba_cache_dir() == tmp_path / "n"


def test_unwritable_cache_dir_falls_back_to_a_temporary_one(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"  # a directory cannot be made under a file, even by root
    blocker.write_text("")
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("PARITY_CACHE_DIR", str(blocker))
    got = _cache.numba_cache_dir()
    assert blocker not in got.parents and got.name == "numba"


_CHILD = """
import json, sys, time
t0 = time.perf_counter()
{pre}
import engine
from engine import _cache
from numba.core import event
every = []  # every compilation, parity's or Numba's own (a typed List compiles its methods)
class Count(event.Listener):
    def on_start(self, ev):
        every.append(str(getattr(ev.data.get("dispatcher"), "py_func", "?")))
    def on_end(self, ev):
        pass
event.register("numba:compile", Count())
engine.check({baseline!r}, {online!r}, offline={offline!r}, outcomes={outcomes!r}, backend="cpu", bootstrap=50)
import numba
from kernels import cpu_fused
print(json.dumps({{
    "compiled": _cache.compiled,
    "every": every,
    "numba_cache_dir": numba.config.CACHE_DIR,
    "kernel_cache_path": cpu_fused._accumulate_range.stats.cache_path,
    "kernel_cache_misses": sum(cpu_fused._accumulate_range.stats.cache_misses.values()),
    "seconds": time.perf_counter() - t0,
}}))
"""


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from engine.config import Config
    from engine.expectation import build_baseline
    from engine.synthetic import generate

    root = tmp_path_factory.mktemp("tiny")
    scenario = generate(root, rows=3000, seed=1, eval_rows=3000)
    config = Config(slices=scenario.slices, features=scenario.features, thresholds=scenario.thresholds)
    build_baseline(root / "evaluation.parquet", config, out=root / "baseline", backend="cpu")
    return {k: str(root / f"{k}.parquet") for k in ("online", "offline", "outcomes")} | {
        "baseline": str(root / "baseline")
    }


def _source_cache_files(since: float) -> list[Path]:
    """Numba cache files written into the source tree after ``since``."""
    found = []
    for package in ("engine", "kernels"):
        for path in (REPO / package).rglob("*.nb[ic]"):
            if path.stat().st_mtime >= since:
                found.append(path)
    return found


@pytest.mark.slow
def test_second_process_on_a_warm_cache_compiles_nothing(tmp_path, tiny_world):
    """A cold cache compiles (and says so once, on stderr); the next process loads every
    kernel from the configured directory and compiles nothing: no typed containers or
    uncached functions are left on the path of a check."""
    started = time.time()
    env = _env(PARITY_CACHE_DIR=str(tmp_path))
    code = _CHILD.format(pre="", **tiny_world)
    first = _python(code, env)
    assert first.returncode == 0, first.stderr[-3000:]
    one = json.loads(first.stdout.strip().splitlines()[-1])
    assert one["compiled"], "a cold cache must compile"
    notes = [line for line in first.stderr.splitlines() if line.startswith("parity: compiling")]
    assert len(notes) == 1, first.stderr
    assert str(tmp_path / "numba") in notes[0]

    second = _python(code, env)
    assert second.returncode == 0, second.stderr[-3000:]
    two = json.loads(second.stdout.strip().splitlines()[-1])
    assert two["compiled"] == [] and two["every"] == []
    assert two["kernel_cache_misses"] == 0
    assert "parity: compiling" not in second.stderr
    for report in (one, two):
        assert report["numba_cache_dir"] == str(tmp_path / "numba")
        assert Path(report["kernel_cache_path"]).parent == tmp_path / "numba"
    assert list((tmp_path / "numba").rglob("*.nbi"))
    assert _source_cache_files(started) == []

    # numba imported by the program before parity: the directory still applies
    third = _python(_CHILD.format(pre="import numba", **tiny_world), env)
    assert third.returncode == 0, third.stderr[-3000:]
    three = json.loads(third.stdout.strip().splitlines()[-1])
    assert three["compiled"] == [] and three["numba_cache_dir"] == str(tmp_path / "numba")


def test_a_user_set_numba_cache_dir_is_respected(tmp_path):
    code = "import engine.stats, numba, json; from kernels import cpu_fused; " \
        "print(json.dumps([numba.config.CACHE_DIR, cpu_fused._score_bins.stats.cache_path]))"
    proc = _python(code, _env(NUMBA_CACHE_DIR=str(tmp_path / "mine"), PARITY_CACHE_DIR=str(tmp_path / "p")))
    assert proc.returncode == 0, proc.stderr
    cache_dir, kernel_path = json.loads(proc.stdout)
    assert cache_dir == str(tmp_path / "mine")
    assert Path(kernel_path).parent == tmp_path / "mine"
