"""The run history: an append-only store, one JSON file per run, written atomically.

Files are named ``<started_at>_<run id>.json`` (UTC, sortable), so listing the directory
lists the runs in time order; nothing is ever rewritten. :meth:`RunHistory.runs` reads them
back for control charts and audits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from engine.errors import ConfigError
from engine.result import CheckResult, _atomic_write


class RunHistory:
    """A directory of past runs."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"The history path '{path}' exists and is not a directory.")

    def append(self, result: CheckResult) -> Path:
        """Record a run; returns the file written. Never overwrites an existing record."""
        stamp = result.run["started_at"].replace(":", "").replace("-", "")
        target = self.path / f"{stamp}_{result.run['id']}.json"
        if target.exists():
            raise ConfigError(f"The history already holds a run with id {result.run['id']} ({target}).")
        _atomic_write(target, result.to_json().encode())
        return target

    def runs(self) -> Iterator[dict[str, Any]]:
        """Every recorded run, oldest first."""
        if not self.path.is_dir():
            return
        for f in sorted(self.path.glob("*.json")):
            if not f.name.startswith("."):
                yield json.loads(f.read_text())
