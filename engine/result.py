"""The result of a check: verdict, findings, run record; JSON, Arrow, pandas and HTML views.

The JSON document is the output contract of DESIGN section 7 (schema version 1): strict
JSON (no NaN), findings in canonical order, so two runs on the same inputs write identical
files (apart from the run's id and start time).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from engine.compare import Finding

SCHEMA_VERSION = 1
#: ``extras`` entries written as additive top-level JSON keys.
JSON_EXTRAS = ("charts", "control_charts")


@dataclass
class CheckResult:
    """What ``engine.check`` returns."""

    verdict: str
    findings: list[Finding]
    run: dict[str, Any]
    data_quality: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)
    #: Incidents (DESIGN section 6a), most severe first: plain JSON-able dicts.
    incidents: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------------ views
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "verdict": self.verdict,
            "run": self.run,
            "data_quality": self.data_quality,
            "incidents": self.incidents,
            "findings": [f.to_dict() for f in self.findings],
            # additive keys: what the report draws (engine.charts), only when computed
            **{k: self.extras[k] for k in JSON_EXTRAS if k in self.extras},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CheckResult":
        """A result read back from its JSON document (``parity report``, the dashboard).

        Unknown top-level keys are ignored; the additive keys of :data:`JSON_EXTRAS` go back
        into ``extras``.
        """
        if d.get("schema_version") != SCHEMA_VERSION:
            from engine.errors import ConfigError

            raise ConfigError(
                f"The result's schema_version must be {SCHEMA_VERSION}. Got {d.get('schema_version')!r} instead."
            )
        fields = set(Finding.__dataclass_fields__)
        findings = [Finding(**{k: v for k, v in f.items() if k in fields}) for f in d.get("findings", [])]
        return cls(
            verdict=d["verdict"],
            findings=findings,
            run=d.get("run") or {},
            data_quality=d.get("data_quality") or {},
            extras={k: d[k] for k in JSON_EXTRAS if k in d},
            incidents=list(d.get("incidents") or []),
        )

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (``allow_nan=False``: an undefined value is null with a reason)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def findings_table(self) -> pa.Table:
        """The findings as an Arrow table (slice, window, ci and tolerance as JSON-able columns)."""
        rows = []
        for f in self.findings:
            d = f.to_dict()
            tol = d.pop("tolerance")
            ci = d.pop("ci")
            rows.append(
                {
                    **d,
                    "slice": json.dumps(d["slice"], sort_keys=True),
                    "window_start": None if f.window is None else f.window["start"],
                    "window_end": None if f.window is None else f.window["end"],
                    "ci_low": None if ci is None else ci[0],
                    "ci_high": None if ci is None else ci[1],
                    "tolerance_kind": tol["kind"],
                    "tolerance_value": tol["value"],
                    "tolerance_bad": tol["bad"],
                    "explained_by": None if f.explained_by is None else json.dumps(f.explained_by, sort_keys=True),
                }
            )
        for r in rows:
            r.pop("window", None)
        schema = pa.schema(
            [
                ("metric", pa.string()),
                ("scores", pa.string()),
                ("slice", pa.string()),
                ("window_start", pa.string()),
                ("window_end", pa.string()),
                ("feature", pa.string()),
                ("threshold", pa.float64()),
                ("value", pa.float64()),
                ("expected", pa.float64()),
                ("diff", pa.float64()),
                ("ci_low", pa.float64()),
                ("ci_high", pa.float64()),
                ("tolerance_kind", pa.string()),
                ("tolerance_value", pa.float64()),
                ("tolerance_bad", pa.string()),
                ("n", pa.int64()),
                ("p_value", pa.float64()),
                ("status", pa.string()),
                ("cause", pa.string()),
                ("severity", pa.float64()),
                ("reason", pa.string()),
                ("id", pa.string()),
                ("explained_by", pa.string()),
            ]
        )
        return pa.Table.from_pylist(rows, schema=schema)

    def to_pandas(self):
        """The findings as a pandas DataFrame."""
        return self.findings_table().to_pandas()

    # ------------------------------------------------------------------ files
    def write_json(self, path: str | os.PathLike) -> None:
        _atomic_write(Path(path), self.to_json().encode())

    def write_findings(self, path: str | os.PathLike) -> None:
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            pq.write_table(self.findings_table(), tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def report(self, path: str | os.PathLike) -> None:
        """Write the HTML report (self-contained, no network)."""
        from engine.report import render_html

        _atomic_write(Path(path), render_html(self).encode())

    def alerts(self) -> list[Finding]:
        """Alerts, most severe first."""
        return sorted((f for f in self.findings if f.status == "alert"), key=lambda f: -f.severity)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary name beside ``path``, then rename: never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
