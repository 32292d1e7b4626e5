"""Converter and golden runner for the image+video UNet (`UNetModel2D`, use_video_architecture=True).

This is the released `unet_image` of CoDi (image and video share it), so coverage checks it
against `model.diffusion_model.unet_image.` with the "full" config. Fixture `unet_video`:
`video_out` (the wrapper's path: aliased first skip), `video_out_standard_skip`, `image_out`
(class forward; the temporal modules are identities on images), `image_out_via_wrapper`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from codi_jax.convert.registry import Component, register
from codi_jax.convert.unet_image import golden_model, to_channels_first, to_channels_last
from codi_jax.convert.unet_keys import convert_unet2d
from codi_jax.models import unet


def full_abstract(variant: str = "full"):
    """Shapes of the released UNet's params tree; nothing is allocated."""
    model = unet.build(variant)
    x = jax.ShapeDtypeStruct((1, 8, 8, model.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    context = jax.ShapeDtypeStruct((1, 1, model.context_dim), jnp.float32)
    return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), x, t, context))["params"]


def run_golden(fixture_dir, config, meta, params, io):
    model, variables = golden_model(config, params)
    apply = jax.jit(model.apply, static_argnames="aliased_skip")
    t, context = jnp.asarray(io["timesteps"]), jnp.asarray(io["context"])
    run = lambda x, aliased: to_channels_first(
        apply(variables, to_channels_last(x), t, context, aliased_skip=aliased))
    return {
        "video_out": (run(io["video_x"], True), io["video_out"]),
        "video_out_standard_skip": (run(io["video_x"], False), io["video_out_standard_skip"]),
        "image_out": (run(io["image_x"], False), io["image_out"]),
        "image_out_via_wrapper": (run(io["image_x"], True), io["image_out_via_wrapper"]),
    }


COMPONENT = register(Component(name="unet_video", convert=convert_unet2d, full_abstract=full_abstract,
                               run_golden=run_golden, manifest_prefix="model.diffusion_model.unet_image."))
