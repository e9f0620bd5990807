"""Report sizes and render times: the demo's report and a 1,000-slice report.

    python benchmarks/bench_report.py [--rows 1000000] [--slices 1000] [--out DIR]

1. The demo (``parity demo --rows N``: one injected problem of each kind) is checked, its
   result stored as JSON and the report rendered from it (``parity report``).
2. A deployment with one slice column of ``--slices`` values (top_k raised to keep them all)
   and an injected score shift in a tenth of them, checked with B = 200.

For each: the report's size (and what is in it: vendored Vega, chart specs, tables), the
time to render it in Python, and in headless Chromium the time from navigation to every
chart of the first screen drawn (``data-charts-ms``, set by the page's runtime), and with
every panel opened (``#expand``). Prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.config import Config  # noqa: E402
from engine.demo import run_demo  # noqa: E402
from engine.expectation import build_baseline  # noqa: E402
from engine.pipeline import run_check  # noqa: E402
from engine.report import render_html  # noqa: E402
from engine.result import CheckResult  # noqa: E402


def _browser_ms(html: Path, expand: bool) -> int | None:
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        return None
    with tempfile.TemporaryDirectory() as prof:
        out = subprocess.run(
            [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={prof}", "--virtual-time-budget=60000", "--dump-dom",
             html.resolve().as_uri() + ("#expand" if expand else "")],
            capture_output=True, text=True, timeout=300, check=True,
        ).stdout
    m = re.search(r'data-charts-ms="(\d+)"', out)
    return int(m.group(1)) if m else None


def _measure(name: str, result: CheckResult, out: Path) -> dict:
    stored = out / f"{name}.json"
    result.write_json(stored)
    back = CheckResult.from_dict(json.loads(stored.read_text()))
    t = time.perf_counter()
    html = render_html(back)
    render_s = time.perf_counter() - t
    path = out / f"{name}.html"
    path.write_text(html, encoding="utf-8")
    block = re.search(r'id="parity-charts">(.*?)</script>', html, re.S)
    vendored = sum(len(m) for m in re.findall(r"<script>(.*?)</script>", html, re.S)[:3])
    slices = {json.dumps(f.slice, sort_keys=True) for f in back.findings}
    return {
        "name": name, "slices": len(slices), "findings": len(back.findings), "bytes": len(html.encode()),
        "vendored": vendored, "specs": len(block.group(1)) if block else 0, "json_bytes": stored.stat().st_size,
        "charts_json": len(json.dumps(back.extras.get("charts", {}))), "render_s": render_s,
        "first_ms": _browser_ms(path, False), "expand_ms": _browser_ms(path, True),
    }


def many_slices(out: Path, n_slices: int, rows: int) -> CheckResult:
    rng = np.random.default_rng(3)

    def table(n: int, shifted: bool) -> dict:
        store = rng.integers(0, n_slices, n)
        score = rng.beta(2, 5, n)
        if shifted:
            score = np.where(store % 10 == 0, np.clip(score + 0.15, 0, 1), score)
        return {"store": np.char.add("s", store.astype(str)), "score": score,
                "label": (rng.random(n) < score).astype(np.int8), "amount": rng.lognormal(3, 1, n)}

    ev = pa.table(table(rows, False))
    on = table(rows, True)
    ids = np.arange(rows).astype(str)
    online = pa.table({"request_id": ids, "score": on["score"], "store": on["store"], "amount": on["amount"]})
    offline = pa.table({"request_id": ids, "score": on["score"]})
    outcomes = pa.table({"request_id": ids, "label": on["label"]})
    config = Config(slices=["store"], features={"amount": "numeric"}, thresholds=[0.5], top_k=n_slices)
    build_baseline(ev, config, out=out / "bl-many")
    return run_check(out / "bl-many", online, offline=offline, outcomes=outcomes, bootstrap=200)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--slices", type=int, default=1000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="parity-bench-report-"))
    out.mkdir(parents=True, exist_ok=True)
    from rich.console import Console

    run_demo(rows=args.rows, out=str(out / "demo"), console=Console(quiet=True))
    demo = CheckResult.from_dict(json.loads((out / "demo" / "result.json").read_text()))
    rows = [_measure("demo", demo, out)]
    rows.append(_measure(f"{args.slices}-slices", many_slices(out, args.slices, args.rows), out))
    print("| report | slices | findings | size | of which Vega | chart specs | result JSON (of which charts) | render (Python) | first screen drawn (Chromium) | all panels drawn |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['slices']:,} | {r['findings']:,} | {r['bytes'] / 1e6:.2f} MB | {r['vendored'] / 1e6:.2f} MB "
              f"| {r['specs'] / 1e6:.2f} MB | {r['json_bytes'] / 1e6:.2f} MB ({r['charts_json'] / 1e6:.2f} MB) "
              f"| {r['render_s']:.2f} s | {r['first_ms']} ms | {r['expand_ms']} ms |")


if __name__ == "__main__":
    main()
