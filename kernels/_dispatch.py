"""Backend resolution, lazy: a CPU-only install never imports CuPy, cuDF or numba.cuda."""

from __future__ import annotations

import functools
import os

from engine.errors import BackendUnavailableError

BACKENDS = ("auto", "cpu", "gpu")


def gpu_problem(allow_simulator: bool = True) -> str | None:
    """Why the GPU backend cannot run here, or None when it can.

    Under ``NUMBA_ENABLE_CUDASIM=1`` the simulator counts as a GPU when ``allow_simulator``
    (that is how the CUDA kernels are tested on machines without one); ``auto`` never picks
    it, since it runs one Python thread per CUDA thread.
    """
    try:
        from numba import cuda
    except Exception as exc:  # numba without its CUDA target
        return f"numba's CUDA target cannot be imported ({exc}); install parity[gpu]"
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return None if allow_simulator else "only Numba's CUDA simulator is enabled"
    try:
        if not cuda.is_available():
            return "no CUDA driver or device was found (numba.cuda.is_available() is False)"
        cuda.detect()
    except Exception as exc:
        return f"the CUDA device cannot be used ({exc})"
    return None


@functools.lru_cache(maxsize=None)
def get_kernels(backend: str = "auto"):
    """The :class:`kernels._api.Kernels` implementation for ``backend``.

    Parameters
    ----------
    backend : {"auto", "cpu", "gpu"}
        ``auto`` takes the GPU when one works, else the CPU.

    Raises
    ------
    BackendUnavailableError
        ``gpu`` was asked for and no usable GPU is present; the message says what is missing.
    """
    if backend not in BACKENDS:
        raise BackendUnavailableError(
            f"The backend must be one of {', '.join(BACKENDS)}. Got {backend!r} instead."
        )
    if backend == "cpu":
        from kernels.cpu import CpuKernels

        return CpuKernels()
    problem = gpu_problem(allow_simulator=backend == "gpu")
    if problem is None:
        from kernels.cuda import CudaKernels

        return CudaKernels()
    if backend == "gpu":
        raise BackendUnavailableError(f"The gpu backend cannot run here: {problem}.")
    from kernels.cpu import CpuKernels

    return CpuKernels()
