"""The HTML report: one self-contained page per check (``CheckResult.report(path)``).

:func:`render_html` turns a :class:`~engine.result.CheckResult` into a single HTML document
that needs nothing but a browser: the CSS, the chart library (Vega, Vega-Lite and
vega-interpreter, vendored in ``engine/vendor/``) and the chart specs are inline, and nothing
is loaded from anywhere else (the machines that run checks and the people who read the
reports are often offline).

The page leads with what matters: the verdict, then the incidents by severity, each with a
drill-down panel of the pictures that explain it (reliability diagram, ROC curves, score
histograms and the decision matrix, feature histograms, data-quality rates, a control chart
over windows), then a heatmap of slices x metrics coloured by divergence over tolerance, the
top findings, and collapsed: the full tables (sortable, filterable), the summary per cause,
the data-quality counts and the run record (lineage).

The charts' data come from the result's ``charts`` (:mod:`engine.charts`: counts from the
statistics, stored in the JSON) and ``control_charts``; specs are built by :mod:`engine.vega`.

Safety and determinism
----------------------
* Slice values, column names, paths and ``meta`` come from user data. The template is
  rendered by Jinja2 with ``autoescape=True`` and nothing user-supplied is ever marked safe,
  so ``<script>`` in a slice value is shown as text. Chart specs travel as JSON in a
  ``<script type="application/json">`` block with ``<``, ``>`` and ``&`` escaped, data values
  only in ``data.values`` (drawn as SVG text), never in an expression. The page carries a
  Content-Security-Policy that allows no network access at all and only the page's own inline
  scripts (by their SHA-256), without ``unsafe-eval``: Vega's expressions run in
  vega-interpreter.
* The scripts are optional for reading: without them every table and number is there; the
  charts need them.
* The output is a pure function of the result (no clock, no randomness, no environment):
  rendering the same result twice gives the same bytes.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jinja2
import markupsafe
from markupsafe import Markup

from engine import vega as V
from engine.catalogue import CAUSES, Tolerance
from engine.compare import Finding

if TYPE_CHECKING:  # engine.result imports this module lazily; avoid the cycle at run time
    from engine.result import CheckResult

__all__ = ["build_context", "fmt_number", "fmt_p_value", "render_html", "slice_label"]

#: Display order and labels of the statuses (most serious first).
STATUS_LABELS: dict[str, str] = {
    "alert": "alert",
    "warn": "warning",
    "ok": "ok",
    "insufficient_data": "insufficient data",
}

CAUSE_LABELS: dict[str, str] = {
    "data_quality": "data quality",
    "serving_skew": "serving skew",
    "data_drift": "data drift",
    "concept_drift": "concept drift",
    "label_delay": "label delay",
}

CAUSE_HELP: dict[str, str] = {
    "data_quality": "coverage, duplicate, invalid, null-key and unseen-value problems in the inputs",
    "serving_skew": "the serving path scores the same requests differently from the offline replay",
    "data_drift": "the inputs moved away from the baseline, and the scores with them",
    "concept_drift": "inputs and scores agree, yet outcomes diverge from the predictions",
    "label_delay": "outcomes missing in recent windows beyond the label horizon",
}

#: Data-quality counts over online rows, and the finding (metric, feature) that judges each.
_DQ_ROWS: tuple[tuple[str, str, str | None], ...] = (
    ("matched_offline", "Online rows with an offline replay", "join_coverage"),
    ("matched_outcomes", "Online rows with an outcome", "label_coverage"),
    ("duplicate_keys.online", "Duplicate keys (online)", "duplicate_key_rate"),
    ("invalid_scores", "Invalid scores (outside [0, 1] or NaN)", "invalid_score_rate"),
    ("invalid_labels", "Invalid labels (not 0/1)", "invalid_label_rate"),
    ("null_keys", "Null keys", "null_key_rate"),
)

_DQ_LABELS: dict[str, str] = {
    "online_rows": "Online rows",
    "offline_rows": "Offline (replay) rows",
    "outcome_rows": "Outcome rows",
    "offline_without_online": "Replay rows without an online request",
    "duplicate_keys.offline": "Duplicate keys (offline)",
    "duplicate_keys.outcomes": "Duplicate keys (outcomes)",
    "invalid_offline_scores": "Invalid offline scores",
}

#: Other counts that are a share of the online rows (the rest are counts of other tables).
_SHARE_OF_ONLINE = frozenset({"invalid_offline_scores"})

_RUN_LABELS: dict[str, str] = {
    "id": "Run id",
    "started_at": "Started",
    "engine_version": "Engine version",
    "backend": "Backend",
    "baseline_id": "Baseline id",
    "config_hash": "Config hash",
    "seed": "Seed",
    "bootstrap": "Bootstrap replicates (B)",
    "ci_level": "CI level",
}

#: At most this many slices are named per cause in the summary (the rest are counted).
MAX_CAUSE_SLICES = 12
#: Rows of the all-findings table; past it the page points to the JSON/Parquet outputs (the
#: flagged findings are kept first, so a capped table still holds every alert it can).
MAX_ALL_ROWS = 2000
#: Rows of the alerts and of the warnings table (most severe first), and of an incident's.
MAX_FLAGGED_ROWS = 500
MAX_INCIDENT_ROWS = 25

# The one script of the page: sortable headers and the findings filter. It only reads the DOM
# (data-sort attributes and text), never builds markup from strings. It is hashed into the
# Content-Security-Policy, so keep it a constant.
_SCRIPT = """
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  function key(cell) {
    var s = cell.getAttribute("data-sort");
    if (s === null) { s = cell.textContent.trim(); }
    var x = parseFloat(s);
    return (s !== "" && isFinite(s) && !isNaN(x)) ? x : s.toLowerCase();
  }
  function cmp(a, b) {
    if (a === b) { return 0; }
    if (a === "") { return 1; }
    if (b === "") { return -1; }
    if (typeof a === typeof b) { return a < b ? -1 : 1; }
    return typeof a === "number" ? -1 : 1;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.tabIndex = 0;
      th.setAttribute("aria-sort", "none");
      function sort() {
        var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        Array.prototype.forEach.call(heads, function (h) { h.setAttribute("aria-sort", "none"); });
        th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var a = key(r1.cells[col]), b = key(r2.cells[col]);
          if (a === "" || b === "") { return cmp(a, b); }
          return dir * cmp(a, b);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); }
      });
    });
  });
  document.querySelectorAll("[data-filter-for]").forEach(function (box) {
    var table = document.getElementById(box.getAttribute("data-filter-for"));
    var text = box.querySelector("input");
    var status = box.querySelector("select");
    var shown = box.querySelector("output");
    function apply() {
      var q = text.value.trim().toLowerCase(), st = status.value, n = 0;
      Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
        var ok = (!st || r.getAttribute("data-status") === st) &&
                 (!q || r.textContent.toLowerCase().indexOf(q) !== -1);
        r.hidden = !ok;
        if (ok) { n += 1; }
      });
      shown.textContent = n + " shown";
    }
    text.addEventListener("input", apply);
    status.addEventListener("change", apply);
    box.hidden = false;
    apply();
  });
})();
"""


# --------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------


def fmt_number(x: float | None, digits: int = 4) -> str:
    """A number with ``digits`` significant digits, or an em dash for a missing value.

    Parameters
    ----------
    x : float, int or None
        The value. ``None`` and non-finite values read as missing.
    digits : int
        Significant digits (``4`` gives ``0.8123``, ``1.235e-5``, ``1.235e6``).

    Returns
    -------
    str
        ``"—"`` when missing; ``"0"`` for zero; otherwise ``format(x, f".{digits}g")`` with
        the exponent written short (``1.2e-5``).
    """
    if x is None or isinstance(x, bool):
        return "—"
    x = float(x)
    if not math.isfinite(x):
        return "—"
    if x == 0:
        return "0"
    return _short_exponent(format(x, f".{digits}g"))


def fmt_p_value(p: float | None) -> str:
    """A p-value: 4 significant digits, in scientific notation below 0.001.

    Parameters
    ----------
    p : float or None

    Returns
    -------
    str
        ``"—"`` when missing; ``"< 1e-300"`` when the tail probability underflowed to 0
        (the normal tail is then below the smallest double); ``"2.385e-74"`` or ``"4e-4"``
        below 0.001 (trailing zeros dropped); ``"0.04127"`` otherwise.
    """
    if p is None or not math.isfinite(p):
        return "—"
    if p == 0:
        return "< 1e-300"
    if p < 1e-3:
        mant, exp = format(p, ".3e").split("e")
        return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
    return fmt_number(p)


def _fmt_int(n: float | None) -> str:
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "—"
    return f"{int(n):,}"


def _fmt_pct(x: float | None, digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return _short_exponent(format(100.0 * x, f".{digits}g")) + "%"


def _short_exponent(s: str) -> str:
    # 1.2e-05 -> 1.2e-5, 1.235e+06 -> 1.235e6; ASCII minus, so values can be pasted into code
    if "e" in s:
        mant, exp = s.split("e")
        s = f"{mant}e{int(exp)}"
    return s


def _sort_value(x: float | None) -> str:
    """The ``data-sort`` attribute of a numeric cell: ``repr`` of the float, ``""`` when missing."""
    if x is None or isinstance(x, bool):
        return ""
    x = float(x)
    return repr(x) if math.isfinite(x) else ""


#: Characters a value from data may hold that would hide or reorder text on the page: C0/C1
#: controls (NUL...) and the bidirectional overrides, embeddings, isolates and marks.
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: Any) -> Any:
    """``text`` with every control and bidi-override character shown as ``<U+XXXX>``, so a
    slice value holding U+202E cannot reverse what the page shows (strings only)."""
    if not isinstance(text, str):
        return text
    if isinstance(text, markupsafe.Markup):  # already HTML (built from escaped values)
        return markupsafe.Markup(_INVISIBLE.sub(lambda m: f"&lt;U+{ord(m.group()):04X}&gt;", text))
    return _INVISIBLE.sub(lambda m: f"<U+{ord(m.group()):04X}>", text)


def slice_label(slice_: Mapping[str, str]) -> str:
    """``country=BR · device=ios``, or ``all rows`` for the whole population."""
    if not slice_:
        return "all rows"
    return visible(" \u00b7 ".join(f"{k}={v}" for k, v in sorted(slice_.items())))


def _window_label(window: Mapping[str, str] | None) -> str:
    if not window:
        return ""
    return f"{window.get('start', '?')} \u2192 {window.get('end', '?')}"


def _tolerance_label(tol: Mapping[str, Any]) -> str:
    """Compact tolerance: ``±0.02`` (absolute), ``+10%`` (relative), ``≥ 0.99`` (floor)."""
    kind, value, bad = tol.get("kind"), tol.get("value"), tol.get("bad")
    if kind == "floor":
        return ("\u2265 " if bad == "decrease" else "\u2264 ") + fmt_number(value)
    sign = {"increase": "+", "decrease": "\u2212", "either": "\u00b1"}.get(bad, "")
    if kind == "relative":
        return f"{sign}{fmt_number(100.0 * float(value))}%"
    return f"{sign}{fmt_number(value)}"


def _tolerance_title(tol: Mapping[str, Any]) -> str:
    kind, value, bad = tol.get("kind"), tol.get("value"), tol.get("bad")
    if kind == "floor":
        word = "must stay at or above" if bad == "decrease" else "must stay at or below"
        return f"the value {word} {fmt_number(value)}"
    size = (
        f"{fmt_number(100.0 * float(value))}% of the expected value"
        if kind == "relative"
        else fmt_number(value)
    )
    where = {"increase": "an increase", "decrease": "a decrease", "either": "a change either way"}.get(
        bad, bad
    )
    return f"{where} of more than {size} is beyond tolerance"


# --------------------------------------------------------------------------------------
# View models
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One table cell: the text shown, its tooltip and the key the sort script reads."""

    text: str
    title: str = ""
    sort: str | None = None
    missing: bool = False


@dataclass
class Row:
    """One finding as the template shows it."""

    status: str
    status_label: str
    severity: Cell
    cause: str
    cause_label: str
    metric: str
    slice: str
    slice_sort: str
    window: str
    detail: str
    value: Cell
    expected: Cell
    diff: Cell
    ci: Cell
    tolerance: Cell
    n: Cell
    p_value: Cell
    reason: str
    id: str = ""
    explained_by: str = ""


@dataclass
class CauseSummary:
    """Alerts and warnings of one cause: counts, slices and metrics."""

    cause: str
    label: str
    help: str
    alerts: int = 0
    warnings: int = 0
    severity: float = 0.0
    slices: list[str] = field(default_factory=list)
    more_slices: int = 0
    metrics: list[str] = field(default_factory=list)


@dataclass
class DQRow:
    """One data-quality count."""

    label: str
    key: str
    count: str
    share: Cell
    status: str | None = None
    status_label: str = ""
    title: str = ""


def _detail(f: Finding) -> str:
    parts: list[str] = []
    if f.scores:
        parts.append(f.scores)
    if f.feature:
        parts.append(f.feature)
    if f.threshold is not None:
        parts.append(f"t={fmt_number(f.threshold)}")
    return " \u00b7 ".join(parts)


def _num_cell(x: float | None, reason: str | None, digits: int = 4) -> Cell:
    if x is None or not math.isfinite(float(x)):
        return Cell("—", title=reason or "not available", sort="", missing=True)
    return Cell(fmt_number(x, digits), sort=_sort_value(x))


def _row(f: Finding) -> Row:
    reason = f.reason or ""
    ci = (
        Cell(f"[{fmt_number(f.ci[0])}, {fmt_number(f.ci[1])}]", sort=_sort_value(f.ci[0]))
        if f.ci is not None
        else Cell("—", title=reason or "no interval (no bootstrap, or undefined)", sort="", missing=True)
    )
    return Row(
        status=f.status,
        status_label=STATUS_LABELS.get(f.status, f.status),
        severity=Cell(fmt_number(f.severity, 3), sort=_sort_value(f.severity)),
        cause=f.cause or "",
        cause_label=CAUSE_LABELS.get(f.cause or "", f.cause or ""),
        metric=f.metric,
        slice=slice_label(f.slice),
        slice_sort=slice_label(f.slice),
        window=_window_label(f.window),
        detail=_detail(f),
        value=_num_cell(f.value, reason),
        expected=_num_cell(f.expected, reason),
        diff=_num_cell(f.diff, reason),
        ci=ci,
        tolerance=Cell(_tolerance_label(f.tolerance), title=_tolerance_title(f.tolerance)),
        n=Cell(_fmt_int(f.n), sort=str(int(f.n))),
        p_value=(
            Cell(fmt_p_value(f.p_value), sort=_sort_value(f.p_value))
            if f.p_value is not None
            else Cell("—", title=reason or "not tested", sort="", missing=True)
        ),
        reason=reason,
        id=f.id,
        explained_by=slice_label(f.explained_by) if f.explained_by is not None else "",
    )


def _by_severity(findings: Iterable[Finding]) -> list[Finding]:
    # most severe first; ties in the canonical order, so the page is deterministic
    return sorted(findings, key=lambda f: (-(f.severity or 0.0), f.sort_key()))


def _cause_summaries(findings: list[Finding]) -> list[CauseSummary]:
    flagged = [f for f in findings if f.status in ("alert", "warn")]
    order = list(CAUSES) + sorted({f.cause or "" for f in flagged} - set(CAUSES))
    out = []
    for cause in order:
        group = _by_severity(f for f in flagged if (f.cause or "") == cause)
        if not group:
            continue
        s = CauseSummary(
            cause=cause or "unknown",
            label=CAUSE_LABELS.get(cause, cause or "unknown"),
            help=CAUSE_HELP.get(cause, ""),
            alerts=sum(f.status == "alert" for f in group),
            warnings=sum(f.status == "warn" for f in group),
            severity=max(f.severity or 0.0 for f in group),
        )
        slices = list(dict.fromkeys(slice_label(f.slice) for f in group))
        s.slices, s.more_slices = slices[:MAX_CAUSE_SLICES], max(0, len(slices) - MAX_CAUSE_SLICES)
        s.metrics = sorted({f.metric for f in group})
        out.append(s)
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def _dq_rows(dq: Mapping[str, Any], findings: list[Finding]) -> list[DQRow]:
    """The data-quality counts, each with its share of online rows and its verdict."""
    flat = dict(_flatten(dq))
    online = flat.get("online_rows")
    total = float(online) if isinstance(online, (int, float)) and online else None
    judged = {
        (f.metric, f.feature): f for f in findings if not f.slice and f.window is None and f.scores is None
    }

    def row(
        key: str, label: str, metric: str | None, feature: str | None = None, share: bool = True
    ) -> DQRow:
        v = flat.pop(key)
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        count = _fmt_int(v) if number else ("—" if v is None else str(v))
        share_cell = (
            Cell(_fmt_pct(float(v) / total), sort=_sort_value(float(v) / total))
            if share and total and number
            else Cell("", sort="")
        )
        f = judged.get((metric, feature)) if metric else None
        return DQRow(
            label=label,
            key=key,
            count=count,
            share=share_cell,
            status=None if f is None else f.status,
            status_label="" if f is None else STATUS_LABELS.get(f.status, f.status),
            title="" if f is None else f"{f.metric}: {fmt_number(f.value)} ({_tolerance_title(f.tolerance)})",
        )

    rows: list[DQRow] = []
    for key in ("online_rows", "offline_rows", "outcome_rows"):
        if key in flat:
            rows.append(row(key, _DQ_LABELS[key], None, share=False))
    for key, label, metric in _DQ_ROWS:
        if key in flat:
            rows.append(row(key, label, metric))
    for key in [k for k in flat if k.startswith("unseen_values.")]:
        col = key.split(".", 1)[1]
        rows.append(row(key, f"Values unseen in the baseline: {col}", "unseen_value_rate", col))
    for key in list(flat):  # anything else, in the order the engine wrote it
        label = _DQ_LABELS.get(key, key.replace("_", " ").replace(".", ": ").capitalize())
        rows.append(row(key, label, None, share=key in _SHARE_OF_ONLINE))
    return rows


def _run_items(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for key, label in _RUN_LABELS.items():
        if key not in run:
            continue
        v = run[key]
        if key == "ci_level" and isinstance(v, (int, float)):
            text = _fmt_pct(float(v))
        elif key == "bootstrap" and isinstance(v, int) and not isinstance(v, bool):
            text = f"{v:,}" if v else "0 (no intervals)"
        else:
            text = "—" if v is None else str(v)
        items.append((label, text))
    for key, v in run.items():  # anything else the engine recorded (duration, join kinds...)
        if key in _RUN_LABELS or key in ("inputs", "meta"):
            continue
        if isinstance(v, Mapping):
            text = ", ".join(f"{k}: {w}" for k, w in v.items()) or "—"
        elif isinstance(v, float):
            text = fmt_number(v)
        else:
            text = "—" if v is None else str(v)
        label = key[:-2] + " (s)" if key.endswith("_s") else key
        items.append((label.replace("_", " ").capitalize(), text))
    return items


def _inputs(run: Mapping[str, Any]) -> tuple[list[str], list[dict[str, str]]]:
    inputs = [i for i in run.get("inputs") or [] if isinstance(i, Mapping)]
    first = ["role", "path", "rows", "fingerprint"]
    extra = sorted({k for i in inputs for k in i} - set(first))
    cols = [c for c in first if any(c in i for i in inputs)] + extra
    rows = []
    for i in inputs:
        r = {}
        for c in cols:
            v = i.get(c)
            if c in ("rows", "size_bytes") and isinstance(v, int):
                r[c] = f"{v:,}"
            else:
                r[c] = "—" if v is None else str(v)
        rows.append(r)
    return cols, rows


# --------------------------------------------------------------------------------------
# Incidents, their drill-down charts, and the heatmap
# --------------------------------------------------------------------------------------

#: Metrics whose pictures are the ROC curve / the reliability diagram / the skew panel.
_PERFORMANCE = frozenset({"auc", "precision", "recall", "fpr", "predicted_positive_rate", "positive_rate",
                          "value_per_row"})
_CALIBRATION = frozenset({"ece", "brier", "log_loss"})
_SKEW = frozenset({"flip_rate", "mean_abs_delta", "p99_abs_delta"})
_DRIFT = frozenset({"psi", "js_divergence", "ks", "wasserstein"})
#: Incidents shown with their panels; the rest are listed in a collapsed table.
MAX_INCIDENT_PANELS = 25
#: Rows of the table of the incidents past the panels.
MAX_MORE_INCIDENTS = 200
#: Rows of the heatmap (slices); the rest are in the tables.
MAX_HEATMAP_ROWS = 40
#: Findings in the "top findings" table that is open by default.
TOP_FINDINGS = 15


@dataclass
class ChartRef:
    """A chart container: the spec's id in the page's chart block, its kind and caption."""

    id: str
    kind: str
    caption: str = ""


@dataclass
class IncidentView:
    """One incident as the page shows it."""

    id: str
    status: str
    status_label: str
    cause: str
    cause_label: str
    slice: str
    severity: Cell
    share: str
    headline: str
    owner: str
    escalation: str
    when: str
    metrics: list[str]
    rows: list[Row]
    explained: int
    n_findings: int = 0
    charts: list[ChartRef] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dq_counts: list[tuple[str, str]] = field(default_factory=list)
    flip_rates: list[tuple[str, str]] = field(default_factory=list)
    open: bool = False


def _key(s: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in (s or {}).items()))


def derived_incidents(findings: list[Finding]) -> list[dict[str, Any]]:
    """Incidents for a result that has none (older runs): flagged findings grouped by
    (slice, cause), findings explained by another slice attached to that slice's group.

    Returns
    -------
    list of dict
        The shape of ``CheckResult.incidents``, most severe first, each with ``derived: True``.
    """
    groups: dict[tuple, dict[str, Any]] = {}
    flagged = [f for f in _by_severity(findings) if f.status in ("alert", "warn") and f.window is None]
    for f in flagged:
        if f.explained_by is not None:
            continue
        g = groups.setdefault((_key(f.slice), f.cause or ""), {
            "cause": f.cause or "", "slice": dict(f.slice), "status": "warn", "severity": 0.0,
            "metrics": [], "finding_ids": [], "explained_finding_ids": [], "derived": True,
        })
        if f.status == "alert":
            g["status"] = "alert"
        g["severity"] = max(g["severity"], float(f.severity or 0.0))
        if f.metric not in g["metrics"]:
            g["metrics"].append(f.metric)
        g["finding_ids"].append(f.id)
    for f in flagged:
        if f.explained_by is None:
            continue
        for (sk, _), g in groups.items():
            if sk == _key(f.explained_by):
                g["explained_finding_ids"].append(f.id)
                break
    out = sorted(groups.values(), key=lambda g: (g["status"] != "alert", -g["severity"], g["cause"], _key(g["slice"])))
    for i, g in enumerate(out):
        g["id"] = f"grp-{i + 1}"
    return out


class _Charts:
    """Collects the page's chart specs under stable ids."""

    def __init__(self) -> None:
        self.specs: dict[str, Any] = {}

    def add(self, kind: str, spec: dict[str, Any] | None, caption: str = "") -> ChartRef | None:
        if spec is None:
            return None
        cid = f"chart-{len(self.specs) + 1}"
        self.specs[cid] = spec
        return ChartRef(cid, kind, caption)


def _exceedance(f: Finding) -> float | None:
    """Divergence over tolerance in the bad direction (1 = at the tolerance, 0 = none)."""
    if f.value is None or f.diff is None or not math.isfinite(f.diff):
        return None
    try:
        t = Tolerance(kind=f.tolerance["kind"], value=float(f.tolerance["value"]), bad=f.tolerance["bad"])
    except (KeyError, TypeError, ValueError):
        return None
    if t.kind == "floor":
        # how much of the room between the bound and the ideal (1 or 0) is used up
        if t.bad == "decrease":
            return max(0.0, (1.0 - f.value) / (1.0 - t.value)) if t.value < 1 else None
        return max(0.0, f.value / t.value) if t.value > 0 else None
    margin = float(t.margin(f.expected if f.expected is not None else 0.0))
    if margin <= 0:
        return None
    d = f.diff if t.bad == "increase" else -f.diff if t.bad == "decrease" else abs(f.diff)
    return max(0.0, d / margin)


def _metric_column(f: Finding) -> str:
    return f"{f.metric} (replay)" if f.scores == "offline" else f.metric


def _heatmap(findings: list[Finding], incidents: list[dict[str, Any]], charts: _Charts) -> tuple[ChartRef | None, int, int]:
    """The slices x metrics heatmap: flagged slices (culprits first, each followed by the
    slices it explains), every whole-period finding of theirs, coloured by exceedance.

    Returns the chart, the number of rows shown and the number of flagged slices left out.
    """
    whole = [f for f in findings if f.window is None]
    flagged = [f for f in whole if f.status in ("alert", "warn")]
    if not flagged:
        return None, 0, 0
    worst: dict[tuple, float] = {}
    for f in flagged:
        k = _key(f.slice)
        worst[k] = max(worst.get(k, 0.0), float(f.severity or 0.0))
    explained_by: dict[tuple, tuple] = {}
    for f in flagged:
        if f.explained_by is not None:
            explained_by.setdefault(_key(f.slice), _key(f.explained_by))
    # a slice is drawn under its culprit when all its flagged findings are explained
    fully = {k for k in explained_by if all(f.explained_by is not None for f in flagged if _key(f.slice) == k)}
    order: list[tuple] = []
    culprits = [_key(i.get("slice")) for i in incidents]
    for c in [*culprits, *sorted(worst, key=lambda k: (-worst[k], k))]:
        if c in order or c in fully:
            continue
        order.append(c)
        for k in sorted((k for k in fully if explained_by[k] == c), key=lambda k: (-worst[k], k)):
            if k not in order:
                order.append(k)
    order += [k for k in sorted(fully, key=lambda k: (-worst[k], k)) if k not in order]
    order = [k for k in order if k in worst]
    shown, left = order[:MAX_HEATMAP_ROWS], max(0, len(order) - MAX_HEATMAP_ROWS)
    label = {k: ("\u21b3 " if k in fully else "") + slice_label(dict(k)) for k in shown}
    columns = sorted({_metric_column(f) for f in flagged if _key(f.slice) in label})
    cells: dict[tuple, dict[str, Any]] = {}
    for f in whole:
        k = _key(f.slice)
        col = _metric_column(f)
        if k not in label or col not in columns:
            continue
        r = _exceedance(f)
        if r is None:
            continue
        cur = cells.get((k, col))
        if cur is not None and cur["ratio"] >= r:
            continue
        cells[(k, col)] = {
            "row": label[k], "slice": slice_label(f.slice), "metric": col, "ratio": round(min(r, 99.0), 3),
            "status": STATUS_LABELS.get(f.status, f.status), "detail": _detail(f) or "\u2014",
            "explained": f.explained_by is not None,
            "explained_by": slice_label(f.explained_by) if f.explained_by is not None else "\u2014",
            "mark": "\u21b3" if f.explained_by is not None and f.status in ("alert", "warn")
            else ("\u25cf" if f.status == "alert" else "\u25cb" if f.status == "warn" else ""),
        }
    spec = V.heatmap_spec(list(cells.values()), [label[k] for k in shown], columns)
    return charts.add("heatmap", spec), len(shown), left


def _chart_entry(chart_data: Mapping[str, Any], slice_: Mapping[str, str]) -> Mapping[str, Any] | None:
    k = _key(slice_)
    for e in chart_data.get("slices") or []:
        if _key(e.get("slice")) == k:
            return e
    return None


def _incident_view(inc: Mapping[str, Any], by_id: dict[str, Finding], chart_data: Mapping[str, Any],
                   control: list[Mapping[str, Any]], charts: _Charts, level: float,
                   data_quality: Mapping[str, Any], all_findings: list[Finding]) -> IncidentView:
    ids = list(inc.get("finding_ids") or [])
    own = [by_id[i] for i in ids if i in by_id]
    explained = [by_id[i] for i in inc.get("explained_finding_ids") or [] if i in by_id]
    slice_ = dict(inc.get("slice") or {})
    cause = str(inc.get("cause") or "")
    metrics = [str(m) for m in inc.get("metrics") or []] or sorted({f.metric for f in own})
    mset = set(metrics)
    where = slice_label(slice_)
    status = str(inc.get("status") or "warn")
    started, last = inc.get("started"), inc.get("last_seen")
    when = ""
    if started or last:
        when = f"{started or '?'} \u2192 {last or '?'}" + (" (ongoing)" if inc.get("ongoing") else "")
    share = inc.get("share")
    view = IncidentView(
        id=str(inc.get("id") or ""),
        status=status,
        status_label=STATUS_LABELS.get(status, status),
        cause=cause,
        cause_label=CAUSE_LABELS.get(cause, cause or "unknown"),
        slice=where,
        severity=Cell(fmt_number(inc.get("severity"), 3), sort=_sort_value(inc.get("severity"))),
        share=_fmt_pct(float(share), 3) if isinstance(share, (int, float)) else "",
        headline=str(inc.get("headline") or ""),
        owner=str(inc.get("owner") or ""),
        escalation=str(inc.get("escalation") or ""),
        when=when,
        metrics=metrics,
        rows=[_row(f) for f in _by_severity(own + explained)[:MAX_INCIDENT_ROWS]],
        n_findings=len(own) + len(explained),
        explained=len(explained),
    )
    entry = _chart_entry(chart_data, slice_) if chart_data else None
    thresholds = list(chart_data.get("thresholds") or []) if chart_data else []

    def add(kind: str, spec: dict[str, Any] | None, caption: str) -> None:
        if kind == "score_hist" and any(c.kind == kind for c in view.charts):
            return
        ref = charts.add(kind, spec, caption)
        if ref is not None:
            view.charts.append(ref)

    if entry is not None:
        if cause == "concept_drift" or mset & _CALIBRATION:
            add("reliability", V.reliability_spec(entry, level, f"Reliability \u00b7 {where}"),
                f"observed positive rate vs mean predicted score per calibration bin, {_fmt_pct(level)} Wilson bands")
        if cause == "concept_drift" or mset & _PERFORMANCE:
            add("roc", V.roc_spec(entry, chart_data["roc_edges"], thresholds, f"ROC \u00b7 {where}",
                                  sides=("online", "offline", "baseline") if cause == "serving_skew" else ("online", "baseline")),
                "the operating thresholds marked on each curve")
        if cause == "serving_skew" or mset & _SKEW:
            add("score_hist", V.score_hist_spec(entry, chart_data["hist_edges"], thresholds, f"Scores \u00b7 {where}"),
                "score density online, replayed offline and in the baseline; thresholds dashed")
            add("decisions", V.decisions_spec(entry, thresholds, f"Decisions online \u00d7 replay \u00b7 {where}"),
                "share of paired rows per score band; off the diagonal a decision flipped")
            if entry.get("decisions"):
                from engine.charts import flip_rates

                view.flip_rates = [(f"t={t:g}", _fmt_pct(r, 3)) for t, r in zip(thresholds, flip_rates(entry["decisions"]))]
        if cause == "data_drift" or mset & _DRIFT:
            drifted = list(dict.fromkeys(f.feature for f in _by_severity(own) if f.feature and f.metric in _DRIFT))
            for name in drifted[:4]:
                if name == "score":
                    add("score_hist", V.score_hist_spec(entry, chart_data["hist_edges"], thresholds,
                                                        f"Scores \u00b7 {where}"), "score density, online vs baseline")
                    continue
                feat = next((x for x in chart_data.get("features") or [] if x.get("name") == name), None)
                if feat is not None:
                    add("feature", V.feature_spec(entry, feat, f"{name} \u00b7 {where}"),
                        "share of rows per baseline decile (numeric) or value (categorical)")
        if entry.get("dq") and (cause == "data_quality" or mset & {"join_coverage", "label_coverage"}):
            dq = entry["dq"]
            rows = dq.get("rows", 0)
            for key, label in (("rows", "online rows"), ("has_offline", "with a replay"), ("has_label", "with an outcome"),
                               ("invalid_score", "invalid scores"), ("invalid_label", "invalid labels"),
                               ("null_key", "null keys"), ("unseen_value", "unseen values")):
                if key in dq:
                    share = f" ({_fmt_pct(dq[key] / rows, 3)})" if rows and key != "rows" else ""
                    view.dq_counts.append((label, f"{int(dq[key]):,}{share}"))
    elif chart_data is not None:
        view.notes.append("No chart data was stored for this slice (the run keeps it for at most "
                          "the population and the most severe slices).")
    if cause == "data_quality" or mset & {"join_coverage", "label_coverage", "duplicate_key_rate"}:
        dq_rows = []
        dq_metrics = {"join_coverage", "label_coverage", "duplicate_key_rate"}
        mine = [x for x in all_findings if x.window is None and _key(x.slice) == _key(slice_)
                and (x.cause == "data_quality" or x.metric in dq_metrics)]
        for f in _by_severity(mine):
            if f.value is None:
                continue
            t = f.tolerance
            bound = t.get("value") if t.get("kind") == "floor" else (f.expected or 0.0) + float(t.get("value") or 0.0)
            lo = hi = None
            if f.ci is not None and f.expected is not None:
                lo, hi = f.expected + f.ci[0], f.expected + f.ci[1]
            label = f.metric + (f" ({f.feature})" if f.feature else "")
            if any(r["label"] == label for r in dq_rows):
                continue
            dq_rows.append({"label": label, "value": V._r(f.value), "lo": V._r(lo), "hi": V._r(hi), "bound": V._r(bound)})
        add("dq", V.findings_spec(dq_rows, f"Data quality \u00b7 {where}"),
            "rate with its interval; the red tick is the tolerance bound")
        if not slice_ and data_quality:
            dup = data_quality.get("duplicate_keys") or {}
            for table, n in dup.items():
                view.dq_counts.append((f"duplicate keys ({table})", f"{int(n):,}"))
    for cc in control:
        if _key(cc.get("slice")) == _key(slice_) and (cc.get("metric") in mset):
            add("control", V.control_spec(cc, f"{cc.get('metric')} over windows \u00b7 {where}"),
                "per window with its interval; shaded: control limits; red: out of control, onset ruled")
    if not view.charts and not view.notes:
        view.notes.append("No picture applies to these findings; their numbers are in the table below.")
    return view



def _capped(findings: list[Finding], limit: int) -> list[Finding]:
    """At most ``limit`` findings in canonical order: the flagged ones first chosen (most
    severe first), then the rest in order."""
    if len(findings) <= limit:
        return findings
    keep = {id(f) for f in _by_severity(f for f in findings if f.status in ("alert", "warn"))[:limit]}
    for f in findings:
        if len(keep) >= limit:
            break
        keep.add(id(f))
    return [f for f in findings if id(f) in keep]


def build_context(result: CheckResult) -> dict[str, Any]:
    """Everything the template shows, computed from the result.

    Parameters
    ----------
    result : CheckResult

    Returns
    -------
    dict
        Plain values and the view models above; no markup except the static script.
    """
    findings = list(result.findings)
    counts = {s: 0 for s in STATUS_LABELS}
    for f in findings:
        counts[f.status] = counts.get(f.status, 0) + 1
    alerts = _by_severity(f for f in findings if f.status == "alert")
    warnings = _by_severity(f for f in findings if f.status == "warn")
    run = result.run or {}
    input_cols, input_rows = _inputs(run)
    meta = run.get("meta") or {}
    level = float(run.get("ci_level") or 0.95)
    charts = _Charts()
    extras = result.extras or {}
    chart_data = extras.get("charts") or {}
    control = [c for c in extras.get("control_charts") or [] if isinstance(c, Mapping)]
    incidents = list(result.incidents or [])
    derived = not incidents
    if derived:
        incidents = derived_incidents(findings)
    by_id = {f.id: f for f in findings}
    panels = [
        _incident_view(inc, by_id, chart_data, control, charts, level, result.data_quality or {}, findings)
        for inc in incidents[:MAX_INCIDENT_PANELS]
    ]
    if panels:
        panels[0].open = True
    heatmap, heat_rows, heat_left = _heatmap(findings, incidents, charts)
    flagged = _by_severity(f for f in findings if f.status in ("alert", "warn"))
    scripts = [*(text for _, text in V.vendored()), V.RUNTIME, _SCRIPT] if charts.specs else [_SCRIPT]
    csp = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        f"script-src {' '.join(V.script_hash(t) for t in scripts)}; base-uri 'none'; form-action 'none'"
    )
    return {
        "verdict": result.verdict,
        "verdict_label": STATUS_LABELS.get(result.verdict, result.verdict),
        "counts": [(s, STATUS_LABELS.get(s, s), c) for s, c in counts.items()],
        "n_findings": len(findings),
        "run_id": str(run.get("id", "")),
        "started_at": str(run.get("started_at", "")),
        "engine_version": str(run.get("engine_version", "")),
        "run_items": _run_items(run),
        "input_cols": input_cols,
        "input_rows": input_rows,
        "meta": [(str(k), "—" if v is None else str(v)) for k, v in meta.items()],
        "ci_level": _fmt_pct(run.get("ci_level")) if isinstance(run.get("ci_level"), (int, float)) else "",
        "incidents": panels,
        "incidents_total": len(incidents),
        "incidents_rest": [
            _incident_view(inc, by_id, {}, [], _Charts(), level, {}, [])
            for inc in incidents[MAX_INCIDENT_PANELS:MAX_INCIDENT_PANELS + MAX_MORE_INCIDENTS]
        ],
        "incidents_derived": derived,
        "heatmap": heatmap,
        "heatmap_rows": heat_rows,
        "heatmap_left": heat_left,
        "top": [_row(f) for f in flagged[:TOP_FINDINGS]],
        "alerts": [_row(f) for f in alerts[:MAX_FLAGGED_ROWS]],
        "warnings": [_row(f) for f in warnings[:MAX_FLAGGED_ROWS]],
        "alerts_total": len(alerts),
        "warnings_total": len(warnings),
        "causes": _cause_summaries(findings),
        "dq_rows": _dq_rows(result.data_quality or {}, findings),
        # a browser handles a few thousand rows; the Parquet output holds them all
        "all_rows": [_row(f) for f in _capped(findings, MAX_ALL_ROWS)],
        "all_rows_left_out": max(0, len(findings) - MAX_ALL_ROWS),
        "statuses": list(STATUS_LABELS.items()),
        "csp": csp,
        # static texts, hashed into the CSP; the chart specs as escaped JSON (never markup)
        "scripts": [Markup(t) for t in scripts[:-1]],
        "script": Markup(_SCRIPT),
        "chart_json": Markup(V.json_for_script(charts.specs)) if charts.specs else None,
    }


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    # autoescape=True (not select_autoescape): the template's name ends in .j2, which
    # select_autoescape's extension test would not treat as HTML
    return jinja2.Environment(
        loader=jinja2.PackageLoader("engine", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=visible,  # every value printed: controls and bidi overrides made visible
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_html(result: CheckResult) -> str:
    """Render a check result as one self-contained HTML page.

    Parameters
    ----------
    result : CheckResult
        The result of :func:`engine.pipeline.run_check`.

    Returns
    -------
    str
        The HTML document. It loads nothing from anywhere (inline CSS and SVG, one optional
        inline script), escapes every user-supplied string, and is a pure function of
        ``result``.
    """
    return _environment().get_template("report.html.j2").render(build_context(result))
