"""Pinned, double-buffered staging of a batch's per-row columns, and device-resident statistics.

Host to device
--------------
Numba copies a pageable host array through the driver's own bounce buffer, synchronously
(6.6 GB/s on an H200, 2026-11-26); from page-locked ("pinned") memory the copy is a DMA at
the bus's rate (43.9 GB/s there) and returns at once. So each column of a batch is first
copied on the host into a pinned buffer kept between batches (:class:`Slot`), then copied to
a device buffer, also kept, asynchronously on the slot's stream.

There are two slots, used in turn, each with its own stream: batch ``k + 1``'s columns are
staged on the host and copied up on one stream while batch ``k``'s kernel runs on the other.
A slot's pinned buffers are overwritten only once its previous copies have completed (an
event recorded after them); its device buffers are rewritten by copies on its own stream,
which the previous kernel on that stream has finished with. Kernels of consecutive batches
may run at once: they only add into the statistics with atomics, so the order is free.

Statistics on the device
------------------------
:class:`DeviceStatistics` is one flat int64 statistics buffer on the device (the layout of
``_fused.plan_sections``), zeroed once; every batch's kernel adds into it, and
:meth:`DeviceStatistics.download` brings the sum back in one copy (integer addition is
associative: the same integers as adding each batch's statistics on the host).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from numba import cuda

from kernels.cuda import _fused

#: Growth factor of a staging buffer that is too small: a slightly larger batch later (the
#: join's batches vary a little) does not allocate again.
GROWTH = 1.25


def canonical_layout(a: np.ndarray) -> bool:
    """Whether ``a`` is laid out as a fresh C-contiguous array: every stride, also of axes
    of length 1, what ``np.empty(a.shape, a.dtype)`` would have.

    numpy calls ``x[None, :]`` C-contiguous although its first stride is 0, and
    ``np.ascontiguousarray`` returns it unchanged; Numba's ``cuda.to_device`` then copies it
    through a slow path (10M int32 rows: 16 s instead of 6 ms on an H200, 2026-11-26).
    """
    expect = a.itemsize
    for size, stride in zip(reversed(a.shape), reversed(a.strides)):
        if stride != expect:
            return False
        expect *= size
    return True


def copy_up(dst: Any, src: np.ndarray, stream: Any) -> None:
    """The one asynchronous host-to-device copy: ``src`` (pinned, canonical) into ``dst``.

    Refuses a ``src`` whose layout Numba copies slowly (:func:`canonical_layout`).
    """
    if not canonical_layout(src):
        raise ValueError(
            f"A host array of shape {src.shape} and strides {src.strides} is not laid out "
            "canonically: stage it into a fresh buffer first."
        )
    dst.copy_to_device(src, stream=stream)


class Slot:
    """One set of staging buffers: per column a pinned host buffer and a device buffer, both
    kept between batches (grown when a batch needs more), and the stream their copies and
    the batch's kernel run on.

    Parameters
    ----------
    counters : dict
        Shared with the owner: ``pinned_allocations`` counts pinned buffers allocated.
    """

    def __init__(self, counters: dict[str, int]) -> None:
        self.stream = cuda.stream()
        self._copied: Any = None  # event after the last batch's copies on self.stream
        self._host: dict[str, np.ndarray] = {}
        self._dev: dict[str, Any] = {}
        self._counters = counters

    def wait(self) -> float:
        """Block until this slot's previous copies have completed (its pinned buffers may be
        overwritten then); the seconds waited."""
        if self._copied is None:
            return 0.0
        t = time.perf_counter()
        self._copied.synchronize()
        self._copied = None
        return time.perf_counter() - t

    def put(self, name: str, x: np.ndarray, dtype: Any = None, profile: dict[str, float] | None = None) -> Any:
        """``x`` (converted to ``dtype``) on the device: copied into this slot's pinned buffer
        ``name`` on the host, then asynchronously into its device buffer.

        Returns the device array, of ``x``'s shape, valid until this slot is used again.
        ``profile``: add the host copy's seconds to ``stage`` and, synchronising, the
        device copy's to ``upload``.
        """
        x = np.asarray(x)
        dtype = x.dtype if dtype is None else np.dtype(dtype)
        size = int(x.size)
        if not size:  # e.g. no categorical features: nothing to copy
            return cuda.device_array(x.shape, dtype=dtype)
        host, dev = self._host.get(name), self._dev.get(name)
        if host is None or host.dtype != dtype or host.size < size:
            # the device buffer may still be read by this stream's last kernel
            self.stream.synchronize()
            cap = max(1, int(size * GROWTH))
            host = self._host[name] = cuda.pinned_array(cap, dtype=dtype)
            dev = self._dev[name] = cuda.device_array(cap, dtype=dtype)
            self._counters["pinned_allocations"] = self._counters.get("pinned_allocations", 0) + 1
        t0 = time.perf_counter()
        h = host[:size].reshape(x.shape)
        np.copyto(h, x, casting="unsafe")  # the conversion and the host copy in one pass
        t1 = time.perf_counter()
        d = dev[:size].reshape(x.shape)
        copy_up(d, h, self.stream)
        if profile is not None:
            self.stream.synchronize()
            profile["stage"] = profile.get("stage", 0.0) + t1 - t0
            profile["upload"] = profile.get("upload", 0.0) + time.perf_counter() - t1
        return d

    def copies_issued(self) -> None:
        """Mark the end of this batch's copies (before its kernel): the pinned buffers are free
        once the stream has passed this point."""
        self._copied = cuda.event()
        self._copied.record(self.stream)


class Staging:
    """Two :class:`Slot` used in turn (double buffering), for one caller at a time.

    ``counters``: ``pinned_allocations`` (pinned buffers allocated so far) and
    ``slot_wait`` (seconds the host waited for a slot's copies to complete).
    """

    def __init__(self, n_slots: int = 2) -> None:
        self.counters: dict[str, Any] = {"pinned_allocations": 0, "slot_wait": 0.0}
        self._slots = [Slot(self.counters) for _ in range(n_slots)]
        self._next = 0

    def acquire(self) -> Slot:
        """The next slot, once its previous copies have completed."""
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        self.counters["slot_wait"] += slot.wait()
        return slot

    def synchronize(self) -> None:
        """Wait for everything issued on every slot's stream (copies and kernels)."""
        for slot in self._slots:
            slot.stream.synchronize()


class DeviceStatistics:
    """A flat int64 statistics buffer on the device that batches add into.

    Made by ``CudaKernels.fused_statistics``; ``CudaKernels.fused_add`` binds it to the
    layout of the first batch (allocating and zeroing it once) and adds every batch into it;
    :meth:`download` copies the sum back once and unpacks it into the nine grids of
    ``kernels.cpu_fused.fused_accumulate``.
    """

    def __init__(self, kernels: Any) -> None:
        self._kernels = kernels
        self.plan: np.ndarray | None = None
        self.dims: tuple[int, ...] | None = None
        self.flat: Any = None  # the device buffer

    def bind(self, plan: np.ndarray, dims: tuple[int, ...]) -> None:
        """Allocate and zero the buffer for ``plan`` (first batch); later batches must have
        the same layout."""
        if self.plan is None:
            self.plan, self.dims = plan, dims
            self.flat = self._kernels.device_zeros(int(plan[2].sum()), np.int64)
        elif dims != self.dims or not np.array_equal(plan, self.plan):
            raise ValueError(
                "A batch of another layout was added to device statistics: one DeviceStatistics "
                "holds the statistics of one accumulator."
            )

    def download(self) -> tuple[np.ndarray, ...]:
        """The sum of every batch added so far, as the nine grids (one device-to-host copy,
        after every kernel that adds into the buffer has finished)."""
        if self.plan is None:
            raise ValueError("No batch was added to these device statistics: their layout is unknown.")
        k = self._kernels
        prof = k.profile
        t = time.perf_counter()
        k.wait_for_batches()
        host = self.flat.copy_to_host()
        if prof is not None:
            prof["download"] = prof.get("download", 0.0) + time.perf_counter() - t
            prof["downloads"] = prof.get("downloads", 0) + 1
        return _fused.unpack(host, self.plan, *self.dims)
