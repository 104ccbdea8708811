"""Errors a user can cause. The CLI prints their message (no traceback unless INSPO_DEBUG=1) and exits with 2."""


class InspoError(Exception):
    """Base of user-facing errors: bad data rows, bad config, missing files."""


class ConfigError(InspoError, ValueError):
    """An invalid or inconsistent configuration value."""


class DataError(InspoError, ValueError):
    """A bad data file or row; the message names the file, the row(s) and the field."""


class ModelSourceError(InspoError, ValueError):
    """A model name that cannot be resolved to weights (missing file, missing package)."""
