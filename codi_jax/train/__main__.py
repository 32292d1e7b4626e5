"""python -m codi_jax.train --config configs/<stage>.py[:variant] [--workdir DIR] [--config.key=value ...]

Exit codes: 0 finished or stopped cleanly by SIGTERM (checkpoint written); 2 bad flags or
config (one line on stderr, nothing started); 1 anything else, e.g. a non-finite loss
under config.nonfinite='stop'.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from codi_jax.train.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config: configs/<stage>.py[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, TensorBoard). Default: config.workdir.")


def _fail(message: str) -> None:
    print(f"codi_jax.train: {message}".replace("\n", " "), file=sys.stderr)
    sys.exit(2)


def _parse(argv):
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # flag syntax, unknown --config.key, wrong value type, unreadable config file
        _fail(f"bad flags: {e}")


def _quiet_libraries(record) -> bool:
    """Keep INFO lines from our code; libraries (orbax logs every save in detail) only from WARNING up."""
    return record.levelno >= 30 or "/codi_jax/" in record.pathname or "metric_writers" in record.pathname


def main(argv):
    logging.get_absl_handler().addFilter(_quiet_libraries)
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}")
    if _CONFIG.value is None:
        _fail("--config is required, e.g. --config configs/latent_align.py")
    from codi_jax.train import loop

    try:
        workdir = _WORKDIR.value or _CONFIG.value.workdir
    except (IOError, AttributeError, KeyError) as e:  # the config file failed to load or has no workdir
        _fail(f"cannot use the config: {e}")
    try:
        loop.train_and_evaluate(_CONFIG.value, workdir)
    except ConfigError as e:
        _fail(f"config error: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
