"""``--notify``: incidents posted to a real HTTP server on 127.0.0.1 (no mocks of the network).

What is proved here: the payload of each incident (and its idempotency key); retries with
exponential backoff on 5xx replies and refused connections, none on a 4xx; a hanging server
costs at most the per-attempt timeout times the attempts, and the whole delivery at most its
deadline; only new incidents are sent (and those a previous run failed to deliver); through
the CLI, a server that hangs or fails leaves the run's findings and exit code unchanged, the
failure on stderr and in the run record.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.config import NotifySettings
from engine.errors import ConfigError
from engine.notify import check_url, deliver, new_incidents, redact

RUN = {"id": "run0001", "baseline_id": "bl42", "meta": {"model": "fraud-v7"}}


def incident(ident: str, **kw) -> dict:
    base = {
        "id": ident, "cause": "serving_skew", "slice": {"country": "BR"}, "status": "alert",
        "severity": 6.9, "share": 0.12, "owner": "risk-latam", "escalation": "page",
        "started": "2026-11-05T00:00:00Z", "last_seen": "2026-11-07T00:00:00Z", "ongoing": True,
        "windows": [], "metrics": ["flip_rate", "auc"], "finding_ids": ["f1"],
        "explained_finding_ids": [], "headline": "flip_rate up in country=BR",
    }
    return {**base, **kw}


class Server:
    """A local webhook whose replies follow a script: an int status, or 'hang' (no reply)."""

    def __init__(self, script=(), default=200, hang_s: float = 5.0) -> None:
        self.script, self.default, self.hang_s = list(script), default, hang_s
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.requests.append(
                        {"t": time.monotonic(), "path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                    )
                    action = outer.script.pop(0) if outer.script else outer.default
                if action == "hang":
                    outer.release.wait(outer.hang_s)
                    return
                self.send_response(action)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/secret-token?k=v"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


FAST = NotifySettings(timeout=2.0, retries=3, backoff=0.05, deadline=20.0)


def test_payload_and_headers():
    incs = [incident("inc-a"), incident("inc-b", slice={}, owner=None, escalation=None, started=None, cause="data_drift")]
    with Server() as srv:
        rec = deliver(srv.url, incs, run=RUN, verdict="alert", report="/tmp/r.html", settings=FAST)
    assert rec["new"] == 2 and rec["delivered"] == 2 and rec["failed"] == 0
    assert rec["target"] == f"http://127.0.0.1:{srv.httpd.server_address[1]}"  # no path: it may hold a secret
    assert [r["body"]["incident"] for r in srv.requests] == ["inc-a", "inc-b"]
    a = srv.requests[0]
    assert a["path"] == "/hooks/secret-token?k=v"
    assert a["headers"]["Content-Type"] == "application/json"
    assert a["headers"]["Idempotency-Key"] == "run0001:inc-a"
    body = a["body"]
    assert body == {
        "kind": "parity.incident", "version": 1, "incident": "inc-a", "severity": 6.9, "status": "alert",
        "cause": "serving_skew", "slice": {"country": "BR"}, "owner": "risk-latam", "escalation": "page",
        "onset": "2026-11-05T00:00:00Z", "last_seen": "2026-11-07T00:00:00Z", "ongoing": True,
        "headline": "flip_rate up in country=BR", "metrics": ["flip_rate", "auc"], "share": 0.12,
        "report": "/tmp/r.html", "run_id": "run0001", "verdict": "alert", "baseline_id": "bl42",
        "meta": {"model": "fraud-v7"},
    }
    b = srv.requests[1]["body"]
    assert b["slice"] == {} and b["owner"] is None and b["onset"] is None and b["cause"] == "data_drift"
    assert [d["attempts"] for d in rec["deliveries"]] == [1, 1]
    assert all(d["http_status"] == 200 for d in rec["deliveries"])


def test_retries_on_500_with_exponential_backoff():
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)
        time.sleep(s)

    with Server(script=[500, 503, 200]) as srv:
        rec = deliver(srv.url, [incident("inc-a")], run=RUN, verdict="alert", settings=FAST, sleep=sleep)
    d = rec["deliveries"][0]
    assert d["status"] == "delivered" and d["attempts"] == 3 and d["http_status"] == 200
    assert waits == [0.05, 0.1]
    assert len(srv.requests) == 3
    assert {r["headers"]["Idempotency-Key"] for r in srv.requests} == {"run0001:inc-a"}
    gaps = [b["t"] - a["t"] for a, b in zip(srv.requests, srv.requests[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1


def test_gives_up_after_the_retries_and_goes_on():
    with Server(script=[500, 500, 500, 500, 200]) as srv:
        rec = deliver(srv.url, [incident("inc-a"), incident("inc-b")], run=RUN, verdict="alert", settings=FAST)
    first, second = rec["deliveries"]
    assert first["status"] == "failed" and first["attempts"] == 4 and first["http_status"] == 500
    assert "HTTP 500" in first["error"]
    assert second["status"] == "delivered" and second["attempts"] == 1  # the next incident still goes
    assert rec["delivered"] == 1 and rec["failed"] == 1


def test_a_4xx_is_not_retried():
    with Server(script=[400]) as srv:
        rec = deliver(srv.url, [incident("inc-a")], run=RUN, verdict="alert", settings=FAST)
    d = rec["deliveries"][0]
    assert d["status"] == "failed" and d["attempts"] == 1 and d["http_status"] == 400
    assert len(srv.requests) == 1


def test_refused_connection_is_retried_then_reported():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    rec = deliver(f"http://127.0.0.1:{port}/x", [incident("inc-a")], run=RUN, verdict="warn",
                  settings=NotifySettings(timeout=1.0, retries=2, backoff=0.01, deadline=10.0))
    d = rec["deliveries"][0]
    assert d["status"] == "failed" and d["attempts"] == 3 and d["http_status"] is None
    assert "refused" in d["error"].lower()


def test_hanging_server_is_bounded_by_the_timeout():
    settings = NotifySettings(timeout=0.3, retries=1, backoff=0.05, deadline=30.0)
    with Server(default="hang") as srv:
        t0 = time.monotonic()
        rec = deliver(srv.url, [incident("inc-a")], run=RUN, verdict="alert", settings=settings)
        elapsed = time.monotonic() - t0
    d = rec["deliveries"][0]
    assert d["status"] == "failed" and d["attempts"] == 2
    assert "no reply within 0.3 s" in d["error"]
    assert 0.6 <= elapsed < 2.0, elapsed


def test_the_deadline_bounds_the_whole_delivery():
    settings = NotifySettings(timeout=0.4, retries=5, backoff=0.05, deadline=1.0)
    incs = [incident(f"inc-{i}") for i in range(6)]
    with Server(default="hang") as srv:
        t0 = time.monotonic()
        rec = deliver(srv.url, incs, run=RUN, verdict="alert", settings=settings)
        elapsed = time.monotonic() - t0
    assert elapsed < 1.8, elapsed
    assert rec["failed"] == 6 and rec["delivered"] == 0
    assert rec["deliveries"][-1]["attempts"] == 0
    assert "deadline" in rec["deliveries"][-1]["error"]


def test_only_new_incidents_are_sent():
    previous = {
        "incidents": [{"id": "inc-a"}, {"id": "inc-b"}],
        "run": {"notifications": {"deliveries": [{"incident": "inc-b", "status": "failed"},
                                                  {"incident": "inc-a", "status": "delivered"}]}},
    }
    incs = [incident("inc-a"), incident("inc-b"), incident("inc-c")]
    assert [i["id"] for i in new_incidents(incs, previous)] == ["inc-b", "inc-c"]
    assert [i["id"] for i in new_incidents(incs, None)] == ["inc-a", "inc-b", "inc-c"]
    # a previous run without notifications: what it held is not new
    assert [i["id"] for i in new_incidents(incs, {"incidents": [{"id": "inc-c"}], "run": {}})] == ["inc-a", "inc-b"]
    with Server() as srv:
        rec = deliver(srv.url, incs, run=RUN, verdict="alert", settings=FAST, previous=previous)
    assert rec["incidents"] == 3 and rec["new"] == 2
    assert [r["body"]["incident"] for r in srv.requests] == ["inc-b", "inc-c"]


@pytest.mark.parametrize("url", ["ftp://host/x", "127.0.0.1:8080/hook", "http://", "hooks"])
def test_bad_url_is_a_usage_error(url):
    with pytest.raises(ConfigError, match="--notify"):
        check_url(url)


def test_redact_keeps_only_scheme_host_and_port():
    assert redact("https://hooks.example.com/services/T000/B000/XXXX?token=1") == "https://hooks.example.com"
    assert redact("http://[::1]:8080/a") == "http://[::1]:8080"


# ------------------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from engine.config import Config
    from engine.expectation import build_baseline
    from engine.synthetic import generate

    root = tmp_path_factory.mktemp("notify")
    sc = generate(root / "w", rows=3000, seed=2)
    build_baseline(sc.evaluation, Config(slices=["country", "device"], thresholds=[0.3, 0.6]), out=root / "bl")
    return {"root": root, "sc": sc}


CONSTRUCTED = [
    {"id": "inc-br-skew", "cause": "serving_skew", "slice": {"country": "BR"}, "status": "alert", "severity": 5.0,
     "share": 0.1, "owner": None, "escalation": None, "started": None, "last_seen": None, "ongoing": None,
     "windows": [], "metrics": ["flip_rate"], "finding_ids": [], "explained_finding_ids": [], "headline": "flips in BR"},
    {"id": "inc-all-drift", "cause": "data_drift", "slice": {}, "status": "warn", "severity": 1.0,
     "share": 1.0, "owner": None, "escalation": None, "started": None, "last_seen": None, "ongoing": None,
     "windows": [], "metrics": ["psi"], "finding_ids": [], "explained_finding_ids": [], "headline": "psi up"},
]


@pytest.fixture
def with_incidents(monkeypatch):
    """The real ``run_check``, plus two constructed incidents while the incidents stage has not
    landed (with it, the check's own incidents are used unchanged)."""
    import engine.pipeline as pipeline
    from engine.owners import assign_owners

    real = pipeline.run_check

    def run_check(*args, **kwargs):
        result = real(*args, **kwargs)
        if not result.incidents:
            result.incidents = assign_owners(copy.deepcopy(CONSTRUCTED), result.extras["config"])
        return result

    monkeypatch.setattr(pipeline, "run_check", run_check)


def cli(*args):
    from typer.testing import CliRunner

    from engine.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_delivery_never_changes_the_run(deployment, tmp_path):
    """The check's own incidents (the demo deployment's four), delivered to a local server."""
    sc, root = deployment["sc"], deployment["root"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "bootstrap: 30\nseed: 3\n"
        "owners:\n  - {match: {slice: \"country=BR\"}, owner: risk-latam, escalation: page}\n"
        "notify: {timeout: 0.3, retries: 1, backoff: 0.05, deadline: 3}\n"
    )
    hist = tmp_path / "runs"
    base = ["check", "--baseline", root / "bl", "--online", sc.online, "--offline", sc.offline,
            "--outcomes", sc.outcomes, "--config", cfg, "--fail-on", "warn", "--quiet"]

    plain = cli(*base, "--json", tmp_path / "plain.json")
    assert plain.exception is None or isinstance(plain.exception, SystemExit), plain.output
    plain_doc = json.loads((tmp_path / "plain.json").read_text())
    assert "notifications" not in plain_doc["run"]
    ids = [i["id"] for i in plain_doc["incidents"]]
    n = len(ids)
    assert n >= 2 and plain_doc["incidents"][0]["slice"] == {"country": "BR"}

    # a server that never answers: the run ends in bounded time with the same findings and exit code
    with Server(default="hang") as srv:
        t0 = time.monotonic()
        hung = cli(*base, "--json", tmp_path / "hung.json", "--history", hist, "--report", tmp_path / "r.html",
                   "--notify", srv.url)
        slow = time.monotonic() - t0
    assert hung.exit_code == plain.exit_code
    assert f"could not deliver incident {ids[0]}" in hung.stderr and "no reply within 0.3 s" in hung.stderr
    assert "Traceback" not in hung.output
    doc = json.loads((tmp_path / "hung.json").read_text())
    assert doc["findings"] == plain_doc["findings"] and doc["verdict"] == plain_doc["verdict"]
    notes = doc["run"]["notifications"]
    assert notes["new"] == n and notes["failed"] >= 1 and notes["delivered"] == 0
    assert notes["target"].startswith("http://127.0.0.1:") and "secret" not in notes["target"]
    (rec,) = list(hist.glob("*.json"))
    assert json.loads(rec.read_text())["run"]["notifications"] == notes  # recorded in the history too
    assert len(srv.requests) >= 2
    assert slow < 60  # the check's own time, plus at most the 3 s deadline

    # a server that fails first, then answers: what the previous run failed to deliver is sent now
    with Server(script=[500]) as srv:
        ok = cli(*base, "--json", tmp_path / "ok.json", "--history", hist, "--report", tmp_path / "r.html",
                 "--notify", srv.url)
    assert ok.exit_code == plain.exit_code
    bodies = [r["body"] for r in srv.requests]
    assert [b["incident"] for b in bodies] == [ids[0], *ids]  # one retry of the first
    br = bodies[0]
    assert (br["owner"], br["escalation"], br["cause"], br["slice"]) == ("risk-latam", "page", "serving_skew", {"country": "BR"})
    assert br["report"] == str((tmp_path / "r.html").absolute()) and Path(br["report"]).is_file()
    assert br["run_id"] == json.loads((tmp_path / "ok.json").read_text())["run"]["id"]
    assert br["verdict"] == plain_doc["verdict"]
    assert json.loads((tmp_path / "ok.json").read_text())["run"]["notifications"]["delivered"] == n

    # nothing new since: nothing sent
    with Server() as srv:
        again = cli(*base, "--history", hist, "--notify", srv.url)
    assert again.exit_code == plain.exit_code and srv.requests == []


def test_cli_bad_notify_url_is_exit_2(deployment):
    sc, root = deployment["sc"], deployment["root"]
    res = cli("check", "--baseline", root / "bl", "--online", sc.online, "--notify", "localhost:9/hook")
    assert res.exit_code == 2 and "--notify" in res.stderr and "localhost:9/hook" in res.stderr
