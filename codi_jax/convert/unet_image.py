"""Converter and golden runner for the image UNet (`UNetModel2D`, SD layout, no video layers).

Fixture `unet_image`: `out` (class forward, standard skips), `out_multitoken` (3-token
context), `out_via_wrapper` (the CoDi wrapper's aliased first skip). No manifest prefix:
the released image UNet is the video one, covered by the `unet_video` component.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.convert.registry import Component, register
from codi_jax.convert.unet_keys import convert_unet2d
from codi_jax.models import unet


def to_channels_last(x):
    """NCHW -> NHWC, NCFHW -> NFHWC."""
    x = jnp.asarray(x)
    return jnp.moveaxis(x, 1, -1)


def to_channels_first(x):
    """NHWC -> NCHW, NFHWC -> NCFHW."""
    return np.moveaxis(np.asarray(x), -1, 1)


def golden_model(config: dict, params: dict):
    """Our UNet2D built from the fixture's official constructor arguments, and its converted variables."""
    model = unet.from_official(config["constructor"])
    return model, {"params": convert_unet2d(params)}


def run_golden(fixture_dir, config, meta, params, io):
    model, variables = golden_model(config, params)
    apply = jax.jit(model.apply, static_argnames="aliased_skip")
    x, t = to_channels_last(io["x"]), jnp.asarray(io["timesteps"])
    run = lambda context, aliased: to_channels_first(
        apply(variables, x, t, jnp.asarray(context), aliased_skip=aliased))
    return {
        "out": (run(io["context"], False), io["out"]),
        "out_multitoken": (run(io["context_multitoken"], False), io["out_multitoken"]),
        "out_via_wrapper": (run(io["context"], True), io["out_via_wrapper"]),
    }


COMPONENT = register(Component(name="unet_image", convert=convert_unet2d, run_golden=run_golden))
