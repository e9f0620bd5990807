"""parity: post-deployment validation of ML models.

The comparison engine, one module per pipeline stage (io, join, encode, stats, measure,
bootstrap, compare, result). ``engine.baseline(...)`` and ``engine.check(...)`` are the
Python API; the CLI (``parity``) is a thin layer over them.
"""

__version__ = "0.1.0"

from engine import _cache

# Numba's cache in the per-user cache directory, before anything compiles (see engine._cache).
_cache.configure()


def baseline(data, config=None, **kwargs):
    """Build a baseline; see :func:`engine.expectation.build_baseline`."""
    from engine.expectation import build_baseline

    return build_baseline(data, config, **kwargs)


def check(baseline, online, **kwargs):
    """Run a check; see :func:`engine.pipeline.run_check`."""
    from engine.pipeline import run_check

    return run_check(baseline, online, **kwargs)
