"""Grids, buffers and host/device transfers for the CUDA kernels: the ``CudaKernels`` class.

Where arrays live
-----------------
Inputs may be numpy arrays (copied to the device) or device arrays: a Numba device array
(what ``cuda.to_device`` returns, also under the simulator) or any object with
``__cuda_array_interface__`` (CuPy, cuDF columns, PyTorch), wrapped without a copy.

* Per-row results stay on the device: :meth:`CudaKernels.bin_index` and
  :meth:`CudaKernels.unit_weights` return Numba device arrays (``.copy_to_host()`` brings
  one back; ``cupy.asarray`` wraps one without a copy).
* Statistics are O(cells): :meth:`CudaKernels.histogram`, :meth:`CudaKernels.poisson_cells`
  and :meth:`CudaKernels.normal_cells` return host numpy arrays (the draws stay on the
  device with ``on_device=True``: ``engine.bootstrap`` reduces them there with CuPy).
* The accumulate stage keeps its statistics on the device: :meth:`CudaKernels.fused_add`
  adds a batch into a :class:`~kernels.cuda._staging.DeviceStatistics` (its per-row
  columns staged through reusable pinned buffers, copied and computed on two streams, see
  ``kernels.cuda._staging``), which comes back once, when it is read.

So the hot path is ``codes = k.bin_index(scores_on_device, edges)`` followed by
``k.histogram(outer, offsets, [codes_a, codes_b], ...)``: the rows never leave the GPU.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from numba import cuda
from numba.core import config

from kernels import _rng
from kernels.cuda import _fused, _kernels
from kernels.cuda._staging import DeviceStatistics, Staging, canonical_layout

ArrayLike = Any

#: Static shared memory every CUDA device grants a block without an opt-in.
DEFAULT_SHARED_BYTES = 48 * 1024
#: The largest value an int32 shared counter may reach.
INT32_MAX = 2**31 - 1


def is_device_array(x: object) -> bool:
    """Whether ``x`` lives on the device (Numba device array or CUDA array interface)."""
    return bool(getattr(x, "__cuda_ndarray__", False)) or hasattr(
        x, "__cuda_array_interface__"
    )


def _simulated() -> bool:
    return bool(config.ENABLE_CUDASIM)


def to_device(x: ArrayLike, dtype: np.dtype | type | None = None, stream: Any = 0) -> Any:
    """The one host-to-device copy of this backend: ``x`` as a canonical C array, copied.

    Host arrays whose layout is not :func:`canonical_layout` (views, broadcasts, other
    dtypes) are first copied into a fresh array on the host, which Numba copies at the
    bus's rate.
    """
    a = np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)
    if not canonical_layout(a):
        a = np.array(a, order="C", copy=True)
    return cuda.to_device(a, stream=stream)


def launch(kernel: Any, config: tuple, *args: Any) -> None:
    """``kernel[config](*args)``, refusing host arrays: Numba would copy each one to the
    device and back on every launch, implicitly (and slowly for some layouts)."""
    for a in args:
        if isinstance(a, np.ndarray) and a.ndim > 0:
            raise TypeError(
                f"A host array of shape {a.shape} reached a launch of {kernel!r}: "
                "copy it with to_device first."
            )
    kernel[config](*args)


def _as_device(x: ArrayLike, dtype: np.dtype | type, what: str) -> Any:
    """A Numba device array for ``x``: device inputs without a copy, host inputs copied.

    Host arrays are converted to ``dtype`` first. Device arrays keep their dtype (the
    kernels are compiled for it), but must be of the same kind (integer codes stay integer).
    """
    if getattr(x, "__cuda_ndarray__", False):
        arr = x
    elif hasattr(x, "__cuda_array_interface__"):
        arr = cuda.as_cuda_array(x)
    else:
        return to_device(x, dtype)
    want = np.dtype(dtype).kind
    kinds = "iu" if want in "iu" else "f"
    if np.dtype(arr.dtype).kind not in kinds:
        raise TypeError(
            f"The {what!r} argument must be a {np.dtype(dtype).name}-like array. "
            f"Got a device array of dtype {np.dtype(arr.dtype).name} instead."
        )
    return arr


def label_codes(label: np.ndarray) -> np.ndarray:
    """int8 per row: 0 negative, 1 positive, 2 missing, 3 present but not 0 or 1 (the label
    states of ``engine.stats``, and the invalid-label flag, in one byte instead of eight)."""
    y = np.asarray(label)
    code = np.full(y.shape[0], 2, np.int8)
    code[y == 1.0] = 1
    code[y == 0.0] = 0
    code[(code == 2) & ~np.isnan(y)] = 3
    return code


def _float(x: np.ndarray) -> np.ndarray:
    """float32 and float64 columns as they are, anything else as float64."""
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


class CudaKernels:
    """The kernel protocol of ``kernels._api.Kernels`` on a CUDA device (or its simulator).

    Parameters
    ----------
    blocks : int, optional
        Blocks per launch (an upper bound: small inputs get fewer). ``None`` derives it
        from the device: 4 blocks per streaming multiprocessor, or 2 under the simulator.
    threads : int, optional
        Threads per block. ``None`` means 256, or 32 under the simulator (which runs one
        Python thread per CUDA thread).
    shared_bytes : int
        Dynamic shared memory a block may use. Histograms whose int32 counts (and int64
        sums) fit use per-block shared histograms; larger ones fall back to global atomics.
        The default, 48 KiB, needs no opt-in on any device; 0 forces global atomics.
    count_limit : int
        The largest count one block's int32 shared counter may reach; launches are split
        into row ranges that respect it. Only tests lower it.

    Notes
    -----
    Results are identical to ``kernels.cpu.CpuKernels`` bit for bit: counts, sums, binning,
    unit weights, Poisson and normal draws (integer arithmetic, see ``kernels._rng``).
    """

    name = "gpu"
    #: ``engine.stats.Accumulator`` accumulates through :meth:`fused_accumulate`.
    fused = True
    #: Whether ``engine.bootstrap`` takes its draws on the device (``on_device=True``) and
    #: reduces them there with CuPy (if installed). Off by default: CuPy's reductions add in
    #: another order than numpy's and its ``log`` is not numpy's, so the float metrics'
    #: replicates could differ from the CPU's in the last bits, and the same inputs must give
    #: the same findings on every backend. On (``draws_on_device=True``, or
    #: ``PARITY_GPU_BOOTSTRAP=device`` for ``--backend gpu``) only metric values come back.
    draws_on_device = False

    def __init__(
        self,
        blocks: int | None = None,
        threads: int | None = None,
        shared_bytes: int = DEFAULT_SHARED_BYTES,
        count_limit: int = INT32_MAX,
        draws_on_device: bool | None = None,
    ) -> None:
        if draws_on_device is not None:
            self.draws_on_device = bool(draws_on_device)
        if threads is None:
            threads = 32 if _simulated() else 256
        if not (isinstance(threads, int) and 1 <= threads <= 1024):
            raise ValueError(
                "The 'threads' parameter of CudaKernels must be an int in 1..1024. "
                f"Got {threads!r} instead."
            )
        if blocks is None:
            blocks = 2 if _simulated() else 4 * cuda.get_current_device().MULTIPROCESSOR_COUNT
        if not (isinstance(blocks, int) and blocks >= 1):
            raise ValueError(
                "The 'blocks' parameter of CudaKernels must be an int >= 1. "
                f"Got {blocks!r} instead."
            )
        if not (isinstance(shared_bytes, int) and shared_bytes >= 0):
            raise ValueError(
                "The 'shared_bytes' parameter of CudaKernels must be an int >= 0. "
                f"Got {shared_bytes!r} instead."
            )
        if not (isinstance(count_limit, int) and 1 <= count_limit <= INT32_MAX):
            raise ValueError(
                "The 'count_limit' parameter of CudaKernels must be an int in 1..2**31-1. "
                f"Got {count_limit!r} instead."
            )
        self.blocks = blocks
        self.threads = threads
        self.shared_bytes = shared_bytes
        self.count_limit = count_limit
        self._edge_cache: dict[bytes, Any] = {}
        self._no_weights: Any = None
        self._rng_tables: tuple[Any, Any, Any] | None = None
        self._const_cache: dict[tuple, Any] = {}
        self._index_cache: dict[bytes, Any] = {}
        #: The section plan of the last :meth:`fused_accumulate` (``_fused.plan_sections``).
        self.last_fused_plan: np.ndarray | None = None
        #: Set to a dict to time the fused accumulation by phase (seconds, summed over
        #: calls: ``prepare`` (label codes, log-loss terms) and ``stage`` (copies into the
        #: pinned buffers) on the host, ``upload``, ``kernel``, ``download``) and count
        #: ``rows``, ``batches``, ``downloads`` and the bytes of per-row columns the kernel
        #: reads (``row_bytes``). Each phase is then synchronised (nothing overlaps), so
        #: only benchmarks and tests set it.
        self.profile: dict[str, float] | None = None
        self._staging: Staging | None = None
        # one caller at a time stages and launches: the pinned buffers are shared
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CudaKernels(blocks={self.blocks}, threads={self.threads})"

    # ----------------------------------------------------------------- helpers
    def _grid(self, n_work: int) -> tuple[int, int]:
        """(blocks, threads) for ``n_work`` items: no block without work."""
        return max(1, min(self.blocks, -(-n_work // self.threads))), self.threads

    def _edges(self, edges: np.ndarray) -> Any:
        """Validated edges on the device, cached by value (the same edges bin every batch)."""
        host = np.ascontiguousarray(edges, dtype=np.float64)
        key = host.tobytes()
        dev = self._edge_cache.get(key)
        if dev is None:
            if host.ndim != 1 or np.isnan(host).any() or np.any(np.diff(host) <= 0):
                raise ValueError("edges must be a 1-d, strictly increasing array without NaN")
            if len(self._edge_cache) > 64:
                self._edge_cache.clear()
            dev = self._edge_cache[key] = to_device(host)
        return dev

    def _rows(self, x: ArrayLike, dtype: type, what: str) -> Any:
        """A 2-d (rows, n) device array from a 2-d array, a 1-d array or a list of rows.

        A list of 1-d device arrays is stacked on the device (one copy kernel per row); a
        list of host arrays is stacked on the host and copied once.
        """
        if isinstance(x, (list, tuple)):
            if not x:
                raise ValueError(f"The {what!r} argument must hold at least one row. Got none.")
            if not any(is_device_array(r) for r in x):
                return to_device(np.ascontiguousarray(np.stack(x), dtype=dtype))
            rows = [_as_device(r, dtype, what) for r in x]
            n = rows[0].shape[0] if rows else 0
            if any(r.ndim != 1 or r.shape[0] != n for r in rows):
                raise ValueError(f"The rows of {what!r} must be 1-d and of equal length.")
            out = cuda.device_array((len(rows), n), dtype=dtype)
            if n:
                for m, row in enumerate(rows):
                    launch(_kernels.copy_row_kernel, (self._grid(n)), row, out, m)
            return out
        arr = _as_device(x, dtype, what)
        if arr.ndim == 2:
            return arr
        if arr.ndim != 1:
            raise ValueError(f"The {what!r} argument must be 1-d or 2-d. Got {arr.ndim}-d instead.")
        try:
            return arr.reshape(1, arr.shape[0])
        except Exception:  # a strided view cannot be reshaped in place: copy the row
            return self._rows([arr], dtype, what)

    # ----------------------------------------------------------------- binning
    def bin_index(self, values: ArrayLike, edges: np.ndarray, out: ArrayLike | None = None) -> Any:
        """Bins of ``values``: ``searchsorted(edges, values, side="right")``, ``-1`` for NaN.

        Parameters
        ----------
        values : (n,) float32 or float64, host or device
        edges : (m,) float64, strictly increasing
        out : (n,) int32 device array, optional
            Where to write the codes, e.g. ``rows[m]`` of an ``(M, n)`` int32 device array
            that is then passed whole to :meth:`histogram` (no stacking copy).

        Returns
        -------
        (n,) int32 device array
            ``out`` when given. ``.copy_to_host()`` brings it to the host.
        """
        dev_edges = self._edges(edges)
        if is_device_array(values):
            vals = _as_device(values, np.float64, "values")
        else:
            vals = np.asarray(values)
            if vals.dtype not in (np.float32, np.float64):
                vals = vals.astype(np.float64)
            vals = to_device(vals)
        if vals.ndim != 1:
            raise ValueError(f"The 'values' argument must be 1-d. Got {vals.ndim}-d instead.")
        n = vals.shape[0]
        if out is None:
            out = cuda.device_array(n, dtype=np.int32)
        elif not getattr(out, "__cuda_ndarray__", False):
            out = cuda.as_cuda_array(out)
        if out.shape != (n,) or np.dtype(out.dtype) != np.int32:
            raise ValueError(
                f"The 'out' argument of bin_index must be an ({n},) int32 device array. "
                f"Got {tuple(out.shape)} {np.dtype(out.dtype).name} instead."
            )
        if n == 0:
            return out
        m = dev_edges.shape[0]
        # stage the edges in shared memory when they fit (1024 edges: 8 KiB)
        shared = 0 < m * 8 <= self.shared_bytes
        blocks, threads = self._grid(n)
        launch(
            _kernels.bin_index_kernel, (blocks, threads, 0, m * 8 if shared else 0),
            vals, dev_edges, shared, out
        )
        return out

    # ----------------------------------------------------------------- histogram
    def histogram_plan(self, n_cells: int, n_weights: int) -> tuple[bool, bool]:
        """Where a histogram accumulates: (int32 counts in shared memory, int64 sums too).

        Counts go to shared memory when ``4 * n_cells`` bytes fit in ``shared_bytes`` (8192
        cells at 48 KiB), the sums when ``4 * n_cells + 8 * n_weights * n_cells`` do;
        whatever does not fit goes straight to the global int64 output with atomics.
        """
        count_bytes = 4 * n_cells
        sum_bytes = 8 * n_weights * n_cells
        shared_counts = count_bytes <= self.shared_bytes
        shared_sums = (
            shared_counts and n_weights > 0 and count_bytes + sum_bytes <= self.shared_bytes
        )
        return shared_counts, shared_sums

    def histogram_chunk(self, n_dims: int, blocks: int, threads: int) -> int:
        """Rows per histogram launch, so that no int32 shared count exceeds ``count_limit``.

        A row adds at most ``D`` to one cell (distinct inner rows land in distinct cells;
        only outer dimensions with overlapping offsets can hit a cell twice), and a block
        of a grid-stride launch over ``R`` rows handles at most ``ceil(R / (blocks *
        threads)) * threads`` of them. At the default limit a launch covers over 2**31 / D
        rows, so the split only matters for huge batches.
        """
        rows_per_thread = max(1, self.count_limit // max(1, n_dims) // threads)
        return rows_per_thread * threads * blocks

    def histogram(
        self,
        outer: ArrayLike,
        outer_offsets: np.ndarray,
        inner: ArrayLike,
        inner_size: int,
        n_cells: int,
        weights: ArrayLike | None = None,
    ) -> np.ndarray:
        """Fused cell counts and fixed-point sums; see ``kernels._api.Kernels.histogram``.

        Parameters
        ----------
        outer : (D, n) or (n,) int32, or a list of D (n,) rows; host or device
        outer_offsets : (D,) int64, host
        inner : (M, n) or (n,) int32, or a list of M (n,) rows; host or device
            A list of the device arrays returned by :meth:`bin_index` is stacked on the
            device; to skip that copy, let :meth:`bin_index` write into the rows of one
            ``(M, n)`` device array (its ``out`` argument) and pass that array.
        inner_size, n_cells : int
        weights : (V, n) or (n,) int64, or a list of V (n,) rows; host or device, optional

        Returns
        -------
        (1 + V, n_cells) int64 host array
            Row 0 the counts, row ``1 + v`` the sums of ``weights[v]``.

        Raises
        ------
        ValueError
            A row lands outside ``0 .. n_cells - 1`` (the caller's layout is wrong).
        """
        outer_d = self._rows(outer, np.int32, "outer")
        inner_d = self._rows(inner, np.int32, "inner")
        n = outer_d.shape[1]
        n_dims, n_inner = outer_d.shape[0], inner_d.shape[0]
        offsets = np.ascontiguousarray(outer_offsets, dtype=np.int64).reshape(-1)
        if offsets.shape[0] != n_dims:
            raise ValueError(
                f"The 'outer_offsets' argument must hold one offset per outer row ({n_dims}). "
                f"Got {offsets.shape[0]} instead."
            )
        if weights is None:
            n_weights = 0
            if self._no_weights is None:
                self._no_weights = to_device(np.zeros((1, 1), dtype=np.int64))
            weights_d = self._no_weights  # never read: n_weights is 0
        else:
            weights_d = self._rows(weights, np.int64, "weights")
            n_weights = weights_d.shape[0]
            if weights_d.shape[1] != n:
                raise ValueError(
                    f"The 'weights' argument must have {n} columns. "
                    f"Got {weights_d.shape[1]} instead."
                )
        if inner_d.shape[1] != n:
            raise ValueError(
                f"The 'inner' argument must have {n} columns. Got {inner_d.shape[1]} instead."
            )
        n_cells = int(n_cells)
        if n_cells == 0 or n == 0 or n_dims == 0 or n_inner == 0:
            return np.zeros((1 + n_weights, n_cells), dtype=np.int64)

        shared_counts, shared_sums = self.histogram_plan(n_cells, n_weights)
        dyn_bytes = 4 * n_cells * shared_counts + 8 * n_weights * n_cells * shared_sums

        out = to_device(np.zeros((1 + n_weights, n_cells), dtype=np.int64))
        errors = to_device(np.zeros(1, dtype=np.int64))
        dev_offsets = to_device(offsets)
        blocks, threads = self._grid(n)
        chunk = self.histogram_chunk(n_dims, blocks, threads)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            launch(_kernels.histogram_kernel, (blocks, threads, 0, dyn_bytes),
                outer_d,
                dev_offsets,
                inner_d,
                int(inner_size),
                weights_d,
                n_weights,
                n_cells,
                start,
                stop,
                shared_counts,
                shared_sums,
                out,
                errors,
            )
        n_bad = int(errors.copy_to_host()[0])
        if n_bad:
            raise ValueError(
                f"{n_bad} (row, dimension, inner row) triples of histogram land outside "
                f"0..{n_cells - 1}: 'n_cells', 'outer_offsets' or 'inner_size' is too small."
            )
        return out.copy_to_host()

    # ----------------------------------------------------------------- fused accumulate
    def edge_index(self, edges: np.ndarray) -> Any:
        """The CPU's lookup-table index of ``edges`` (``kernels.cpu.EdgeIndex``), cached.

        The accumulator hands it to :meth:`fused_accumulate`, which reads only its edges:
        the device bins by binary search, which the table reproduces exactly.
        """
        from kernels.cpu import EdgeIndex

        host = np.ascontiguousarray(edges, dtype=np.float64)
        key = host.tobytes()
        index = self._index_cache.get(key)
        if index is None:
            if len(self._index_cache) > 64:
                self._index_cache.clear()
            index = self._index_cache[key] = EdgeIndex(host)
        return index

    def _const(self, x: np.ndarray, dtype: np.dtype | type) -> Any:
        """A small table that is the same for every batch (edges, lookup tables), copied to
        the device once and cached by value."""
        host = np.ascontiguousarray(x, dtype=dtype)
        key = (host.dtype.str, host.shape, host.tobytes())
        dev = self._const_cache.get(key)
        if dev is None:
            if len(self._const_cache) > 256:
                self.wait_for_batches()  # a kernel still running may read a table
                self._const_cache.clear()
            dev = self._const_cache[key] = to_device(host)
        return dev

    def fused_plan(self, sizes: list[int], n_edges: int) -> tuple[np.ndarray, bool, int]:
        """Where the fused kernel accumulates: (section plan, edges staged, shared bytes).

        The fine edges are staged in shared memory when they take at most a quarter of
        ``shared_bytes`` (1024 edges: 8 KiB of 48); the sections share the rest
        (``_fused.plan_sections``).
        """
        staged = 0 < n_edges * 8 <= self.shared_bytes // 4
        budget = (self.shared_bytes - 8 * n_edges * staged) // 8
        plan = _fused.plan_sections(sizes, budget)
        n_shared = int(sum(plan[2, s] for s in range(plan.shape[1]) if plan[1, s] >= 0))
        return plan, staged, 8 * (n_shared + n_edges * staged)

    @property
    def staging(self) -> Staging:
        """The double-buffered pinned staging of the per-row columns (made on first use, by
        :meth:`fused_add` under its lock)."""
        if self._staging is None:
            self._staging = Staging()
        return self._staging

    def wait_for_batches(self) -> None:
        """Block until every batch :meth:`fused_add` issued (copies and kernels) is done."""
        if self._staging is not None:
            self._staging.synchronize()

    def device_zeros(self, shape: int | tuple[int, ...], dtype: Any) -> Any:
        """A zeroed device array, zeroed by a kernel (no copy from the host), finished
        before it returns (whatever stream the array is used on next)."""
        out = cuda.device_array(shape, dtype=dtype)
        if out.size:
            stream = cuda.stream()
            launch(_kernels.zero_kernel, self._grid(out.size) + (stream,), out.reshape(out.size))
            stream.synchronize()
        return out

    def fused_statistics(self) -> DeviceStatistics:
        """Empty statistics on the device for :meth:`fused_add` to add batches into."""
        return DeviceStatistics(self)

    def fused_accumulate(self, n_threads: int, *args: Any) -> tuple[np.ndarray, ...]:
        """Every grid of a batch in one kernel launch: ``kernels.cpu_fused.fused_accumulate``
        on the device, same arguments (``n_threads`` is the CPU's and is ignored), same nine
        grids, bit for bit: :meth:`fused_add` into fresh device statistics, downloaded."""
        stats = self.fused_statistics()
        self.fused_add(stats, n_threads, *args)
        return stats.download()

    def fused_add(self, into: DeviceStatistics, n_threads: int, *args: Any) -> None:
        """Add a batch's statistics into ``into`` on the device; nothing comes back.

        ``args`` are those of ``kernels.cpu_fused.fused_accumulate``. The per-row columns are
        staged into the next slot's pinned buffers and copied up asynchronously on its
        stream, where the kernel then runs; the call returns without waiting for either
        (the next batch's host work overlaps them). The constant tables are cached on the
        device.
        """
        from kernels.cpu_fused import log_loss_terms

        (col_index, col_lut, col_unseen, col_null, dim_a, dim_b, dim_b_size, dim_offsets, n_raw,
         score, offline, paired, label, key_null,
         edges, n_score_edges, _kmin, _shift, _lut, _steps, fine_to_calib, n_calib, thresholds,
         delta_edges, n_delta_edges, _dkmin, _dshift, _dlut, _dsteps,
         num_values, num_edges, num_n_edges, _num_lut, _num_lo, _num_scale, _num_steps, num_slot,
         cat_codes, cat_unseen, cat_slot, n_features, feature_bins, n_dq,
         p_scale, ll_scale, ll2_scale, log_eps, value, with_value, value_scale, value2_scale) = args
        n = int(score.shape[0])
        n_raw, F, NC = int(n_raw), int(n_score_edges) + 1, int(n_calib)
        T, DB = int(thresholds.shape[0]), int(n_delta_edges) + 1
        TT = (T + 1) ** 2
        n_features, feature_bins, n_dq = int(n_features), int(feature_bins), int(n_dq)
        paired, with_value = bool(paired), bool(with_value)
        sizes = [0] * _kernels.N_SECTIONS
        sizes[_kernels.SEC_SCORE] = n_raw * 3 * F
        sizes[_kernels.SEC_CALIB] = n_raw * 3 * NC * 4
        sizes[_kernels.SEC_FEAT] = n_raw * n_features * feature_bins
        sizes[_kernels.SEC_PATTERN] = n_raw * 64
        sizes[_kernels.SEC_DQ] = n_raw * n_dq
        if paired:
            sizes[_kernels.SEC_OFF] = n_raw * 3 * F
            sizes[_kernels.SEC_CALIB_OFF] = n_raw * 3 * NC * 4
            sizes[_kernels.SEC_JOINT] = n_raw * TT
            sizes[_kernels.SEC_DELTA] = 3 * n_raw * DB
        if with_value:
            sizes[_kernels.SEC_VALUE] = 3 * n_raw * 3
        plan, staged, dyn_bytes = self.fused_plan(sizes, F - 1)
        self.last_fused_plan = plan
        into.bind(plan, (n_raw, F, NC, TT, DB, n_features, feature_bins, n_dq))
        if not n:
            return
        prof = self.profile
        clock = time.perf_counter()

        def lap(phase: str, stream: Any = None) -> None:
            nonlocal clock
            if prof is not None:
                if stream is not None:
                    stream.synchronize()
                now = time.perf_counter()
                prof[phase] = prof.get(phase, 0.0) + now - clock
                clock = now

        # log-loss terms on the host, by the function the CPU path agrees with (see
        # kernels.cuda._fused); label state as the kernels define it (float32 scores go in
        # as they are: the function widens them exactly, as the CPU kernel does). Before
        # taking a slot: this overlaps the device's work on the previous batches.
        label_code = label_codes(label)
        ll_on = log_loss_terms(_float(score), label_code, float(log_eps))
        ll_off = log_loss_terms(_float(offline), label_code, float(log_eps)) if paired else None
        lap("prepare")
        with self._lock:
            slot = self.staging.acquire()  # its last copies are done: its buffers are free
            clock = time.perf_counter()  # the wait is counted in staging.counters, not here
            row_bytes = 0

            def up(name: str, x: np.ndarray, dtype: Any = None) -> Any:
                nonlocal row_bytes
                d = slot.put(name, x, dtype, prof)
                row_bytes += d.nbytes
                return d

            none = self._const(np.zeros(1), np.float64)  # an argument the kernel does not read
            args_d = (
                up("col_index", col_index, np.int32),
                self._const(col_lut, np.int32),
                self._const(col_unseen, np.bool_),
                self._const(col_null, np.int32),
                self._const(dim_a, np.int32),
                self._const(dim_b, np.int32),
                self._const(dim_b_size, np.int64),
                self._const(dim_offsets, np.int64),
                up("score", score),
                up("offline", offline) if paired else none,
                paired,
                up("label_code", label_code),
                up("key_null", key_null, np.bool_),
                up("ll_on", ll_on),
                up("ll_off", ll_off) if paired else none,
                self._const(np.asarray(edges)[: F - 1], np.float64),
                self._const(fine_to_calib, np.int64),
                NC,
                self._const(thresholds, np.float64) if T else self._const(np.zeros(0), np.float64),
                self._const(np.asarray(delta_edges)[: DB - 1], np.float64),
                up("num_values", num_values),
                self._const(num_edges, np.float64),
                self._const(num_n_edges, np.int64),
                self._const(num_slot, np.int64),
                up("cat_codes", cat_codes, np.int32),
                up("cat_unseen", cat_unseen, np.bool_),
                self._const(cat_slot, np.int64),
                feature_bins,
                n_dq,
                float(p_scale),
                float(ll_scale),
                float(ll2_scale),
                up("value", value, np.float64) if with_value else none,
                with_value,
                float(value_scale),
                float(value2_scale),
                staged,
                self._const(plan, np.int64),
                int(sum(plan[2, s] for s in range(plan.shape[1]) if plan[1, s] >= 0)),
                into.flat,
            )
            slot.copies_issued()
            clock = time.perf_counter()  # the copies were timed by slot.put
            blocks, threads = self._grid(n)
            launch(_kernels.fused_accumulate_kernel, (blocks, threads, slot.stream, dyn_bytes), 0, n, *args_d)
            lap("kernel", slot.stream)
            if prof is not None:
                prof["row_bytes"] = prof.get("row_bytes", 0) + row_bytes
                prof["rows"] = prof.get("rows", 0) + n
                prof["batches"] = prof.get("batches", 0) + 1

    # ----------------------------------------------------------------- draws
    def poisson_cells(
        self,
        seed: int,
        role: int,
        cell_keys: ArrayLike,
        counts: ArrayLike,
        rep_start: int,
        n_reps: int,
        on_device: bool = False,
    ) -> Any:
        """Poisson(``counts``) per (replicate, cell); see ``kernels._api.Kernels.poisson_cells``.

        Parameters
        ----------
        counts : (C,) whole numbers, host; or an int64 device array (not checked)
        on_device : bool
            Return the draws on the device (no copy back).

        Returns
        -------
        (n_reps, C) int64 host array, or device array with ``on_device``
        """
        keys = self._keys(cell_keys, "cell_keys")
        n_keys = keys.shape[0]
        if is_device_array(counts):
            counts_d = _as_device(counts, np.int64, "counts")
        else:
            counts_d = to_device(_rng.as_counts(counts, n_keys))
        if n_reps <= 0 or n_keys == 0:
            return self._empty((max(n_reps, 0), n_keys), np.int64, on_device)
        out = cuda.device_array((n_reps, n_keys), dtype=np.int64)
        base = np.uint64(_rng.stream_base(seed, role, _rng.STREAM_POISSON))
        ztab, ptab, _ = self._tables()
        launch(_kernels.poisson_cells_kernel, (self._grid(n_reps * n_keys)),
            base, keys, counts_d, int(rep_start), int(n_reps), ztab, ptab, out
        )
        return out if on_device else out.copy_to_host()

    def normal_cells(
        self, seed: int, role: int, cell_keys: ArrayLike, rep_start: int, n_reps: int, on_device: bool = False
    ) -> Any:
        """Standard normal per (replicate, cell), independent of :meth:`poisson_cells`.

        Returns
        -------
        (n_reps, C) float64 host array, or device array with ``on_device``
        """
        keys = self._keys(cell_keys, "cell_keys")
        n_keys = keys.shape[0]
        if n_reps <= 0 or n_keys == 0:
            return self._empty((max(n_reps, 0), n_keys), np.float64, on_device)
        out = cuda.device_array((n_reps, n_keys), dtype=np.float64)
        base = np.uint64(_rng.stream_base(seed, role, _rng.STREAM_NORMAL))
        launch(_kernels.normal_cells_kernel, (self._grid(n_reps * n_keys)),
            base, keys, int(rep_start), int(n_reps), self._tables()[0], out
        )
        return out if on_device else out.copy_to_host()

    def _empty(self, shape: tuple[int, int], dtype: Any, on_device: bool) -> Any:
        """Draws of no replicate or no cell: zeros where the caller wants them."""
        return self.device_zeros(shape, dtype) if on_device else np.zeros(shape, dtype=dtype)

    def unit_weights(self, seed: int, unit_ids: ArrayLike, rep_start: int, n_reps: int) -> Any:
        """Poisson(1) weights per (replicate, row) from a hash of (seed, unit id, replicate).

        Parameters
        ----------
        unit_ids : (n,) uint64, host or device (int64 device ids are reinterpreted as uint64,
            as ``astype(np.uint64)`` does)

        Returns
        -------
        (n_reps, n) int32 device array
            ``.copy_to_host()`` brings it to the host.
        """
        ids = self._keys(unit_ids, "unit_ids")
        n = ids.shape[0]
        out = cuda.device_array((max(n_reps, 0), n), dtype=np.int32)
        if n_reps <= 0 or n == 0:
            return out
        base = np.uint64(_rng.stream_base(seed, 0, _rng.STREAM_UNIT))
        launch(_kernels.unit_weights_kernel, (self._grid(n_reps * n)),
            base, ids, int(rep_start), int(n_reps), self._tables()[2], out
        )
        return out

    def unit_histogram(
        self, seed: int, unit_ids: ArrayLike, cells: ArrayLike, n_cells: int, rep_start: int, n_reps: int,
        out: Any = None,
    ) -> Any:
        """Cell counts of the unit-level bootstrap; see ``kernels._api.Kernels.unit_histogram``.

        Rows x replicates in one launch: a thread draws its row's weight in every replicate
        and adds it to the row's cells, in a per-block shared copy of the counts when
        ``8 * n_reps * n_cells`` bytes fit in ``shared_bytes``, else with global atomics.
        Counts are int64 and exact; the result is identical to the CPU's.

        Parameters
        ----------
        out : (n_reps, n_cells) int64 device array, optional
            Add the counts into it and return it, on the device (the accumulate stage keeps
            them there across batches). Without it, the counts come back as a host array.
        """
        ids = self._keys(unit_ids, "unit_ids")
        cells_d = self._rows(cells, np.int32, "cells")
        n = ids.shape[0]
        if cells_d.shape[1] != n:
            raise ValueError(f"The 'cells' argument must have {n} columns. Got {cells_d.shape[1]} instead.")
        n_reps, n_cells = max(int(n_reps), 0), int(n_cells)
        resident = out is not None
        if not resident:
            out = self.device_zeros((n_reps, n_cells), np.int64)
        elif tuple(out.shape) != (n_reps, n_cells) or np.dtype(out.dtype) != np.int64:
            raise ValueError(
                f"The 'out' argument of unit_histogram must be an ({n_reps}, {n_cells}) int64 device array. "
                f"Got {tuple(out.shape)} {np.dtype(out.dtype).name} instead."
            )
        if n_reps and n and n_cells:
            shared = 8 * n_reps * n_cells <= self.shared_bytes
            base = np.uint64(_rng.stream_base(seed, 0, _rng.STREAM_UNIT))
            blocks, threads = self._grid(n)
            launch(
                _kernels.unit_histogram_kernel, (blocks, threads, 0, 8 * n_reps * n_cells if shared else 0),
                base, ids, cells_d, int(rep_start), n_reps, n_cells, self._tables()[2], shared, out,
            )
        return out if resident else out.copy_to_host()

    def _tables(self) -> tuple[Any, Any, Any]:
        """The generator's tables on the device, copied once: ``_rng.NORMAL_TABLE``,
        ``_rng.POISSON_TABLE`` and ``_rng.POISSON1_THRESHOLDS``."""
        if self._rng_tables is None:
            self._rng_tables = tuple(
                to_device(t) for t in (_rng.NORMAL_TABLE, _rng.POISSON_TABLE, _rng.POISSON1_THRESHOLDS)
            )
        return self._rng_tables

    def _keys(self, keys: ArrayLike, what: str) -> Any:
        """(n,) uint64 keys on the device; 64-bit integer device keys are viewed as uint64."""
        if not is_device_array(keys):
            return to_device(np.ascontiguousarray(keys, dtype=np.uint64).reshape(-1))
        arr = _as_device(keys, np.uint64, what)
        if arr.ndim != 1:
            raise ValueError(f"The {what!r} argument must be 1-d. Got {arr.ndim}-d instead.")
        dtype = np.dtype(arr.dtype)
        if dtype == np.uint64:
            return arr
        if dtype.itemsize == 8:
            return arr.view(np.uint64)
        # narrower integers: widen on the device, as astype(np.uint64) does
        out = cuda.device_array((1, arr.shape[0]), dtype=np.uint64)
        if arr.shape[0]:
            launch(_kernels.copy_row_kernel, (self._grid(arr.shape[0])), arr, out, 0)
        return out.reshape(arr.shape[0])
