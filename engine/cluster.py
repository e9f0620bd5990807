"""Dask execution of a check: the partitioned plan of :mod:`engine.partition` as a task graph.

The graph has three layers, every task pure (so a task lost with a killed worker is simply
run again, and the result does not depend on which worker ran what):

- one **split** task per input fragment (a file, a slice of an in-memory table, or a
  partition of a Dask DataFrame): read the columns the check needs, cut by key bucket;
- one **bucket** task per key bucket: join its pieces (DuckDB, the single-process join) and
  accumulate them on the run's backend, resolved on the worker (``auto`` uses a worker's GPU);
- a **tree reduction** of the buckets' partial statistics (fan-in 8).

Two fast paths for inputs that are already co-partitioned, where nothing is split or moved:
Dask DataFrames indexed by the (single) key with the same known divisions (partition ``j``
of each is bucket ``j``), and directories hive-partitioned on ``partition_column`` (each
value is a bucket, its files read by the bucket's task).

The ``model_version`` pre-pass (its values become a slice) runs as a first, small graph.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from engine.encode import count_values
from engine.errors import ConfigError
from engine.partition import (
    SIDES,
    BucketJob,
    Fragment,
    Partial,
    fragments,
    fragments_by_value,
    frame_to_arrow,
    join_bucket,
    merge_partials,
    split_fragment,
)

__all__ = ["client_for", "count_column", "is_dask_frame", "run_job"]

#: Partials merged by one reduction task.
FAN_IN = 8


def is_dask_frame(obj: Any) -> bool:
    """Whether ``obj`` is a Dask DataFrame (without importing Dask when it is not loaded)."""
    if "dask" not in sys.modules:
        return False
    import dask.dataframe as dd

    return isinstance(obj, dd.DataFrame)


@contextlib.contextmanager
def client_for(scheduler: str | Any) -> Iterator[Any]:
    """A ``distributed.Client`` for ``--scheduler``.

    Parameters
    ----------
    scheduler : str or distributed.Client
        ``"local"`` starts a ``LocalCluster`` of one single-threaded worker process per core
        (closed on exit); ``"tcp://host:port"`` (or any address ``distributed`` accepts)
        connects to a running scheduler; a ``Client`` is used as it is (and left open).

    Yields
    ------
    distributed.Client

    Raises
    ------
    ConfigError
        Dask is not installed, or the scheduler cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ConfigError(
            "The Dask scheduler needs 'distributed': pip install 'parity[dask]'."
        ) from exc
    if isinstance(scheduler, Client):
        yield scheduler
        return
    if not isinstance(scheduler, str) or not scheduler:
        raise ConfigError(f"The scheduler must be 'local' or an address such as 'tcp://host:8786'. Got {scheduler!r} instead.")
    if scheduler == "local":
        workers = max(1, os.cpu_count() or 1)
        with LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster, Client(cluster) as client:
            yield client
        return
    if "://" not in scheduler and ":" not in scheduler:
        raise ConfigError(
            f"The scheduler must be 'local' or an address such as 'tcp://host:8786'. Got {scheduler!r} instead."
        )
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"Could not connect to the Dask scheduler at {scheduler!r}: {exc}") from exc
    with client:
        yield client


def _inputs(side: str, source: Any, rows: int) -> list[Any]:
    """What the split tasks read: the delayed partitions of a Dask DataFrame, the
    ``rows``-row fragments of files, or ``rows``-row copies of an in-memory table (a
    fragment of it would carry the whole table into every task's arguments)."""
    if is_dask_frame(source):
        return list(source.to_delayed())
    parts = fragments(side, source, rows)
    if not source.files:  # a compact copy of each slice: a slice would be sent with the whole table
        return [source.memory_rows(*f.rows).take(pa.array(np.arange(f.rows[1] - f.rows[0]))) for f in parts]
    return parts


def _co_partitioned(frames: Sequence[Any], keys: Sequence[str]) -> bool:
    """Dask DataFrames indexed by the single key, with the same known divisions."""
    if len(keys) != 1 or not all(is_dask_frame(f) for f in frames):
        return False
    first = frames[0]
    return all(
        f.known_divisions and f.index.name == keys[0] and tuple(f.divisions) == tuple(first.divisions)
        for f in frames
    )


def _count_piece(piece: Fragment | Any, column: str) -> Counter:
    if isinstance(piece, Fragment):
        table = piece.read([column])
    elif isinstance(piece, pa.Table):
        table = piece.select([column])
    else:
        table = frame_to_arrow(piece[[column]])
    return count_values(table.to_batches(), column)


def _sum_counts(counts: Sequence[Counter]) -> Counter:
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    return total


def count_column(client: Any, source: Any, column: str, rows: int) -> Counter:
    """Exact value counts of one online column, computed on the cluster (``rows`` rows per
    task)."""
    from dask import delayed

    parts = [delayed(_count_piece, pure=True)(p, column) for p in _inputs("online", source, rows)]
    return client.compute(delayed(_sum_counts, pure=True)(parts)).result()


def _tree(parts: list[Any]) -> Any:
    from dask import delayed

    while len(parts) > 1:
        parts = [
            delayed(merge_partials, pure=True)(parts[i : i + FAN_IN])
            for i in range(0, len(parts), FAN_IN)
        ]
    return parts[0]


def run_job(client: Any, job: BucketJob, sources: dict[str, Any], *, progress: bool = False) -> tuple[Partial, int]:
    """Run a check's partitioned plan on a Dask cluster.

    Parameters
    ----------
    client : distributed.Client
    job : BucketJob
        With ``n_buckets`` already chosen (ignored for co-partitioned inputs, whose
        partitions or partition values are the buckets).
    sources : dict
        ``side -> TableSource or Dask DataFrame`` for each table the run joins.
    progress : bool
        Show Dask's progress bar (on a terminal).

    Returns
    -------
    (Partial, int)
        The merged statistics and join counts of every bucket, and the number of buckets.
    """
    from dask import delayed

    sides = [s for s in SIDES if s in sources]
    job_d = delayed(job, pure=True)
    if job.partition_column is not None:
        # co-partitioned files: one bucket per value, its fragments read by the bucket task
        by_value = fragments_by_value(sources, job.partition_column, job.fragment_rows)
        buckets = [
            delayed(join_bucket, pure=True)(job_d, *[frags.get(s, []) if s in sources else None for s in SIDES])
            for frags in by_value.values()
        ]
    elif _co_partitioned([sources[s] for s in sides], job.spec.keys):
        parts = {s: [_indexed(p) for p in sources[s].to_delayed()] for s in sides}
        one_d = delayed(replace(job, n_buckets=1), pure=True)
        pieces = {
            s: [delayed(split_fragment, pure=True)(one_d, p, s) for p in parts[s]] for s in sides
        }
        buckets = [
            delayed(join_bucket, pure=True)(
                one_d, *[pieces[s][j] if s in pieces else None for s in SIDES]
            )
            for j in range(len(parts["online"]))
        ]
    else:
        splits = {
            s: [
                delayed(split_fragment, pure=True, nout=job.n_buckets)(job_d, p, s)
                for p in _inputs(s, sources[s], job.fragment_rows)
            ]
            for s in sides
        }
        buckets = []
        for j in range(job.n_buckets):
            args = [
                [piece[j] for piece in splits[s]] if s in splits else None
                for s in SIDES
            ]
            buckets.append(delayed(join_bucket, pure=True)(job_d, *args))
    future = client.compute(_tree(buckets))
    if progress:
        from distributed import progress as dask_progress

        dask_progress(future)
    return future.result(), len(buckets)


def _reset_index(frame: Any) -> Any:
    return frame.reset_index()


def _indexed(part: Any) -> Any:
    """A co-partitioned frame's partition with its key index back as a column."""
    from dask import delayed

    return delayed(_reset_index, pure=True)(part)
