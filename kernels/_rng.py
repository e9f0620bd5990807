"""The counter-based generator shared by every backend.

Each draw is a pure function of ``(seed, role, stream, cell key, replicate)``: a splitmix64
hash, so any chunk of replicates or cells, on any backend, gives the same numbers.

The scalar functions are built by :func:`build` with a JIT decorator (``numba.njit`` for the
CPU, ``cuda.jit(device=True)`` for CUDA), so every backend runs one algorithm. The
vectorised numpy versions in ``kernels.reference`` follow them line by line.

Integer arithmetic only
-----------------------
A draw is computed from the hash with integer operations and tables computed once on the
host, never with ``log``/``exp`` or chains of float multiply-adds: libm and CUDA's libdevice
round those differently, and the CUDA compiler contracts ``a * b + c`` into one fused
multiply-add, so float draws differed between the CPU and a real GPU in the last bits (seen
on an H200, 2026-11-26). With integers they are bit-identical on every backend by
construction.

Normal draws
------------
The hash's top bit is the sign; its other 63 bits ``v`` give the tail probability
``p = v / 2**64``. The position of ``v``'s leading one picks an octave of ``p``, the next
7 bits one of 128 segments, the next 24 bits the place inside it: ``|z|`` is interpolated
linearly between the segment's ends, read from ``NORMAL_TABLE`` (``-Phi^-1(p)`` at every
segment end, in units of ``2**-NORMAL_BITS``). The interpolation error is below 4e-6 in
``z`` (in every octave, down to ``p = 2**-64``); ``z`` is exactly symmetric.

Poisson(n) draws, for a cell of n rows
---------------------------------------
The cell-level bootstrap draws a cell of ``n`` rows as Poisson(n), the sum of its rows'
Poisson(1) weights: ``n`` is a count.

* ``n == 0``: 0.
* ``n < POISSON_INVERSION_CUTOFF`` (32): exact inversion. ``POISSON_TABLE[n, k]`` is
  ``floor(P(X <= k) * 2**53)``, computed in exact arithmetic; the draw is the number of
  thresholds at or below the hash's 53 high bits (a binary search).
* otherwise: the Cornish-Fisher normal approximation ``floor(n + sqrt(n) z + (z**2 - 1) / 6
  + 1/2)`` with a normal ``z``, in fixed point (``sqrt`` and one product in IEEE float,
  each exactly rounded everywhere, then integers). At n = 32 its skewness error is below 1%
  of a standard deviation; it only affects cells of 32 rows or more, where the count's
  relative spread is already under 18%.

Poisson(1) unit weights compare the hash's 53 high bits with ``POISSON_TABLE[1]``.
"""

from __future__ import annotations

import math
import statistics
from decimal import Decimal, localcontext
from fractions import Fraction
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

#: Cells below this count are drawn by exact inversion (``POISSON_TABLE``).
POISSON_INVERSION_CUTOFF = 32
#: Normal draws are integers in units of ``2**-NORMAL_BITS``.
NORMAL_BITS = 24
#: Segments per octave of the tail probability (``2**NORMAL_SEGMENT_BITS``) and the bits
#: that place a draw inside its segment.
NORMAL_SEGMENT_BITS = 7
NORMAL_FRACTION_BITS = 24
#: Fixed-point bits of the Cornish-Fisher step (counts below 2**42).
CF_BITS = 20
MAX_COUNT = 2**42


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


def _normal_table() -> np.ndarray:
    """``round(-Phi^-1(p) * 2**NORMAL_BITS)`` at the segment ends of every octave.

    Row ``62 - lead`` is the octave ``p`` in ``[2**(lead - 64), 2**(lead - 63)]``, column
    ``j`` the probability ``2**(lead - 64) * (1 + j / 2**NORMAL_SEGMENT_BITS)``. Every
    entry lies over 1e-6 units from a rounding boundary (a test checks it), so any inverse
    CDF accurate to 1e-14 gives this table: the float one here does.
    """
    inv_cdf = statistics.NormalDist().inv_cdf
    segments = 1 << NORMAL_SEGMENT_BITS
    table = np.empty((63, segments + 1), dtype=np.int64)
    for lead in range(63):
        for j in range(segments + 1):
            p = math.ldexp(1.0 + j / segments, lead - 64)
            table[62 - lead, j] = round(-inv_cdf(p) * 2**NORMAL_BITS) if p < 0.5 else 0
    return table


def _poisson_table() -> np.ndarray:
    """``floor(P(Poisson(n) <= k) * 2**53)`` for n < ``POISSON_INVERSION_CUTOFF``, exactly.

    The partial sums of ``n**j / j!`` are exact fractions and ``exp(-n)`` a 60-digit decimal,
    so the thresholds do not depend on the machine's libm. A row ends where the threshold
    reaches ``2**53 - 1`` (the chance of a larger draw is then below ``2**-53``) and is padded
    with ``2**53``, above every 53-bit uniform; row 0 is all ``2**53``: a cell of 0 rows
    draws 0.
    """
    top = 2**53
    rows = [[top]]
    with localcontext() as ctx:
        ctx.prec = 60
        for n in range(1, POISSON_INVERSION_CUTOFF):
            scale = Decimal(-n).exp() * top
            row, partial, term, k = [], Fraction(0), Fraction(1), 0
            while True:
                partial += term
                t = int(scale * partial.numerator / partial.denominator)
                row.append(min(t, top))
                if t >= top - 1:  # only the largest uniform lies above: the row is done
                    break
                k += 1
                term = term * n / k
            rows.append(row)
    width = max(len(r) for r in rows)
    return np.array([r + [top] * (width - len(r)) for r in rows], dtype=np.uint64)


NORMAL_TABLE = _normal_table()
POISSON_TABLE = _poisson_table()
#: Poisson(1) thresholds of the unit weights.
POISSON1_THRESHOLDS = POISSON_TABLE[1, : int(np.argmax(POISSON_TABLE[1] == 2**53)) + 1].copy()


def as_counts(counts: object, n_cells: int) -> np.ndarray:
    """``counts`` as (n_cells,) int64, checked: whole numbers in ``0 .. MAX_COUNT - 1``.

    Raises
    ------
    ValueError
        A count is negative, fractional, NaN or too large for the fixed-point draws.
    """
    arr = np.broadcast_to(np.asarray(counts), (n_cells,))
    as_int = arr.astype(np.int64) if arr.dtype.kind in "iub" else np.zeros(n_cells, dtype=np.int64)
    if arr.dtype.kind == "f":
        ok = np.isfinite(arr) & (arr >= 0) & (arr < MAX_COUNT)
        as_int[ok] = arr[ok].astype(np.int64)
        bad = ~ok | (as_int != arr)
    elif arr.dtype.kind in "iub":
        bad = (as_int < 0) | (as_int >= MAX_COUNT)
    else:
        raise ValueError(f"Poisson draws take cell counts (whole numbers). Got dtype {arr.dtype} instead.")
    if bad.any():
        raise ValueError(
            f"Poisson draws take cell counts: whole numbers in 0..2**42-1. Got {arr[bad][0]!r} instead."
        )
    return np.ascontiguousarray(as_int)


def build(jit: Callable) -> SimpleNamespace:
    """Compile the scalar generator with ``jit`` (numba.njit or cuda.jit(device=True)).

    The tables are arguments (``ztab``: ``NORMAL_TABLE``, ``ptab``: ``POISSON_TABLE``), not
    globals: a CUDA kernel would copy a global array into its 64 KiB of constant memory.
    """
    u64 = np.uint64
    i64 = np.int64
    c_golden = u64(GOLDEN)
    c_m1 = u64(0xBF58476D1CE4E5B9)
    c_m2 = u64(0x94D049BB133111EB)
    s30, s27, s31, s11, s63 = u64(30), u64(27), u64(31), u64(11), u64(63)
    zero, one = u64(0), u64(1)
    low63 = u64((1 << 63) - 1)
    place_bits = NORMAL_SEGMENT_BITS + NORMAL_FRACTION_BITS
    frac_bits = NORMAL_FRACTION_BITS
    frac_mask = (1 << NORMAL_FRACTION_BITS) - 1
    z_unit = 2.0**-NORMAL_BITS
    cutoff = POISSON_INVERSION_CUTOFF
    w = CF_BITS
    w_scale = float(2**CF_BITS)
    w_one = 2**CF_BITS
    w_half = 2 ** (CF_BITS - 1)
    sq_shift = 2 * NORMAL_BITS - CF_BITS

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
    def normal_fixed(h, ztab):
        # |z| by linear interpolation in the octave and segment of p = v / 2**64
        v = h & low63
        if v == zero:
            v = one
        lead = 0  # position of v's leading one, by binary search
        for step in (32, 16, 8, 4, 2, 1):
            if (v >> u64(lead + step)) != zero:
                lead += step
        t = v - (one << u64(lead))
        if lead >= place_bits:
            m = i64(t >> u64(lead - place_bits))
        else:
            m = i64(t << u64(place_bits - lead))
        j = m >> frac_bits
        f = m & frac_mask
        t0 = ztab[62 - lead, j]
        t1 = ztab[62 - lead, j + 1]
        z = t0 - (((t0 - t1) * f) >> frac_bits)
        if (h >> s63) != zero:
            return z
        return -z

    @jit
    def normal(h, ztab):
        return float(normal_fixed(h, ztab)) * z_unit

    @jit
    def below(u, ptab, n):
        # how many thresholds of row n lie at or below u (binary search)
        lo = 0
        hi = ptab.shape[1]
        while lo < hi:
            mid = (lo + hi) >> 1
            if ptab[n, mid] <= u:
                lo = mid + 1
            else:
                hi = mid
        return lo

    @jit
    def poisson(n, h, ztab, ptab):
        if n <= 0:
            return 0
        if n < cutoff:
            return below(h >> s11, ptab, n)
        z = normal_fixed(h, ztab)
        # sqrt and one product, each exactly rounded IEEE; the rest in integers
        spread = i64(math.floor(math.sqrt(float(n)) * (float(z) * z_unit) * w_scale))
        skew = ((z * z) >> sq_shift) + 5 * w_one
        total = n * w_one + spread + skew // 6 - w_one + w_half
        if total < 0:
            return 0
        return total >> w

    @jit
    def poisson1(h, thresholds):
        u = h >> s11
        lo = 0
        hi = thresholds.shape[0]
        while lo < hi:
            mid = (lo + hi) >> 1
            if thresholds[mid] <= u:
                lo = mid + 1
            else:
                hi = mid
        return lo

    return SimpleNamespace(
        mix64=mix64,
        cell_base=cell_base,
        draw_hash=draw_hash,
        normal_fixed=normal_fixed,
        normal=normal,
        poisson=poisson,
        poisson1=poisson1,
    )
