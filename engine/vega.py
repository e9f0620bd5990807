"""Vega-Lite specifications of the report's and the dashboard's charts, and their runtime.

Every chart is a Vega-Lite spec (a plain dict) built from chart data (:mod:`engine.charts`),
findings or runs; the page inlines one copy of Vega, Vega-Lite and vega-interpreter
(``engine/vendor/``, refreshed by ``scripts/vendor_vega``) and a small runtime that compiles
and draws each spec into its container.

Safety: values from data (slice values, feature and category names, metric names) only ever
travel in ``data.values`` and in titles, which Vega draws as SVG text; they never enter an
expression string, so nothing from data is ever evaluated. Expressions are evaluated by
vega-interpreter (``ast: true``), never compiled with ``new Function``, so the page's
Content-Security-Policy can forbid ``unsafe-eval``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np

from engine import charts as C

#: Colour of each side, everywhere.
SIDE_COLORS = {"online": "#2457a6", "replay": "#e08a00", "baseline": "#7b8794"}
_SIDE_NAME = {"online": "online", "offline": "replay", "baseline": "baseline"}
_SIDES = ("online", "offline", "baseline")

_CONFIG: dict[str, Any] = {
    "font": "system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif",
    "view": {"stroke": "#e4e7eb"},
    "axis": {"labelColor": "#3e4c59", "titleColor": "#3e4c59", "gridColor": "#eef0f3", "labelFontSize": 11,
             "titleFontSize": 11, "titleFontWeight": 600},
    "legend": {"labelFontSize": 11, "titleFontSize": 11, "orient": "bottom", "direction": "horizontal"},
    "title": {"fontSize": 12.5, "fontWeight": 650, "anchor": "start", "color": "#1f2933"},
}

W, H = 300, 220


def _r(x: float | None, digits: int = 6) -> float | None:
    """A float rounded for the page (``None`` for missing or non-finite)."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _side_color(domain: Sequence[str]) -> dict[str, Any]:
    return {"domain": list(domain), "range": [SIDE_COLORS[d] for d in domain]}


def _base(title: str | list[str], width: int = W, height: int = H) -> dict[str, Any]:
    # long slice values are cut (with an ellipsis) at the chart's width; the full text is in the page
    return {"title": {"text": title, "limit": width}, "width": width, "height": height, "config": _CONFIG}


def reliability_spec(entry: Mapping[str, Any], level: float, title: str) -> dict[str, Any] | None:
    """Reliability diagram: observed vs mean predicted per calibration bin, Wilson bands."""
    rows = []
    for side in _SIDES:
        rel = entry.get("reliability", {}).get(side)
        if not rel:
            continue
        obs, pred, nz = C.reliability_points(rel["n"], rel["pos"], rel["sum_p"])
        lo, hi = C.wilson_interval(np.asarray(rel["pos"])[nz], np.asarray(rel["n"])[nz], level)
        for i in range(len(nz)):
            rows.append({"side": _SIDE_NAME[side], "pred": _r(pred[i]), "obs": _r(obs[i]), "lo": _r(lo[i]),
                         "hi": _r(hi[i]), "n": int(rel["n"][nz[i]])})
    if not rows:
        return None
    sides = [s for s in SIDE_COLORS if any(r["side"] == s for r in rows)]
    color = {"field": "side", "type": "nominal", "scale": _side_color(sides), "title": None}
    x = {"field": "pred", "type": "quantitative", "title": "mean predicted", "scale": {"domain": [0, 1]}}
    return {
        **_base(title),
        "layer": [
            {"data": {"values": [{"a": 0, "b": 1}]}, "mark": {"type": "rule", "color": "#9aa5b1", "strokeDash": [3, 3]},
             "encoding": {"x": {"field": "a", "type": "quantitative"}, "y": {"field": "a", "type": "quantitative"},
                          "x2": {"field": "b"}, "y2": {"field": "b"}}},
            {"data": {"values": rows}, "layer": [
                {"mark": {"type": "area", "opacity": 0.18},
                 "encoding": {"x": x, "y": {"field": "lo", "type": "quantitative"}, "y2": {"field": "hi"},
                              "color": color}},
                {"mark": {"type": "line", "point": True, "strokeWidth": 1.8},
                 "encoding": {"x": x, "y": {"field": "obs", "type": "quantitative", "title": "observed positive rate",
                                            "scale": {"domain": [0, 1]}},
                              "color": color,
                              "tooltip": [{"field": "side"}, {"field": "pred", "format": ".4f"},
                                          {"field": "obs", "format": ".4f"}, {"field": "lo", "format": ".4f"},
                                          {"field": "hi", "format": ".4f"}, {"field": "n", "format": ","}]}},
            ]},
        ],
    }


def roc_spec(entry: Mapping[str, Any], edges: Sequence[float], thresholds: Sequence[float], title: str,
             sides: Sequence[str] = ("online", "baseline")) -> dict[str, Any] | None:
    """ROC curves (online, baseline; the replay when asked) with the operating thresholds."""
    curve, ops = [], []
    for side in sides:
        roc = entry.get("roc", {}).get(side)
        if not roc:
            continue
        fpr, tpr = C.roc_points(roc["neg"], roc["pos"])
        for i, (f, t) in enumerate(zip(fpr, tpr)):
            curve.append({"side": _SIDE_NAME[side], "fpr": _r(f, 5), "tpr": _r(t, 5), "i": i})
        for t, f, r in C.operating_points(roc["neg"], roc["pos"], edges, thresholds):
            ops.append({"side": _SIDE_NAME[side], "fpr": _r(f, 5), "tpr": _r(r, 5), "t": f"t={t:g}"})
    if not curve:
        return None
    present = [s for s in SIDE_COLORS if any(r["side"] == s for r in curve)]
    color = {"field": "side", "type": "nominal", "scale": _side_color(present), "title": None}
    x = {"field": "fpr", "type": "quantitative", "title": "false positive rate", "scale": {"domain": [0, 1]}}
    y = {"field": "tpr", "type": "quantitative", "title": "true positive rate", "scale": {"domain": [0, 1]}}
    return {
        **_base(title),
        "layer": [
            {"data": {"values": [{"a": 0, "b": 1}]}, "mark": {"type": "rule", "color": "#9aa5b1", "strokeDash": [3, 3]},
             "encoding": {"x": {"field": "a", "type": "quantitative"}, "y": {"field": "a", "type": "quantitative"},
                          "x2": {"field": "b"}, "y2": {"field": "b"}}},
            {"data": {"values": curve}, "mark": {"type": "line", "strokeWidth": 1.8},
             "encoding": {"x": x, "y": y, "color": color, "order": {"field": "i", "type": "quantitative"}}},
            {"data": {"values": ops}, "layer": [
                {"mark": {"type": "point", "filled": True, "size": 60, "stroke": "#ffffff", "strokeWidth": 1},
                 "encoding": {"x": x, "y": y, "color": color, "shape": {"value": "diamond"},
                              "tooltip": [{"field": "side"}, {"field": "t", "title": "threshold"},
                                          {"field": "fpr", "format": ".4f"}, {"field": "tpr", "format": ".4f"}]}},
                {"mark": {"type": "text", "dx": 6, "dy": -7, "align": "left", "fontSize": 10},
                 "encoding": {"x": x, "y": y, "text": {"field": "t"}, "color": color}},
            ]},
        ],
    }


def score_hist_spec(entry: Mapping[str, Any], edges: Sequence[float], thresholds: Sequence[float],
                    title: str) -> dict[str, Any] | None:
    """Score densities (online, replay, baseline) as steps over the coarse grid, thresholds ruled."""
    outer = [0.0, *edges, 1.0]
    rows = []
    for side in _SIDES:
        counts = entry.get("hist", {}).get(side)
        if not counts or sum(counts) == 0:
            continue
        total = float(sum(counts))
        dens = [c / total / (outer[b + 1] - outer[b]) if outer[b + 1] > outer[b] else 0.0 for b, c in enumerate(counts)]
        for b, c in enumerate(counts):
            rows.append({"side": _SIDE_NAME[side], "x": _r(outer[b]), "density": _r(dens[b], 5),
                         "share": _r(c / total, 5), "hi": _r(outer[b + 1])})
        # the last step ends at 1
        rows.append({"side": _SIDE_NAME[side], "x": 1.0, "density": _r(dens[-1], 5), "share": None, "hi": None})
    if not rows:
        return None
    present = [s for s in SIDE_COLORS if any(r["side"] == s for r in rows)]
    color = {"field": "side", "type": "nominal", "scale": _side_color(present), "title": None}
    return {
        **_base(title),
        "layer": [
            {"data": {"values": rows}, "mark": {"type": "line", "interpolate": "step-after", "strokeWidth": 1.6},
             "encoding": {"x": {"field": "x", "type": "quantitative", "title": "score", "scale": {"domain": [0, 1]}},
                          "y": {"field": "density", "type": "quantitative", "title": "density"},
                          "color": color,
                          "tooltip": [{"field": "side"}, {"field": "x", "format": ".4f", "title": "from"},
                                      {"field": "hi", "format": ".4f", "title": "to"},
                                      {"field": "share", "format": ".2%"}]}},
            {"data": {"values": [{"t": float(t)} for t in thresholds]},
             "mark": {"type": "rule", "color": "#c62828", "strokeDash": [4, 3]},
             "encoding": {"x": {"field": "t", "type": "quantitative"}}},
        ],
    }


def _band_labels(thresholds: Sequence[float]) -> list[str]:
    t = [f"{x:g}" for x in thresholds]
    if not t:
        return ["all"]
    return [f"< {t[0]}"] + [f"{a}\u2013{b}" for a, b in zip(t[:-1], t[1:])] + [f"\u2265 {t[-1]}"]


def decisions_spec(entry: Mapping[str, Any], thresholds: Sequence[float], title: str) -> dict[str, Any] | None:
    """The online x replay decision matrix (score bands between thresholds), off-diagonal = flips."""
    m = entry.get("decisions")
    if not m:
        return None
    labels = _band_labels(thresholds)
    total = float(sum(sum(r) for r in m)) or 1.0
    rows = [{"online": labels[a], "replay": labels[b], "rows": int(m[a][b]), "share": _r(m[a][b] / total, 4),
             "agree": a == b} for a in range(len(m)) for b in range(len(m))]
    enc = {"x": {"field": "replay", "type": "ordinal", "sort": labels, "title": "replay (offline) score band"},
           "y": {"field": "online", "type": "ordinal", "sort": labels[::-1], "title": "online score band"}}
    return {
        **_base(title, 240, 200),
        "data": {"values": rows},
        "encoding": enc,
        "layer": [
            {"mark": {"type": "rect", "stroke": "#ffffff"},
             "encoding": {"color": {"field": "share", "type": "quantitative", "title": "share of rows",
                                    "scale": {"scheme": "blues"}, "legend": None},
                          "tooltip": [{"field": "online"}, {"field": "replay"}, {"field": "rows", "format": ","},
                                      {"field": "share", "format": ".2%"}]}},
            {"mark": {"type": "text", "fontSize": 11},
             "encoding": {"text": {"field": "share", "format": ".1%"},
                          "color": {"condition": {"test": "datum.share > 0.3", "value": "#ffffff"}, "value": "#1f2933"}}},
        ],
    }


def feature_spec(entry: Mapping[str, Any], feature: Mapping[str, Any], title: str,
                 max_categories: int = 15) -> dict[str, Any] | None:
    """A feature's share per bin (deciles + missing, or categories), baseline vs online."""
    counts = entry.get("features", {}).get(feature["name"])
    if not counts:
        return None
    labels = list(feature["labels"])
    shares = {}
    for side in ("online", "baseline"):
        c = counts.get(side)
        if c:
            total = float(sum(c)) or 1.0
            shares[side] = [x / total for x in c]
    if not shares:
        return None
    order = list(range(len(labels)))
    if feature.get("kind") == "categorical" and len(labels) > max_categories:
        # the categories that moved most, the rest folded into one bar
        gap = [max(abs(shares.get("online", [0] * len(labels))[i] - shares.get("baseline", [0] * len(labels))[i]),
                   0.0) for i in order]
        keep = sorted(order, key=lambda i: -gap[i])[:max_categories]
        keep.sort()
        rest = [i for i in order if i not in keep]
    else:
        keep, rest = order, []
    rows = []
    names = [labels[i] for i in keep] + (["(other categories)"] if rest else [])
    for side, sh in shares.items():
        vals = [sh[i] for i in keep] + ([sum(sh[i] for i in rest)] if rest else [])
        for name, v in zip(names, vals):
            rows.append({"side": side, "bin": name, "share": _r(v, 5)})
    present = [s for s in ("online", "baseline") if s in shares]
    return {
        **_base(title, max(W, 26 * len(names)), H),
        "data": {"values": rows},
        "mark": {"type": "bar"},
        "encoding": {
            "x": {"field": "bin", "type": "nominal", "sort": names, "title": None, "axis": {"labelAngle": -40,
                                                                                          "labelLimit": 120}},
            "xOffset": {"field": "side", "sort": present},
            "y": {"field": "share", "type": "quantitative", "title": "share of rows", "axis": {"format": "%"}},
            "color": {"field": "side", "type": "nominal", "scale": _side_color(present), "title": None},
            "tooltip": [{"field": "side"}, {"field": "bin"}, {"field": "share", "format": ".2%"}],
        },
    }


def findings_spec(rows: Sequence[Mapping[str, Any]], title: str) -> dict[str, Any] | None:
    """Value, interval and bound of a few findings (data quality): one row per finding."""
    if not rows:
        return None
    return {
        **_base(title, W, max(60, 26 * len(rows))),
        "data": {"values": list(rows)},
        "encoding": {"y": {"field": "label", "type": "nominal", "title": None, "sort": None,
                           "axis": {"labelLimit": 160}}},
        "layer": [
            {"mark": {"type": "bar", "color": "#8fa8d6", "height": 12},
             "encoding": {"x": {"field": "value", "type": "quantitative", "title": "rate"},
                          "tooltip": [{"field": "label"}, {"field": "value", "format": ".4f"},
                                      {"field": "bound", "format": ".4f", "title": "tolerance bound"}]}},
            {"mark": {"type": "rule", "color": "#1f2933"},
             "encoding": {"x": {"field": "lo", "type": "quantitative"}, "x2": {"field": "hi"}}},
            {"mark": {"type": "tick", "color": "#c62828", "thickness": 2, "size": 20},
             "encoding": {"x": {"field": "bound", "type": "quantitative"}}},
        ],
    }


def control_spec(chart: Mapping[str, Any], title: str) -> dict[str, Any] | None:
    """A control chart: the metric per window with its interval, the control limits, the
    centre line, out-of-control points and the onset."""
    points = [p for p in chart.get("points") or [] if isinstance(p, Mapping)]
    if not points:
        return None
    rows = [{"start": str(p.get("start")), "end": str(p.get("end")), "value": _r(p.get("value")),
             "lo": _r(p.get("lo")), "hi": _r(p.get("hi")), "lcl": _r(p.get("lcl")), "ucl": _r(p.get("ucl")),
             "signal": "out of control" if p.get("signal") else "in control"} for p in points]
    x = {"field": "start", "type": "temporal", "title": "window"}
    layers: list[dict[str, Any]] = [
        {"mark": {"type": "area", "color": "#e6f4ea", "opacity": 0.9},
         "encoding": {"x": x, "y": {"field": "lcl", "type": "quantitative"}, "y2": {"field": "ucl"}}},
        {"mark": {"type": "rule", "color": "#1f2933"},
         "encoding": {"x": x, "y": {"field": "lo", "type": "quantitative"}, "y2": {"field": "hi"}}},
        {"mark": {"type": "line", "color": "#2457a6", "point": False},
         "encoding": {"x": x, "y": {"field": "value", "type": "quantitative", "title": chart.get("metric") or "value",
                                    "scale": {"zero": False}}}},
        {"mark": {"type": "point", "filled": True, "size": 45},
         "encoding": {"x": x, "y": {"field": "value", "type": "quantitative"},
                      "color": {"field": "signal", "type": "nominal", "title": None,
                                "scale": {"domain": ["in control", "out of control"], "range": ["#2457a6", "#c62828"]}},
                      "tooltip": [{"field": "start"}, {"field": "value", "format": ".4f"}, {"field": "lo", "format": ".4f"},
                                  {"field": "hi", "format": ".4f"}, {"field": "lcl", "format": ".4f"},
                                  {"field": "ucl", "format": ".4f"}, {"field": "signal"}]}},
    ]
    extra: list[dict[str, Any]] = []
    center = _r(chart.get("center"))
    if center is not None:
        extra.append({"data": {"values": [{"c": center}]}, "mark": {"type": "rule", "color": "#52606d", "strokeDash": [4, 3]},
                      "encoding": {"y": {"field": "c", "type": "quantitative"}}})
    if chart.get("onset"):
        extra.append({"data": {"values": [{"onset": str(chart["onset"]), "label": "onset"}]},
                      "layer": [{"mark": {"type": "rule", "color": "#c62828", "strokeWidth": 2},
                                 "encoding": {"x": {"field": "onset", "type": "temporal"}}},
                                {"mark": {"type": "text", "color": "#c62828", "align": "left", "dx": 4, "y": 6, "fontSize": 10},
                                 "encoding": {"x": {"field": "onset", "type": "temporal"}, "text": {"field": "label"}}}]})
    return {**_base(title, 420, H), "layer": [{"data": {"values": rows}, "layer": layers}, *extra]}


def heatmap_spec(cells: Sequence[Mapping[str, Any]], rows: Sequence[str], metrics: Sequence[str]) -> dict[str, Any] | None:
    """Slices x metrics coloured by divergence over tolerance (1 = at tolerance); explained
    findings faded and marked with the culprit that explains them."""
    if not cells:
        return None
    enc = {"x": {"field": "metric", "type": "nominal", "sort": list(metrics), "title": None,
                 "axis": {"orient": "top", "labelAngle": -40, "labelLimit": 140}},
           "y": {"field": "row", "type": "nominal", "sort": list(rows), "title": None, "axis": {"labelLimit": 320}}}
    return {
        "config": {**_CONFIG, "view": {"stroke": None}},
        "width": max(240, 30 * len(metrics)),
        "height": {"step": 20},
        "data": {"values": list(cells)},
        "encoding": enc,
        "layer": [
            {"mark": {"type": "rect", "stroke": "#ffffff", "strokeWidth": 1},
             "encoding": {"color": {"field": "ratio", "type": "quantitative", "title": "divergence / tolerance",
                                    "scale": {"domain": [0, 1, 3], "range": ["#eef2f6", "#f6c96b", "#b71c1c"], "clamp": True,
                                              "interpolate": "rgb"},
                                    "legend": {"orient": "top", "direction": "horizontal", "gradientLength": 160}},
                          "opacity": {"condition": {"test": "datum.explained", "value": 0.4}, "value": 1},
                          "tooltip": [{"field": "slice"}, {"field": "metric"}, {"field": "ratio", "format": ".2f",
                                                                                  "title": "divergence / tolerance"},
                                      {"field": "status"}, {"field": "detail"}, {"field": "explained_by"}]}},
            {"mark": {"type": "text", "fontSize": 10},
             "encoding": {"text": {"field": "mark"},
                          "color": {"condition": {"test": "datum.ratio > 2", "value": "#ffffff"}, "value": "#1f2933"}}},
        ],
    }


def timeline_spec(points: Sequence[Mapping[str, Any]], title: str) -> dict[str, Any] | None:
    """A metric over runs: value, interval, tolerance band, runs with incidents marked.

    ``points``: ``run`` (index label), ``started``, ``value``, ``lo``, ``hi``, ``band_lo``,
    ``band_hi``, ``status``, ``marker`` (``"incident"`` or ``"run"``), ``href`` (the run's report).
    """
    if not points:
        return None
    x = {"field": "started", "type": "temporal", "title": "run"}
    status_scale = {"domain": ["ok", "warn", "alert", "insufficient_data"],
                    "range": ["#1e7b34", "#a15c00", "#c62828", "#9aa5b1"]}
    return {
        **_base(title, 520, 200),
        "data": {"values": list(points)},
        "layer": [
            {"mark": {"type": "area", "color": "#e6f4ea", "opacity": 0.9, "interpolate": "step"},
             "encoding": {"x": x, "y": {"field": "band_lo", "type": "quantitative"}, "y2": {"field": "band_hi"}}},
            {"mark": {"type": "rule", "color": "#52606d"},
             "encoding": {"x": x, "y": {"field": "lo", "type": "quantitative"}, "y2": {"field": "hi"}}},
            {"mark": {"type": "line", "color": "#2457a6"},
             "encoding": {"x": x, "y": {"field": "value", "type": "quantitative", "title": None, "scale": {"zero": False}}}},
            {"mark": {"type": "point", "filled": True, "size": 70, "cursor": "pointer"},
             "encoding": {"x": x, "y": {"field": "value", "type": "quantitative"},
                          "color": {"field": "status", "type": "nominal", "scale": status_scale, "title": None},
                          "shape": {"field": "marker", "type": "nominal", "title": None,
                                    "scale": {"domain": ["run", "incident"], "range": ["circle", "triangle-up"]}},
                          "href": {"field": "href"},
                          "tooltip": [{"field": "run"}, {"field": "started"}, {"field": "value", "format": ".4f"},
                                      {"field": "status"}, {"field": "marker", "title": "incident"}]}},
        ],
    }


# --------------------------------------------------------------------------------------
# The page's scripts
# --------------------------------------------------------------------------------------

#: The runtime: compiles each ``[data-chart]`` spec and draws it (SVG) when it is visible: at
#: load for open sections, when a closed ``<details>`` opens, everything before printing or
#: with ``#expand`` in the URL. It reads specs from the JSON block, builds no markup from
#: strings, and reports a failure as text in the chart's box.
RUNTIME = """
(function () {
  "use strict";
  var block = document.getElementById("parity-charts");
  if (!block || !window.vega || !window.vegaLite || !window.vegaInterpreter) { return; }
  var specs = JSON.parse(block.textContent);
  var interp = window.vegaInterpreter.expressionInterpreter;
  function visible(el) {
    for (var p = el.parentElement; p; p = p.parentElement) {
      if (p.tagName === "DETAILS" && !p.open) { return false; }
    }
    return true;
  }
  function fail(el, e) {
    el.setAttribute("data-state", "error");
    el.textContent = "This chart could not be drawn: " + (e && e.message ? e.message : String(e));
  }
  function draw(el) {
    if (el.getAttribute("data-state")) { return; }
    var spec = specs[el.getAttribute("data-chart")];
    if (!spec) { el.setAttribute("data-state", "missing"); return; }
    el.setAttribute("data-state", "drawing");
    try {
      var runtime = vega.parse(vegaLite.compile(spec).spec, null, {ast: true});
      var view = new vega.View(runtime, {expr: interp, renderer: "svg", container: el, hover: true});
      view.runAsync().then(function () { el.setAttribute("data-state", "drawn"); },
                           function (e) { fail(el, e); });
    } catch (e) { fail(el, e); }
  }
  function drawVisible() {
    document.querySelectorAll("[data-chart]").forEach(function (el) { if (visible(el)) { draw(el); } });
  }
  // when the first screen's charts are drawn: ms since navigation began (load + draw)
  function settled() {
    var busy = document.querySelectorAll('[data-chart][data-state="drawing"]').length;
    if (busy) { setTimeout(settled, 10); return; }
    document.documentElement.setAttribute("data-charts-ms", String(Math.round(performance.now())));
  }
  function expand() {
    document.querySelectorAll("details").forEach(function (d) { d.open = true; });
    drawVisible();
  }
  document.addEventListener("toggle", drawVisible, true);
  window.addEventListener("beforeprint", expand);
  if (location.hash === "#expand") { expand(); } else { drawVisible(); }
  settled();
})();
"""


@functools.lru_cache(maxsize=1)
def vendored() -> tuple[tuple[str, str], ...]:
    """The vendored libraries in load order: (name@version, source)."""
    root = resources.files("engine") / "vendor"
    versions = {v["name"]: v for v in json.loads((root / "versions.json").read_text(encoding="utf-8"))}
    out = []
    for name in ("vega", "vega-lite", "vega-interpreter"):
        v = versions[name]
        text = (root / v["file"]).read_text(encoding="utf-8")
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != v["sha256"]:
            raise RuntimeError(f"engine/vendor/{v['file']} does not match versions.json; run scripts/vendor_vega")
        out.append((f"{name}@{v['version']}", text))
    return tuple(out)


def script_hash(source: str) -> str:
    """The CSP source expression that allows one inline script: ``'sha256-…'``."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode() + "'"


def json_for_script(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: ``<``, ``>`` and ``&`` escaped
    as ``\\u003c`` etc., so no value can close the element or open a comment."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
