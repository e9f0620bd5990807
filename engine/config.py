"""The configuration: column names, slices, features, thresholds, tolerances, owners.

A configuration file is YAML, validated strictly by the pydantic models below: an unknown
key is an error (with the closest valid key suggested), and every error becomes a
:class:`~engine.errors.ConfigError` whose one-paragraph message names the file, the key path
and the bad value, in the style::

    The 'metrics.auc.tolerance' option in config.yaml must be a number >= 0. Got 'abc' instead.

Every option has a default, so an empty file (or no file) is a valid configuration. The JSON
Schema of the file is published as ``docs/config.schema.json`` (regenerate it with
``scripts/write_config_schema``).

Example
-------
.. code-block:: yaml

    columns:
      online: {key: [request_id], ts: ts, score: score}
      outcomes: {label: clicked}
    slices: [country, device]
    crosses: [[country, device]]
    features: {age: numeric, region: categorical}
    thresholds: [0.3, 0.5]
    window: 1d
    metrics:
      auc: {tolerance: 0.03}
      psi: {enabled: false}
    owners: {country: growth-team, auc: ranking-team}

``owners`` also takes a list of routing rules, tried in order (the first match wins)::

    owners:
      - {match: {slice: "country=BR"}, owner: risk-latam, escalation: page}
      - {match: {metric: flip_rate}, owner: ml-platform, escalation: ticket}
      - {match: {slice: country, cause: data_quality}, owner: data-eng}
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import replace
from os import PathLike
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine.catalogue import CAUSES, METRICS, MetricSpec
from engine.errors import ConfigError

__all__ = [
    "Columns",
    "Config",
    "EvaluationColumns",
    "MetricOverride",
    "NotifySettings",
    "OfflineColumns",
    "OwnerMatch",
    "OwnerRule",
    "OnlineColumns",
    "OutcomesColumns",
    "config_json_schema",
    "load_config",
    "parse_duration",
    "refuse_label_horizon_without_windows",
]

# --------------------------------------------------------------------------------------
# Field types. Each carries the phrase its error message uses ("must be ..."): a wrap
# validator replaces pydantic's message with it, so every failure of the field (wrong type,
# out of range, NaN) reads the same way and names what is expected.
# --------------------------------------------------------------------------------------

_ERROR_TYPE = "parity_requirement"


def _requires(phrase: str) -> WrapValidator:
    """A validator that reports any failure of the wrapped type as ``must be <phrase>``."""

    def wrap(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(_ERROR_TYPE, "must be " + phrase) from None

    return WrapValidator(wrap)


def _as_list(value: Any) -> Any:
    """Accept a single column name where a list of names is expected."""
    return [value] if isinstance(value, str) else value


_DURATION_RE = re.compile(r"(\d+)([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PHRASE = "a duration such as '15m', '1h', '1d' or '1h30m' (units s, m, h, d, w)"


def _duration_seconds(text: str) -> int:
    """Parse a duration; ``ValueError`` when it is not one (see :func:`parse_duration`)."""
    s = text.strip().lower() if isinstance(text, str) else ""
    if not s or _DURATION_RE.sub("", s):
        raise ValueError(text)
    seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_RE.findall(s))
    if seconds <= 0:
        raise ValueError(text)
    return seconds


def _check_duration(value: str) -> str:
    _duration_seconds(value)
    return value.strip()


ColumnName = Annotated[
    str, Strict(), Field(min_length=1), _requires("a column name (a non-empty string)")
]
KeyColumns = Annotated[
    list[ColumnName],
    Field(min_length=1),
    _requires("a column name or a non-empty list of column names"),
    BeforeValidator(
        _as_list,
        json_schema_input_type=Union[
            ColumnName, Annotated[list[ColumnName], Field(min_length=1)]
        ],
    ),
]
NonNegFloat = Annotated[
    float, Strict(), Field(ge=0, allow_inf_nan=False), _requires("a number >= 0")
]
NonNegInt = Annotated[int, Strict(), Field(ge=0), _requires("an integer >= 0")]
Threshold = Annotated[
    float, Strict(), Field(gt=0, le=1, allow_inf_nan=False), _requires("a number in (0, 1]")
]
FeatureKind = Annotated[
    Literal["numeric", "categorical"], _requires("'numeric' or 'categorical'")
]
Duration = Annotated[
    str,
    Strict(),
    Field(pattern=r"^\s*(\d+[smhdwSMHDW])+\s*$"),
    AfterValidator(_check_duration),
    _requires(_DURATION_PHRASE),
]
MemorySize = Annotated[
    str,
    Strict(),
    Field(pattern=r"^\s*\d+(\.\d+)?\s*([KMGTkmgt]i?[Bb]|[Bb])\s*$"),
    AfterValidator(str.strip),
    _requires("a memory size such as '4GB' or '512MiB'"),
]
MetricName = Literal[tuple(METRICS)]  # type: ignore[valid-type]
ToleranceKindField = Annotated[
    Literal["absolute", "relative", "floor"], _requires("'absolute', 'relative' or 'floor'")
]
BadField = Annotated[
    Literal["increase", "decrease", "either"], _requires("'increase', 'decrease' or 'either'")
]
StrictBool = Annotated[bool, Strict(), _requires("true or false")]
OwnerText = Annotated[str, Strict(), Field(min_length=1), _requires("a non-empty string")]
SliceSelector = Annotated[
    str,
    Strict(),
    Field(pattern=r"^[^=]+(=.*)?$"),
    _requires("a slice column or COLUMN=VALUE (e.g. 'country' or 'country=BR')"),
]
CauseName = Annotated[Literal[tuple(CAUSES)], _requires("one of " + ", ".join(CAUSES))]  # type: ignore[valid-type]
Seconds = Annotated[
    float, Strict(), Field(gt=0, allow_inf_nan=False), _requires("a number of seconds > 0")
]


class _Model(BaseModel):
    """Base of every configuration model: unknown keys are errors, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------
# Columns
# --------------------------------------------------------------------------------------


class EvaluationColumns(_Model):
    """Columns of the evaluation table, which builds the baseline."""

    score: ColumnName = Field("score", description="Model score, a probability in [0, 1].")
    label: ColumnName = Field("label", description="Outcome, 0 or 1.")
    weight: ColumnName | None = Field(
        None,
        description="Optional sample weight (e.g. for downsampled negatives); "
        "never used unless named.",
    )
    value: ColumnName | None = Field(
        "value",
        description="Optional business value per row (value_per_row); used when the "
        "table has it, null to ignore it.",
    )


class OnlineColumns(_Model):
    """Columns of the online log: what production served."""

    key: KeyColumns = Field(
        ["request_id"],
        description="The join key: one column, or a list of columns for a composite key.",
    )
    ts: ColumnName | None = Field(
        "ts", description="Serving timestamp; needed for time windows."
    )
    score: ColumnName = Field("score", description="The score served online.")
    model_version: ColumnName | None = Field(
        "model_version",
        description="Model version; when the table has it, it is always a slice.",
    )
    label: ColumnName | None = Field(
        None,
        description="The outcome, when the online log already carries it (no join).",
    )
    offline_score: ColumnName | None = Field(
        None,
        description="The offline (replay) score, when the online log already carries it.",
    )

    @field_validator("key")
    @classmethod
    def _unique_key(cls, key: list[str]) -> list[str]:
        if len(set(key)) != len(key):
            raise PydanticCustomError(
                _ERROR_TYPE, "must be a list of different column names"
            )
        return key


class OfflineColumns(_Model):
    """Columns of the offline replay: the same requests re-scored offline."""

    key: KeyColumns | None = Field(
        None, description="The join key; null means the same columns as the online key."
    )
    score: ColumnName = Field("score", description="The offline score.")


class OutcomesColumns(_Model):
    """Columns of the outcomes table: labels that arrived later."""

    key: KeyColumns | None = Field(
        None, description="The join key; null means the same columns as the online key."
    )
    label: ColumnName = Field("label", description="The outcome, 0 or 1.")
    value: ColumnName | None = Field(
        "value",
        description="Optional business value; used when the table has it, null to ignore.",
    )
    ts: ColumnName | None = Field(
        "ts",
        description="Optional arrival time of the outcome; used when the table has it.",
    )


class Columns(_Model):
    """Column names, per table (DESIGN §2)."""

    evaluation: EvaluationColumns = Field(default_factory=EvaluationColumns)
    online: OnlineColumns = Field(default_factory=OnlineColumns)
    offline: OfflineColumns = Field(default_factory=OfflineColumns)
    outcomes: OutcomesColumns = Field(default_factory=OutcomesColumns)

    def key(self, table: Literal["online", "offline", "outcomes"]) -> list[str]:
        """The key columns of ``table``, with the online key as the default.

        Parameters
        ----------
        table : {"online", "offline", "outcomes"}

        Returns
        -------
        list of str
        """
        if table not in ("online", "offline", "outcomes"):
            raise ValueError(
                "The 'table' parameter of Columns.key must be 'online', 'offline' or "
                f"'outcomes'. Got {table!r} instead."
            )
        own = getattr(self, table).key
        return list(own if own is not None else self.online.key)


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


class MetricOverride(_Model):
    """Overrides of one metric's catalogue defaults; unset fields keep the default."""

    tolerance: NonNegFloat | None = Field(
        None, description="Tolerance value (margin, fraction, or floor); see tolerance_kind."
    )
    tolerance_kind: ToleranceKindField | None = Field(
        None,
        description="absolute: a margin on the difference; relative: a fraction of "
        "|expected|; floor: a bound on the value itself.",
    )
    bad: BadField | None = Field(None, description="The direction of change that is bad.")
    min_rows: NonNegInt | None = Field(
        None, description="Minimum denominator below which the status is insufficient_data."
    )
    min_events: NonNegInt | None = Field(
        None, description="Minimum rows of each class (AUC, precision, recall)."
    )
    min_margin: NonNegFloat | None = Field(
        None,
        description="The smallest margin of a relative tolerance, in the metric's units "
        "(a floor under 10% of a near-zero rate).",
    )
    enabled: StrictBool = Field(True, description="Compute and report this metric at all.")


# --------------------------------------------------------------------------------------
# Owners and notifications
# --------------------------------------------------------------------------------------


class OwnerMatch(_Model):
    """What an owners rule matches; every condition given must hold."""

    slice: SliceSelector | None = Field(
        None,
        description="A slice column ('country': any slice on it, crosses included) or "
        "COLUMN=VALUE ('country=BR'). Never matches the whole population.",
    )
    metric: MetricName | None = Field(  # type: ignore[valid-type]
        None, description="A metric (canonical name) among the incident's metrics."
    )
    cause: CauseName | None = Field(None, description="The incident's cause.")

    @model_validator(mode="after")
    def _not_empty(self) -> OwnerMatch:
        if self.slice is None and self.metric is None and self.cause is None:
            raise PydanticCustomError(
                _ERROR_TYPE, "must name at least one of slice, metric, cause"
            )
        return self


class OwnerRule(_Model):
    """One routing rule: incidents that match go to ``owner`` at ``escalation``."""

    match: OwnerMatch = Field(description="The conditions (slice, metric, cause).")
    owner: OwnerText = Field(description="Owner or team (free text).")
    escalation: OwnerText | None = Field(
        None,
        description="Escalation level passed on to the notification (free text, e.g. "
        "'page', 'ticket', 'email').",
    )


def _owners_form(value: Any) -> str:
    return "rules" if isinstance(value, list) else "map"


OwnersField = Annotated[
    Union[
        Annotated[dict[ColumnName, OwnerText], Tag("map")],
        Annotated[list[OwnerRule], Tag("rules")],
    ],
    Discriminator(_owners_form),
]


class NotifySettings(_Model):
    """How ``--notify`` delivers incidents to a webhook."""

    timeout: Seconds = Field(5.0, description="Seconds one attempt may take (connect and reply).")
    retries: NonNegInt = Field(
        3, description="Attempts after the first, on a 5xx/429 reply or a connection error."
    )
    backoff: Seconds = Field(
        0.5, description="Seconds before the first retry; doubled before each next one."
    )
    deadline: Seconds = Field(
        60.0,
        description="Seconds all deliveries of one run may take together; incidents not "
        "delivered by then are recorded as failed.",
    )


# --------------------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------------------


class Config(_Model):
    """The whole configuration of a run. Every option has a default.

    Build one with :func:`load_config` (from YAML), :meth:`from_dict`, or ``Config()``
    for the defaults; apply command-line options with :meth:`with_overrides`.
    """

    columns: Columns = Field(default_factory=Columns, description="Column names per table.")
    slices: Annotated[list[ColumnName], _requires("a list of column names")] = Field(
        default_factory=list,
        description="Slice columns; every metric is computed per value of each "
        "(duplicates are dropped).",
    )
    crosses: list[
        Annotated[
            tuple[ColumnName, ColumnName],
            _requires("a pair of two slice column names"),
        ]
    ] = Field(
        default_factory=list,
        description="Pairs of slice columns also sliced jointly (e.g. [country, device]).",
    )
    features: dict[ColumnName, FeatureKind] = Field(
        default_factory=dict,
        description="Feature columns checked for drift, each 'numeric' or 'categorical'.",
    )
    thresholds: list[Threshold] = Field(
        default_factory=lambda: [0.5],
        description="Decision thresholds in (0, 1]; a decision is score >= t. Sorted and "
        "de-duplicated on load.",
    )
    top_k: Annotated[int, Strict(), Field(ge=1), _requires("an integer >= 1")] = Field(
        100, description="Categorical values kept per column; the rest fold into __other__."
    )
    score_bins: Annotated[int, Strict(), Field(ge=16), _requires("an integer >= 16")] = (
        Field(1024, description="Fine score bins (baseline quantiles plus thresholds).")
    )
    bootstrap: NonNegInt = Field(
        1000, description="Bootstrap replicates; 0 computes no intervals."
    )
    bootstrap_unit: ColumnName | None = Field(
        None,
        description="A column of the online log naming the unit whose rows are correlated "
        "(a user id, a session): the online side's bootstrap resamples units, all rows of a "
        "unit together (unit-level Poisson bootstrap), instead of rows. Its cost is rows x "
        "replicates; null: the cell-level (row-level) bootstrap.",
    )
    ci_level: Annotated[
        float,
        Strict(),
        Field(ge=0.5, le=0.999, allow_inf_nan=False),
        _requires("a number in [0.5, 0.999]"),
    ] = Field(0.95, description="Confidence level of the intervals.")
    fdr_q: Annotated[
        float,
        Strict(),
        Field(gt=0, le=1, allow_inf_nan=False),
        _requires("a number in (0, 1]"),
    ] = Field(0.05, description="Benjamini-Hochberg false discovery rate within each metric's family of tests.")
    max_atoms: Annotated[int, Strict(), Field(ge=0), _requires("an integer >= 0")] = Field(
        1024,
        description="Most cells of the cross of the slice columns (the atoms localisation "
        "derives 'slice S without slice S'' from); past it, the columns with the most values "
        "are left out of the cross. 0: no atoms.",
    )
    max_invalid_share: Annotated[
        float,
        Strict(),
        Field(ge=0, le=1, allow_inf_nan=False),
        _requires("a number in [0, 1]"),
    ] = Field(
        0.01,
        description="The largest share of evaluation rows with an invalid score (outside [0, 1], "
        "NaN) or label (not 0/1, missing) a baseline accepts; they are excluded and counted.",
    )
    seed: Annotated[
        int, Strict(), Field(ge=0, lt=2**63), _requires("an integer in [0, 2**63)")
    ] = Field(0, description="Seed of the bootstrap's counter-based generator.")
    batch_size: Annotated[int, Strict(), Field(ge=1), _requires("an integer >= 1")] = Field(
        1 << 20, description="Rows per streamed batch."
    )
    metrics: dict[MetricName, MetricOverride] = Field(
        default_factory=dict,
        description="Per-metric overrides of the catalogue defaults, by canonical name.",
    )
    owners: OwnersField = Field(
        default_factory=dict,
        description="Who owns an incident: a mapping of slice column or metric to owner "
        "(free text), or a list of rules {match: {slice, metric, cause}, owner, escalation} "
        "tried in order (the first match wins).",
    )
    notify: NotifySettings = Field(
        default_factory=NotifySettings,
        description="Timeouts and retries of the --notify webhook delivery.",
    )
    window: Duration | None = Field(
        None, description="Time window (e.g. '1h', '1d'); windows are aligned to the epoch."
    )
    label_horizon: Duration | None = Field(
        None, description="How long outcomes may take to arrive (e.g. '7d')."
    )
    partition_rows: Annotated[int, Strict(), Field(ge=1), _requires("an integer >= 1")] = Field(
        2_000_000,
        description=(
            "Online rows per key bucket when a check is partitioned (on Dask, or with a "
            "checkpoint); a bucket's rows are held in memory by the worker that joins it."
        ),
    )
    partition_column: ColumnName | None = Field(
        None,
        description=(
            "A hive partition column (e.g. 'date' of date=... folders) that every input is "
            "partitioned by, with each key's rows under one value of it in every table. A "
            "partitioned run (on Dask, or with a checkpoint) then joins the tables value by "
            "value, without splitting them by key; a checkpoint recomputes only the values "
            "whose files changed."
        ),
    )
    duckdb_memory_limit: MemorySize = Field(
        "4GB", description="DuckDB memory limit for joins (they spill to disk beyond it)."
    )

    # -- validation ---------------------------------------------------------------------

    @field_validator("slices")
    @classmethod
    def _dedupe_slices(cls, slices: list[str]) -> list[str]:
        return list(dict.fromkeys(slices))

    @field_validator("thresholds")
    @classmethod
    def _sort_thresholds(cls, thresholds: list[float]) -> list[float]:
        return sorted(set(thresholds))

    @model_validator(mode="after")
    def _check_cross_references(self) -> Config:
        allowed = list(self.slices)
        if self.columns.online.model_version is not None:
            allowed.append(self.columns.online.model_version)
        seen: list[tuple[str, str]] = []
        for i, (a, b) in enumerate(self.crosses):
            bad = [c for c in (a, b) if c not in allowed]
            if bad:
                names = ", ".join(self.slices) if self.slices else "none configured"
                raise _located(
                    ("crosses", i),
                    f"must be a pair of slice columns, but '{bad[0]}' is not a slice "
                    f"column (slices: {names})",
                    [a, b],
                )
            if a == b:
                raise _located(
                    ("crosses", i), "must be a pair of two different columns", [a, b]
                )
            if (a, b) in seen or (b, a) in seen:
                raise _located(("crosses", i), "must not repeat an earlier cross", [a, b])
            seen.append((a, b))
        for name, override in self.metrics.items():
            kind = override.tolerance_kind or METRICS[name].tolerance_kind
            bad = override.bad or METRICS[name].bad
            if kind == "floor" and bad == "either":
                raise _located(
                    ("metrics", name, "bad"),
                    "must be 'increase' (a ceiling) or 'decrease' (a floor) with a "
                    "'floor' tolerance",
                    bad,
                )
        return self

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str | None = None) -> Config:
        """Validate a mapping of options (as read from YAML).

        Parameters
        ----------
        data : mapping or None
            ``None`` (an empty file) means all defaults.
        source : str, optional
            Where the options came from (a file name), for error messages.

        Returns
        -------
        Config

        Raises
        ------
        ConfigError
            With a one-paragraph message naming the source, the key path and the value.
        """
        where = f" in {source}" if source else ""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"The configuration{where} must be a mapping of options (key: value). "
                f"Got {_show(data)} instead."
            )
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(_format_errors(exc, where)) from None

    def with_overrides(self, **overrides: Any) -> Config:
        """A validated copy with some options replaced (e.g. from the command line).

        Parameters
        ----------
        **overrides
            Option names and values. ``None`` values are ignored. A nested option is named
            by a dotted path or with double underscores
            (``**{"columns.online.score": "s"}`` or ``columns__online__score="s"``).
            A mapping given for a mapping option is merged into it, recursively
            (``metrics={"auc": {"tolerance": 0.05}}`` keeps the other metric overrides);
            any other value (lists included) replaces the old one.

        Returns
        -------
        Config

        Raises
        ------
        ConfigError
            When an option is unknown or a value is invalid.
        """
        data = self.model_dump(mode="python")
        for name, value in overrides.items():
            if value is None:
                continue
            path = name.replace("__", ".").split(".")
            node = data
            for part in path[:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            leaf = path[-1]
            if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
                node[leaf] = _deep_merge(node[leaf], value)
            else:
                node[leaf] = value
        return Config.from_dict(data)

    # -- reading ------------------------------------------------------------------------

    def resolved_metric(self, name: str) -> MetricSpec:
        """The catalogue's :class:`MetricSpec` of ``name`` with this config's overrides.

        Parameters
        ----------
        name : str
            A canonical metric name.

        Returns
        -------
        MetricSpec

        Raises
        ------
        ConfigError
            When ``name`` is not a metric of the catalogue.
        """
        if name not in METRICS:
            raise ConfigError(
                f"The metric {_show(name)} is not a known metric.{_did_you_mean(name, METRICS)}"
                f" Valid metrics: {', '.join(METRICS)}."
            )
        override = self.metrics.get(name)
        return METRICS[name] if override is None else _merge(METRICS[name], override)

    def resolved_metrics(self) -> dict[str, MetricSpec]:
        """Every metric of the catalogue, resolved, in catalogue order (disabled ones too)."""
        return {name: self.resolved_metric(name) for name in METRICS}

    @property
    def window_seconds(self) -> int | None:
        """The window in seconds, or ``None`` for the whole period."""
        return None if self.window is None else _duration_seconds(self.window)

    @property
    def label_horizon_seconds(self) -> int | None:
        """The label horizon in seconds, or ``None`` when not set."""
        return None if self.label_horizon is None else _duration_seconds(self.label_horizon)

    def config_hash(self) -> str:
        """A short, stable fingerprint of the effective configuration.

        Returns
        -------
        str
            The first 16 hex digits of the SHA-256 of the canonical JSON of
            ``model_dump(mode="json")`` (sorted keys, no whitespace). Defaults are included,
            so two files that differ only by spelling out a default hash the same.
        """
        text = json.dumps(
            self.model_dump(mode="json"),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def to_yaml(self) -> str:
        """The effective configuration as YAML that :func:`load_config` reads back."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------


def parse_duration(text: str) -> int:
    """Parse a duration such as ``"15m"``, ``"1h"``, ``"1d"`` or ``"1h30m"`` into seconds.

    Parameters
    ----------
    text : str
        One or more ``<integer><unit>`` groups; units ``s``, ``m``, ``h``, ``d``, ``w``
        (case-insensitive). Months and years are not durations (their length varies).

    Returns
    -------
    int
        Seconds, > 0.

    Raises
    ------
    ConfigError
        When ``text`` is not a positive duration.
    """
    try:
        return _duration_seconds(text)
    except ValueError:
        raise ConfigError(
            f"The duration must be {_DURATION_PHRASE}. Got {_show(text)} instead."
        ) from None


def load_config(path: str | PathLike[str]) -> Config:
    """Read and validate a YAML configuration file.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        When the file is missing or unreadable, is not valid YAML (duplicate keys
        included), or holds an invalid option. The message is one paragraph naming the
        file, the key path and the bad value.
    """
    name = str(path)
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"The configuration file {name} does not exist.")
    if p.is_dir():
        raise ConfigError(f"The configuration file {name} is a directory, not a file.")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"The configuration file {name} cannot be read: {exc}.") from None
    try:
        data = yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(
            f"The configuration file {name} is not valid YAML: {_yaml_problem(exc)}."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"The configuration file {name} is not valid YAML: {exc}."
        ) from None
    return Config.from_dict(data, source=name)


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file (draft 2020-12).

    Returns
    -------
    dict
        What ``scripts/write_config_schema`` writes to ``docs/config.schema.json``.
    """
    schema = Config.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://parity.invalid/config.schema.json",
        **schema,
        "title": "parity configuration",
    }


# --------------------------------------------------------------------------------------
# Internals: merging, YAML, error messages
# --------------------------------------------------------------------------------------


def _merge(spec: MetricSpec, override: MetricOverride) -> MetricSpec:
    changes = {
        k: v
        for k, v in override.model_dump(exclude_unset=False).items()
        if v is not None and k != "enabled"
    }
    return replace(spec, enabled=override.enabled, **changes)


def _deep_merge(old: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(old)
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


class _StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate keys (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key; the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictSafeLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictSafeLoader.construct_mapping
)


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{exc.problem or exc.context or 'syntax error'}{where}"


def _show(value: Any) -> str:
    """A short, readable rendering of a bad value for an error message."""
    if isinstance(value, str):
        text = f"'{value}'"
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _untagged(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The location without the union tag of a two-form option (``owners``: map or rules)."""
    if len(loc) >= 2 and loc[0] == "owners" and loc[1] in ("map", "rules"):
        return loc[:1] + loc[2:]
    return loc


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _did_you_mean(word: str, options: Any) -> str:
    """``" Did you mean 'x'?"`` for the closest of ``options``, or ``""``."""
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _located(loc: tuple[Any, ...], requirement: str, value: Any) -> PydanticCustomError:
    """An error raised by a model-level validator, which cannot set a location itself.

    The location and the bad value travel in the error's context; :func:`_format_error`
    puts them back. ``requirement`` is the full phrase, e.g. ``"must be ..."``.
    """
    return PydanticCustomError(_ERROR_TYPE, requirement, {"loc": loc, "value": value})


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated`` and ``Optional`` from a type annotation."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, UnionType):
            args = [a for a in get_args(tp) if a is not NoneType]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _type_at(loc: tuple[Any, ...]) -> Any:
    """The (unwrapped) annotation at an error location, or ``None`` when unknown."""
    tp: Any = Config
    for part in loc:
        tp = _unwrap(tp)
        if get_origin(tp) in (Union, UnionType):  # a two-form option: the form the part indexes
            forms = [_unwrap(a) for a in get_args(tp)]
            want = list if isinstance(part, int) else dict
            tp = next((f for f in forms if get_origin(f) is want), forms[0])
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) is dict:
            key_tp, value_tp = get_args(tp)
            tp = key_tp if part == "[key]" else value_tp
        elif get_origin(tp) in (list, tuple) and isinstance(part, int):
            args = get_args(tp)
            tp = args[0] if get_origin(tp) is list else args[min(part, len(args) - 1)]
        else:
            return None
    return _unwrap(tp)


def _model_fields_at(loc: tuple[Any, ...]) -> list[str] | None:
    tp = _type_at(loc)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return None


_GENERIC = {
    "dict_type": "must be a mapping (key: value)",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "missing": "is required",
}


def _format_error(err: Mapping[str, Any], where: str) -> str:
    loc = _untagged(tuple(err["loc"]))
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if "loc" in ctx:  # from _located
        loc, value = tuple(ctx["loc"]), ctx["value"]
    kind = err["type"]

    if kind == "extra_forbidden":
        valid = _model_fields_at(loc[:-1]) or []
        hint = _did_you_mean(loc[-1], valid)
        return (
            f"The '{_path(loc)}' option{where} is not a known option.{hint} "
            f"Valid options{' of ' + repr(_path(loc[:-1])) if loc[:-1] else ''}: "
            f"{', '.join(valid)}."
        )
    if loc and loc[-1] == "[key]":  # a bad key of a mapping
        parent = loc[:-2]
        key = loc[-2]
        if parent == ("metrics",):
            return (
                f"The '{_path(parent)}' option{where} names an unknown metric "
                f"{_show(key)}.{_did_you_mean(key, METRICS)} Valid metrics: "
                f"{', '.join(METRICS)}."
            )
        return (
            f"The '{_path(parent)}' option{where} has an invalid key {_show(key)}: it "
            f"{err['msg'] if kind == _ERROR_TYPE else _generic(err)}."
        )
    if loc == ("owners",) and kind == "dict_type":
        return (
            f"The 'owners' option{where} must be a mapping (slice column or metric: owner) or a "
            f"list of rules ({{match: {{slice, metric, cause}}, owner, escalation}}). "
            f"Got {_show(value)} instead."
        )
    if kind == "model_type" or kind == "model_attributes_type":
        fields = _model_fields_at(loc) or []
        requirement = f"must be a mapping with the options {', '.join(fields)}"
    elif kind == _ERROR_TYPE:
        requirement = err["msg"]
    else:
        requirement = _generic(err)
    if kind == "missing":
        return f"The '{_path(loc)}' option{where} {requirement}."
    return f"The '{_path(loc)}' option{where} {requirement}. Got {_show(value)} instead."


def _generic(err: Mapping[str, Any]) -> str:
    if err["type"] in _GENERIC:
        return _GENERIC[err["type"]]
    msg = str(err["msg"])
    if msg.startswith("Input should be "):
        return "must be " + msg[len("Input should be "):]
    if msg.startswith("Value error, "):
        return "is invalid: " + msg[len("Value error, "):]
    return "is invalid: " + msg[0].lower() + msg[1:]


def _format_errors(exc: ValidationError, where: str) -> str:
    errors = exc.errors(include_url=False)
    sentences = list(dict.fromkeys(_format_error(e, where) for e in errors))
    head = " ".join(sentences[:3])
    if len(sentences) > 3:
        head += f" ({len(sentences) - 3} more problems not shown.)"
    return head


def refuse_label_horizon_without_windows(cfg: Config, window: str | None, source: str) -> None:
    """Refuse a ``label_horizon`` that would be accepted and do nothing.

    The horizon only says which windows are too young to be judged on label-based metrics;
    without windows (no ``window`` option, no ``--window``) nothing reads it.

    Parameters
    ----------
    cfg : Config
        The effective configuration.
    window : str or None
        The window given apart from the configuration (``--window``), if any.
    source : str
        Where the configuration came from, for the message (e.g. ``"c.yaml"``).

    Raises
    ------
    ConfigError
        When ``label_horizon`` is set and windows are off.
    """
    if cfg.label_horizon is None or window or cfg.window:
        return
    raise ConfigError(
        f"The 'label_horizon' option in {source} does nothing without time windows (got "
        f"{cfg.label_horizon!r}): it says how long outcomes take to arrive, so that windows "
        "younger than it are not judged on label-based metrics, and no window is set (no "
        "'--window', no 'window' option). Remove 'label_horizon', or set a window."
    )
