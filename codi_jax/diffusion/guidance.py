"""Classifier-free guidance with the unconditional and conditional passes batched in one model call.

As CoDi's sampler does: every latent is doubled as [x, x] and the timestep as [t, t], the condition is
[uncond, cond] along the batch, and the output's first half is the unconditional estimate, the second
the conditional one: eps = eps_u + s * (eps_c - eps_u). The scale is one float for every modality
(CoDi's 7.5) or a dict {modality: scale} over the top-level keys of the latent tree.
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from codi_jax.diffusion.schedule import batch_size

ModelFn = Callable[..., object]


def concat_conditions(cond, uncond):
    """The batched condition [uncond, cond] along axis 0, leaf by leaf (tree structures must match)."""
    cond_struct, uncond_struct = jax.tree.structure(cond), jax.tree.structure(uncond)
    if cond_struct != uncond_struct:
        raise ValueError(f"cond and uncond must have the same tree structure; got {cond_struct} "
                         f"and {uncond_struct}")
    return jax.tree.map(lambda c, u: jnp.concatenate([u, c], axis=0), cond, uncond)


def _scale_tree(scale, eps_tree):
    """One scale per leaf of eps_tree, from a float or a {top-level key: float} dict."""
    if not isinstance(scale, Mapping):
        return jax.tree.map(lambda _: scale, eps_tree)
    if not isinstance(eps_tree, Mapping):
        raise ValueError("a per-modality guidance scale needs latents in a dict keyed by modality")
    missing = sorted(set(eps_tree) - set(scale))
    if missing:
        raise ValueError(f"guidance scale dict lacks modalities {missing}; it has {sorted(scale)}")
    return {k: jax.tree.map(lambda _, s=scale[k]: s, v) for k, v in eps_tree.items()}


def guide(eps_tree, scale, batch: int):
    """Combine a doubled [uncond, cond] model output into eps_u + s * (eps_c - eps_u)."""
    def one(eps, s):
        eps_u, eps_c = eps[:batch], eps[batch:]
        return eps_u + jnp.asarray(s, eps.dtype) * (eps_c - eps_u)
    return jax.tree.map(one, eps_tree, _scale_tree(scale, eps_tree))


def cfg_denoiser(model_fn: ModelFn, cond, uncond=None, scale=7.5) -> Callable:
    """A denoise_fn(x_tree, t[B]) -> eps_tree for the samplers.

    model_fn(x_tree, t, context) -> eps_tree is called once on batch 2B. With uncond None, cond is
    taken to be already concatenated as [uncond, cond] (batch 2B); otherwise both have batch B and
    are concatenated here, once, outside the sampling loop.
    """
    context = cond if uncond is None else concat_conditions(cond, uncond)

    def denoise(x_tree, t):
        b = batch_size(x_tree)
        if batch_size(context) != 2 * b:
            raise ValueError(f"the condition batch must be 2 x the latent batch ({2 * b}: [uncond, "
                             f"cond]); got {batch_size(context)}")
        doubled = jax.tree.map(lambda x: jnp.concatenate([x, x], axis=0), x_tree)
        eps = model_fn(doubled, jnp.concatenate([t, t], axis=0), context)
        return guide(eps, scale, b)
    return denoise
