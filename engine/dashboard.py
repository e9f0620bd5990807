"""``parity dashboard``: a static site from a run history (``--history DIR``).

One page per (model, baseline): every run in time order with its verdict and a link to its
report (rendered again from the stored JSON, ``runs/<run id>.html``), and each metric of
each slice over the runs: its value and interval, the tolerance band around the expected
value, the status of each run, and the runs where it was part of an incident marked. The
series drawn are those ever flagged (most often and most severe first), then the
population's others, capped; the page says how many more there are. An ``index.html`` lists the pages.

Everything from the runs (model names, slice values, meta) is escaped by Jinja2's
autoescape; file names are derived from a slug plus a hash, never taken from data as is.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup

from engine import vega as V
from engine.catalogue import Tolerance
from engine.report import STATUS_LABELS, _environment, fmt_number, slice_label
from engine.result import CheckResult, _atomic_write
from engine.store import RunHistory

__all__ = ["MAX_SERIES", "write_dashboard"]

#: Most series (metric x slice x detail) drawn per page.
MAX_SERIES = 60


def _slug(text: str, key: str) -> str:
    """A safe file stem: letters, digits, ``.-_`` from ``text``, plus a hash of ``key``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:48] or "runs"
    return f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _band(f: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """The region between the expected value and the tolerance bound(s)."""
    tol = f.get("tolerance") or {}
    expected = f.get("expected")
    try:
        t = Tolerance(kind=tol["kind"], value=float(tol["value"]), bad=tol["bad"])
    except (KeyError, TypeError, ValueError):
        return None, None
    if t.kind == "floor":
        return (t.value, 1.0) if t.bad == "decrease" else (0.0, t.value)
    if expected is None:
        return None, None
    m = float(t.margin(expected))
    lo = expected - m if t.bad in ("decrease", "either") else expected
    hi = expected + m if t.bad in ("increase", "either") else expected
    return lo, hi


@dataclass
class RunRow:
    """One run in a page's table."""

    id: str
    started: str
    verdict: str
    verdict_label: str
    alerts: int
    warnings: int
    incidents: int
    meta: str
    href: str


@dataclass
class Page:
    """One (model, baseline) page."""

    title: str
    model: str
    baseline: str
    file: str
    runs: list[RunRow] = field(default_factory=list)
    charts: list[dict[str, str]] = field(default_factory=list)
    more_series: int = 0


def _series_key(f: Mapping[str, Any]) -> str:
    return str(f.get("id") or "")


def _page(model: str, baseline: str, runs: list[dict[str, Any]], reports: dict[str, str]) -> tuple[Page, dict[str, Any]]:
    page = Page(title=f"{model or 'model not recorded'} \u00b7 baseline {baseline}", model=model,
                baseline=baseline, file=_slug(model or "model", f"{model}\x00{baseline}") + ".html")
    series: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    flagged: set[str] = set()
    for d in runs:
        run = d.get("run") or {}
        findings = [f for f in d.get("findings") or [] if isinstance(f, Mapping) and f.get("window") is None]
        incident_ids = set()
        for inc in d.get("incidents") or []:
            incident_ids.update(inc.get("finding_ids") or [])
            incident_ids.update(inc.get("explained_finding_ids") or [])
        statuses = [f.get("status") for f in findings]
        meta = run.get("meta") or {}
        page.runs.append(RunRow(
            id=str(run.get("id", "")), started=str(run.get("started_at", "")),
            verdict=str(d.get("verdict", "")), verdict_label=STATUS_LABELS.get(d.get("verdict", ""), str(d.get("verdict", ""))),
            alerts=statuses.count("alert"), warnings=statuses.count("warn"), incidents=len(d.get("incidents") or []),
            meta=", ".join(f"{k}={v}" for k, v in meta.items()), href=reports.get(str(run.get("id", "")), ""),
        ))
        for f in findings:
            k = _series_key(f)
            in_incident = f.get("id") in incident_ids if incident_ids else f.get("status") in ("alert", "warn")
            series.setdefault(k, []).append((run, {**f, "_incident": in_incident}))
            if f.get("status") in ("alert", "warn"):
                flagged.add(k)
    # every series ever flagged (most flagged runs, then most severe first), then the
    # population's other series
    def rank(k: str) -> tuple:
        pts = series[k]
        f = pts[-1][1]
        n_flagged = sum(p[1].get("status") in ("alert", "warn") for p in pts)
        worst = max(float(p[1].get("severity") or 0.0) for p in pts)
        return (n_flagged == 0, -n_flagged, -worst, f.get("metric", ""), slice_label(f.get("slice") or {}), k)

    keep = [k for k in series if not (series[k][-1][1].get("slice")) and any(
        p[1].get("value") is not None for p in series[k])]
    keep += [k for k in flagged if k not in keep]
    keep.sort(key=rank)
    page.more_series = max(0, len(keep) - MAX_SERIES)
    specs: dict[str, Any] = {}
    for k in keep[:MAX_SERIES]:
        points = []
        for run, f in series[k]:
            value = f.get("value")
            if value is None or not math.isfinite(float(value)):
                continue
            ci, expected = f.get("ci"), f.get("expected")
            lo = hi = None
            if ci and expected is not None:
                lo, hi = expected + ci[0], expected + ci[1]
            band_lo, band_hi = _band(f)
            rid = str(run.get("id", ""))
            points.append({
                "run": rid, "started": str(run.get("started_at", "")), "value": V._r(value), "lo": V._r(lo),
                "hi": V._r(hi), "band_lo": V._r(band_lo), "band_hi": V._r(band_hi),
                "status": str(f.get("status")), "marker": "incident" if f["_incident"] else "run",
                "href": reports.get(rid, ""),
            })
        last = series[k][-1][1]
        detail = " \u00b7 ".join(x for x in (last.get("scores"), last.get("feature"),
                                              None if last.get("threshold") is None else f"t={fmt_number(last['threshold'])}") if x)
        title = f"{last.get('metric')} \u00b7 {slice_label(last.get('slice') or {})}" + (f" \u00b7 {detail}" if detail else "")
        spec = V.timeline_spec(points, title)
        if spec is not None:
            cid = f"chart-{len(specs) + 1}"
            specs[cid] = spec
            page.charts.append({"id": cid, "kind": "timeline"})
    return page, specs


def write_dashboard(history: str | os.PathLike, out: str | os.PathLike) -> list[Path]:
    """Write the static site of a run history.

    Parameters
    ----------
    history : path
        A ``--history`` directory (:class:`~engine.store.RunHistory`).
    out : path
        The site's directory (created; files in it are replaced).

    Returns
    -------
    list of Path
        The pages written: ``index.html``, one page per (model, baseline), then the runs'
        reports under ``runs/``.
    """
    out = Path(out)
    runs = list(RunHistory(history).runs())
    reports: dict[str, str] = {}
    written: list[Path] = []
    for d in runs:
        rid = str((d.get("run") or {}).get("id", ""))
        name = f"runs/{_slug(rid, rid)}.html"
        path = out / name
        CheckResult.from_dict(d).report(path)
        reports[rid] = name
        written.append(path)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for d in runs:
        run = d.get("run") or {}
        model = str((run.get("meta") or {}).get("model", ""))
        groups.setdefault((model, str(run.get("baseline_id", ""))), []).append(d)
    pages = []
    env = _environment()
    for (model, baseline), group in sorted(groups.items()):
        group.sort(key=lambda d: str((d.get("run") or {}).get("started_at", "")))
        page, specs = _page(model, baseline, group, reports)
        pages.append(page)
        scripts = [*(t for _, t in V.vendored()), V.RUNTIME] if specs else []
        csp = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
               f"script-src {' '.join(V.script_hash(t) for t in scripts) or chr(39) + 'none' + chr(39)}; "
               "base-uri 'none'; form-action 'none'")
        html = env.get_template("dashboard.html.j2").render(
            index=False, page=page, csp=csp, scripts=[Markup(t) for t in scripts],
            chart_json=Markup(V.json_for_script(specs)) if specs else None,
        )
        _atomic_write(out / page.file, html.encode())
        written.insert(len(pages) - 1, out / page.file)
    index = env.get_template("dashboard.html.j2").render(
        index=True, pages=pages, n_runs=len(runs), csp="default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'",
        scripts=[], chart_json=None, page=None,
    )
    _atomic_write(out / "index.html", index.encode())
    return [out / "index.html", *written]
