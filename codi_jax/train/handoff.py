"""Pretrained components from earlier stages' workdirs (`config.init_from.<stage> = DIR`).

A stage lists what it takes (`Stage.pretrained()`: workdir, source path, target path);
here the latest checkpoint of each workdir is read on the host (the EMA copy of the
trainable part where the run kept one and `config.init_from_ema` is on) and each source
subtree becomes a flat {target path: sharded array} of overrides for the state init.
"""
from __future__ import annotations

import jax
import numpy as np

from codi_jax.checkpoints import restore_params
from codi_jax.train import freeze
from codi_jax.train.errors import ConfigError
from codi_jax.train.stages.base import Pretrained


def _prefixed(prefix: str) -> str:
    return prefix.rstrip(freeze.SEP) + freeze.SEP if prefix else ""


def load_overrides(sources: list[Pretrained], abstract_params: dict, *, use_ema: bool) -> dict[str, jax.Array]:
    """Flat {our path: array sharded like our parameter} for every source subtree."""
    ours = freeze.flatten(abstract_params)
    overrides: dict[str, jax.Array] = {}
    for src in sources:
        try:
            step, theirs = restore_params(str(src.workdir), use_ema)
        except ConfigError as err:
            raise ConfigError(f"init_from: {err}") from None
        head, target = _prefixed(src.source), _prefixed(src.target)
        matched = {p[len(head):]: a for p, a in theirs.items() if p.startswith(head)}
        if not matched:
            raise ConfigError(f"init_from: {src.workdir} (step {step}) has no parameters under {src.source!r}")
        for rel, array in matched.items():
            path = target + rel
            if path not in ours:
                raise ConfigError(f"init_from: {src.workdir}:{head + rel} has no counterpart {path!r} in this model")
            want = ours[path]
            if tuple(array.shape) != tuple(want.shape):
                raise ConfigError(f"init_from: {path} is {tuple(array.shape)} in {src.workdir} "
                                  f"but {tuple(want.shape)} here")
            overrides[path] = jax.make_array_from_callback(
                want.shape, want.sharding, lambda idx, a=array, d=want.dtype: np.asarray(a[idx], d))
    return overrides
