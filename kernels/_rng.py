"""The counter-based generator shared by every backend.

Each draw is a pure function of ``(seed, role, stream, cell key, replicate)``: a splitmix64
hash, so any chunk of replicates or cells, on any backend, gives the same numbers.

The scalar functions are built by :func:`build` with a JIT decorator (``numba.njit`` for the
CPU, ``cuda.jit(device=True)`` for CUDA), so every backend runs one algorithm. The
vectorised numpy versions in ``kernels.reference`` follow them line by line.

Poisson(lam) draws
------------------
* ``lam == 0``: 0.
* ``lam < POISSON_INVERSION_CUTOFF`` (32): exact inversion of the CDF with one uniform.
* otherwise: the Cornish-Fisher normal approximation ``floor(lam + sqrt(lam) z +
  (z**2 - 1) / 6 + 1/2)`` with a normal ``z``. At lam = 32 its skewness error is
  below 1% of a standard deviation; it only affects cells of 32 rows or more, where the
  count's relative spread is already under 18%.

Normals invert the normal CDF at one uniform with Acklam's rational approximation
(relative error below 1.2e-9; a logarithm only in the outer 5% of draws): cheaper than
Box-Muller and one uniform per draw.

Poisson(1) unit weights compare the 53 high bits of the hash with integer thresholds
(``POISSON1_THRESHOLDS``), so they are bit-identical on every backend.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
ROLE_MULT = 0xD1B54A32D192ED03
STREAM_MULT = 0x8CB92BA72F3D8DD7

#: Streams of the generator: independent families of draws for the same cell.
STREAM_POISSON = 0
STREAM_NORMAL = 1
STREAM_UNIT = 2

POISSON_INVERSION_CUTOFF = 32.0

# Acklam's inverse normal CDF coefficients
ACKLAM_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
            -3.066479806614716e01, 2.506628277459239e00)
ACKLAM_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
            -1.328068155288572e01)
ACKLAM_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
            4.374664141464968e00, 2.938163982698783e00)
ACKLAM_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
ACKLAM_LOW = 0.02425


def mix64_int(x: int) -> int:
    """splitmix64's finaliser on a Python int (host-side key derivation)."""
    x &= MASK64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    x ^= x >> 31
    return x


def stream_base(seed: int, role: int, stream: int) -> int:
    """The 64-bit base of the (seed, role, stream) family, computed once on the host."""
    return mix64_int(
        (int(seed) * GOLDEN + int(role) * ROLE_MULT + int(stream) * STREAM_MULT) & MASK64
    )


def _poisson1_thresholds() -> np.ndarray:
    # T_k = floor(F(k) * 2**53) for the Poisson(1) CDF F; weight = #{k : T_k <= u53}.
    thresholds = []
    term = math.exp(-1.0)
    cdf = 0.0
    for k in range(20):
        cdf += term
        term /= k + 1
        thresholds.append(min(int(cdf * 2**53), 2**53))
    return np.array(thresholds, dtype=np.uint64)


POISSON1_THRESHOLDS = _poisson1_thresholds()


def build(jit: Callable) -> SimpleNamespace:
    """Compile the scalar generator with ``jit`` (numba.njit or cuda.jit(device=True))."""
    u64 = np.uint64
    c_golden = u64(GOLDEN)
    c_m1 = u64(0xBF58476D1CE4E5B9)
    c_m2 = u64(0x94D049BB133111EB)
    s30, s27, s31, s11 = u64(30), u64(27), u64(31), u64(11)
    inv53 = 1.0 / 9007199254740992.0
    cutoff = POISSON_INVERSION_CUTOFF
    a0, a1, a2, a3, a4, a5 = ACKLAM_A
    b0, b1, b2, b3, b4 = ACKLAM_B
    c0, c1, c2, c3, c4, c5 = ACKLAM_C
    d0, d1, d2, d3 = ACKLAM_D
    plow = ACKLAM_LOW
    phigh = 1.0 - ACKLAM_LOW

    @jit
    def mix64(x):
        x = x ^ (x >> s30)
        x = x * c_m1
        x = x ^ (x >> s27)
        x = x * c_m2
        x = x ^ (x >> s31)
        return x

    @jit
    def cell_base(base, key):
        return mix64(key ^ base)

    @jit
    def draw_hash(cbase, rep):
        return mix64(cbase + (u64(rep) + u64(1)) * c_golden)

    @jit
    def uniform(h):
        # in (0, 1): never 0, so log() is safe
        return (float(h >> s11) + 0.5) * inv53

    @jit
    def normal(h):
        p = uniform(h)
        if p < plow:
            q = math.sqrt(-2.0 * math.log(p))
            return (((((c0 * q + c1) * q + c2) * q + c3) * q + c4) * q + c5) / (
                (((d0 * q + d1) * q + d2) * q + d3) * q + 1.0
            )
        if p > phigh:
            q = math.sqrt(-2.0 * math.log(1.0 - p))
            return -(((((c0 * q + c1) * q + c2) * q + c3) * q + c4) * q + c5) / (
                (((d0 * q + d1) * q + d2) * q + d3) * q + 1.0
            )
        q = p - 0.5
        r = q * q
        return (((((a0 * r + a1) * r + a2) * r + a3) * r + a4) * r + a5) * q / (
            ((((b0 * r + b1) * r + b2) * r + b3) * r + b4) * r + 1.0
        )

    @jit
    def poisson(lam, h):
        if lam <= 0.0:
            return 0
        if lam < cutoff:
            u = uniform(h)
            k = 0
            p = math.exp(-lam)
            cdf = p
            while u > cdf and k < 200:
                k += 1
                p = p * lam / k
                cdf += p
            return k
        z = normal(h)
        x = math.floor(lam + math.sqrt(lam) * z + (z * z - 1.0) / 6.0 + 0.5)
        if x < 0.0:
            return 0
        return int(x)

    @jit
    def poisson1(h, thresholds):
        u = h >> s11
        k = 0
        for t in range(thresholds.shape[0]):
            if thresholds[t] <= u:
                k += 1
            else:
                break
        return k

    return SimpleNamespace(
        mix64=mix64,
        cell_base=cell_base,
        draw_hash=draw_hash,
        uniform=uniform,
        normal=normal,
        poisson=poisson,
        poisson1=poisson1,
    )
