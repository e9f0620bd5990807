"""The exception hierarchy.

Every error a user can cause derives from :class:`ParityError`; the CLI turns these into
exit code 2 with the message alone (no traceback). Anything else that escapes is a bug
(exit code 3).
"""

from __future__ import annotations


class ParityError(Exception):
    """Base of every error caused by the user's input, configuration or environment."""


class ConfigError(ParityError):
    """A configuration value or command-line option is invalid."""


class SchemaError(ParityError):
    """An input file is missing, unreadable, or lacks a column of the expected type."""


class JoinError(ParityError):
    """The tables cannot be joined as asked (key absent, key types differ, ...)."""


class BackendUnavailableError(ParityError):
    """The requested compute backend cannot run here; the message says what is missing."""


class StatisticsError(ParityError):
    """Statistics cannot be merged or compared (different layouts, overflow)."""
