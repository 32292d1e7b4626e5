"""Converter and golden runner for the audio UNet (`UNetModel2D`, audio config, SD key layout).

Coverage: `model.diffusion_model.unet_audio.` against the "full_audio" config. Fixture
`unet_audio`: `out` (class forward) and `out_via_wrapper` (aliased first skip) on a
non-square [B, 8, T, M] latent.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from codi_jax.convert.registry import Component, register
from codi_jax.convert.unet_image import golden_model, to_channels_first, to_channels_last
from codi_jax.convert.unet_keys import convert_unet2d
from codi_jax.convert.unet_video import full_abstract


def run_golden(fixture_dir, config, meta, params, io):
    model, variables = golden_model(config, params)
    apply = jax.jit(model.apply, static_argnames="aliased_skip")
    x, t, context = to_channels_last(io["x"]), jnp.asarray(io["timesteps"]), jnp.asarray(io["context"])
    run = lambda aliased: to_channels_first(apply(variables, x, t, context, aliased_skip=aliased))
    return {"out": (run(False), io["out"]), "out_via_wrapper": (run(True), io["out_via_wrapper"])}


COMPONENT = register(Component(name="unet_audio", convert=convert_unet2d,
                               full_abstract=functools.partial(full_abstract, "full_audio"),
                               run_golden=run_golden, manifest_prefix="model.diffusion_model.unet_audio."))
