"""Pretrained components from earlier stages' workdirs (`config.init_from.<stage> = DIR`).

A stage lists what it takes (`Stage.pretrained()`: workdir, source path, target path);
here the latest checkpoint of each workdir is read on the host (the EMA copy of the
trainable part where the run kept one and `config.init_from_ema` is on) and each source
subtree becomes a flat {target path: sharded array} of overrides for the state init.
"""
from __future__ import annotations

import contextlib
import functools
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from codi_jax.train import freeze
from codi_jax.train.errors import ConfigError
from codi_jax.train.stages.base import Pretrained


@contextlib.contextmanager
def _latest(workdir: str, item: str, handler):
    """(read-only CheckpointManager, latest step) of `workdir`, reading its `item` with `handler`."""
    directory = epath.Path(os.path.abspath(workdir)) / "checkpoints"
    if not directory.exists():
        raise ConfigError(f"no checkpoints directory at {directory}")
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                               item_handlers={item: handler}) as manager:
        step = manager.latest_step()
        if step is None:
            raise ConfigError(f"{directory} holds no finished checkpoint")
        yield manager, step


@functools.lru_cache(maxsize=4)
def restore_params(workdir: str, use_ema: bool) -> tuple[int, dict[str, np.ndarray]]:
    """(step, {path: host array}) of the full parameter tree in the latest checkpoint of `workdir`."""
    with _latest(workdir, "state", ocp.PyTreeCheckpointHandler()) as (manager, step):
        meta = manager.item_metadata(step).state
        wanted = {"params": meta["params"], "frozen": meta["frozen"]}
        if use_ema and meta.get("ema"):
            wanted["ema"] = meta["ema"]
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=wanted, restore_args=restore_args, partial_restore=True))).state
    trainable = restored.get("ema") or restored["params"]
    return step, freeze.flatten(freeze.merge(trainable, restored.get("frozen") or {}))


def saved_networks(workdir: str) -> set[str]:
    """The top-level names (networks) of the parameter tree in the latest checkpoint of `workdir`, read from the
    checkpoint's metadata without restoring any array."""
    with _latest(workdir, "state", ocp.PyTreeCheckpointHandler()) as (manager, step):
        meta = manager.item_metadata(step).state
    return set(meta["params"] or {}) | set(meta["frozen"] or {})


@functools.lru_cache(maxsize=16)
def saved_config(workdir: str) -> dict:
    """The config (a plain dict) saved with the latest checkpoint of `workdir`: what the run was, e.g. which
    target its diffusers predict (model.prediction) and the latent scales they were trained with."""
    with _latest(workdir, "config", ocp.JsonCheckpointHandler()) as (manager, step):
        return dict(manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config)


def measured_latent_scale(workdir: str, coder: str) -> float | None:
    """The latent scale of `coder` (image_vae, audio_vae, optimus) a run measured (autoencoders) or resolved
    from the run that measured it (the diffusers' runs keep the coder's weights and its scale), else None."""
    saved = saved_config(workdir)
    measured = saved.get("measured", {}).get("latent_scale", {})
    if coder in measured:
        return float(measured[coder])
    spec = saved.get("model", {}).get(coder, {})
    if spec.get("latent_scale") == "measured" and "scale_factor" in spec.get("overrides", {}):
        return float(spec["overrides"]["scale_factor"])
    return None


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
