"""python -m codi_jax.train --config configs/<stage>.py[:variant] [--workdir DIR] [--config.key=value ...]

Exit codes: 0 finished or stopped cleanly by SIGTERM (checkpoint written); 2 bad flags or
config, including a checkpoint written by a config that shapes the state differently (one line
on stderr, nothing started); 1 anything else, e.g. a checkpoint that cannot be written, a
workdir with no readable checkpoint left, or a non-finite loss under config.nonfinite='stop'
(one line for these too).
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from codi_jax.train import validation
from codi_jax.train.defaults import load_config_file
from codi_jax.train.errors import CheckpointError, ConfigError, NonFiniteError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config: configs/<stage>.py[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, TensorBoard). Default: config.workdir.")


def _fail(message: str, code: int = 2) -> None:
    print(f"codi_jax.train: {message}".replace("\n", " "), file=sys.stderr)
    sys.exit(code)


def _unknown_override(argv) -> str | None:
    """The full path and a close match of an override naming no config key (ml_collections names
    only the last part of the path). The flag holds no config after a failed override, so the
    file is loaded again here."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None and "--config" in argv[:-1]:
        spec = argv[argv.index("--config") + 1]
    try:
        config = load_config_file(spec) if spec else None
    except Exception:  # the file itself does not load: absl's message says why
        return None
    overrides = [arg[len("--config."):].split("=", 1)[0] for arg in argv if arg.startswith("--config.")]
    messages = [validation.unknown_path(config, path) for path in overrides] if config is not None else []
    return next((m for m in messages if m), None)


def _parse(argv):
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # flag syntax, unknown --config.key, wrong value type, unreadable config file
        _fail(_unknown_override(argv) or f"bad flags: {e}")


def _quiet_libraries(record) -> bool:
    """Keep INFO lines from our code; libraries (orbax logs every save in detail) only from WARNING up,
    and without tracebacks: a failure the trainer handles ends in its own one-line message."""
    ours = "/codi_jax/" in record.pathname or "metric_writers" in record.pathname
    if not ours:
        record.exc_info, record.exc_text = None, None
    return record.levelno >= 30 or ours


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
    except (CheckpointError, NonFiniteError) as e:
        _fail(str(e), code=1)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
