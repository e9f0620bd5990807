"""The run history: an append-only store, one JSON record per run, written atomically.

Layout of a history directory (``--history DIR``)::

    20261105T120000Z_<run id>.json     the run's JSON document (the output contract)
    20261105T120000Z_<run id>.stats/   the run's online statistics on its layout: a baseline
                                       directory (layout.json, statistics.npz, config.yaml,
                                       manifest.json), so a later run can check against it

Files are named ``<started_at>_<run id>`` (UTC, sortable), so the names list the runs in
time order; nothing is ever rewritten.

Writes are crash-safe and safe under concurrent writers (several processes appending to one
directory): the statistics directory is written under a temporary name, flushed to disk
(``fsync``) and renamed; then the record is written to a temporary file, flushed, and linked
to its final name (a hard link never replaces an existing file), and the directory is
flushed. The record is the commit point: a run killed at any moment leaves either a complete
record or none (at worst a temporary file or an orphan statistics directory, which readers
ignore), and a run that fails before it ends writes nothing. Readers skip a record they
cannot parse with a warning, never an exception.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from engine.errors import ConfigError

RECORD_SUFFIX, STATS_SUFFIX = ".json", ".stats"
#: Arrays of a run's statistics that a baseline needs (the replay's arrays are dropped).
BASELINE_ARRAYS = ("score", "calib", "feature", "dq", "value")
_RECORD_RE = re.compile(r"^(\d{8}T\d{6}Z)_([0-9A-Za-z-]+)\.json$")


class HistoryWarning(UserWarning):
    """A record of the history could not be read and was skipped."""


class RunHistory:
    """A directory of past runs.

    Parameters
    ----------
    path : path
        The history directory (created by the first :meth:`append`).
    warn : callable, optional
        Called with a message for each record that cannot be read (default:
        ``warnings.warn(..., HistoryWarning)``).
    """

    def __init__(self, path: str | os.PathLike, *, warn: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"The history path '{path}' exists and is not a directory.")
        self._warn = warn or (lambda msg: warnings.warn(msg, HistoryWarning, stacklevel=3))

    # ------------------------------------------------------------------ writing
    def append(self, result: Any, *, statistics: bool = True) -> Path:
        """Record a run; returns the record written. Never overwrites an existing record.

        Parameters
        ----------
        result : CheckResult
        statistics : bool
            Also keep the run's online statistics (when the result carries them, see
            :func:`run_baseline`), so that ``--baseline DIR/<run id>`` can use them.

        Returns
        -------
        Path
            The record (``<started_at>_<run id>.json``).

        Raises
        ------
        ConfigError
            When the history already holds a run with this id.
        """
        name = _stem(result.run)
        target = self.path / f"{name}{RECORD_SUFFIX}"
        if target.exists():
            raise ConfigError(f"The history already holds a run with id {result.run['id']} ({target}).")
        self.path.mkdir(parents=True, exist_ok=True)
        stats_dir = None
        baseline = run_baseline(result) if statistics else None
        if baseline is not None:
            stats_dir = self.path / f"{name}{STATS_SUFFIX}"
            _write_baseline_dir(baseline, stats_dir)
        try:
            _durable_create(target, result.to_json().encode())
        except BaseException:
            if stats_dir is not None:
                shutil.rmtree(stats_dir, ignore_errors=True)
            raise
        return target

    # ------------------------------------------------------------------ reading
    def records(self) -> list[Path]:
        """The record files, oldest first (by start time, then by when they were written)."""
        if not self.path.is_dir():
            return []
        found = []
        for f in self.path.iterdir():
            m = _RECORD_RE.match(f.name)
            if m is None or not f.is_file():
                continue
            try:
                written = f.stat().st_mtime_ns
            except OSError:
                written = 0
            found.append((m.group(1), written, f.name, f))
        return [f for *_, f in sorted(found)]

    def runs(self) -> Iterator[dict[str, Any]]:
        """Every readable recorded run's JSON document, oldest first.

        A record that cannot be read or parsed (a foreign or damaged file) is skipped with a
        warning.
        """
        for f in self.records():
            doc = self._read(f)
            if doc is not None:
                yield doc

    def _read(self, f: Path) -> dict[str, Any] | None:
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self._warn(f"Skipping the history record '{f}': it cannot be read ({_reason(exc)}).")
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("run"), dict) or "id" not in doc["run"]:
            self._warn(f"Skipping the history record '{f}': it is not a parity run record.")
            return None
        return doc

    def latest(self) -> dict[str, Any] | None:
        """The most recent readable run, or None."""
        for f in reversed(self.records()):
            doc = self._read(f)
            if doc is not None:
                return doc
        return None

    def find(self, run_id: str) -> Path:
        """The record of ``run_id`` (a whole id or an unambiguous prefix, or ``latest``).

        Raises
        ------
        ConfigError
            When no run, or more than one, matches.
        """
        records = self.records()
        if run_id == "latest":
            with_stats = [f for f in records if _stats_of(f).is_dir()]
            if not with_stats:
                raise ConfigError(f"The history '{self.path}' holds no run with stored statistics.")
            return with_stats[-1]
        exact = [f for f in records if _RECORD_RE.match(f.name).group(2) == run_id]
        if exact:
            return exact[-1]
        matches = [f for f in records if _RECORD_RE.match(f.name).group(2).startswith(run_id)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            ids = ", ".join(_RECORD_RE.match(f.name).group(2) for f in matches[:5])
            raise ConfigError(f"The run id '{run_id}' is ambiguous in the history '{self.path}': it starts {ids}.")
        raise ConfigError(
            f"The history '{self.path}' holds no run '{run_id}' ({len(records)} runs; "
            f"'parity history {self.path}' lists them)."
        )

    def statistics_dir(self, run_id: str) -> Path:
        """The baseline directory holding ``run_id``'s statistics.

        Raises
        ------
        ConfigError
            When the run is unknown or was recorded without statistics.
        """
        record = self.find(run_id)
        stats = _stats_of(record)
        if not stats.is_dir():
            raise ConfigError(
                f"The run '{run_id}' in the history '{self.path}' has no stored statistics "
                f"({stats.name} is missing: it was recorded by an older parity, or from a "
                "check that measured nothing); it cannot be used as a baseline."
            )
        return stats

    # ------------------------------------------------------------------ queries
    def summary(self) -> list[dict[str, Any]]:
        """One row per run, oldest first: what ``parity history DIR`` prints.

        Returns
        -------
        list of dict
            ``id``, ``started_at``, ``baseline_id``, ``verdict``, ``incidents``, ``alerts``,
            ``warnings``, ``online_rows``, ``meta``, ``notifications_failed``.
        """
        rows = []
        for doc in self.runs():
            run, findings = doc["run"], doc.get("findings") or []
            notes = run.get("notifications") or {}
            rows.append(
                {
                    "id": run.get("id"),
                    "started_at": run.get("started_at"),
                    "baseline_id": run.get("baseline_id"),
                    "verdict": doc.get("verdict"),
                    "incidents": len(doc.get("incidents") or []),
                    "alerts": sum(f.get("status") == "alert" for f in findings),
                    "warnings": sum(f.get("status") == "warn" for f in findings),
                    "online_rows": (doc.get("data_quality") or {}).get("online_rows"),
                    "meta": run.get("meta") or {},
                    "notifications_failed": notes.get("failed"),
                }
            )
        return rows

    def series(
        self,
        metric: str,
        slice_: Mapping[str, str] | None = None,
        *,
        scores: str | None = None,
        feature: str | None = None,
        threshold: float | None = None,
    ) -> list[dict[str, Any]]:
        """One metric of one slice over the runs (whole-period findings), oldest first.

        Parameters
        ----------
        metric : str
        slice_ : dict, optional
            ``{column: value}``; empty or None is the whole population.
        scores, feature, threshold : optional
            Narrow the findings (``scores`` defaults to the served scores, ``online``); when
            they leave several (e.g. two thresholds) the call is ambiguous and says which
            options choose.

        Returns
        -------
        list of dict
            ``run_id``, ``started_at``, ``baseline_id``, ``value``, ``expected``, ``diff``,
            ``ci``, ``status``, ``cause``, ``n``, ``scores``, ``feature``, ``threshold``. Runs
            without such a finding are left out.

        Raises
        ------
        ConfigError
            When the options match several findings of one run.
        """
        want = {str(k): str(v) for k, v in (slice_ or {}).items()}
        points = []
        for doc in self.runs():
            hits = [
                f for f in doc.get("findings") or []
                if f.get("metric") == metric and f.get("slice") == want and f.get("window") is None
                and (scores is None or f.get("scores") == scores)
                and (feature is None or f.get("feature") == feature)
                and (threshold is None or (f.get("threshold") is not None
                                           and np.isclose(f["threshold"], threshold, rtol=0, atol=1e-9)))
            ]
            if not hits:
                continue
            if len(hits) > 1 and scores is None and any(f.get("scores") == "online" for f in hits):
                hits = [f for f in hits if f.get("scores") == "online"]  # the served scores by default
            if len(hits) > 1:
                raise ConfigError(_ambiguous(metric, hits, doc["run"].get("id")))
            f = hits[0]
            points.append(
                {
                    "run_id": doc["run"].get("id"),
                    "started_at": doc["run"].get("started_at"),
                    "baseline_id": doc["run"].get("baseline_id"),
                    **{k: f.get(k) for k in ("value", "expected", "diff", "ci", "status", "cause", "n",
                                             "scores", "feature", "threshold")},
                }
            )
        return points


def run_baseline_dir(path: str | os.PathLike) -> Path | None:
    """``HISTORY/<run id>`` (or ``HISTORY/latest``) as the run's statistics directory.

    Parameters
    ----------
    path : path
        What was given as the baseline.

    Returns
    -------
    Path or None
        None when ``path``'s parent holds no history record (not a history reference).

    Raises
    ------
    ConfigError
        When the parent is a history but the run is unknown or has no statistics.
    """
    p = Path(path)
    parent = p.parent
    if p.exists() or not parent.is_dir():
        return None
    history = RunHistory(parent)
    if not history.records():
        return None
    return history.statistics_dir(p.name)


def run_baseline(result: Any):
    """A :class:`~engine.expectation.Baseline` of a check's online statistics, or None.

    The statistics are those the check accumulated (``result.extras["statistics"]``) on its
    layout (``extras["layout"]``), without the replay's arrays (a baseline has one score per
    row); the configuration is the check's. Checking new data against it equals checking
    against a baseline built from the run's online rows (with their outcomes as labels) on
    the same layout; see the README for what differs from rebuilding a baseline from those
    rows with ``parity baseline``.

    Parameters
    ----------
    result : CheckResult

    Returns
    -------
    Baseline or None
        None when the result carries no statistics (built by hand, or measured nothing).
    """
    from engine import __version__
    from engine.expectation import Baseline
    from engine.stats import Statistics

    stats, layout, cfg = (result.extras.get(k) for k in ("statistics", "layout", "config"))
    if stats is None or layout is None or cfg is None or stats.rows == 0:
        return None
    kept = Statistics(
        stats.layout_id, stats.n_raw, stats.whole_from,
        {k: v for k, v in stats.raw.items() if k in BASELINE_ARRAYS}, stats.rows,
    )
    run = result.run
    manifest = {
        "id": run["id"],
        "created_at": run["started_at"],
        "engine_version": __version__,
        "backend": run.get("backend"),
        "config_hash": cfg.config_hash(),
        "layout_id": layout.fingerprint(),
        "rows": int(kept.rows),
        "inputs": run.get("inputs", []),
        "has_value": "value" in kept.raw,
        "meta": dict(run.get("meta") or {}),
        "source": {"kind": "run", "run_id": run["id"], "baseline_id": run.get("baseline_id")},
    }
    return Baseline(layout, kept, cfg, manifest)


# ---------------------------------------------------------------------------- internals
def _stem(run: Mapping[str, Any]) -> str:
    stamp = str(run["started_at"]).replace(":", "").replace("-", "")
    return f"{stamp}_{run['id']}"


def _stats_of(record: Path) -> Path:
    return record.with_name(record.name[: -len(RECORD_SUFFIX)] + STATS_SUFFIX)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _ambiguous(metric: str, hits: Sequence[Mapping[str, Any]], run_id: Any) -> str:
    options = []
    for f in hits:
        parts = [f"--scores {f['scores']}" if f.get("scores") else "",
                 f"--feature {f['feature']}" if f.get("feature") else "",
                 f"--threshold {f['threshold']:g}" if f.get("threshold") is not None else ""]
        options.append(" ".join(p for p in parts if p) or "(none)")
    return (
        f"The metric '{metric}' has {len(hits)} findings for this slice in run {run_id}; choose one "
        f"with {', or '.join(dict.fromkeys(options))}."
    )


def _fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename or link) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _durable_create(target: Path, data: bytes) -> None:
    """Create ``target`` holding ``data``, atomically and durably; never replace a file.

    The data goes to a temporary file beside it (fsync), which is then hard-linked to
    ``target`` (``FileExistsError`` if it exists, whatever another process does meanwhile)
    and unlinked; where hard links are not supported, an exclusive rename stands in.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise ConfigError(f"The history already holds a record named {target.name}.") from None
        except OSError:  # a filesystem without hard links
            if target.exists():
                raise ConfigError(f"The history already holds a record named {target.name}.") from None
            os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    _fsync_dir(target.parent)


def _write_baseline_dir(baseline: Any, out: Path) -> None:
    """A baseline directory at ``out`` (which must not exist), durably: temp, fsync, rename."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        baseline.write_files(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(out.parent)
