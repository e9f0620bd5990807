"""Owners: who an incident goes to, and at which escalation level (config ``owners``).

Two forms, both in the configuration file:

* the simple mapping ``{country: risk-latam, flip_rate: ml-platform}``: a key that is a metric
  name matches incidents holding that metric, any other key is a slice column and matches
  incidents whose slice is on that column (crosses included); no escalation level;
* a list of rules ``[{match: {slice: "country=BR", metric: auc, cause: serving_skew}, owner,
  escalation}]``; every condition a rule names must hold; ``slice`` is a column or
  ``COLUMN=VALUE``.

Rules are tried in order and the first match wins (mapping entries in the file's order). A
slice condition never matches the whole population. Everything here is a pure function of
plain data: :func:`check_owners` validates the rules against a baseline's slice columns,
:func:`assign_owners` fills ``owner`` and ``escalation`` of incident dicts.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from engine.catalogue import METRICS
from engine.config import Config
from engine.errors import ConfigError

__all__ = ["Route", "assign_owners", "check_owners", "routes", "route_for"]


@dataclass(frozen=True)
class Route:
    """One owners rule, normalised from either form of the config.

    Attributes
    ----------
    owner : str
    escalation : str or None
    column, value : str or None
        The slice condition: ``column`` alone matches any slice on it, with ``value`` only
        that value.
    metric, cause : str or None
    where : str
        The rule's place in the config (``owners[2]`` or ``owners.country``), for messages.
    """

    owner: str
    escalation: str | None = None
    column: str | None = None
    value: str | None = None
    metric: str | None = None
    cause: str | None = None
    where: str = "owners"

    def matches(self, incident: Mapping[str, Any]) -> bool:
        """Whether ``incident`` (a dict with ``slice``, ``metrics``, ``cause``) matches."""
        if self.column is not None:
            sl = incident.get("slice") or {}
            if self.column not in sl:
                return False
            if self.value is not None and str(sl[self.column]) != self.value:
                return False
        if self.metric is not None and self.metric not in _metrics_of(incident):
            return False
        if self.cause is not None and incident.get("cause") != self.cause:
            return False
        return True


def routes(config: Config) -> list[Route]:
    """The config's owners as an ordered list of :class:`Route`.

    Parameters
    ----------
    config : Config

    Returns
    -------
    list of Route
        In the order of the file; the first that matches an incident wins.
    """
    owners = config.owners
    out: list[Route] = []
    if isinstance(owners, Mapping):
        for key, owner in owners.items():
            if key in METRICS:
                out.append(Route(owner, metric=key, where=f"owners.{key}"))
            else:
                out.append(Route(owner, column=key, where=f"owners.{key}"))
        return out
    for i, rule in enumerate(owners):
        column = value = None
        if rule.match.slice is not None:
            column, sep, rest = rule.match.slice.partition("=")
            value = rest if sep else None
        out.append(
            Route(
                rule.owner, rule.escalation, column, value, rule.match.metric, rule.match.cause,
                where=f"owners[{i}].match.slice",
            )
        )
    return out


def check_owners(config: Config, slice_columns: Sequence[str], *, baseline: str | None = None) -> None:
    """Every slice column an owners rule names must be a slice column of the run.

    Parameters
    ----------
    config : Config
    slice_columns : sequence of str
        The run's slice columns (the baseline's layout, plus ``model_version`` when the
        online log has it).
    baseline : str, optional
        The baseline's path, named in the message.

    Raises
    ------
    ConfigError
        Naming the rule, the column and the slice columns there are.
    """
    known = list(slice_columns)
    for r in routes(config):
        if r.column is None or r.column in known:
            continue
        where = f" of the baseline '{baseline}'" if baseline else ""
        hint = difflib.get_close_matches(r.column, known + list(METRICS), n=1, cutoff=0.6)
        raise ConfigError(
            f"The '{r.where}' option names the slice column '{r.column}', which is not a slice "
            f"column{where} (slice columns: {', '.join(known) or 'none'})."
            + (f" Did you mean '{hint[0]}'?" if hint else "")
            + " Owners route incidents by a slice column of the baseline or by a metric name."
        )


def route_for(incident: Mapping[str, Any], rules: Iterable[Route]) -> Route | None:
    """The first rule that matches ``incident``, or None."""
    return next((r for r in rules if r.matches(incident)), None)


def assign_owners(incidents: Sequence[Mapping[str, Any]], config: Config) -> list[dict[str, Any]]:
    """Incidents with ``owner`` and ``escalation`` filled from the config (new dicts).

    Parameters
    ----------
    incidents : sequence of dict
        As in ``CheckResult.incidents``: ``slice`` ({column: value}), ``metrics`` (names, or
        dicts with a ``metric`` key), ``cause``.
    config : Config

    Returns
    -------
    list of dict
        Copies, in the same order; an incident no rule matches keeps the owner and
        escalation it had (None unless something set them).
    """
    rules = routes(config)
    out = []
    for inc in incidents:
        new = dict(inc)
        r = route_for(inc, rules)
        if r is not None:
            new["owner"], new["escalation"] = r.owner, r.escalation
        else:
            new.setdefault("owner", None)
            new.setdefault("escalation", None)
        out.append(new)
    return out


def _metrics_of(incident: Mapping[str, Any]) -> set[str]:
    names = set()
    for m in incident.get("metrics") or ():
        if isinstance(m, str):
            names.add(m)
        elif isinstance(m, Mapping) and m.get("metric"):
            names.add(str(m["metric"]))
    return names
