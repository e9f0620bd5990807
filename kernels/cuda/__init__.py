"""The CUDA backend: Numba CUDA kernels behind the ``kernels._api.Kernels`` protocol.

Imported lazily by ``kernels._dispatch`` (a CPU-only run never imports numba.cuda).
``_kernels`` holds only ``@cuda.jit`` code, ``_launch`` the grids, buffers and transfers.
The kernels also run under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` set before
numba is imported), which is how they are tested without a GPU.
"""

from kernels.cuda._launch import CudaKernels, is_device_array

__all__ = ["CudaKernels", "is_device_array"]
