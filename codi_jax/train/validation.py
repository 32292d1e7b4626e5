"""Start-up checks of a training config: every problem is one line, raised before any work.

The trainer's own keys are typed here; the stage checks its sections (`model`, `data`,
`objectives`, ...) when it is built. Sections listed in `OPEN_SECTIONS` belong to the stage.
"""
from __future__ import annotations

import difflib
import math

import ml_collections

from codi_jax.models.attention import IMPLS as ATTN_IMPLS
from codi_jax.parallel.mesh import AXES as MESH_AXES
from codi_jax.parallel.partitioning import check_rules
from codi_jax.train.errors import ConfigError

_NUMBER = (int, float)

TRAINER_KEYS: dict[str, type | tuple] = {
    "stage": str,
    "total_steps": int,
    "batch_size": int,
    "seed": int,
    "log_every_steps": int,
    "checkpoint_every_steps": int,
    "sample_every_steps": int,
    "keep_checkpoints": int,
    "async_checkpoints": bool,
    "grad_accum_steps": int,
    "ema_decay": _NUMBER,
    "nonfinite": str,
    "dtype": str,
    "remat_policy": str,
    "attn_impl": str,
    "tensorboard": bool,
    "workdir": str,
    "init_from_ema": bool,
    "sharding_rules": (tuple, list),
    "prerequisites": (tuple, list),
    "showcase": (tuple, list),
}
SECTIONS: dict[str, dict[str, type | tuple]] = {
    "optim": {
        "learning_rate": _NUMBER, "warmup_steps": int, "schedule": str, "end_learning_rate_factor": _NUMBER,
        "b1": _NUMBER, "b2": _NUMBER, "eps": _NUMBER, "weight_decay": _NUMBER, "grad_clip_norm": _NUMBER,
    },
    "distributed": {"initialize": bool, "coordinator_address": str, "num_processes": int, "process_id": int},
}
# Checked by make_mesh (axes) and by the stage (contents).
OPEN_SECTIONS = ("mesh", "model", "data", "init_from", "objectives", "losses", "probe")
CHOICES = {
    "nonfinite": ("skip", "stop"),
    "dtype": ("float32", "bfloat16"),
    "attn_impl": ATTN_IMPLS,
}


def _check_type(where: str, value, expected) -> None:
    expected = expected if isinstance(expected, tuple) else (expected,)
    ok = isinstance(value, expected) and not (isinstance(value, bool) and bool not in expected)
    if not ok:
        names = " or ".join(t.__name__ for t in expected)
        raise ConfigError(f"config.{where} must be {names}, got {type(value).__name__} {value!r}")


def unknown_key_message(section: str, key: str, known) -> str:
    """'unknown config key model.unet_image.chanels; did you mean model.unet_image.channels?'"""
    prefix = f"{section}." if section else ""
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean {prefix}{close[0]}?" if close else f"known keys there: {sorted(known)}"
    return f"unknown config key {prefix}{key}; {hint}"


def unknown_path(config, path: str) -> str | None:
    """The unknown_key_message of the first part of a dotted `path` that `config` lacks, or None."""
    node, parts = config, path.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, (dict, ml_collections.ConfigDict)):
            return None
        if part not in node:
            return unknown_key_message(".".join(parts[:i]), part, node.keys())
        node = node[part]
    return None


def _check_keys(where: str, section, schema: dict, extra: tuple = ()) -> None:
    for key, value in section.items():
        if key in extra:
            continue
        if key not in schema:
            raise ConfigError(unknown_key_message(where.rstrip("."), key, list(schema) + list(extra)))
        _check_type(where + key, value, schema[key])
    missing = [k for k in schema if k not in section]
    if missing:
        raise ConfigError(f"config {where or 'top level'} is missing keys {missing}")


def check(config: ml_collections.ConfigDict, *, stage_keys: dict | None = None) -> None:
    """Types, known keys and value ranges of the trainer's part of the config."""
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"the config file must return an ml_collections.ConfigDict, got {type(config).__name__}")
    schema = dict(TRAINER_KEYS, **(stage_keys or {}))
    _check_keys("", config, schema, extra=tuple(SECTIONS) + OPEN_SECTIONS)
    for name, section_schema in SECTIONS.items():
        if name not in config:
            raise ConfigError(f"config.{name} is missing")
        _check_keys(f"{name}.", config[name], section_schema)
    for key in ("total_steps", "batch_size", "log_every_steps", "checkpoint_every_steps", "sample_every_steps",
                "keep_checkpoints", "grad_accum_steps"):
        if config[key] <= 0:
            raise ConfigError(f"config.{key} must be positive, got {config[key]}")
    for key, allowed in CHOICES.items():
        if config[key] not in allowed:
            raise ConfigError(f"config.{key} must be one of {list(allowed)}, got {config[key]!r}")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ConfigError(f"config.ema_decay must be in [0, 1), got {config.ema_decay}")
    if config.optim.schedule not in ("cosine", "constant"):
        raise ConfigError(f"config.optim.schedule must be 'cosine' or 'constant', got {config.optim.schedule!r}")
    if config.optim.learning_rate <= 0:
        raise ConfigError(f"config.optim.learning_rate must be positive, got {config.optim.learning_rate}")
    try:
        check_rules(config.sharding_rules, MESH_AXES)
    except ValueError as e:
        raise ConfigError(f"config.sharding_rules: {e}") from None


def check_batch(config, mesh) -> None:
    """The global batch must split over the batch shards and then into micro-batches."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    need = shards * config.grad_accum_steps
    if config.batch_size % need:
        raise ConfigError(
            f"config.batch_size {config.batch_size} must be a multiple of data x fsdp ({shards}) x "
            f"grad_accum_steps ({config.grad_accum_steps}) = {need}; e.g. {math.ceil(config.batch_size / need) * need}")
