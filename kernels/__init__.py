"""Compute primitives behind one interface (see ``kernels._api.Kernels``).

``get_kernels("auto" | "cpu" | "gpu")`` returns an implementation; importing this package
imports neither numba.cuda nor CuPy.
"""

import engine  # noqa: F401  (first: sets Numba's cache directory, engine._cache)
from kernels._api import Kernels
from kernels._dispatch import get_kernels, gpu_problem

__all__ = ["Kernels", "get_kernels", "gpu_problem"]
