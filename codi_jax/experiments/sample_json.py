"""A sampling config stored as JSON, for `python -m codi_jax.sample --config <this file>:<path.json>`.

An experiment writes the sampling config it evaluates (networks, latents, where each component's weights
come from: its own training workdirs) next to its results, so the generation can be rerun by hand with
the sampling CLI exactly as the experiment ran it.
"""
from __future__ import annotations

import json
import pathlib

from ml_collections import ConfigDict


def _tuples(value):
    # JSON has no tuples; the sampling configs hold shapes and network sizes as tuples.
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def write(config: ConfigDict, path) -> str:
    """Store `config` at `path`; returns the `--config` spec that reads it back."""
    path = pathlib.Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_dict(), indent=1, sort_keys=True) + "\n")
    return f"{pathlib.Path(__file__).resolve()}:{path}"


def get_config(path: str) -> ConfigDict:
    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"sampling config {path}: no such JSON file")
    return ConfigDict(_tuples(json.loads(file.read_text())))
