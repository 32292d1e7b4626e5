"""What a training stage gives the trainer.

A stage is built once from the config and the mesh. The trainer calls:
- `init(rng)` -> the boxed parameter tree (logical axis names on every leaf); traced
  under `jax.eval_shape` for shapes/shardings and under `jit` for the sharded init;
- `is_trainable(path)` -> whether the optimizer updates that parameter;
- `loss(params, batch, rng, step)` -> (scalar loss, {name: scalar}) on one global batch of
  device arrays (traced inside the jitted train step; `step` drives schedules such as a KL
  weight warm-up);
- `dataset(global_batch_size=, process_index=, process_count=, seed=)` -> an iterator of
  numpy batch dicts (this host's share) with `get_state()` / `set_state()`;
- `pretrained()` -> the components to copy from earlier runs' checkpoints;
- `samples(params, batch, rng)` -> {"images"|"audio"|"text": {name: array}} to write to
  TensorBoard (jitted by the trainer; {} when the stage has nothing to show);
- `probe()` -> the stage's probe (codi_jax.eval.probes.Probe) as `config.probe` describes it, or None;
- `measurements(params)` -> what later runs need to know about the trained networks (JSON), saved with
  every checkpoint next to the config (`measured`), e.g. the autoencoders' latent scales.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any

import jax
from jax.sharding import Mesh

from codi_jax.train.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """Copy the parameters under `source` in the latest checkpoint of `workdir` to `target` here."""
    workdir: str
    source: str
    target: str


class Stage(abc.ABC):
    # Top-level config keys this stage adds to the trainer's (name -> type), checked at start-up.
    config_keys: dict = {}

    def __init__(self, config, mesh: Mesh):
        self.config = config
        self.mesh = mesh

    @abc.abstractmethod
    def init(self, rng: jax.Array) -> Any:
        ...

    @abc.abstractmethod
    def is_trainable(self, path: str) -> bool:
        ...

    @abc.abstractmethod
    def loss(self, params, batch, rng, step) -> tuple[jax.Array, dict]:
        ...

    @abc.abstractmethod
    def dataset(self, *, global_batch_size: int, process_index: int, process_count: int, seed: int):
        ...

    def pretrained(self) -> list[Pretrained]:
        return []

    def samples(self, params, batch, rng) -> dict:
        return {}

    def probe(self):
        """The stage's codi_jax.eval.probes.Probe, or None; see probe_spec."""
        return None

    def probe_spec(self, kind: str):
        """config.probe when it is on (a kind is set), else None; a kind other than this stage's `kind` is a
        ConfigError."""
        spec = self.config.get("probe")
        if not spec or not spec.get("kind"):
            return None
        if spec.kind != kind:
            raise ConfigError(f"config.probe.kind {spec.kind!r}: the {self.config.stage} stage's probe is {kind!r}")
        return spec

    def measurements(self, params) -> dict:
        return {}


def require_choice(value, allowed, what: str):
    if value not in allowed:
        raise ConfigError(f"unknown {what} {value!r}; expected one of {sorted(allowed)}")
    return value
