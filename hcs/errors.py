"""Errors a user can cause. Each says what was wrong, where, and what to do."""


class HcsError(Exception):
    """Base class for errors reported to users (CLI exits non-zero with the message)."""


class ConfigError(HcsError):
    """A configuration, profile or input file is invalid."""


class QuantityError(HcsError, ValueError):
    """A Kubernetes quantity string could not be parsed."""
