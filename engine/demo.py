"""``parity demo``: a synthetic deployment with known problems, checked end to end.

The generator (``engine.synthetic``) injects one problem of each kind (serving skew, data
drift, concept drift, data quality) into known slices, with overlaps as in real incidents
(the skewed slice's online scores also drift and lose AUC). The demo builds the baseline,
runs the check, and prints what was injected next to what was found. It passes when every
injected problem is an alert in its slice with the right cause, every alert in an injected
slice carries that slice's cause, and no alert is unexplained by the injections.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.config import Config
from engine.expectation import build_baseline
from engine.pipeline import run_check
from engine.result import CheckResult
from engine.synthetic import Scenario, generate


@dataclass
class DemoOutcome:
    """What the demo found, against the ground truth."""

    scenario: Scenario
    result: CheckResult
    missed: list[str] = field(default_factory=list)
    wrong_cause: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    #: Incidents beyond the injected ones that break the rules (see :func:`evaluate`).
    stray_incidents: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not (self.missed or self.wrong_cause or self.unexplained or self.stray_incidents)


def _describe(f) -> str:
    where = ", ".join(f"{k}={v}" for k, v in f.slice.items()) or "(all)"
    extra = ", ".join(x for x in (f.scores and f"scores={f.scores}", f.feature and f"feature={f.feature}",
                                   f.threshold is not None and f"t={f.threshold:g}") if x)
    return f"{f.metric}[{where}{'; ' + extra if extra else ''}]"


#: Incidents a run may raise beyond the injected ones (none rooted at a slice that merely
#: contains an injected one).
MAX_EXTRA_INCIDENTS = 2


def _where(s: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in s.items()) or "(all)"


def evaluate(scenario: Scenario, result: CheckResult) -> DemoOutcome:
    """Compare the incidents and the alerts with the injections.

    It passes when the top incidents are exactly the injected problems, each on its slice
    with its cause; at most ``MAX_EXTRA_INCIDENTS`` more follow, none on the population or
    on a slice that holds an injected one (a device, a segment); every alert in an injected
    slice has that slice's cause; and no alert is unexplained by the injections.
    """
    outcome = DemoOutcome(scenario, result)
    injected = {(json.dumps(i.slice, sort_keys=True), i.cause) for i in scenario.injections}
    ranked = [(json.dumps(i["slice"], sort_keys=True), i["cause"]) for i in result.incidents]
    for key in injected - set(ranked):
        outcome.missed.append(f"no {key[1]} incident on {_where(json.loads(key[0]))}")
    top = ranked[: len(injected)]
    for key in top:
        if key not in injected:
            outcome.stray_incidents.append(f"{key[1]} on {_where(json.loads(key[0]))} ranks among the top incidents")
    extra = [k for k in ranked if k not in injected]
    if len(extra) > MAX_EXTRA_INCIDENTS:
        outcome.stray_incidents.append(f"{len(extra)} incidents beyond the injected ones (at most {MAX_EXTRA_INCIDENTS})")
    for key in extra:
        s = json.loads(key[0])
        if any(all(i.slice.get(k) == v for k, v in s.items()) for i in scenario.injections):
            outcome.stray_incidents.append(f"{key[1]} incident on {_where(s)}, which holds an injected slice")
    alerts = [f for f in result.findings if f.status == "alert"]
    for inj in scenario.injections:
        in_slice = [f for f in alerts if f.slice == inj.slice]
        right = [f for f in in_slice if f.cause == inj.cause]
        if not right:
            outcome.missed.append(f"{inj.cause} in {inj.slice}")
        for f in in_slice:
            if f.cause != inj.cause:
                outcome.wrong_cause.append(f"{_describe(f)}: {f.cause}, injected {inj.cause}")
    for f in alerts:
        if not scenario.explains(f.metric, f.slice, f.feature, f.scores):
            outcome.unexplained.append(f"{_describe(f)} ({f.cause})")
    return outcome


def run_demo(
    rows: int = 1_000_000,
    out: str | None = None,
    seed: int = 0,
    backend: str = "auto",
    console: Console | None = None,
) -> DemoOutcome:
    """Generate, build the baseline, check, and print injected vs found."""
    console = console or Console()
    workdir = Path(out) if out else Path(tempfile.mkdtemp(prefix="parity-demo-"))
    try:
        t0 = time.perf_counter()
        scenario = generate(workdir / "data", rows=rows, seed=seed)
        t1 = time.perf_counter()
        config = Config(slices=scenario.slices, features=scenario.features, thresholds=scenario.thresholds)
        build_baseline(scenario.evaluation, config, out=workdir / "baseline", backend=backend)
        t2 = time.perf_counter()
        result = run_check(
            workdir / "baseline", scenario.online, offline=scenario.offline, outcomes=scenario.outcomes, backend=backend
        )
        t3 = time.perf_counter()
        if out:
            result.write_json(workdir / "result.json")
            (workdir / "scenario.json").write_text(json.dumps(scenario.to_dict(), indent=2))
        outcome = evaluate(scenario, result)
        _print(console, outcome, {"generate": t1 - t0, "baseline": t2 - t1, "check": t3 - t2})
        return outcome
    finally:
        if not out:
            shutil.rmtree(workdir, ignore_errors=True)


def _print(console: Console, outcome: DemoOutcome, timings: dict[str, float]) -> None:
    sc, result = outcome.scenario, outcome.result
    console.print(
        f"parity demo: {sc.rows:,} online rows, {len(sc.injections)} injected problems  "
        + "  ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    )
    incidents = Table(show_header=True, header_style="bold", box=None)
    for col in ("#", "incident", "status", "severity", "cause", "slice", "explains", "headline"):
        incidents.add_column(col)
    for rank, inc in enumerate(result.incidents[:10], 1):
        incidents.add_row(
            str(rank), inc["id"], inc["status"], f"{inc['severity']:.3g}", inc["cause"], escape(_where(inc["slice"])),
            str(len(inc["explained_finding_ids"])), escape(inc["headline"]),
        )
    console.print(incidents)
    table = Table(show_header=True, header_style="bold", box=None)
    for col in ("injected", "slice", "alerts there", "causes found", "found"):
        table.add_column(col)
    alerts = [f for f in result.findings if f.status == "alert"]
    for inj in sc.injections:
        here = [f for f in alerts if f.slice == inj.slice]
        causes = sorted({f.cause for f in here})
        ok = any(f.cause == inj.cause for f in here) and causes == [inj.cause]
        expected = sorted(set(inj.metrics))
        found = sorted({f.metric for f in here} & set(expected))
        table.add_row(
            inj.cause,
            ", ".join(f"{k}={v}" for k, v in inj.slice.items()),
            f"{len(here)} ({len(found)}/{len(expected)} expected metrics)",
            ", ".join(causes) or "-",
            "[green]yes[/]" if ok else "[red]NO[/]",
        )
    console.print(table)
    clean = [s for s in sc.clean_slices()]
    clean_alerts = [f for f in alerts if f.slice in clean]
    console.print(f"clean slices: {len(clean)}, alerts in them: {len(clean_alerts)}")
    for title, items in (("missed", outcome.missed), ("wrong cause", outcome.wrong_cause),
                         ("unexplained", outcome.unexplained), ("stray incident", outcome.stray_incidents)):
        for item in items[:10]:
            console.print(f"[red]{title}:[/] {escape(item)}")
    console.print("[bold green]PASS[/]: the injected problems are the top incidents, each with its cause; nothing else" if outcome.passed
                  else "[bold red]FAIL[/]")
