"""Tests of engine.report: the HTML report of a real check, parsed and opened in a real browser.

One small synthetic deployment (60,000 rows, B = 200) is checked once per module. Before the
baseline is built, the country ``BR`` (which carries an injected serving skew, so it alerts)
is renamed in the evaluation and online tables to a hostile value, so the escaping is tested
on a slice value that went through the whole pipeline; ``meta`` carries another one.

The browser test runs Chromium headless (``--dump-dom`` and ``--screenshot``) when one is on
PATH (``scripts/install_browser`` installs it in CI) and skips otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from engine.compare import Finding
from engine.config import Config
from engine.expectation import build_baseline
from engine.pipeline import run_check
from engine.report import fmt_number, fmt_p_value, render_html, slice_label
from engine.result import CheckResult
from engine.synthetic import generate

# Would set a marker attribute and load an image if it were ever parsed as markup.
XSS = "<script>document.documentElement.setAttribute('data-pwned','1')</script><img src=x onerror=alert(1)>"
XSS_META = '"><b id="pwned-meta">bold</b>'
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


def _rename(path: Path, column: str, old: str, new: str) -> None:
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    col = table.column(i)
    renamed = pc.if_else(pc.equal(col, old), new, col).cast(col.type)
    pq.write_table(table.set_column(i, column, renamed), path)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> CheckResult:
    """A real check of a small synthetic deployment, with a hostile slice value."""
    tmp = tmp_path_factory.mktemp("report")
    sc = generate(tmp, rows=60_000, seed=1)
    for path in (sc.evaluation, sc.online):
        _rename(path, "country", "BR", XSS)
    config = Config(slices=sc.slices, features=sc.features, thresholds=sc.thresholds)
    build_baseline(sc.evaluation, config, out=tmp / "bl")
    return run_check(
        tmp / "bl",
        sc.online,
        offline=sc.offline,
        outcomes=sc.outcomes,
        bootstrap=200,
        meta={"pipeline": "nightly", "note": XSS_META},
    )


@pytest.fixture(scope="module")
def html(result: CheckResult) -> str:
    return render_html(result)


class Page(HTMLParser):
    """A small DOM summary: elements by id, every tag's attributes, tables' rows and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.ids: dict[str, dict[str, str | None]] = {}
        self.text_by_id: dict[str, list[str]] = {}
        self.tables: dict[str, list[list[dict[str, Any]]]] = {}
        self.text: list[str] = []
        self._open_ids: list[tuple[str, str, int]] = []  # (tag, id, depth)
        self._depth = 0
        self._table: str | None = None
        self._in_body = False
        self._cell: dict[str, Any] | None = None
        self._row: list[dict[str, Any]] | None = None
        self.script_texts: list[str] = []
        self._in_script = False

    VOID: ClassVar[frozenset[str]] = frozenset(
        {"meta", "br", "img", "input", "link", "hr", "col", "source", "wbr", "circle", "line", "rect"}
    )

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "script":
            self._in_script = True
        if tag in self.VOID:
            return
        self._depth += 1
        if a.get("id"):
            self.ids[a["id"]] = a
            self.text_by_id[a["id"]] = []
            self._open_ids.append((tag, a["id"], self._depth))
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tbody" and self._table:
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = {"attrs": a, "text": ""}

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False
        if tag in self.VOID:
            return
        if tag == "td" and self._cell is not None and self._row is not None:
            self._cell["text"] = " ".join(self._cell["text"].split())
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None
        while self._open_ids and self._open_ids[-1][2] >= self._depth:
            self._open_ids.pop()
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_texts.append(data)
            return
        self.text.append(data)
        for _, i, _ in self._open_ids:
            self.text_by_id[i].append(data)
        if self._cell is not None:
            self._cell["text"] += data

    def id_text(self, i: str) -> str:
        return " ".join(" ".join(self.text_by_id[i]).split())


def _markup(html: str) -> str:
    """The page without the contents of its script elements."""
    return re.sub(r"(<script[^>]*>).*?(</script>)", r"\1\2", html, flags=re.S)


def parse(html: str) -> Page:
    p = Page()
    p.feed(html)
    p.close()
    return p


# --------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------


def test_number_formats() -> None:
    assert fmt_number(None) == "—"
    assert fmt_number(float("nan")) == "—"
    assert fmt_number(0.0) == "0"
    assert fmt_number(0.812345) == "0.8123"
    assert fmt_number(-0.0123456) == "-0.01235"
    assert fmt_number(12345.6) == "1.235e4"
    assert fmt_number(1.23456e-5) == "1.235e-5"
    assert fmt_number(59906) == "5.991e4"
    assert fmt_p_value(None) == "—"
    assert fmt_p_value(0.0) == "< 1e-300"
    assert fmt_p_value(2.3845425712144055e-74) == "2.385e-74"
    assert fmt_p_value(0.0004) == "4e-4"
    assert fmt_p_value(0.00099999) == "1e-3"
    assert fmt_p_value(0.04127) == "0.04127"
    assert slice_label({}) == "all rows"
    assert slice_label({"device": "ios", "country": "BR"}) == "country=BR · device=ios"


def _finding(**kw: Any) -> Finding:
    base: dict[str, Any] = {
        "metric": "auc",
        "scores": "online",
        "slice": {},
        "window": None,
        "feature": None,
        "threshold": None,
        "value": 0.7,
        "expected": 0.8,
        "diff": -0.1,
        "ci": [-0.12, -0.08],
        "tolerance": {"kind": "absolute", "value": 0.02, "bad": "decrease"},
        "n": 1000,
        "p_value": 1e-9,
        "status": "alert",
        "cause": "concept_drift",
        "severity": 1.0,
    }
    base.update(kw)
    return Finding(**base)


# --------------------------------------------------------------------------------------
# The page of a real result
# --------------------------------------------------------------------------------------


def test_structure(result: CheckResult, html: str) -> None:
    page = parse(html)
    assert html.startswith("<!DOCTYPE html>")
    assert result.verdict == "alert"
    verdict = page.ids["verdict"]
    assert verdict["data-verdict"] == result.verdict
    assert page.id_text("verdict") == "alert"
    assert "alert" in verdict["class"]

    # counts per status
    counts = page.id_text("counts")
    for status, label in (
        ("alert", "alert"),
        ("warn", "warning"),
        ("ok", "ok"),
        ("insufficient_data", "insufficient data"),
    ):
        n = sum(f.status == status for f in result.findings)
        assert f"{n:,} {label}" in counts

    # run record: id, config hash, fingerprints, meta
    run_text = page.id_text("run")
    for key in ("id", "engine_version", "backend", "baseline_id", "config_hash"):
        assert str(result.run[key]) in run_text
    for i in result.run["inputs"]:
        assert i["fingerprint"] in run_text and f"{i['rows']:,}" in run_text

    # every alert, most severe first, with its slice
    alerts = result.alerts()
    rows = page.tables["alerts-table"]
    assert len(rows) == len(alerts) > 0
    for row, f in zip(rows, alerts):
        texts = [c["text"] for c in row]
        assert texts[0] == "alert"
        assert texts[3] == f.metric
        assert texts[4].startswith(slice_label(f.slice))  # then "explained by ..." when it is
        assert float(row[1]["attrs"]["data-sort"]) == f.severity
    severities = [float(r[1]["attrs"]["data-sort"]) for r in rows]
    assert severities == sorted(severities, reverse=True)

    warnings = [f for f in result.findings if f.status == "warn"]
    assert len(page.tables.get("warnings-table", [])) == len(warnings)
    # no chart is drawn by hand: every chart is a Vega-Lite spec drawn in the browser
    assert not any(t == "svg" for t, _ in page.tags)

    # causes: one row per cause among the flagged findings, with its counts
    flagged = [f for f in result.findings if f.status in ("alert", "warn")]
    expected = {
        c.replace("_", " "): (
            f"{sum(f.cause == c and f.status == 'alert' for f in flagged):,}",
            f"{sum(f.cause == c and f.status == 'warn' for f in flagged):,}",
        )
        for c in {f.cause for f in flagged}
    }
    shown = {r[0]["text"]: (r[1]["text"], r[2]["text"]) for r in page.tables["causes-table"]}
    assert shown == expected

    # data quality: every count of the result is there
    dq = {r[0]["text"]: r[1]["text"] for r in page.tables["dq-table"]}
    assert dq["Online rows"] == f"{result.data_quality['online_rows']:,}"
    assert dq["Invalid scores (outside [0, 1] or NaN)"] == f"{result.data_quality['invalid_scores']:,}"
    for col, n in result.data_quality["unseen_values"].items():
        assert dq[f"Values unseen in the baseline: {col}"] == f"{n:,}"

    # all findings, collapsed, in canonical order; an undefined value is a dash with its reason
    assert ("details", {}) in page.tags
    all_rows = page.tables["all-table"]
    assert len(all_rows) == len(result.findings)
    undefined = [(r, f) for r, f in zip(all_rows, result.findings) if f.value is None]
    assert undefined, "the synthetic result should have an undefined metric"
    for r, f in undefined:
        assert r[1]["text"] == f.metric and r[4]["text"] == "—"
        assert r[4]["attrs"]["title"] == f.reason


def test_escaping(html: str) -> None:
    page = parse(html)
    # the hostile slice value is shown as text, in the alerts and the findings ...
    assert any(XSS in c["text"] for r in page.tables["alerts-table"] for c in r)
    assert XSS in "".join(page.text)
    assert XSS_META in page.id_text("meta")
    # ... and never as markup: ours is the only script, there are no images, no injected ids
    assert XSS not in html and "<img" not in _markup(html)
    assert "&lt;script&gt;" in html
    # the scripts are ours: the chart specs as JSON (data, never run), the vendored Vega
    # libraries, the chart runtime and the table script; the hostile value is in none
    scripts = [a for t, a in page.tags if t == "script"]
    assert [a.get("type") for a in scripts] == ["application/json"] + [None] * 5
    assert all(XSS not in text for text in page.script_texts)
    assert "pwned-meta" not in page.ids and not any("data-pwned" in a for _, a in page.tags)


def test_self_contained(html: str) -> None:
    page = parse(html)
    for tag, attrs in page.tags:
        assert tag not in ("link", "iframe", "object", "embed", "img"), tag
        assert "src" not in attrs, (tag, attrs)
        href = attrs.get("href")
        assert href is None or href.startswith("#"), href
    # no network from CSS or markup either (the vendored libraries name the SVG namespace
    # URI, which is not a fetch), and a CSP that forbids it
    markup = _markup(html)
    assert "url(" not in markup and "@import" not in markup and "http://" not in markup
    csp = next(
        a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"
    )
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    assert "unsafe-eval" not in csp and "unsafe-inline" not in csp.split("script-src")[1]
    # every inline script that runs is one the policy allows (else the page would not work)
    scripts = [a for t, a in page.tags if t == "script"]
    for attrs, script in zip(scripts, page.script_texts):
        if attrs.get("type") == "application/json":
            continue
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp


def test_deterministic(result: CheckResult, html: str, tmp_path: Path) -> None:
    assert render_html(result) == html
    path = tmp_path / "sub" / "report.html"
    result.report(path)
    assert path.read_text(encoding="utf-8") == html


def test_empty_result() -> None:
    r = CheckResult(verdict="ok", findings=[], run={"id": "x", "started_at": "t"}, data_quality={})
    page = parse(render_html(r))
    assert page.id_text("verdict") == "ok"
    assert "alerts-table" not in page.tables and "No alerts." in "".join(page.text)
    ok = CheckResult(verdict="ok", findings=[_finding(status="ok", cause=None)], run={}, data_quality={})
    assert len(parse(render_html(ok)).tables["all-table"]) == 1


# --------------------------------------------------------------------------------------
# A real browser
# --------------------------------------------------------------------------------------


def _browser() -> str | None:
    for name in (os.environ.get("PARITY_BROWSER"), *BROWSERS):
        if name and (path := shutil.which(name)):
            return path
    return None


def _run_browser(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        browser,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_in_browser(result: CheckResult, html: str, tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip(
            "no headless browser (chromium, chromium-browser or google-chrome) on PATH; "
            "run scripts/install_browser"
        )
    report = tmp_path / "report.html"
    result.report(report)
    url = report.resolve().as_uri()

    dump = _run_browser(browser, tmp_path / "profile-dom", "--dump-dom", url)
    assert dump.returncode == 0, dump.stderr[-2000:]
    dom = parse(dump.stdout)
    # the page's own script ran (so scripts do execute here) and found its filter box ...
    root = next(a for t, a in dom.tags if t == "html")
    assert "js" in (root.get("class") or "").split()
    assert dom.id_text("verdict") == "alert"
    assert f"{len(result.findings)} shown" in "".join(dom.text)
    # ... while the hostile values stayed text: no marker, no image, no injected element
    assert "data-pwned" not in root and not any("data-pwned" in a for _, a in dom.tags)
    assert not any(t == "img" for t, _ in dom.tags)
    assert "pwned-meta" not in dom.ids
    assert [t for t, _ in dom.tags].count("script") == 6
    assert XSS in "".join(dom.text) and XSS_META in dom.id_text("meta")
    assert "<title>parity report: alert (run " in dump.stdout

    shot = tmp_path / "report.png"
    run = _run_browser(
        browser, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1440,2000", url
    )
    assert run.returncode == 0, run.stderr[-2000:]
    data = shot.read_bytes()
    assert len(data) > 10_000
    assert _png_size(data) == (1440, 2000)


def test_in_browser_sort_and_filter(html: str, result: CheckResult, tmp_path: Path) -> None:
    """The optional script works: click-to-sort (missing values last) and the status filter."""
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser on PATH; run scripts/install_browser")
    # a test harness: the report without its CSP, plus a driver that clicks and reports back
    harness = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    driver = """<script>
var th = document.querySelectorAll("#all-table thead th"), sev = 12, p = 10;
th[sev].click(); th[sev].click();
var rows = document.querySelectorAll("#all-table tbody tr");
document.body.setAttribute("data-first-severity", rows[0].cells[sev].getAttribute("data-sort"));
document.body.setAttribute("data-order", th[sev].getAttribute("aria-sort"));
th[p].click();
rows = document.querySelectorAll("#all-table tbody tr");
document.body.setAttribute("data-last-p", rows[rows.length - 1].cells[p].textContent);
var box = document.querySelector("[data-filter-for]"), select = box.querySelector("select");
select.value = "warn"; select.dispatchEvent(new Event("change"));
document.body.setAttribute("data-shown", box.querySelector("output").textContent);
</script></body>"""
    page = tmp_path / "harness.html"
    page.write_text(harness.replace("</body>", driver), encoding="utf-8")
    dump = _run_browser(browser, tmp_path / "profile", "--dump-dom", page.resolve().as_uri())
    assert dump.returncode == 0, dump.stderr[-2000:]
    body = next(a for t, a in parse(dump.stdout).tags if t == "body")
    assert float(body["data-first-severity"]) == max(f.severity for f in result.findings)
    assert body["data-order"] == "descending"
    assert body["data-last-p"] == "—"
    assert body["data-shown"] == f"{sum(f.status == 'warn' for f in result.findings)} shown"


def test_all_findings_table_is_capped(monkeypatch, result):
    """A run with more findings than a browser handles points to the JSON/Parquet outputs."""
    import engine.report as report

    monkeypatch.setattr(report, "MAX_ALL_ROWS", 10)
    page = report.render_html(result)
    assert f"{len(result.findings) - 10:,} more are in the JSON result" in page


# --------------------------------------------------------------------------------------
# Incidents, charts, the heatmap, `parity report` and the dashboard
# --------------------------------------------------------------------------------------

CHART_KINDS = ("reliability", "roc", "score_hist", "decisions", "feature", "dq", "control", "heatmap")
ARTIFACTS = Path(os.environ.get("PARITY_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))


def _incident(n: int, findings: list[Finding], slice_: dict, cause: str, explained: list[Finding] = ()) -> dict:
    own = [f for f in findings if f.slice == slice_ and f.cause == cause and f.status in ("alert", "warn")]
    assert own, (slice_, cause)
    return {
        "id": f"inc-{n:012x}", "cause": cause, "slice": slice_,
        "status": "alert" if any(f.status == "alert" for f in own) else "warn",
        "severity": max(f.severity for f in own), "share": 0.1, "owner": "team-" + cause, "escalation": None,
        "started": "2026-11-05T00:00:00Z", "last_seen": "2026-11-07T00:00:00Z", "ongoing": True,
        "windows": [{"start": "2026-11-05T00:00:00Z", "end": "2026-11-07T00:00:00Z"}],
        "metrics": sorted({f.metric for f in own}), "finding_ids": [f.id for f in own],
        "explained_finding_ids": [f.id for f in explained], "headline": f"{cause} in {slice_label(slice_)}",
    }


@pytest.fixture(scope="module")
def incident_result(result: CheckResult) -> CheckResult:
    """The real result with incidents built from its findings (the lead's stage's shape), the
    population's skew explained by the hostile slice, and a control chart."""
    import copy

    findings = copy.deepcopy(result.findings)
    culprit = {"country": XSS}
    flagged = [f for f in findings if f.status in ("alert", "warn")]
    # the population's skew, and every flag of one device slice (a fixture: the lead's stage decides)
    device = {"device": "android"}
    explained = [f for f in flagged if (not f.slice and f.cause == "serving_skew") or f.slice == device]
    for f in explained:
        f.explained_by = dict(culprit)
    incidents = [
        _incident(1, findings, culprit, "serving_skew", explained),
        _incident(2, findings, {"country": "MX"}, "concept_drift"),
        _incident(3, findings, {"country": "DE"}, "data_drift"),
        _incident(4, findings, {"country": "IN"}, "data_quality"),
    ]
    days = [f"2026-11-0{d}T00:00:00Z" for d in range(1, 8)]
    points = [
        {"start": a, "end": b, "value": v, "lo": v - 0.01, "hi": v + 0.01, "lcl": -0.02, "ucl": 0.02, "signal": v > 0.02}
        for a, b, v in zip(days, days[1:], (0.0, 0.004, -0.003, 0.05, 0.3, 0.31))
    ]
    control = [{"metric": "flip_rate", "scores": None, "slice": culprit, "feature": None, "threshold": 0.3,
                "center": 0.0, "onset": days[3], "points": points}]
    return CheckResult(result.verdict, findings, result.run, result.data_quality,
                       extras={**result.extras, "control_charts": control}, incidents=incidents)


def _specs(html: str) -> dict[str, Any]:
    import json

    block = re.search(r'<script type="application/json" id="parity-charts">(.*?)</script>', html, re.S)
    return json.loads(block.group(1))


def test_incident_panels(incident_result: CheckResult, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.report as report

    monkeypatch.setattr(report, "MAX_INCIDENT_ROWS", 1000)  # every finding of a panel listed
    html = render_html(incident_result)
    page = parse(html)
    # incidents lead, in the given (severity) order, the first one open
    panels = [a for t, a in page.tags if t == "details" and "incident" in (a.get("class") or "").split()]
    assert [a["data-incident"] for a in panels] == [i["id"] for i in incident_result.incidents]
    assert "open" in panels[0] and all("open" not in a for a in panels[1:])
    assert html.index('id="incidents"') < html.index('id="heatmap"') < html.index('id="all-findings"') < html.index('id="run"')
    # each incident's pictures: the kinds its cause calls for, each a spec in the chart block
    specs = _specs(html)
    kinds: dict[int, set[str]] = {}
    for t, a in page.tags:
        if t == "div" and a.get("data-chart"):
            assert a["data-chart"] in specs
    for n in range(1, 5):
        body = html[html.index(f'id="incident-{n}"'):]
        body = body[: body.index("</details>")]
        kinds[n] = set(re.findall(r'data-kind="([a-z_]+)"', body))
    assert {"score_hist", "decisions", "control"} <= kinds[1]
    assert {"reliability", "roc"} <= kinds[2]
    assert "feature" in kinds[3]
    assert "dq" in kinds[4]
    assert set(CHART_KINDS) <= set(re.findall(r'data-kind="([a-z_]+)"', html))
    # the culprit's panel lists the findings it explains, tied to it
    rows = page.tables["incident-table-1"]
    assert sum(f"explained by country={XSS}" in r[4]["text"] for r in rows) >= len(incident_result.incidents[0]["explained_finding_ids"]) > 0
    # the heatmap: the culprit's row first, the population drawn under it, its cells faded
    heat = next(s for s in specs.values() if s.get("layer", [{}])[0].get("mark", {}).get("type") == "rect"
                and s.get("height") == {"step": 20})
    rows_order = heat["encoding"]["y"]["sort"]
    explained = {slice_label(f.slice) for f in incident_result.findings if f.explained_by}
    assert rows_order[0] == f"country={XSS}"
    under = [r for r in rows_order[1:] if r.startswith("\u21b3 ")]
    assert under and {r[2:] for r in under} <= explained
    for row in under[:2]:  # the slices it explains, drawn under it
        cells = [c for c in heat["data"]["values"] if c["row"] == row and c["explained"]]
        assert cells and all(c["explained_by"] and c["mark"] == "\u21b3" for c in cells)
        assert any(c["explained_by"] == f"country={XSS}" for c in cells)
    # the control chart carries the onset and the out-of-control windows
    control = next(s for s in specs.values() if any(l.get("data", {}).get("values", [{}])[0].get("onset") for l in s.get("layer", [])))
    assert control["layer"][-1]["data"]["values"][0]["onset"] == "2026-11-04T00:00:00Z"
    # no value ever closes the JSON block or enters an expression
    block = html[html.index('id="parity-charts">'):]
    block = block[: block.index("</script>")]
    assert "<" not in block and XSS not in block
    for spec in specs.values():
        for test in re.findall(r'"test":\s*"([^"]*)"', __import__("json").dumps(spec)):
            assert test in ("datum.share > 0.3", "datum.explained", "datum.ratio > 2"), test


def test_report_command_rerenders(incident_result: CheckResult, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from engine.cli import app

    stored = tmp_path / "result.json"
    incident_result.write_json(stored)
    out = tmp_path / "again.html"
    run = CliRunner().invoke(app, ["report", str(stored), "-o", str(out)])
    assert run.exit_code == 0, run.output
    assert out.read_text(encoding="utf-8") == render_html(incident_result)
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    run = CliRunner().invoke(app, ["report", str(bad), "-o", str(out)])
    assert run.exit_code == 2 and "must be a JSON object" in run.output


class Drawn(HTMLParser):
    """Per chart container of a rendered page: its kind, state and the marks Vega drew
    (elements inside ``g.role-mark`` groups: data marks, not axes or legends); and the text
    of the drawn SVGs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.charts: list[dict[str, Any]] = []
        self.svg_text: list[str] = []
        self._stack: list[tuple[str, bool, bool]] = []  # (tag, opens a chart, is a mark group)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        in_mark = any(m for _, _, m in self._stack)
        chart = tag == "div" and a.get("data-chart") is not None
        if chart:
            self.charts.append({"kind": a.get("data-kind"), "state": a.get("data-state"), "marks": 0})
        elif in_mark and tag in ("path", "line", "text", "rect", "circle") and self.charts:
            self.charts[-1]["marks"] += 1
        if tag in Page.VOID and tag not in ("circle", "line", "rect"):
            return
        self._stack.append((tag, chart, tag == "g" and "role-mark" in (a.get("class") or "").split()))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            t, _, _ = self._stack.pop()
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if any(t == "svg" for t, _, _ in self._stack):
            self.svg_text.append(data)


def _render_in_browser(browser: str, url: str, tmp: Path, shot: Path | None = None) -> tuple[str, str]:
    """The DOM after the charts are drawn, and the page's console messages."""
    dump = _run_browser(browser, tmp / "profile-dom", "--enable-logging=stderr", "--v=0",
                        "--virtual-time-budget=15000", "--dump-dom", url)
    assert dump.returncode == 0, dump.stderr[-2000:]
    console = "\n".join(line for line in dump.stderr.splitlines() if ":CONSOLE" in line)
    if shot is not None:
        shot.parent.mkdir(parents=True, exist_ok=True)
        run = _run_browser(browser, tmp / "profile-shot", "--virtual-time-budget=15000", f"--screenshot={shot}",
                           "--window-size=1440,1800", url)
        assert run.returncode == 0, run.stderr[-2000:]
        assert _png_size(shot.read_bytes()) == (1440, 1800)
    return dump.stdout, console


def test_charts_drawn_in_browser(incident_result: CheckResult, tmp_path: Path) -> None:
    """Every chart kind is drawn with marks, the page logs nothing, hostile values stay text."""
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser on PATH; run scripts/install_browser")
    report = tmp_path / "report.html"
    incident_result.report(report)
    # the first screen as a test artifact, then every panel opened (#expand)
    _render_in_browser(browser, report.resolve().as_uri(), tmp_path / "first", ARTIFACTS / "report.png")
    dom, console = _render_in_browser(browser, report.resolve().as_uri() + "#expand", tmp_path / "all")
    assert console == "", console
    drawn = Drawn()
    drawn.feed(dom)
    assert drawn.charts and all(c["state"] == "drawn" for c in drawn.charts), [c for c in drawn.charts if c["state"] != "drawn"][:3]
    by_kind: dict[str, int] = {}
    for c in drawn.charts:
        by_kind[c["kind"]] = min(by_kind.get(c["kind"], 10**9), c["marks"])
    assert set(CHART_KINDS) <= set(by_kind), by_kind
    assert all(n > 0 for n in by_kind.values()), by_kind
    page = parse(dom)
    assert not any(t == "img" for t, _ in page.tags) and "pwned-meta" not in page.ids
    assert not any("data-pwned" in a for _, a in page.tags)
    # the slice value drawn as SVG text in chart titles (cut at the chart's width)
    assert "<script>document.documentElement" in " ".join(drawn.svg_text)
    assert XSS in "".join(page.text) and XSS_META in page.id_text("meta")


def test_dashboard_in_browser(incident_result: CheckResult, tmp_path: Path) -> None:
    """A history of three runs: index, one page per model/baseline, each run's report."""
    import json

    from engine.dashboard import write_dashboard

    history = tmp_path / "history"
    history.mkdir()
    base = json.loads(incident_result.to_json())
    for day in range(3):
        d = json.loads(json.dumps(base))
        d["run"]["id"] = f"run{day}"
        d["run"]["started_at"] = f"2026-11-0{day + 5}T00:00:00Z"
        d["run"]["meta"]["model"] = "fraud<v7>"
        for f in d["findings"]:
            if f["value"] is not None:
                f["value"] += 0.001 * day
        (history / f"2026110{day + 5}T000000Z_run{day}.json").write_text(json.dumps(d))
    site = tmp_path / "site"
    pages = write_dashboard(history, site)
    index = parse((site / "index.html").read_text())
    (row,) = index.tables["pages-table"]
    assert row[0]["text"] == "fraud<v7>" and row[2]["text"] == "3"
    page_file = next(p for p in pages if p.parent == site and p.name != "index.html")
    html = page_file.read_text()
    runs = parse(html).tables["runs-table"]
    assert [r[1]["text"] for r in runs] == ["run0", "run1", "run2"]
    assert all(XSS_META in r[6]["text"] for r in runs)
    for p in (site / "runs").iterdir():
        assert p.read_text().startswith("<!DOCTYPE html>")
    assert len(list((site / "runs").iterdir())) == 3
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser on PATH; run scripts/install_browser")
    dom, console = _render_in_browser(browser, page_file.resolve().as_uri(), tmp_path / "b", ARTIFACTS / "dashboard.png")
    assert console == "", console
    drawn = Drawn()
    drawn.feed(dom)
    assert drawn.charts and all(c["state"] == "drawn" and c["marks"] > 0 for c in drawn.charts)
    assert "<script>document.documentElement" in " ".join(drawn.svg_text)  # a hostile slice's series, titled as text
    page = parse(dom)
    assert not any(t == "img" for t, _ in page.tags) and "pwned-meta" not in page.ids
    assert any(XSS_META in r[6]["text"] for r in page.tables["runs-table"])
