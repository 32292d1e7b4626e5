"""Errors the trainer reports to the user in one line (the entry point maps them to exit codes)."""


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or inconsistent (exit code 2, before any work)."""


class NonFiniteError(FloatingPointError):
    """The loss or gradient became NaN/inf and the config says to stop (nothing after it is saved)."""
