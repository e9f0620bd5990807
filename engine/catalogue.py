"""The metric catalogue: every canonical metric, its family, bad direction and tolerance.

This module is data (DESIGN §5 and §6) plus the one rule every verdict uses: when is a
difference *beyond tolerance in the bad direction*. The configuration
(:mod:`engine.config`) overrides these defaults per metric; the comparison stage reads the
resolved :class:`MetricSpec` and judges with its :class:`Tolerance`.

Tolerance semantics
-------------------
Let ``diff = value - expected`` and let ``m`` be the *margin*:

* ``absolute``: ``m = tolerance``.
* ``relative``: ``m = tolerance * |expected|``.
* ``floor``: there is no margin; the tolerance is a bound on the metric's **value**
  (``value = expected + diff``): with ``bad == "decrease"`` the value must not fall below it
  (a floor, e.g. ``join_coverage >= 0.99``); with ``bad == "increase"`` it must not rise
  above it (a ceiling). ``bad == "either"`` is not allowed with a floor.

*Beyond* is strict, so a difference exactly at the tolerance is within it:

====================  ==========================  ================================
kind                  bad                         beyond when
====================  ==========================  ================================
absolute / relative   ``increase``                ``diff > m``
absolute / relative   ``decrease``                ``diff < -m``
absolute / relative   ``either``                  ``|diff| > m``
floor                 ``decrease``                ``value < tolerance``
floor                 ``increase``                ``value > tolerance``
====================  ==========================  ================================

A NaN anywhere makes every comparison false: an undefined value is never beyond tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Literal

__all__ = [
    "BAD_DIRECTIONS",
    "CAUSES",
    "FAMILIES",
    "METRICS",
    "NEEDS",
    "STATUSES",
    "TOLERANCE_KINDS",
    "MetricSpec",
    "Tolerance",
    "metric_names",
]

Family = Literal["drift", "skew", "performance", "data_quality"]
Bad = Literal["increase", "decrease", "either"]
ToleranceKind = Literal["absolute", "relative", "floor"]
Needs = Literal["online", "offline", "outcomes", "any"]

FAMILIES: tuple[str, ...] = ("drift", "skew", "performance", "data_quality")
BAD_DIRECTIONS: tuple[str, ...] = ("increase", "decrease", "either")
TOLERANCE_KINDS: tuple[str, ...] = ("absolute", "relative", "floor")
NEEDS: tuple[str, ...] = ("online", "offline", "outcomes", "any")

#: Cause tags, in the order they are decided per slice (DESIGN §6). ``None`` (JSON ``null``)
#: is the cause of a finding whose status is ``ok``.
CAUSES: tuple[str, ...] = (
    "data_quality",
    "serving_skew",
    "data_drift",
    "concept_drift",
    "label_delay",
)

#: Statuses, in order of precedence (DESIGN §6).
STATUSES: tuple[str, ...] = ("insufficient_data", "alert", "warn", "ok")

# Array-friendly: every helper below uses only arithmetic, ``abs`` and comparisons, so it
# works elementwise on numpy and CuPy arrays as well as on Python floats.
ArrayOrFloat = Any


@dataclass(frozen=True)
class Tolerance:
    """A tolerance: how far a metric may move, and in which direction moving is bad.

    Parameters
    ----------
    kind : {"absolute", "relative", "floor"}
    value : float
        The margin (absolute), the fraction of ``|expected|`` (relative), or the bound on
        the metric's value (floor). Non-negative and finite.
    bad : {"increase", "decrease", "either"}
        The direction that is bad. ``"either"`` is not allowed with ``kind == "floor"``.

    Notes
    -----
    All methods accept scalars or arrays (numpy, CuPy) and broadcast; see the module
    docstring for the exact rule.
    """

    kind: ToleranceKind
    value: float
    bad: Bad
    #: The smallest margin of a relative tolerance (a rate near 0 would otherwise have a
    #: margin of a few events); 0 for none.
    min_margin: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in TOLERANCE_KINDS:
            raise ValueError(
                f"The 'kind' parameter of Tolerance must be one of {TOLERANCE_KINDS}. "
                f"Got {self.kind!r} instead."
            )
        if self.bad not in BAD_DIRECTIONS:
            raise ValueError(
                f"The 'bad' parameter of Tolerance must be one of {BAD_DIRECTIONS}. "
                f"Got {self.bad!r} instead."
            )
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < float("inf")):
            raise ValueError(
                f"The 'value' parameter of Tolerance must be a finite number >= 0. "
                f"Got {v!r} instead."
            )
        if self.kind == "floor" and self.bad == "either":
            raise ValueError(
                "A 'floor' tolerance bounds the value from one side: its 'bad' direction "
                "must be 'decrease' (a floor) or 'increase' (a ceiling). Got 'either' instead."
            )
        object.__setattr__(self, "value", float(v))

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract shape: ``{"kind": ..., "value": ..., "bad": ...}``."""
        d = {"kind": self.kind, "value": self.value, "bad": self.bad}
        if self.min_margin > 0 and self.kind == "relative":
            d["min_margin"] = self.min_margin
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Tolerance":
        """The inverse of :meth:`to_dict` (a finding's ``tolerance``)."""
        return cls(d["kind"], d["value"], d["bad"], d.get("min_margin", 0.0))

    def scale(self, expected: ArrayOrFloat) -> ArrayOrFloat:
        """The size one "tolerance" stands for: the margin, or for a floor the room it leaves
        (``1 - floor`` below a floor, the ceiling itself under a ceiling). Severities and
        excesses are in these units."""
        if self.kind == "floor":
            return 1.0 - self.value if self.bad == "decrease" else self.value
        return self.margin(expected)

    def margin(self, expected: ArrayOrFloat) -> ArrayOrFloat:
        """The allowed size of a difference in the bad direction.

        Parameters
        ----------
        expected : float or array
            Only read for ``relative`` tolerances.

        Returns
        -------
        float or array
            ``value`` (absolute) or ``value * |expected|`` (relative).

        Raises
        ------
        ValueError
            For a ``floor`` tolerance, which bounds the value and has no margin.
        """
        if self.kind == "absolute":
            return self.value
        if self.kind == "relative":
            margin = self.value * abs(expected)
            return max(margin, self.min_margin) if isinstance(margin, float) else margin.clip(self.min_margin)
        raise ValueError("A 'floor' tolerance bounds the value itself and has no margin.")

    def excess(self, diff: ArrayOrFloat, expected: ArrayOrFloat) -> ArrayOrFloat:
        """How far a difference lies beyond the tolerance in the bad direction.

        Parameters
        ----------
        diff : float or array
            ``value - expected``.
        expected : float or array
            The expected value (ignored by ``absolute`` tolerances; pass ``0.0``).

        Returns
        -------
        float or array
            Positive when beyond tolerance, zero exactly at it, negative within it. In units
            of the metric. For ``either`` it is ``|diff| - margin``; for a floor,
            ``tolerance - value`` (a ceiling: ``value - tolerance``). This is the quantity a
            one-sided test of "the divergence in the bad direction is within tolerance"
            divides by its standard error.
        """
        if self.kind == "floor":
            value = expected + diff
            return self.value - value if self.bad == "decrease" else value - self.value
        m = self.margin(expected)
        if self.bad == "increase":
            return diff - m
        if self.bad == "decrease":
            return -m - diff
        return abs(diff) - m

    def beyond(
        self,
        diff: ArrayOrFloat,
        expected: ArrayOrFloat,
        value: ArrayOrFloat | None = None,
    ) -> ArrayOrFloat:
        """Whether a point estimate lies strictly beyond tolerance in the bad direction.

        Parameters
        ----------
        diff : float or array
            ``value - expected``.
        expected : float or array
            The expected value (ignored by ``absolute`` tolerances).
        value : float or array, optional
            The metric's value, for ``floor`` tolerances; defaults to ``expected + diff``.
            Pass it when there is no meaningful expectation (e.g. ``join_coverage``) or to
            avoid the rounding of ``expected + diff`` exactly at the bound.

        Returns
        -------
        bool or bool array
            ``False`` for NaN inputs and for a difference exactly at the tolerance.
        """
        if self.kind == "floor":
            v = expected + diff if value is None else value
            return v < self.value if self.bad == "decrease" else v > self.value
        m = self.margin(expected)
        if self.bad == "increase":
            return diff > m
        if self.bad == "decrease":
            return diff < -m
        return (diff > m) | (diff < -m)

    def ci_beyond(
        self, lo: ArrayOrFloat, hi: ArrayOrFloat, expected: ArrayOrFloat
    ) -> ArrayOrFloat:
        """Whether a whole interval of the difference lies strictly beyond tolerance.

        Parameters
        ----------
        lo, hi : float or array
            The interval of ``diff`` (``lo <= hi``).
        expected : float or array
            As in :meth:`beyond`; for a floor, the interval of the value is
            ``[expected + lo, expected + hi]``.

        Returns
        -------
        bool or bool array
            For ``either``, true when the interval lies wholly above ``+margin`` or wholly
            below ``-margin``.
        """
        if self.kind == "floor":
            if self.bad == "decrease":
                return expected + hi < self.value
            return expected + lo > self.value
        m = self.margin(expected)
        if self.bad == "increase":
            return lo > m
        if self.bad == "decrease":
            return hi < -m
        return (lo > m) | (hi < -m)


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the catalogue, with the defaults that judge it.

    Parameters
    ----------
    name : str
        The canonical name used in every output.
    family : {"drift", "skew", "performance", "data_quality"}
    bad : {"increase", "decrease", "either"}
        The direction of change that is bad.
    tolerance_kind : {"absolute", "relative", "floor"}
    tolerance : float
        See :class:`Tolerance`.
    min_rows : int
        Below this many rows in the metric's denominator the status is
        ``insufficient_data``.
    min_events : int
        The minimum number of rows of **each** class (positives and negatives), for metrics
        that need both (AUC, precision, recall); 0 when not applicable.
    per_threshold : bool
        Computed once per configured decision threshold.
    needs : {"online", "offline", "outcomes", "any"}
        The table the metric needs beyond the baseline: ``online`` rows (drift),
        the ``offline`` replay (skew), ``outcomes`` (performance), or ``any`` input
        (data quality).
    bias_corrected : bool
        Biased upward at small n and judged after bias correction (DESIGN §6).
    enabled : bool
        Computed and reported at all (configurable; default ``True``).
    """

    name: str
    family: Family
    bad: Bad
    tolerance_kind: ToleranceKind
    tolerance: float
    min_rows: int = 200
    min_events: int = 0
    per_threshold: bool = False
    needs: Needs = "any"
    bias_corrected: bool = False
    enabled: bool = True
    min_margin: float = 0.0

    def __post_init__(self) -> None:
        for field, allowed in (
            ("family", FAMILIES),
            ("bad", BAD_DIRECTIONS),
            ("tolerance_kind", TOLERANCE_KINDS),
            ("needs", NEEDS),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"The '{field}' parameter of MetricSpec must be one of {allowed}. "
                    f"Got {getattr(self, field)!r} instead."
                )
        for field in ("min_rows", "min_events"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(
                    f"The '{field}' parameter of MetricSpec must be an int >= 0. "
                    f"Got {v!r} instead."
                )
        # Validates the value and the (kind, bad) pair, and normalises the value to float.
        object.__setattr__(self, "tolerance", self.tolerance_spec.value)

    @cached_property
    def tolerance_spec(self) -> Tolerance:
        """The metric's :class:`Tolerance` (kind, value, bad direction); made once (every
        test of the metric reads it)."""
        return Tolerance(self.tolerance_kind, self.tolerance, self.bad, self.min_margin)

    def with_(self, **changes: Any) -> MetricSpec:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)


_NEEDS_OF_FAMILY = {
    "drift": "online",
    "skew": "offline",
    "performance": "outcomes",
    "data_quality": "any",
}


def _spec(
    name: str, family: Family, bad: Bad, kind: ToleranceKind, tol: float, **kw: Any
) -> MetricSpec:
    needs = _NEEDS_OF_FAMILY[family]
    return MetricSpec(name, family, bad, kind, tol, needs=needs, **kw)  # type: ignore[arg-type]


_CATALOGUE: tuple[MetricSpec, ...] = (
    # drift: online vs baseline, on the score and on each feature
    _spec("psi", "drift", "increase", "absolute", 0.1, bias_corrected=True),
    _spec("js_divergence", "drift", "increase", "absolute", 0.05, bias_corrected=True),
    _spec("ks", "drift", "increase", "absolute", 0.05, bias_corrected=True),
    _spec("wasserstein", "drift", "increase", "absolute", 0.05, bias_corrected=True),
    # skew: online vs offline score of the same request
    _spec("flip_rate", "skew", "increase", "absolute", 0.01, per_threshold=True),
    _spec("mean_abs_delta", "skew", "increase", "absolute", 0.01),
    _spec("p99_abs_delta", "skew", "increase", "absolute", 0.05),
    # performance: outcomes vs the baseline's expectation
    _spec("auc", "performance", "decrease", "absolute", 0.02, min_events=20),
    _spec("precision", "performance", "decrease", "absolute", 0.02, min_events=20,
          per_threshold=True),
    _spec("recall", "performance", "decrease", "absolute", 0.02, min_events=20,
          per_threshold=True),
    _spec("fpr", "performance", "increase", "absolute", 0.02, per_threshold=True),
    _spec("predicted_positive_rate", "performance", "either", "relative", 0.10,
          per_threshold=True, min_margin=0.0005),
    _spec("positive_rate", "performance", "either", "relative", 0.10, min_margin=0.0005),
    _spec("ece", "performance", "increase", "absolute", 0.02, bias_corrected=True),
    _spec("brier", "performance", "increase", "absolute", 0.02),
    _spec("log_loss", "performance", "increase", "relative", 0.10),
    _spec("value_per_row", "performance", "either", "relative", 0.10),
    # data quality: rates over online rows
    _spec("join_coverage", "data_quality", "decrease", "floor", 0.99),
    _spec("label_coverage", "data_quality", "decrease", "floor", 0.95),
    _spec("duplicate_key_rate", "data_quality", "increase", "absolute", 0.001),
    _spec("conflicting_label_rate", "data_quality", "increase", "absolute", 0.001),
    _spec("invalid_score_rate", "data_quality", "increase", "absolute", 0.001),
    _spec("invalid_label_rate", "data_quality", "increase", "absolute", 0.001),
    _spec("null_key_rate", "data_quality", "increase", "absolute", 0.001),
    _spec("unseen_value_rate", "data_quality", "increase", "absolute", 0.001),
)

#: Every canonical metric, by name, with its default settings (DESIGN §6).
METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in _CATALOGUE}


def metric_names(family: str | None = None) -> tuple[str, ...]:
    """The canonical metric names, in catalogue order, optionally of one family.

    Parameters
    ----------
    family : {"drift", "skew", "performance", "data_quality"}, optional

    Returns
    -------
    tuple of str
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(
            f"The 'family' parameter of metric_names must be one of {FAMILIES}. "
            f"Got {family!r} instead."
        )
    return tuple(n for n, s in METRICS.items() if family is None or s.family == family)
