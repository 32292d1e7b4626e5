"""Errors the trainer reports to the user in one line (the entry point maps them to exit codes)."""
from codi_jax.errors import ConfigError  # noqa: F401  (the trainer's exit-2 error is everyone's)


class NonFiniteError(FloatingPointError):
    """The loss or gradient became NaN/inf and the config says to stop, or a state about to be saved
    holds NaN/inf (nothing after it is saved; exit code 1)."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written (read-only or full disk, a failed background write), or the
    workdir holds checkpoints none of which reads back intact (exit code 1)."""
