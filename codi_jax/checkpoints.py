"""Reading training workdirs: the latest checkpoint's parameters, network names and config.

A workdir is what `python -m codi_jax.train` writes (and `codi_jax.convert.released` for released weights):
`checkpoints/<step>/` with the train state and the config as JSON. Later stages (`config.init_from`), sampling
and the tools read it through here, on the host, without building a trainer.
"""
from __future__ import annotations

import contextlib
import functools
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from codi_jax.errors import ConfigError


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
    flat = traverse_util.flatten_dict(dict(trainable), sep="/")
    flat.update(traverse_util.flatten_dict(dict(restored.get("frozen") or {}), sep="/"))  # disjoint paths
    return step, flat


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
