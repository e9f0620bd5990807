"""Backend resolution, lazy: a CPU-only install never imports CuPy, cuDF or numba.cuda."""

from __future__ import annotations

import functools
import os
import sys

from engine.errors import BackendUnavailableError

BACKENDS = ("auto", "cpu", "gpu")

#: Where Linux shows an NVIDIA GPU (bare metal and containers: the ``nvidia*`` nodes; WSL 2:
#: ``dxg``; the driver: ``/proc/driver/nvidia``). None of them: no CUDA device, known
#: without importing numba.cuda, which ``auto`` would otherwise pay on every CPU run.
NVIDIA_DEVICE_PATHS = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/proc/driver/nvidia")


def _no_nvidia_device() -> bool:
    """True where this is Linux and none of :data:`NVIDIA_DEVICE_PATHS` exists."""
    return sys.platform.startswith("linux") and not any(os.path.exists(p) for p in NVIDIA_DEVICE_PATHS)


def gpu_problem(allow_simulator: bool = True) -> str | None:
    """Why the GPU backend cannot run here, or None when it can.

    Under ``NUMBA_ENABLE_CUDASIM=1`` the simulator counts as a GPU when ``allow_simulator``
    (that is how the CUDA kernels are tested on machines without one); ``auto`` never picks
    it, since it runs one Python thread per CUDA thread.
    """
    simulator = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    if not simulator and _no_nvidia_device():
        return f"no CUDA device was found (none of {', '.join(NVIDIA_DEVICE_PATHS)} exists)"
    try:
        from numba import cuda
    except Exception as exc:  # numba without its CUDA target
        return f"numba's CUDA target cannot be imported ({exc}); install parity[gpu]"
    if simulator:
        return None if allow_simulator else "only Numba's CUDA simulator is enabled"
    try:
        if not cuda.is_available():
            return "no CUDA driver or device was found (numba.cuda.is_available() is False)"
    except Exception as exc:
        return f"the CUDA device cannot be used ({exc})"
    return _device_probe()


@functools.lru_cache(maxsize=1)
def _device_probe() -> str | None:
    """Compile and run a one-line kernel once per process: None when it works.

    A device can be present while numba-cuda cannot compile for it (seen on an H200 image
    whose numpy 2.5 lacked a function numba-cuda 0.30 imports): better to find out here,
    where ``auto`` can still fall back to the CPU, than at the first launch of a check.
    """
    try:
        _run_probe()
    except Exception as exc:
        return f"numba-cuda cannot compile or run a kernel here ({type(exc).__name__}: {exc})"
    return None


def _run_probe() -> None:
    import numpy as np
    from numba import cuda

    from kernels.cuda._kernels import probe_kernel

    out = cuda.device_array(4, dtype=np.int64)
    probe_kernel[1, 4](out)
    got = out.copy_to_host().tolist()
    if got != [1, 2, 3, 4]:
        raise RuntimeError(f"a test kernel wrote {got} instead of [1, 2, 3, 4]")


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

        # the device-reduced bootstrap is opt-in: its float replicates may differ from the
        # CPU's in the last bits (see CudaKernels.draws_on_device)
        return CudaKernels(draws_on_device=os.environ.get("PARITY_GPU_BOOTSTRAP") == "device" or None)
    if backend == "gpu":
        raise BackendUnavailableError(f"The gpu backend cannot run here: {problem}.")
    from kernels.cpu import CpuKernels

    return CpuKernels()
