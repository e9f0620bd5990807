"""Host side of the fused CUDA accumulation: argument layout, shared-memory plan, unpacking.

``CudaKernels.fused_accumulate`` takes exactly the arguments of
``kernels.cpu_fused.fused_accumulate`` (``engine.stats.Accumulator`` builds them once for
either backend) and returns the same nine grids, bit for bit. The rows go to the device
once, one kernel (``_kernels.fused_accumulate_kernel``) adds each row to every cell it
belongs to in one flat int64 array of statistics, and :func:`unpack` makes the grids of it
when it comes back (in the accumulate stage, once for all batches: see
``kernels.cuda._staging``).

Two things differ from the CPU kernel, neither in the results:

* The log-loss terms are computed on the host by ``kernels.cpu_fused.log_loss_terms`` (the
  function the CPU path's numbers agree with) and sent up as a float64 column: the device's
  ``log`` (libdevice) may differ in the last ulp, which would move a fixed-point term by
  2**-32 for about one row in a million.
* Bins are a binary search over the edges (``searchsorted(edges, v, 'right')``, what the
  CPU's lookup tables reproduce), the fine edges staged in shared memory.
"""

from __future__ import annotations


import numpy as np

from kernels.cuda import _kernels as K

#: Order in which sections get the block's shared memory: the smallest, most contended
#: first (every row adds to the data-quality pattern and four calibration sums per slice).
SHARED_PRIORITY = (
    K.SEC_PATTERN, K.SEC_VALUE, K.SEC_DQ, K.SEC_CALIB, K.SEC_CALIB_OFF, K.SEC_JOINT,
    K.SEC_DELTA, K.SEC_FEAT, K.SEC_SCORE, K.SEC_OFF,
)


def _pattern_matrix() -> np.ndarray:
    """(64, 8) int64: the data-quality flags 0..7 (``engine.stats.DQ_FLAGS``) raised by each
    6-bit row pattern (bit 0 valid score, 1 valid replay, 2 invalid replay, 3 has label,
    4 invalid label, 5 null key), as ``kernels.cpu_fused`` expands them."""
    m = np.zeros((64, 8), np.int64)
    for pat in range(64):
        m[pat, 0] = 1
        m[pat, 1 if pat & 1 else 2] = 1
        for q in range(1, 6):
            m[pat, 2 + q] = (pat >> q) & 1
    return m


PATTERN_FLAGS = _pattern_matrix()


def plan_sections(sizes: list[int], budget_cells: int) -> np.ndarray:
    """``(3, N_SECTIONS)`` int64: global offset, shared offset (-1: global atomics), size.

    Sections go to shared memory in ``SHARED_PRIORITY`` order while they fit in
    ``budget_cells`` int64 cells; a section that does not fit is skipped, smaller ones after
    it may still fit.
    """
    plan = np.zeros((3, K.N_SECTIONS), np.int64)
    plan[2] = sizes
    plan[0] = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    plan[1] = -1
    used = 0
    for sec in SHARED_PRIORITY:
        if 0 < sizes[sec] <= budget_cells - used:
            plan[1, sec] = used
            used += sizes[sec]
    return plan


def unpack(flat: np.ndarray, plan: np.ndarray, n_raw: int, F: int, NC: int, TT: int, DB: int,
           n_features: int, feature_bins: int, n_dq: int) -> tuple[np.ndarray, ...]:
    """The nine grids of ``kernels.cpu_fused.fused_accumulate`` from the flat statistics."""

    def sec(s: int) -> np.ndarray:
        return flat[plan[0, s]: plan[0, s] + plan[2, s]]

    def grid(s: int, shape: tuple[int, ...]) -> np.ndarray:
        return sec(s).reshape(shape) if plan[2, s] else np.zeros(shape, np.int64)

    def calib(s: int) -> np.ndarray:
        out = np.zeros((5, n_raw, 3, NC), np.int64)  # row 0 (counts): the caller's
        if plan[2, s]:
            out[1:] = sec(s).reshape(n_raw, 3, NC, 4).transpose(3, 0, 1, 2)
        return out

    dq = grid(K.SEC_DQ, (n_raw, n_dq)).copy()
    dq[:, :8] += grid(K.SEC_PATTERN, (n_raw, 64)) @ PATTERN_FLAGS
    return (
        grid(K.SEC_SCORE, (n_raw, 3, F)),
        calib(K.SEC_CALIB),
        grid(K.SEC_OFF, (n_raw, 3, F)),
        calib(K.SEC_CALIB_OFF),
        grid(K.SEC_JOINT, (n_raw, TT)),
        grid(K.SEC_DELTA, (3, n_raw, DB)),
        grid(K.SEC_FEAT, (n_raw, n_features, feature_bins)),
        dq,
        grid(K.SEC_VALUE, (3, n_raw, 3)),
    )
