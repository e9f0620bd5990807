"""A small synthetic deployment for the gate tests (issue: a gate that can be trusted).

Sixteen countries of unequal size (from 25% of the traffic down to about 0.3%), four
devices, a calibrated model (``label ~ Bernoulli(score)``), two numeric features and one
categorical one; the offline replay equals the served score unless a test breaks it. Every
table is an Arrow table, so a test can break exactly one thing and check exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

COUNTRIES = [f"C{i:02d}" for i in range(16)]
#: 2026-11-01T00:00:00Z, the first day of a world with ``days``.
EPOCH = 1_793_491_200
#: Unequal shares: geometric, the largest 25%, the smallest ~0.3%.
COUNTRY_SHARES = np.array([0.75**i for i in range(16)])
COUNTRY_SHARES = COUNTRY_SHARES / COUNTRY_SHARES.sum()
DEVICES = ["android", "ios", "web", "tv"]
DEVICE_SHARES = np.array([0.45, 0.35, 0.15, 0.05])
CHANNELS = ["app", "web", "partner"]
THRESHOLDS = [0.3, 0.6]
SLICES = ["country", "device"]
FEATURES = {"f_amount": "numeric", "f_age": "numeric", "f_channel": "categorical"}


@dataclass
class World:
    evaluation: pa.Table
    online: pa.Table
    offline: pa.Table
    outcomes: pa.Table


def draw(
    n: int,
    seed: int,
    *,
    base_rate: float = 0.14,
    id_offset: int = 0,
    calibration_shift: dict[str, float] | None = None,
    days: int | None = None,
    from_day: int = 0,
) -> dict[str, np.ndarray]:
    """``n`` rows: columns as numpy arrays (``label`` drawn from the calibrated score, plus
    ``calibration_shift[country]`` in that country: outcomes more often positive than the
    model says). ``days``: rows get a ``ts`` spread evenly over that many days from
    2026-11-01 (UTC), and the shift applies from day ``from_day`` on."""
    rng = np.random.default_rng(seed)
    country = rng.choice(len(COUNTRIES), size=n, p=COUNTRY_SHARES)
    device = rng.choice(len(DEVICES), size=n, p=DEVICE_SHARES)
    amount = rng.lognormal(3.0, 1.0, n)
    age = rng.normal(40, 12, n)
    channel = rng.choice(len(CHANNELS), size=n, p=[0.6, 0.3, 0.1])
    logit = (
        np.log(base_rate / (1 - base_rate))
        + 0.8 * rng.normal(size=n)
        + 0.3 * (np.log(amount) - 3.0)
        + 0.2 * (device == 1)
        + 0.05 * (country % 5 - 2)
    )
    score = 1 / (1 + np.exp(-logit))
    p_true = score.copy()
    day = np.zeros(n, dtype=np.int64)
    if days:
        day = rng.integers(0, days, n)
    if calibration_shift:
        for name, shift in calibration_shift.items():
            here = (country == COUNTRIES.index(name)) & (day >= from_day)
            p_true[here] = np.clip(p_true[here] + shift, 0, 1)
    label = (rng.random(n) < p_true).astype(np.int8)
    out = {
        "request_id": np.arange(id_offset, id_offset + n, dtype=np.int64),
        "country": np.array(COUNTRIES, dtype=object)[country],
        "device": np.array(DEVICES, dtype=object)[device],
        "f_amount": amount,
        "f_age": age,
        "f_channel": np.array(CHANNELS, dtype=object)[channel],
        "score": score,
        "label": label,
        "day": day,
    }
    if days:
        seconds = EPOCH + day * 86400 + rng.integers(0, 86400, n)
        out["ts"] = seconds.astype("datetime64[s]")
    return out


def world(
    online_rows: int,
    seed: int,
    *,
    eval_rows: int | None = None,
    skew: dict[str, float] | None = None,
    flip: dict[str, float] | None = None,
    label_missing: float = 0.0,
    **kw,
) -> World:
    # (``days``/``from_day`` pass to :func:`draw`; ``skew`` follows ``from_day`` too)
    """A baseline table and online, replay and outcome tables of ``online_rows`` rows.

    ``skew[country]``: the served score of that country's rows is raised by that much (a
    serving bug; the replay keeps the model's score). ``label_missing``: the share of online
    rows whose outcome never arrives (everywhere alike). ``flip[country]``: that share of the
    country's rows, among those within 0.05 of the first threshold, is served just across it
    (a decision-boundary bug: the decision flips, the score barely moves).
    """
    ev = draw(eval_rows or online_rows, seed * 2 + 1, id_offset=10**9)
    on = draw(online_rows, seed * 2 + 2, **kw)
    cols = ["request_id", "country", "device", "f_amount", "f_age", "f_channel", "score"]
    if "ts" in on:
        cols.append("ts")
    served = on["score"].copy()
    for name, shift in (skew or {}).items():
        here = (on["country"] == name) & (on["day"] >= kw.get("from_day", 0))
        served[here] = np.clip(served[here] + shift, 0, 1)
    flip_rng = np.random.default_rng(seed + 77)
    for name, share in (flip or {}).items():
        t = THRESHOLDS[0]
        near = np.flatnonzero((on["country"] == name) & (np.abs(served - t) < 0.05))
        here = flip_rng.choice(near, size=int(round(share * (on["country"] == name).sum())), replace=False)
        served[here] = np.where(served[here] >= t, t - 0.01, t + 0.01)
    keep = np.random.default_rng(seed + 99).random(online_rows) >= label_missing
    online = {k: on[k] for k in cols}
    online["score"] = served
    return World(
        evaluation=pa.table({k: ev[k] for k in cols[1:] + ["label"] if k != "ts"}),
        online=pa.table(online),
        offline=pa.table({"request_id": on["request_id"], "score": on["score"]}),
        outcomes=pa.table({"request_id": on["request_id"][keep], "label": on["label"][keep]}),
    )


def config(**kw):
    """The world's config (bootstrap and seed overridable)."""
    from engine.config import Config

    return Config(slices=SLICES, features=FEATURES, thresholds=THRESHOLDS, **kw)
