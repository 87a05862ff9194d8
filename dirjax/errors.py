"""Errors a user can cause. The CLI prints `error: <message>` on one line and exits 1."""


class DirjaxError(Exception):
    """Base class: anything a user can fix (bad input, missing file or package)."""


class UnknownSourceError(DirjaxError):
    """A model source that is neither a known alias, a Hub id, a local directory nor a .gguf."""


class MissingPackageError(DirjaxError):
    """An optional package (offline weights, `datasets`) is not installed."""


class WeightsError(DirjaxError):
    """A checkpoint that cannot be read: pickle `.bin`, corrupt file, mismatched shapes."""


class ConfigError(DirjaxError):
    """A bad configuration value (unknown field, rate that leaves k < 1, ...)."""


class DataError(DirjaxError):
    """Missing or malformed data: evaluation files, NaN/Inf in a table, empty table."""
