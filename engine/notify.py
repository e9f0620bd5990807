"""Incident delivery to a webhook (``parity check --notify URL``).

Each incident to send is one ``POST`` of a JSON object (:func:`incident_payload`) with
``Content-Type: application/json`` and an ``Idempotency-Key`` header (``<run id>:<incident
id>``, the same on every retry, so a receiver can drop the duplicate a retried delivery may
cause when a reply was lost).

Delivery (config ``notify``; defaults in brackets):

* an attempt waits at most ``timeout`` seconds [5] for each connect and read;
* a 5xx or 429 reply, a refused or reset connection and a timeout are retried, at most
  ``retries`` times [3], after ``backoff`` seconds [0.5], doubled before each next retry
  (0.5, 1, 2 s); any other non-2xx reply (a 4xx: the request is wrong) is not retried;
* every delivery of one run stops at ``deadline`` seconds [60]: what is left is recorded as
  failed, so a hanging server delays a run by at most that long.

A failed delivery never raises: :func:`deliver` returns a record of every attempt, which the
caller reports and keeps in the run record (``run["notifications"]``); the run's result and
exit code do not depend on it. Standard library only (``urllib``): one POST with retries
does not need a dependency.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

from engine import __version__
from engine.config import NotifySettings
from engine.errors import ConfigError

__all__ = ["Delivery", "check_url", "deliver", "incident_payload", "new_incidents", "redact"]

#: Replies worth another attempt: the server (or a proxy before it) failed or is busy.
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


@dataclass
class Delivery:
    """What happened to one incident's notification.

    Attributes
    ----------
    incident : str
        The incident's id.
    status : {"delivered", "failed"}
    attempts : int
        POSTs made (0 when the deadline had passed before the first).
    http_status : int or None
        The last reply's status code (None when no reply came).
    error : str or None
        Why it failed (the last attempt's error).
    elapsed_s : float
    """

    incident: str
    status: str
    attempts: int
    http_status: int | None = None
    error: str | None = None
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_url(url: str) -> str:
    """Validate a webhook URL (``http://`` or ``https://`` with a host).

    Raises
    ------
    ConfigError
        Naming the URL.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"The '--notify' option must be an http:// or https:// URL with a host. Got {url!r} instead."
        )
    return url


def redact(url: str) -> str:
    """``scheme://host[:port]``: webhook paths and queries often hold a secret token."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def new_incidents(
    incidents: Sequence[Mapping[str, Any]], previous: Mapping[str, Any] | None
) -> list[Mapping[str, Any]]:
    """The incidents to notify: those not in the previous run, or not delivered by it.

    Parameters
    ----------
    incidents : sequence of dict
        This run's incidents (each with an ``id``).
    previous : dict or None
        The previous run's JSON document (from the history); None: every incident is new.

    Returns
    -------
    list of dict
        In the given order. An incident whose id the previous run held is not new, unless
        the previous run recorded its delivery as failed (it is sent again).
    """
    if previous is None:
        return list(incidents)
    seen = {i.get("id") for i in previous.get("incidents") or ()}
    notes = (previous.get("run") or {}).get("notifications") or {}
    undelivered = {d.get("incident") for d in notes.get("deliveries") or () if d.get("status") != "delivered"}
    return [i for i in incidents if i.get("id") not in seen or i.get("id") in undelivered]


def incident_payload(
    incident: Mapping[str, Any],
    *,
    run: Mapping[str, Any],
    verdict: str,
    report: str | None = None,
) -> dict[str, Any]:
    """The JSON object posted for one incident.

    Parameters
    ----------
    incident : dict
        As in ``CheckResult.incidents``.
    run : dict
        The run record (``CheckResult.run``): id, baseline id and meta travel along.
    verdict : str
        The run's verdict.
    report : str, optional
        Path of the run's HTML report.

    Returns
    -------
    dict
        ``kind`` ("parity.incident"), ``version`` (1), ``incident`` (id), ``severity``,
        ``status``, ``cause``, ``slice``, ``owner``, ``escalation``, ``onset`` (the first
        window of the change, or null), ``last_seen``, ``ongoing``, ``headline``, ``metrics``,
        ``share``, ``report``, ``run_id``, ``verdict``, ``baseline_id``, ``meta``.
    """
    return {
        "kind": "parity.incident",
        "version": 1,
        "incident": incident.get("id"),
        "severity": incident.get("severity"),
        "status": incident.get("status"),
        "cause": incident.get("cause"),
        "slice": dict(incident.get("slice") or {}),
        "owner": incident.get("owner"),
        "escalation": incident.get("escalation"),
        "onset": incident.get("started"),
        "last_seen": incident.get("last_seen"),
        "ongoing": incident.get("ongoing"),
        "headline": incident.get("headline"),
        "metrics": list(incident.get("metrics") or []),
        "share": incident.get("share"),
        "report": report,
        "run_id": run.get("id"),
        "verdict": verdict,
        "baseline_id": run.get("baseline_id"),
        "meta": dict(run.get("meta") or {}),
    }


def post_json(
    url: str,
    body: Mapping[str, Any],
    *,
    settings: NotifySettings,
    stop_at: float,
    key: str,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """POST ``body`` with retries and backoff, until it is delivered or ``stop_at``.

    Parameters
    ----------
    url : str
    body : dict
        JSON-able; its ``incident`` names the delivery.
    settings : NotifySettings
        ``timeout``, ``retries``, ``backoff``.
    stop_at : float
        ``time.monotonic()`` after which no attempt starts and no attempt waits.
    key : str
        The ``Idempotency-Key`` header.
    sleep : callable
        How to wait between attempts.

    Returns
    -------
    Delivery
    """
    data = json.dumps(body, allow_nan=False, default=str).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"parity/{__version__}",
        "Idempotency-Key": key,
    }
    t0 = time.monotonic()
    attempts, status, error = 0, None, None
    for attempt in range(settings.retries + 1):
        if attempt:
            wait = settings.backoff * 2 ** (attempt - 1)
            if time.monotonic() + wait >= stop_at:
                error = f"{error}; no time left for another attempt (deadline {settings.deadline:g} s)"
                break
            sleep(wait)
        left = stop_at - time.monotonic()
        if left <= 0:
            error = error or f"deadline of {settings.deadline:g} s passed before the first attempt"
            break
        attempts += 1
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=min(settings.timeout, left)) as reply:
                status = reply.status
                reply.read()
            return Delivery(str(body.get("incident")), "delivered", attempts, status, None,
                            round(time.monotonic() - t0, 3))
        except urllib.error.HTTPError as exc:
            status, error = exc.code, f"HTTP {exc.code} {exc.reason}"
            exc.close()
            if exc.code not in RETRY_STATUSES:
                break
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                http.client.HTTPException, OSError) as exc:
            status = None
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (socket.timeout, TimeoutError)):
                error = f"no reply within {min(settings.timeout, left):g} s"
            else:
                error = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
    return Delivery(str(body.get("incident")), "failed", attempts, status, error,
                    round(time.monotonic() - t0, 3))


def deliver(
    url: str,
    incidents: Sequence[Mapping[str, Any]],
    *,
    run: Mapping[str, Any],
    verdict: str,
    report: str | None = None,
    settings: NotifySettings | None = None,
    previous: Mapping[str, Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Post every new incident to ``url``; never raises for a delivery that fails.

    Parameters
    ----------
    url : str
        The webhook (validated with :func:`check_url`).
    incidents : sequence of dict
        This run's incidents, most severe first (sent in that order).
    run : dict
        The run record (its ``id`` goes into every payload and idempotency key).
    verdict : str
    report : str, optional
        Path of the HTML report, sent in each payload.
    settings : NotifySettings, optional
        Timeout, retries, backoff and the deadline of the whole delivery.
    previous : dict, optional
        The previous run's JSON document: incidents it held (and delivered) are not sent.
    sleep : callable
        How to wait between attempts.

    Returns
    -------
    dict
        The record for ``run["notifications"]``: ``target`` (scheme, host and port only),
        ``incidents`` (this run's count), ``new``, ``delivered``, ``failed`` and
        ``deliveries`` (one :class:`Delivery` dict per new incident).
    """
    settings = settings or NotifySettings()
    check_url(url)
    todo = new_incidents(incidents, previous)
    stop_at = time.monotonic() + settings.deadline
    deliveries = []
    for inc in todo:
        body = incident_payload(inc, run=run, verdict=verdict, report=report)
        d = post_json(url, body, settings=settings, stop_at=stop_at,
                      key=f"{run.get('id')}:{inc.get('id')}", sleep=sleep)
        deliveries.append(d.to_dict())
    delivered = sum(d["status"] == "delivered" for d in deliveries)
    return {
        "target": redact(url),
        "incidents": len(incidents),
        "new": len(todo),
        "delivered": delivered,
        "failed": len(deliveries) - delivered,
        "deliveries": deliveries,
    }
