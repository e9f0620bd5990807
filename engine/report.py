"""The HTML report: one self-contained page per check (``CheckResult.report(path)``).

:func:`render_html` turns a :class:`~engine.result.CheckResult` into a single HTML document
that needs nothing but a browser: the CSS is inline, there are no fonts, images, scripts or
style sheets from anywhere else (the machines that run checks and the people who read the
reports are often offline), and every chart is inline SVG drawn here, in Python.

The page leads with what matters: the verdict and the counts per status, the run record,
then the alerts by severity, the warnings, a summary per cause, the data-quality counts, and
finally every finding in a collapsed table.

Safety and determinism
----------------------
* Slice values, column names, paths and ``meta`` come from user data. The template is
  rendered by Jinja2 with ``autoescape=True`` and nothing user-supplied is ever marked safe,
  so ``<script>`` in a slice value is shown as text. As a second line of defence the page
  carries a Content-Security-Policy that allows no network access at all and only the one
  inline script below (by its SHA-256), so even markup that slipped through could not run.
* The script is optional: it only adds click-to-sort headers and a filter box; every table
  is complete and readable without it.
* The output is a pure function of the result (no clock, no randomness, no environment):
  rendering the same result twice gives the same bytes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup

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
#: Rows of the all-findings table; past it the page points to the JSON/Parquet outputs.
MAX_ALL_ROWS = 5000

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
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    f"script-src 'sha256-{_SCRIPT_HASH}'; base-uri 'none'; form-action 'none'"
)


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


def slice_label(slice_: Mapping[str, str]) -> str:
    """``country=BR · device=ios``, or ``all rows`` for the whole population."""
    if not slice_:
        return "all rows"
    return " \u00b7 ".join(f"{k}={v}" for k, v in sorted(slice_.items()))


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


@dataclass(frozen=True)
class CIBar:
    """Geometry of the inline SVG of one finding's interval, in SVG user units.

    The bar is drawn on the difference axis (``value - expected``): the shaded bands are the
    region beyond tolerance in the bad direction, the thin dashed line is zero (no change),
    the solid lines are the tolerance, the thick bar is the CI and the dot the point estimate.
    """

    width: int
    height: int
    zero: float
    tolerance: tuple[float, ...]
    bad_bands: tuple[tuple[float, float], ...]
    lo: float | None
    hi: float | None
    point: float
    title: str


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
    bar: CIBar | None = None


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


def _ci_bar(f: Finding) -> CIBar | None:
    """The geometry of a finding's CI bar, or None when there is no difference to draw."""
    if f.diff is None or not math.isfinite(f.diff):
        return None
    width, height, pad = 130, 20, 5.0
    tol = f.tolerance
    expected = f.expected if f.expected is not None else 0.0
    lines: list[float] = []
    bad: list[str] = []  # "left" / "right" of each tolerance line
    try:
        t = Tolerance(kind=tol["kind"], value=float(tol["value"]), bad=tol["bad"])
    except (KeyError, TypeError, ValueError):
        t = None
    if t is not None and t.kind == "floor":
        # the bound is on the value; on the difference axis it sits at bound - expected
        lines.append(t.value - expected)
        bad.append("left" if t.bad == "decrease" else "right")
    elif t is not None:
        m = float(t.margin(expected))
        if t.bad in ("increase", "either"):
            lines.append(m)
            bad.append("right")
        if t.bad in ("decrease", "either"):
            lines.append(-m)
            bad.append("left")
    lo, hi = f.ci if f.ci is not None and len(f.ci) == 2 else (None, None)
    if lo is not None and hi is not None and not (math.isfinite(lo) and math.isfinite(hi)):
        lo = hi = None
    xs = [0.0, f.diff, *lines, *(v for v in (lo, hi) if v is not None)]
    a, b = min(xs), max(xs)
    span = b - a
    if span <= 0:
        span = abs(a) or 1.0
    a, b = a - 0.08 * span, b + 0.08 * span

    def x(v: float) -> float:
        return round(pad + (v - a) / (b - a) * (width - 2 * pad), 2)

    bands = tuple((x(v), float(width)) if side == "right" else (0.0, x(v)) for v, side in zip(lines, bad))
    title = f"difference {fmt_number(f.diff)}"
    if lo is not None and hi is not None:
        title += f", CI [{fmt_number(lo)}, {fmt_number(hi)}]"
    if lines:
        title += "; tolerance at " + ", ".join(fmt_number(v) for v in lines)
    return CIBar(
        width=width,
        height=height,
        zero=x(0.0),
        tolerance=tuple(x(v) for v in lines),
        bad_bands=tuple((s, round(e - s, 2)) for s, e in bands),
        lo=None if lo is None else x(lo),
        hi=None if hi is None else x(hi),
        point=x(f.diff),
        title=title,
    )


def _row(f: Finding, with_bar: bool) -> Row:
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
        bar=_ci_bar(f) if with_bar else None,
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
        "alerts": [_row(f, True) for f in alerts],
        "warnings": [_row(f, True) for f in warnings],
        "causes": _cause_summaries(findings),
        "dq_rows": _dq_rows(result.data_quality or {}, findings),
        # a browser handles a few thousand rows; the Parquet output holds them all
        "all_rows": [_row(f, False) for f in findings[:MAX_ALL_ROWS]],
        "all_rows_left_out": max(0, len(findings) - MAX_ALL_ROWS),
        "statuses": list(STATUS_LABELS.items()),
        "csp": _CSP,
        "script": Markup(_SCRIPT),  # static text, hashed into the CSP
    }


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    # autoescape=True (not select_autoescape): the template's name ends in .j2, which
    # select_autoescape's extension test would not treat as HTML
    return jinja2.Environment(
        loader=jinja2.PackageLoader("engine", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
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
