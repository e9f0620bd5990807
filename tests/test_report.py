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
from engine.report import _ci_bar, fmt_number, fmt_p_value, render_html, slice_label
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


def test_ci_bar_geometry() -> None:
    # decrease: the bad band is left of the tolerance line at -0.02, and the CI lies in it
    b = _ci_bar(_finding())
    assert b is not None and len(b.tolerance) == 1 and len(b.bad_bands) == 1
    tol = b.tolerance[0]
    assert b.bad_bands[0] == (0.0, tol)
    assert b.lo < b.point < b.hi < tol < b.zero
    assert 0 <= b.lo and b.hi <= b.width
    # either, relative: two lines at ±10% of the expected value, symmetric about zero
    b = _ci_bar(
        _finding(
            tolerance={"kind": "relative", "value": 0.1, "bad": "either"},
            diff=0.5,
            ci=[0.4, 0.6],
            expected=1.0,
        )
    )
    assert len(b.tolerance) == 2 and len(b.bad_bands) == 2
    right, left = b.tolerance
    assert left < b.zero < right and abs((right - b.zero) - (b.zero - left)) < 0.02
    assert right < b.lo < b.point < b.hi
    # floor: the bound sits at bound - expected on the difference axis (0 when expected is the floor)
    b = _ci_bar(
        _finding(
            metric="join_coverage",
            tolerance={"kind": "floor", "value": 0.99, "bad": "decrease"},
            expected=0.99,
            diff=-0.05,
            ci=[-0.06, -0.04],
        )
    )
    assert b.tolerance == (b.zero,) and b.hi < b.zero
    # no interval: the point alone; no difference: no bar
    b = _ci_bar(_finding(ci=None))
    assert b is not None and b.lo is None and b.hi is None
    assert _ci_bar(_finding(value=None, diff=None, ci=None)) is None


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
        assert texts[4] == slice_label(f.slice)
        assert float(row[1]["attrs"]["data-sort"]) == f.severity
    severities = [float(r[1]["attrs"]["data-sort"]) for r in rows]
    assert severities == sorted(severities, reverse=True)

    warnings = [f for f in result.findings if f.status == "warn"]
    assert len(page.tables.get("warnings-table", [])) == len(warnings)
    # one CI bar per flagged finding
    assert sum(1 for t, a in page.tags if t == "svg" and "cibar" in (a.get("class") or "")) == len(
        alerts
    ) + len(warnings)

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
    assert XSS not in html and "<img" not in html
    assert "&lt;script&gt;" in html
    assert [t for t, _ in page.tags].count("script") == 1
    assert "pwned-meta" not in page.ids and not any("data-pwned" in a for _, a in page.tags)


def test_self_contained(html: str) -> None:
    page = parse(html)
    for tag, attrs in page.tags:
        assert tag not in ("link", "iframe", "object", "embed", "img"), tag
        assert "src" not in attrs, (tag, attrs)
        href = attrs.get("href")
        assert href is None or href.startswith("#"), href
    # no network from CSS either, and a CSP that forbids it
    assert "url(" not in html and "@import" not in html and "http://" not in html
    csp = next(
        a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"
    )
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    # the one inline script is the one the policy allows (else the sort/filter would not run)
    (script,) = page.script_texts
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
    assert [t for t, _ in dom.tags].count("script") == 1
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
