"""Checkpoint and resume: the partitioned plan run in one process, its progress on disk.

``parity check --checkpoint DIR`` runs the plan of :mod:`engine.partition` locally and
records, in ``DIR``:

``plan.json``
    What the partial results depend on besides the data: engine version, baseline, layout,
    join spec, columns, backend-independent options, and the number of key buckets. A
    directory written for another plan is cleared; a non-empty directory that is not a
    checkpoint is refused.
``split/<side>-<digest>/b<j>.arrow``
    The columns the check reads from one input fragment (a file), cut by key bucket (Arrow
    IPC), under the fragment's content fingerprint (path, size, Parquet footer or CSV
    bytes). A fragment already split is not read again; a changed fragment gets a new
    digest and is split again; pieces of fragments that are gone are removed.
``bucket/b<j>-<inputs>.npz`` and ``.json``
    One bucket's statistics and join counts, under a hash of the digests of every fragment
    it was computed from: a bucket whose inputs all stayed the same is not recomputed.
    With ``partition_column`` (co-partitioned inputs) nothing is split: a bucket is one
    value of the column (``v<hash of the value>-<inputs>``) and depends only on the files
    under that value, so a new day's folder costs one bucket and the other days are reused.

Every file is written under a temporary name and renamed into place, so a run killed at any
moment leaves only complete entries; the next run with the same arguments resumes and gives
exactly the result of an uninterrupted run (statistics merge by exact integer addition).

The disk it needs: the columns the check reads, in Arrow IPC (uncompressed), once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from engine import __version__
from engine.errors import ConfigError
from engine.join import JoinReport
from engine.partition import (
    SIDES,
    BucketJob,
    Fragment,
    Partial,
    fragments,
    fragments_by_value,
    join_bucket,
    merge_partials,
    split_fragment,
)
from engine.stats import Statistics

__all__ = ["run_checkpointed"]

def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _plan_identity(job: BucketJob, baseline_id: str) -> dict[str, Any]:
    """What a checkpoint's partial results depend on, besides the data and the bucket count
    (as it reads back from JSON: tuples as lists, so that it compares equal with a stored one)."""
    spec = json.loads(json.dumps(asdict(job.spec)))
    return {
        "engine_version": __version__,
        "baseline_id": baseline_id,
        "layout": job.layout.fingerprint(),
        "spec": spec,
        "columns": job.columns,
        "key_kinds": list(job.key_kinds),
        "paired": job.paired,
        "with_value": job.with_value,
        "partition_column": job.partition_column,
        "windows": None if job.windows is None else job.windows.key(),
        "unit": None if job.unit is None else job.unit.key(),
        "schemas": {s: str(sc) for s, sc in sorted(job.schemas.items())},
    }


class _Store:
    """The checkpoint directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, identity: dict[str, Any], n_buckets: int) -> None:
        self.root = Path(root)
        self.split_dir = self.root / "split"
        self.bucket_dir = self.root / "bucket"
        plan_path = self.root / "plan.json"
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"The checkpoint path '{self.root}' is a file, not a directory.")
        plan = None
        if plan_path.exists():
            try:
                plan = json.loads(plan_path.read_text())
            except (OSError, ValueError):
                plan = None
        elif self.root.exists() and any(self.root.iterdir()):
            raise ConfigError(
                f"The checkpoint directory '{self.root}' is not empty and holds no parity "
                "checkpoint (no plan.json); give an empty or new directory."
            )
        if plan is not None and plan.get("identity") == identity:
            self.n_buckets = int(plan["n_buckets"])
            self.resumed = True
        else:
            # another plan (other arguments or version): its partial results do not apply
            for d in (self.split_dir, self.bucket_dir):
                shutil.rmtree(d, ignore_errors=True)
            self.n_buckets = n_buckets
            self.resumed = False
        self.split_dir.mkdir(parents=True, exist_ok=True)
        self.bucket_dir.mkdir(parents=True, exist_ok=True)
        for stale in list(self.split_dir.glob(".tmp-*")) + list(self.bucket_dir.glob(".tmp-*")):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
        if not self.resumed:
            text = json.dumps({"identity": identity, "n_buckets": self.n_buckets}, sort_keys=True, indent=1)
            _atomic_write(plan_path, lambda p: p.write_text(text))

    # ------------------------------------------------------------------ split pieces
    def piece_dir(self, side: str, digest: str) -> Path:
        return self.split_dir / f"{side}-{_digest(digest)[:32]}"

    def write_pieces(self, side: str, digest: str, pieces: list[pa.Table]) -> None:
        final = self.piece_dir(side, digest)
        if final.exists():
            return
        tmp = self.split_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for j, piece in enumerate(pieces):
                with pa.OSFile(str(tmp / f"b{j}.arrow"), "wb") as sink:
                    with pa.ipc.new_file(sink, piece.schema) as writer:
                        writer.write_table(piece)
            os.replace(tmp, final)  # the directory appears complete or not at all
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def read_piece(self, side: str, digest: str, bucket: int) -> pa.Table:
        path = self.piece_dir(side, digest) / f"b{bucket}.arrow"
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).read_all()

    def keep_only(self, kept: set[str]) -> None:
        """Remove the pieces of fragments no longer among the inputs."""
        for d in self.split_dir.iterdir():
            if d.is_dir() and d.name not in kept:
                shutil.rmtree(d, ignore_errors=True)

    # ---------------------------------------------------------------- bucket results
    def bucket_path(self, bucket: str, inputs: str) -> Path:
        return self.bucket_dir / f"{bucket}-{inputs[:32]}.npz"

    def load_bucket(self, bucket: str, inputs: str) -> Partial | None:
        npz = self.bucket_path(bucket, inputs)
        if not npz.exists():
            return None
        report = JoinReport(**json.loads(npz.with_suffix(".json").read_text()))
        return Partial(Statistics.from_npz(npz), report)

    def save_bucket(self, bucket: str, inputs: str, partial: Partial) -> None:
        npz = self.bucket_path(bucket, inputs)
        report = {f.name: getattr(partial.report, f.name) for f in fields(JoinReport)}
        # the report first: a bucket counts as done once its .npz exists
        _atomic_write(npz.with_suffix(".json"), lambda p: p.write_text(json.dumps(report)))
        # (the temporary name ends in .npz too, so numpy does not append another)
        _atomic_write(npz, partial.stats.to_npz)

    def keep_buckets(self, kept: set[Path]) -> None:
        for f in self.bucket_dir.iterdir():
            if f.with_suffix(".npz") not in kept:
                f.unlink(missing_ok=True)


def run_checkpointed(
    job: BucketJob,
    sources: dict[str, Any],
    root: str | os.PathLike,
    *,
    baseline_id: str,
    progress: Callable[[int], None] | None = None,
) -> tuple[Partial, dict[str, Any]]:
    """Run the partitioned plan in this process, resuming from ``root``.

    Parameters
    ----------
    job : BucketJob
        ``n_buckets`` is used for a new checkpoint; a resumed one keeps its own.
    sources : dict
        ``side -> TableSource`` of each table the run joins.
    root : path
        The checkpoint directory (created when absent).
    baseline_id : str
    progress : callable, optional
        Called with the online rows of each bucket as it is done (computed or loaded).

    Returns
    -------
    (Partial, dict)
        The merged result, and what was reused: ``{"resumed", "buckets", "buckets_reused",
        "fragments", "fragments_reused"}`` (``fragments_reused`` is None with
        ``partition_column``: nothing is split then).
    """
    try:
        store = _Store(root, _plan_identity(job, baseline_id), job.n_buckets)
        job = replace(job, n_buckets=store.n_buckets)
        if job.partition_column is not None:
            partials, info = _by_value(store, job, sources, progress)
        else:
            partials, info = _by_key_hash(store, job, sources, progress)
    except OSError as exc:  # a full disk, a read-only or vanished directory
        raise ConfigError(
            f"Could not use the checkpoint directory '{root}': {exc.strerror or exc}. "
            "Give a directory with room for the columns the check reads."
        ) from exc
    return merge_partials(partials), {"resumed": store.resumed, **info}


def _digest(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _by_key_hash(
    store: _Store, job: BucketJob, sources: dict[str, Any], progress: Callable[[int], None] | None
) -> tuple[list[Partial], dict[str, Any]]:
    """Split every fragment once (kept on disk), then join each key bucket."""
    sides = [s for s in SIDES if s in sources]
    frags: dict[str, list[tuple[Fragment, str]]] = {
        s: [(f, f.digest()) for f in fragments(s, sources[s], job.fragment_rows)] for s in sides
    }
    reused_fragments = 0
    for side in sides:
        for frag, digest in frags[side]:
            if store.piece_dir(side, digest).exists():
                reused_fragments += 1
            else:
                store.write_pieces(side, digest, split_fragment(job, frag, side))
    store.keep_only({store.piece_dir(s, d).name for s in sides for _, d in frags[s]})

    # every bucket holds rows of every fragment: one digest of them all
    inputs = _digest({s: [d for _, d in frags[s]] for s in sides})
    partials, kept, reused_buckets = [], set(), 0
    for j in range(job.n_buckets):
        partial = store.load_bucket(f"b{j}", inputs)
        if partial is None:
            pieces = {s: [store.read_piece(s, d, j) for _, d in frags[s]] for s in sides}
            partial = join_bucket(job, *[pieces.get(s) for s in SIDES])
            store.save_bucket(f"b{j}", inputs, partial)
        else:
            reused_buckets += 1
        kept.add(store.bucket_path(f"b{j}", inputs))
        partials.append(partial)
        if progress is not None:
            progress(partial.report.online_rows)
    store.keep_buckets(kept)
    return partials, {
        "buckets": job.n_buckets,
        "buckets_reused": reused_buckets,
        "fragments": sum(len(v) for v in frags.values()),
        "fragments_reused": reused_fragments,
    }


def _by_value(
    store: _Store, job: BucketJob, sources: dict[str, Any], progress: Callable[[int], None] | None
) -> tuple[list[Partial], dict[str, Any]]:
    """Co-partitioned inputs: one bucket per partition value, recomputed only when the
    files under that value changed (nothing is split)."""
    assert job.partition_column is not None
    by_value = fragments_by_value(sources, job.partition_column, job.fragment_rows)
    partials, kept, reused = [], set(), 0
    for value, frags in by_value.items():
        name = "v" + _digest(value)[:16]
        inputs = _digest({s: [f.digest() for f in fs] for s, fs in sorted(frags.items())})
        partial = store.load_bucket(name, inputs)
        if partial is None:
            partial = join_bucket(job, *[frags.get(s, []) if s in sources else None for s in SIDES])
            store.save_bucket(name, inputs, partial)
        else:
            reused += 1
        kept.add(store.bucket_path(name, inputs))
        partials.append(partial)
        if progress is not None:
            progress(partial.report.online_rows)
    store.keep_buckets(kept)
    n = sum(len(fs) for frags in by_value.values() for fs in frags.values())
    return partials, {"buckets": len(by_value), "buckets_reused": reused, "fragments": n,
                      "fragments_reused": None}
