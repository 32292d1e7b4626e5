"""The error every entry point reports in one line with exit code 2: a bad config value or input."""


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or inconsistent (exit code 2, before any work)."""
