"""Check the PTX of the generator's kernels: no float arithmetic that could round differently
on a GPU than on the CPU.

The draws are bit-identical across backends only if the device code does in floating point
nothing but what IEEE rounds exactly everywhere (``kernels._rng``): here, a few multiplies,
``sqrt.rn`` and conversions. A fused multiply-add (the CUDA compiler contracts ``a * b + c``
unless told not to) or a float add would break that. Needs numba-cuda and its NVVM (e.g.
``pip install "numba-cuda[cu12]"``), not a GPU: without one, the device functions are
compiled for compute capability 9.0 (Hopper) through a stand-in for the current device.

Usage::

    python scripts/check_ptx.py   # exit 1 naming the kernel if a check fails, 3 without NVVM
"""

from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from numba import cuda, types  # noqa: E402

CC = (9, 0)

if not cuda.is_available():
    import numba.cuda.dispatcher as dispatcher

    class _Hopper:  # what compiling a device function asks of the current device
        compute_capability = CC

    dispatcher.get_current_device = lambda: _Hopper()

from kernels.cuda import _kernels  # noqa: E402

KERNELS = {
    "poisson_cells_kernel": (
        types.uint64, types.uint64[::1], types.int64[::1], types.int64, types.int64,
        types.int64[:, ::1], types.uint64[:, ::1], types.int64[:, ::1],
    ),
    "normal_cells_kernel": (
        types.uint64, types.uint64[::1], types.int64, types.int64, types.int64[:, ::1], types.float64[:, ::1],
    ),
    "unit_weights_kernel": (
        types.uint64, types.uint64[::1], types.int64, types.int64, types.uint64[::1], types.int32[:, ::1],
    ),
}
#: Float instructions whose rounding is not the same everywhere (fused, approximate, or an
#: add whose operands could have been contracted).
FORBIDDEN = re.compile(r"^\s*(fma\.\S*f(32|64)|add\.\S*f(32|64)|sub\.\S*f(32|64)|\S*\.approx\.\S*|ex2\S*|lg2\S*)")


def main() -> int:
    failed = 0
    for name, signature in KERNELS.items():
        try:
            ptx, _ = cuda.compile_ptx(getattr(_kernels, name).py_func, signature, cc=CC)
        except Exception as exc:  # no NVVM (CUDA toolkit) here: nothing to check with
            if "NVVM" not in str(exc) and "nvvm" not in str(exc) and "CUDA" not in str(exc):
                raise
            print(f"cannot compile to PTX here: {exc}")
            return 3
        bad = sorted({m.group(1) for line in ptx.splitlines() if (m := FORBIDDEN.match(line))})
        sqrt = sorted({line.split()[0] for line in ptx.splitlines() if "sqrt" in line})
        ok = not bad and all(s == "sqrt.rn.f64" for s in sqrt)
        failed += not ok
        print(f"{name:<24s} {'ok' if ok else 'FAILED'}  forbidden: {bad or 'none'}; sqrt: {sqrt or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
