"""The diffusion training loss over a pytree of modalities, as CoDi's `p_losses` computes it.

One timestep per example, drawn uniformly from [0, T) and shared by every modality; fresh N(0, I)
noise per modality; the squared error is averaged over each modality's non-batch dimensions, then
over the batch, and the modalities' losses are averaged (divided by their count). The target is the
noise (CoDi's epsilon parameterization) or, optionally, v. Per-example weights and conditioning
dropout belong to the trainer, which controls the model call.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from codi_jax.diffusion.schedule import PREDICTIONS, Schedule, batch_size, q_sample, v_target


def draw_t_and_noise(rng: jax.Array, x0_tree, num_timesteps: int):
    """t int32[B] uniform in [0, T), shared by all leaves, and N(0, I) noise shaped like each leaf."""
    t_rng, noise_rng = jax.random.split(rng)
    t = jax.random.randint(t_rng, (batch_size(x0_tree),), 0, num_timesteps, jnp.int32)
    leaves, treedef = jax.tree.flatten(x0_tree)
    keys = jax.random.split(noise_rng, len(leaves))
    noise = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return t, jax.tree.unflatten(treedef, noise)


def diffusion_loss(apply_fn: Callable, params, x0_tree, rng: jax.Array, schedule: Schedule, *,
                   prediction: str = "eps", **model_kwargs):
    """Mean-squared denoising loss; apply_fn(params, xt_tree, t, **model_kwargs) -> pred_tree.

    Returns (loss, aux) with aux = {"t": int32[B], "per_example": float32[B] (the loss of each
    example, averaged over modalities), "per_modality": x0_tree-shaped tree of scalar losses}.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
    t, noise = draw_t_and_noise(rng, x0_tree, schedule.num_timesteps)
    xt = q_sample(schedule, x0_tree, t, noise)
    target = noise if prediction == "eps" else v_target(schedule, x0_tree, t, noise)
    pred = apply_fn(params, xt, t, **model_kwargs)

    def per_example(p, y):
        err = jnp.square(p.astype(jnp.float32) - y.astype(jnp.float32))
        return jnp.mean(err, axis=tuple(range(1, err.ndim)))

    per_example_tree = jax.tree.map(per_example, pred, target)
    leaves = jax.tree.leaves(per_example_tree)
    per_example_mean = sum(leaves) / len(leaves)
    aux = {
        "t": t,
        "per_example": per_example_mean,
        "per_modality": jax.tree.map(jnp.mean, per_example_tree),
    }
    return jnp.mean(per_example_mean), aux
