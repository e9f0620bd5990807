"""A synthetic deployment with known ground truth.

:func:`generate` writes the four input tables of DESIGN §2 (``evaluation``, ``online``,
``offline``, ``outcomes``) for a small fraud-like world in which a binary model is deployed,
and returns a :class:`Scenario` that says what was injected where, so that ``parity demo``,
end-to-end tests and benchmarks can check the engine's findings against the truth.

The world
---------
Each request has three slice columns and five features:

* ``country``: 12 values of very unequal size (US 24 %, GB 10 %, DE/BR 9 %, MX/IN/FR 8 %, JP
  7 %, CA 6 %, ES 5 %, IT 4.5 %, NZ 1.5 %);
* ``device``: ios 38 %, android 42 %, web 20 %;
* ``segment``: consumer, smb, and ``rare`` (6 % of all rows, 1 % positive rate, scores crowded
  near 0). The rare product is only sold in the countries that carry no injection, so the
  ``rare`` segment is a clean slice even when injections are on;
* ``f_amount`` (lognormal, currency units, rounded to cents), ``f_age`` (years),
  ``f_tenure`` (months, gamma), ``f_clicks`` (int32, negative binomial) and the categorical
  ``f_channel`` (6 values).

The true probability is ``p = sigmoid(b + slice effects + channel effect + linear terms of the
standardised, ±3-sd-clipped numeric features)``. The deployed model *is* that function, so its
score (``p`` as float32) is calibrated wherever nothing is injected, and labels are
``Bernoulli(score)`` both in the evaluation holdout and online. ``value`` is the amount at
stake on a positive (``label * f_amount``) and 0 on a negative.

Injections (``inject=True``), one per country, chosen large enough to be detected with
confidence at 60,000 online rows (each injected country holds 8-9 % of the rows) and confined to
their country, so every other country and the ``rare`` segment are exactly as clean as with
``inject=False``; see :func:`injections` for the parameters and the metrics expected to alert.

Determinism and streaming
-------------------------
Rows are generated in chunks of ``chunk_rows``; chunk ``c`` of table role ``r`` draws from
``numpy.random.default_rng(SeedSequence(seed, spawn_key=(r, c, k)))`` (``k`` = 0 for the world,
1 for the injections, 2 for the within-chunk shuffle), so the data are a pure function of
``(seed, rows, eval_rows, chunk_rows, inject, shuffle)``: the same arguments give identical
files, while a different ``chunk_rows`` gives a different (equally valid) sample. Because the
injections draw from their own streams, the rows outside the injected countries are identical
with and without ``inject``. Memory is O(``chunk_rows``) whatever ``rows`` is: each chunk is
written as one Parquet row group; with ``shuffle=True`` the offline and outcome chunks are
shuffled in memory and parked in Arrow IPC files under ``out_dir`` (removed at the end) so
that they can be written in a permuted chunk order.
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

if TYPE_CHECKING:  # pandas is a test/demo dependency only
    import pandas as pd

__all__ = [
    "Injection",
    "Scenario",
    "generate",
    "injections",
    "materialize_joined",
    "SLICES",
    "FEATURES",
    "THRESHOLDS",
]

# --------------------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------------------

SLICES: list[str] = ["country", "device", "segment"]
FEATURES: dict[str, Literal["numeric", "categorical"]] = {
    "f_amount": "numeric",
    "f_age": "numeric",
    "f_tenure": "numeric",
    "f_clicks": "numeric",
    "f_channel": "categorical",
}
THRESHOLDS: list[float] = [0.3, 0.6]

#: The day the online traffic covers (UTC).
DAY_START = np.datetime64("2026-11-05T00:00:00", "us")
_DAY_US = 86_400 * 1_000_000

COUNTRIES = np.array(["US", "GB", "DE", "BR", "MX", "IN", "FR", "JP", "CA", "ES", "IT", "NZ"])
_COUNTRY_P = np.array([0.24, 0.10, 0.09, 0.09, 0.08, 0.08, 0.08, 0.07, 0.06, 0.05, 0.045, 0.015])
# Logit offsets: base rates between roughly 6 % and 16 % outside the rare segment.
_COUNTRY_EFF = np.array([0.0, -0.1, 0.1, 0.3, 0.2, 0.25, -0.2, -0.4, 0.0, 0.1, 0.05, -0.15])
_INJECTED_COUNTRIES = ("BR", "DE", "MX", "IN")
_C = {c: i for i, c in enumerate(COUNTRIES)}

DEVICES = np.array(["ios", "android", "web"])
_DEVICE_P = np.array([0.38, 0.42, 0.20])
_DEVICE_EFF = np.array([-0.1, 0.1, 0.2])

SEGMENTS = np.array(["consumer", "smb", "rare"])
_RARE_SHARE = 0.06  # of all rows; all of them in the clean countries
_CLEAN_SHARE = 1.0 - sum(_COUNTRY_P[_C[c]] for c in _INJECTED_COUNTRIES)
_SEG_P_INJECTED = np.array([0.78, 0.22, 0.0])
_SEG_P_CLEAN = np.array([0.72, 0.28 - _RARE_SHARE / _CLEAN_SHARE, _RARE_SHARE / _CLEAN_SHARE])
# The rare segment's offset puts its positive rate near 1 % (scores crowded near 0).
_SEGMENT_EFF = np.array([0.0, 0.15, -2.75])

CHANNELS = np.array(["organic", "paid_search", "social", "email", "referral", "affiliate"])
_CHANNEL_P = np.array([0.35, 0.25, 0.15, 0.12, 0.08, 0.05])
_CHANNEL_EFF = np.array([0.0, 0.3, 0.5, -0.4, -0.2, 0.8])
#: f_channel values that appear online (data-quality injection) but never in the evaluation set.
UNSEEN_CHANNELS = np.array(["partner_api", "sms"])
_ALL_CHANNELS = np.concatenate([CHANNELS, UNSEEN_CHANNELS])
# An unknown category gets the reference effect 0 in the model (and in the truth).
_ALL_CHANNEL_EFF = np.concatenate([_CHANNEL_EFF, np.zeros(len(UNSEEN_CHANNELS))])

_INTERCEPT = -2.55
# Standardisation (location, scale) of the transformed numeric features, and their weights.
_AMOUNT_MU, _AMOUNT_SIGMA = 3.5, 0.9  # log f_amount ~ N(3.5, 0.9²) in the clean world
_W_AMOUNT, _W_TENURE, _W_AGE, _W_CLICKS = 0.9, -0.6, 0.25, 0.5
_TENURE_LOC, _TENURE_SCALE = 2.95, 0.75  # on log1p(months)
_CLICKS_LOC, _CLICKS_SCALE = 1.65, 0.6  # on log1p(clicks)
_CLIP = 3.0  # the feature pipeline winsorises every standardised feature at ±3 sd

# Roles of the random streams (the first element of a chunk's spawn key).
_ROLE_EVAL, _ROLE_ONLINE, _ROLE_ORDER = 1, 2, 3
_SUB_WORLD, _SUB_INJECT, _SUB_SHUFFLE = 0, 1, 2

# --------------------------------------------------------------------------------------
# Injection parameters (see injections() for what they do and what should alert)
# --------------------------------------------------------------------------------------

SKEW_COUNTRY = "BR"
SKEW_AMOUNT_FACTOR = 100.0  # the serving path reads f_amount in cents
DRIFT_COUNTRY = "DE"
DRIFT_TENURE_FACTOR = 1.8  # an older customer base: tenure x1.8 (lower risk) ...
DRIFT_AMOUNT_SPREAD = 2.0  # ... paying both micro and large amounts: log-amount spread x2
# (same median). The two roughly cancel in the positive rate while the scores spread out.
CONCEPT_COUNTRY = "MX"
CONCEPT_CLICKS_WEIGHT = -0.8  # clicks now *lower* risk (was +0.5): relationship inverted
CONCEPT_SHIFT = 0.7  # and the event rate roughly doubles at a given score
DQ_COUNTRY = "IN"
DQ_INVALID_SCORE_RATE = 0.02  # NaN, the -1 sentinel, or > 1
DQ_NULL_KEY_RATE = 0.01
DQ_MISSING_REPLAY_RATE = 0.10
DQ_INVALID_LABEL_RATE = 0.02  # label 2 in the outcomes
DQ_UNSEEN_CHANNEL_RATE = 0.01
#: Outcomes never arrive for this fraction of requests, everywhere (label coverage 0.99).
MISSING_OUTCOME_RATE = 0.01


@dataclass(frozen=True)
class Injection:
    """One injected problem and the findings it should produce.

    Attributes
    ----------
    slice : dict[str, str]
        The slice the problem was injected into, e.g. ``{"country": "BR"}``.
    cause : str
        ``"serving_skew"``, ``"data_drift"``, ``"concept_drift"`` or ``"data_quality"``: the
        cause tag the engine should give the slice's findings.
    description : str
        What was done, in words.
    metrics : list[str]
        Canonical metric names (DESIGN §5) expected to *alert* in ``slice`` at any ``rows`` >=
        60,000 (an injected problem the engine must find).
    feature : str or None
        The input feature at the root of the problem, if any.
    also : list[str]
        Metrics that the problem may also move beyond tolerance in ``slice`` (depending on the
        sample), so an alert there is explained, but not required.
    drift_features : list[str]
        The ``feature`` values (``"score"`` or a feature name) on which drift metrics
        (psi, js_divergence, ks, wasserstein) are expected or allowed to fire.
    scores : list[str]
        The ``scores`` values (``"online"``, ``"offline"``) on which the performance metrics
        in ``metrics``/``also`` move: only ``"online"`` for serving skew (the replay did not
        move), both for data and concept drift.

    Notes
    -----
    A metric computed per threshold is listed when it alerts at one threshold at least.
    """

    slice: dict[str, str]
    cause: str
    description: str
    metrics: list[str]
    feature: str | None = None
    also: list[str] = field(default_factory=list)
    drift_features: list[str] = field(default_factory=list)
    scores: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)


_DRIFT_METRICS = ("psi", "js_divergence", "ks", "wasserstein")
_PERFORMANCE_METRICS = (
    "auc", "precision", "recall", "fpr", "predicted_positive_rate", "positive_rate", "ece",
    "brier", "log_loss", "value_per_row",
)


@dataclass
class Scenario:
    """What :func:`generate` wrote, and the ground truth.

    Attributes
    ----------
    evaluation, online, offline, outcomes : pathlib.Path
        The Parquet files.
    slices : list[str]
        Slice column names.
    features : dict[str, str]
        Feature column name to ``"numeric"`` or ``"categorical"``.
    thresholds : list[float]
        Decision thresholds.
    injections : list[Injection]
        The injected problems (empty with ``inject=False``).
    rows, eval_rows, seed, chunk_rows, shuffle, days : int, int, int, int, bool, int
        The arguments that produced the files.
    """

    evaluation: Path
    online: Path
    offline: Path
    outcomes: Path
    slices: list[str]
    features: dict[str, str]
    thresholds: list[float]
    injections: list[Injection]
    rows: int
    seed: int
    eval_rows: int = 0
    chunk_rows: int = 0
    shuffle: bool = True
    key: str = "request_id"
    days: int = 1

    def to_dict(self) -> dict:
        """Return a JSON-able dict (paths as strings)."""
        return {
            "evaluation": str(self.evaluation),
            "online": str(self.online),
            "offline": str(self.offline),
            "outcomes": str(self.outcomes),
            "slices": list(self.slices),
            "features": dict(self.features),
            "thresholds": list(self.thresholds),
            "injections": [i.to_dict() for i in self.injections],
            "rows": self.rows,
            "eval_rows": self.eval_rows,
            "seed": self.seed,
            "chunk_rows": self.chunk_rows,
            "shuffle": self.shuffle,
            "key": self.key,
            "days": self.days,
        }

    def overlapping(self, slice_: dict[str, str]) -> list[Injection]:
        """Injections whose rows intersect ``slice_`` (``{}`` is the whole population).

        A slice intersects an injection when they agree on every column they share and the
        world holds rows with both (no ``rare`` rows exist in an injected country).
        """
        return [inj for inj in self.injections if _can_cooccur(slice_, inj.slice)]

    def explains(
        self,
        metric: str,
        slice_: dict[str, str],
        feature: str | None = None,
        scores: str | None = None,
    ) -> list[Injection]:
        """Injections that explain a finding of ``metric`` in ``slice_`` (empty: unexplained).

        A finding is explained by an injection that overlaps the slice and lists the metric
        in ``metrics`` or ``also`` (and, for drift metrics, the feature in
        ``drift_features``; for performance metrics, the score source in ``scores``). Slices
        that only partly overlap an injection (a device, a segment, the whole population)
        inherit its effects diluted, so they may or may not alert; their findings are
        explained all the same.
        """
        out = []
        for inj in self.overlapping(slice_):
            if metric not in inj.metrics and metric not in inj.also:
                continue
            if metric in _DRIFT_METRICS and feature is not None:
                if feature not in inj.drift_features:
                    continue
            if metric in _PERFORMANCE_METRICS and scores is not None:
                if scores not in inj.scores:
                    continue
            out.append(inj)
        return out

    def clean_slices(self) -> list[dict[str, str]]:
        """Single-column slices that no injection touches (nothing should alert there)."""
        values = {"country": COUNTRIES, "device": DEVICES, "segment": SEGMENTS}
        return [
            {col: str(v)}
            for col in self.slices
            for v in values[col]
            if not self.overlapping({col: str(v)})
        ]


def _can_cooccur(a: dict[str, str], b: dict[str, str]) -> bool:
    """Whether some row of the world can belong to both slices."""
    for col in set(a) & set(b):
        if a[col] != b[col]:
            return False
    merged = {**a, **b}
    if merged.get("segment") == "rare" and merged.get("country") in _INJECTED_COUNTRIES:
        return False
    return True


def injections() -> list[Injection]:
    """The four injected problems, their parameters, and the metrics expected to alert.

    Returns
    -------
    list[Injection]
        serving skew in BR, data drift in DE, concept drift in MX, data quality in IN.
    """
    return [
        Injection(
            slice={"country": SKEW_COUNTRY},
            cause="serving_skew",
            feature="f_amount",
            description=(
                f"The {SKEW_COUNTRY} serving path feeds f_amount to the model in cents "
                f"(x{SKEW_AMOUNT_FACTOR:g}); the standardised amount saturates at the +3 sd "
                "clip, so online scores jump up and lose the amount signal. The logged "
                "features, the offline replay and the outcomes use the correct amount."
            ),
            metrics=[
                "flip_rate", "mean_abs_delta", "p99_abs_delta", "psi", "js_divergence",
                "ks", "wasserstein", "auc", "precision", "fpr", "predicted_positive_rate",
                "ece", "brier", "log_loss",
            ],
            also=[],
            drift_features=["score"],
            scores=["online"],
        ),
        Injection(
            slice={"country": DRIFT_COUNTRY},
            cause="data_drift",
            feature="f_tenure",
            description=(
                f"{DRIFT_COUNTRY} online inputs shift: f_tenure x{DRIFT_TENURE_FACTOR:g} (an "
                f"older customer base) and the spread of log f_amount x{DRIFT_AMOUNT_SPREAD:g} "
                "around the same median (micro-payments and large baskets). Scores spread "
                "out at about the same positive rate; online and offline scores agree and "
                "labels stay Bernoulli(score): the model stays calibrated."
            ),
            metrics=["psi", "ks", "predicted_positive_rate", "value_per_row"],
            also=["js_divergence", "wasserstein", "positive_rate", "fpr"],
            drift_features=["score", "f_tenure", "f_amount"],
            scores=["online", "offline"],
        ),
        Injection(
            slice={"country": CONCEPT_COUNTRY},
            cause="concept_drift",
            feature="f_clicks",
            description=(
                f"{CONCEPT_COUNTRY} outcomes follow a new relationship: labels ~ "
                f"Bernoulli(sigmoid(logit(score) + {CONCEPT_SHIFT:g} + "
                f"({CONCEPT_CLICKS_WEIGHT:g} - {_W_CLICKS:g}) * z_clicks)), i.e. the clicks "
                "effect is inverted and the event rate rises. Inputs and scores (online and "
                "offline) look like the baseline."
            ),
            metrics=["auc", "recall", "ece", "brier", "log_loss", "positive_rate",
                     "value_per_row"],
            also=["precision", "fpr"],
            drift_features=[],
            scores=["online", "offline"],
        ),
        Injection(
            slice={"country": DQ_COUNTRY},
            cause="data_quality",
            feature="f_channel",
            description=(
                f"{DQ_COUNTRY}: {DQ_INVALID_SCORE_RATE:.0%} of online scores invalid (NaN, -1, "
                f"> 1), {DQ_NULL_KEY_RATE:.0%} null request_ids, replay missing for "
                f"{DQ_MISSING_REPLAY_RATE:.0%} of requests, {DQ_INVALID_LABEL_RATE:.0%} of "
                f"outcomes with label 2, {DQ_UNSEEN_CHANNEL_RATE:.0%} of rows with an "
                f"f_channel value never seen in the evaluation data "
                f"({', '.join(UNSEEN_CHANNELS)})."
            ),
            metrics=[
                "join_coverage", "invalid_score_rate", "null_key_rate", "invalid_label_rate",
                "unseen_value_rate",
            ],
            also=["label_coverage", "psi", "js_divergence", "ks", "wasserstein"],
            drift_features=["f_channel"],
            scores=[],
        ),
    ]


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------


def _rng(seed: int, role: int, chunk: int, sub: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(role, chunk, sub)))


def _draw(rng: np.random.Generator, probs: np.ndarray, n: int) -> np.ndarray:
    """Categorical codes by inverse CDF (much faster than Generator.choice with p=)."""
    cum = np.cumsum(probs)
    cum[-1] = 1.0 + 1e-12  # guards against rounding so every code is < len(probs)
    return np.searchsorted(cum, rng.random(n), side="right").astype(np.int8)


def _zclip(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -_CLIP, _CLIP, out=x)


def _logit(
    country: np.ndarray,
    device: np.ndarray,
    segment: np.ndarray,
    channel: np.ndarray,
    amount: np.ndarray,
    age: np.ndarray,
    tenure: np.ndarray,
    clicks: np.ndarray,
) -> np.ndarray:
    """The model (and the truth): a logistic model on clipped standardised features."""
    z = _INTERCEPT + _COUNTRY_EFF[country] + _DEVICE_EFF[device] + _SEGMENT_EFF[segment]
    z += _ALL_CHANNEL_EFF[channel]
    z += _W_AMOUNT * _zclip((np.log(amount) - _AMOUNT_MU) / _AMOUNT_SIGMA)
    z += _W_TENURE * _zclip((np.log1p(tenure) - _TENURE_LOC) / _TENURE_SCALE)
    z += _W_AGE * _zclip((age - 40.0) / 12.0)
    z += _W_CLICKS * _z_clicks(clicks)
    return z


def _z_clicks(clicks: np.ndarray) -> np.ndarray:
    return _zclip((np.log1p(clicks.astype(np.float64)) - _CLICKS_LOC) / _CLICKS_SCALE)


def _score(logit: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)


@dataclass
class _Chunk:
    """One chunk of rows of the world, as numpy arrays (codes for categoricals)."""

    country: np.ndarray
    device: np.ndarray
    segment: np.ndarray
    channel: np.ndarray
    amount: np.ndarray
    age: np.ndarray
    tenure: np.ndarray
    clicks: np.ndarray
    u_label: np.ndarray
    u_outcome: np.ndarray


def _draw_world(rng: np.random.Generator, n: int) -> _Chunk:
    """Draw n requests of the clean world. The order of draws is part of the format."""
    country = _draw(rng, _COUNTRY_P, n)
    injected = np.isin(country, [_C[c] for c in _INJECTED_COUNTRIES])
    u = rng.random(n)
    # The rare product is not sold in the injected countries (so 'rare' stays clean).
    seg_clean = np.searchsorted(np.cumsum(_SEG_P_CLEAN)[:-1], u, side="right")
    seg_inj = np.searchsorted(np.cumsum(_SEG_P_INJECTED)[:-1], u, side="right")
    segment = np.where(injected, seg_inj, seg_clean).astype(np.int8)
    device = _draw(rng, _DEVICE_P, n)
    channel = _draw(rng, _CHANNEL_P, n)
    amount = np.round(np.exp(_AMOUNT_MU + _AMOUNT_SIGMA * rng.standard_normal(n)), 2)
    np.maximum(amount, 0.01, out=amount)
    age = np.clip(np.round(40.0 + 12.0 * rng.standard_normal(n)), 18.0, 90.0)
    tenure = np.round(rng.gamma(2.0, 12.0, n), 2)
    clicks = rng.poisson(rng.gamma(2.0, 2.5, n)).astype(np.int32)
    return _Chunk(
        country=country, device=device, segment=segment, channel=channel, amount=amount,
        age=age, tenure=tenure, clicks=clicks, u_label=rng.random(n), u_outcome=rng.random(n),
    )


def _strings(codes: np.ndarray, values: np.ndarray) -> pa.Array:
    return pa.array(values).take(pa.array(codes.astype(np.int32)))


def _feature_columns(w: _Chunk) -> dict[str, pa.Array]:
    return {
        "country": _strings(w.country, COUNTRIES),
        "device": _strings(w.device, DEVICES),
        "segment": _strings(w.segment, SEGMENTS),
        "f_amount": pa.array(w.amount),
        "f_age": pa.array(w.age),
        "f_tenure": pa.array(w.tenure),
        "f_clicks": pa.array(w.clicks),
        "f_channel": _strings(w.channel, _ALL_CHANNELS),
    }


EVALUATION_SCHEMA = pa.schema(
    [("score", pa.float32()), ("label", pa.int8()), ("value", pa.float64()),
     ("country", pa.string()), ("device", pa.string()), ("segment", pa.string()),
     ("f_amount", pa.float64()), ("f_age", pa.float64()), ("f_tenure", pa.float64()),
     ("f_clicks", pa.int32()), ("f_channel", pa.string())]
)
ONLINE_SCHEMA = pa.schema(
    [("request_id", pa.int64()), ("ts", pa.timestamp("us", tz="UTC")), ("score", pa.float32()),
     ("country", pa.string()), ("device", pa.string()), ("segment", pa.string()),
     ("f_amount", pa.float64()), ("f_age", pa.float64()), ("f_tenure", pa.float64()),
     ("f_clicks", pa.int32()), ("f_channel", pa.string())]
)
OFFLINE_SCHEMA = pa.schema([("request_id", pa.int64()), ("score", pa.float32())])
OUTCOMES_SCHEMA = pa.schema(
    [("request_id", pa.int64()), ("label", pa.int8()), ("value", pa.float64())]
)


def _evaluation_chunk(seed: int, c: int, n: int) -> pa.Table:
    w = _draw_world(_rng(seed, _ROLE_EVAL, c, _SUB_WORLD), n)
    score = _score(_logit(w.country, w.device, w.segment, w.channel, w.amount, w.age,
                          w.tenure, w.clicks))
    label = (w.u_label < score).astype(np.int8)
    cols = {"score": pa.array(score), "label": pa.array(label),
            "value": pa.array(label * w.amount)}
    cols.update(_feature_columns(w))
    return pa.table(cols, schema=EVALUATION_SCHEMA)


# Traffic has a daily cycle (peak 15:00 UTC); ts is the inverse CDF of that profile at
# stratified uniform positions (k + u) / rows, so the online log is in time order.
_T_GRID = np.linspace(0.0, 1.0, 1441)
_DENSITY = 1.0 + 0.6 * np.cos(2.0 * np.pi * (_T_GRID - 15.0 / 24.0))
_CDF = np.concatenate([[0.0], np.cumsum((_DENSITY[1:] + _DENSITY[:-1]) / 2.0)])
_CDF /= _CDF[-1]


def _request_ids(seed: int, index: np.ndarray) -> np.ndarray:
    """Unique, scrambled, non-negative int64 keys: an odd multiplier is a bijection mod 2^63."""
    salt = np.uint64((seed * 0x632BE59BD9B4E019 + 0x1B873593) % (1 << 63))
    k = index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + salt
    return (k & np.uint64((1 << 63) - 1)).astype(np.int64)


@dataclass
class _OnlineChunk:
    online: pa.Table
    offline: pa.Table
    outcomes: pa.Table


def _online_chunk(
    seed: int, c: int, start: int, n: int, rows: int, inject: bool, shuffle: bool, days: int = 1
) -> _OnlineChunk:
    rng = _rng(seed, _ROLE_ONLINE, c, _SUB_WORLD)
    w = _draw_world(rng, n)
    index = np.arange(start, start + n, dtype=np.int64)
    # over several days: the same daily cycle each day, the days one after the other (one
    # day: ``day`` is 0 and ``pos * days`` is ``pos``, the same times as ever)
    pos = (index + rng.random(n)) / rows * days
    day = np.floor(pos)
    ts = DAY_START.astype(np.int64) + day.astype(np.int64) * _DAY_US + np.floor(
        np.interp(pos - day, _CDF, _T_GRID) * _DAY_US
    ).astype(np.int64)
    request_id = _request_ids(seed, index)
    has_outcome = w.u_outcome >= MISSING_OUTCOME_RATE

    key_valid = np.ones(n, dtype=bool)
    replay_missing = np.zeros(n, dtype=bool)
    invalid_label = np.zeros(n, dtype=bool)
    skew_rows = np.zeros(n, dtype=bool)

    if inject:
        irng = _rng(seed, _ROLE_ONLINE, c, _SUB_INJECT)
        # The draws below happen whatever the slice sizes, in a fixed order (determinism).
        u1, u2, u3, u4, u5 = (irng.random(n) for _ in range(5))
        u_kind = irng.random(n)
        u_unseen_val = irng.integers(0, len(UNSEEN_CHANNELS), n)

        # Data drift: DE inputs move (before scoring: the replay sees the same inputs).
        de = w.country == _C[DRIFT_COUNTRY]
        w.tenure[de] = np.round(w.tenure[de] * DRIFT_TENURE_FACTOR, 2)
        log_amount = _AMOUNT_MU + DRIFT_AMOUNT_SPREAD * (np.log(w.amount[de]) - _AMOUNT_MU)
        w.amount[de] = np.maximum(np.round(np.exp(log_amount), 2), 0.01)

        # Data quality (inputs): IN gets f_channel values the evaluation data never had.
        dq = w.country == _C[DQ_COUNTRY]
        unseen = dq & (u1 < DQ_UNSEEN_CHANNEL_RATE)
        w.channel[unseen] = len(CHANNELS) + u_unseen_val[unseen]

    logit = _logit(w.country, w.device, w.segment, w.channel, w.amount, w.age, w.tenure,
                   w.clicks)
    offline_score = _score(logit)  # the replay: the model on the correct inputs
    online_score = offline_score.copy()
    q = offline_score.astype(np.float64)  # the true event probability

    if inject:
        # Serving skew: BR's serving path passes the amount in cents to the same model.
        skew_rows = w.country == _C[SKEW_COUNTRY]
        if skew_rows.any():
            s = skew_rows
            online_score[s] = _score(_logit(
                w.country[s], w.device[s], w.segment[s], w.channel[s],
                w.amount[s] * SKEW_AMOUNT_FACTOR, w.age[s], w.tenure[s], w.clicks[s]))

        # Concept drift: MX outcomes follow a different relationship to the same inputs.
        mx = w.country == _C[CONCEPT_COUNTRY]
        if mx.any():
            z = logit[mx] + CONCEPT_SHIFT + (CONCEPT_CLICKS_WEIGHT - _W_CLICKS) * _z_clicks(
                w.clicks[mx])
            q[mx] = 1.0 / (1.0 + np.exp(-z))

        # Data quality (outputs): invalid scores, null keys, missing replays, bad labels.
        bad_score = dq & (u2 < DQ_INVALID_SCORE_RATE)
        nan_rows = bad_score & (u_kind < 0.5)
        sentinel = bad_score & (u_kind >= 0.5) & (u_kind < 0.75)
        above = bad_score & (u_kind >= 0.75)
        online_score[nan_rows] = np.nan
        online_score[sentinel] = -1.0
        online_score[above] = online_score[above] + np.float32(1.0)
        key_valid = ~(dq & (u3 < DQ_NULL_KEY_RATE))
        replay_missing = dq & (u4 < DQ_MISSING_REPLAY_RATE)
        invalid_label = dq & (u5 < DQ_INVALID_LABEL_RATE)

    label = (w.u_label < q).astype(np.int8)
    value = label * w.amount
    label_out = np.where(invalid_label, np.int8(2), label).astype(np.int8)

    cols = {
        "request_id": pa.array(request_id, mask=~key_valid),  # mask True = null
        "ts": pa.array(ts, type=pa.timestamp("us", tz="UTC")),
        "score": pa.array(online_score),
    }
    cols.update(_feature_columns(w))
    online = pa.table(cols, schema=ONLINE_SCHEMA)

    if shuffle:
        # The replay is a separate job: a row per (keyed) request it could score, in its
        # own order; null keys cannot be replayed.
        keep = key_valid & ~replay_missing
        off_ids, off_scores = request_id[keep], offline_score[keep]
        off_mask = None
    else:
        # Aligned replay: a row per online row, same keys (nulls included), same order; a
        # request it failed to score (or could not key) has a null score.
        off_ids, off_scores = request_id, offline_score
        off_mask = ~key_valid | replay_missing
    offline = pa.table(
        {"request_id": pa.array(off_ids, mask=None if shuffle else ~key_valid),
         "score": pa.array(off_scores, mask=off_mask)},
        schema=OFFLINE_SCHEMA,
    )

    keep_out = key_valid & has_outcome
    outcomes = pa.table(
        {"request_id": pa.array(request_id[keep_out]),
         "label": pa.array(label_out[keep_out]),
         "value": pa.array(value[keep_out], mask=invalid_label[keep_out])},
        schema=OUTCOMES_SCHEMA,
    )

    if shuffle:
        srng = _rng(seed, _ROLE_ONLINE, c, _SUB_SHUFFLE)
        offline = offline.take(pa.array(srng.permutation(offline.num_rows)))
        outcomes = outcomes.take(pa.array(srng.permutation(outcomes.num_rows)))
    return _OnlineChunk(online=online, offline=offline, outcomes=outcomes)


def _chunks(total: int, chunk_rows: int) -> Iterator[tuple[int, int, int]]:
    for c, start in enumerate(range(0, total, chunk_rows)):
        yield c, start, min(chunk_rows, total - start)


def generate(
    out_dir: str | Path,
    rows: int = 1_000_000,
    seed: int = 0,
    *,
    inject: bool = True,
    chunk_rows: int = 1_000_000,
    shuffle: bool = True,
    eval_rows: int | None = None,
    days: int = 1,
) -> Scenario:
    """Write a synthetic deployment (four Parquet files and ``scenario.json``) to ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Directory to write into (created if needed; existing files of the same names are
        replaced).
    rows : int
        Number of online rows (requests).
    seed : int
        Non-negative seed; the output is a pure function of the arguments.
    inject : bool
        Inject the four problems of :func:`injections`; ``False`` gives clean data from the
        same world (rows outside the injected countries are identical either way).
    chunk_rows : int
        Rows generated and written per chunk (one Parquet row group each); bounds memory.
        Changing it changes the sample (see the module docstring).
    shuffle : bool
        ``True``: the offline replay and the outcomes are shuffled within each chunk and
        their chunks written in a permuted order, so a real hash join is needed; requests
        the replay could not score are absent. ``False``: the offline table is aligned with
        the online table (same keys, nulls included, same order; a failed replay is a null
        score) and the outcomes are in online order.
    eval_rows : int or None
        Rows of the evaluation holdout; defaults to ``rows``.
    days : int
        Days of traffic, from 2026-11-05 on, each with the same daily cycle (checks over
        time windows: ``days=7`` with ``--window 1d`` gives seven daily windows).

    Returns
    -------
    Scenario
        Paths and ground truth.

    Notes
    -----
    ``evaluation.parquet``: score float32, label int8, value float64, country/device/segment
    string, f_amount/f_age/f_tenure float64, f_clicks int32, f_channel string.
    ``online.parquet``: request_id int64 (nullable), ts timestamp[us, tz=UTC] (from 2026-11-05,
    ascending), score float32, then the slice and feature columns as above.
    ``offline.parquet``: request_id int64, score float32.
    ``outcomes.parquet``: request_id int64, label int8, value float64 (null with an invalid
    label).
    """
    if rows < 1 or chunk_rows < 1 or days < 1:
        raise ValueError("rows, chunk_rows and days must be positive")
    if seed < 0:
        raise ValueError("seed must be non-negative")
    eval_rows = rows if eval_rows is None else int(eval_rows)
    if eval_rows < 1:
        raise ValueError("eval_rows must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.parquet"
             for name in ("evaluation", "online", "offline", "outcomes")}

    with pq.ParquetWriter(paths["evaluation"], EVALUATION_SCHEMA) as wr:
        for c, _start, n in _chunks(eval_rows, chunk_rows):
            wr.write_table(_evaluation_chunk(seed, c, n), row_group_size=chunk_rows)

    n_chunks = math.ceil(rows / chunk_rows)
    park = shuffle and n_chunks > 1
    tmp = out / f".synthetic-{uuid.uuid4().hex}"
    try:
        if park:
            tmp.mkdir()
        with pq.ParquetWriter(paths["online"], ONLINE_SCHEMA) as w_on, \
                pq.ParquetWriter(paths["offline"], OFFLINE_SCHEMA) as w_off, \
                pq.ParquetWriter(paths["outcomes"], OUTCOMES_SCHEMA) as w_out:
            for c, start, n in _chunks(rows, chunk_rows):
                ch = _online_chunk(seed, c, start, n, rows, inject, shuffle, days)
                w_on.write_table(ch.online, row_group_size=chunk_rows)
                if park:
                    for name, table in (("offline", ch.offline), ("outcomes", ch.outcomes)):
                        with ipc.new_file(tmp / f"{name}-{c}.arrow", table.schema) as f:
                            f.write_table(table)
                else:
                    w_off.write_table(ch.offline, row_group_size=chunk_rows)
                    w_out.write_table(ch.outcomes, row_group_size=chunk_rows)
            if park:
                order = np.random.default_rng(
                    np.random.SeedSequence(seed, spawn_key=(_ROLE_ORDER,))
                ).permutation(n_chunks)
                for c in order:
                    for name, wr in (("offline", w_off), ("outcomes", w_out)):
                        part = tmp / f"{name}-{c}.arrow"
                        with pa.memory_map(str(part)) as src:
                            wr.write_table(ipc.open_file(src).read_all(),
                                           row_group_size=chunk_rows)
                        part.unlink()
    finally:
        if park:
            shutil.rmtree(tmp, ignore_errors=True)

    scenario = Scenario(
        evaluation=paths["evaluation"], online=paths["online"], offline=paths["offline"],
        outcomes=paths["outcomes"], slices=list(SLICES), features=dict(FEATURES),
        thresholds=list(THRESHOLDS), injections=injections() if inject else [],
        rows=rows, seed=seed, eval_rows=eval_rows, chunk_rows=chunk_rows, shuffle=shuffle, days=days,
    )
    (out / "scenario.json").write_text(json.dumps(scenario.to_dict(), indent=2) + "\n")
    return scenario


def materialize_joined(scenario: Scenario) -> pd.DataFrame:
    """The online rows left-joined with the offline score and the outcome (tests; small data).

    Parameters
    ----------
    scenario : Scenario
        As returned by :func:`generate`.

    Returns
    -------
    pandas.DataFrame
        The online columns in online order (``request_id`` as nullable ``Int64``), plus
        ``score_offline`` (NaN where no replay), ``label`` (``Int8``, ``<NA>`` where no
        outcome; may hold the invalid value 2) and ``value``. Null keys never match.
    """
    import pandas as pd

    mapper = {pa.int64(): pd.Int64Dtype(), pa.int8(): pd.Int8Dtype()}.get
    online = pq.read_table(scenario.online).to_pandas(types_mapper=mapper)
    offline = pq.read_table(scenario.offline).to_pandas(types_mapper=mapper)
    outcomes = pq.read_table(scenario.outcomes).to_pandas(types_mapper=mapper)
    # pandas would match null keys with each other; a null key matches nothing.
    offline = offline[offline["request_id"].notna()].rename(columns={"score": "score_offline"})
    outcomes = outcomes[outcomes["request_id"].notna()]
    online["_row"] = np.arange(len(online))
    df = online.merge(offline, on="request_id", how="left").merge(
        outcomes, on="request_id", how="left"
    )
    df = df.sort_values("_row", kind="stable").drop(columns="_row").reset_index(drop=True)
    # Null keys on the left would have matched nothing in the right tables (no nulls there).
    return df
