"""HiFi-GAN generator: official state dict (weight norm removed: plain `weight`/`bias`) -> our params.

A checkpoint still holding `weight_g`/`weight_v` fails loudly here; the original would silently skip
those keys and run with its random initial weights.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.convert import layout, registry
from codi_jax.models import vocoder

_RENAMES = (
    (re.compile(r"^ups\.(\d+)\."), r"ups_\1/"),
    (re.compile(r"^resblocks\.(\d+)\.(convs[12])\.(\d+)\."), r"resblocks_\1/\2_\3/"),
    (re.compile(r"^(conv_pre|conv_post)\."), r"\1/"),
)


def convert(sd: Mapping[str, Any]) -> dict:
    flat = {}
    for key in sd:
        if key.endswith(("weight_g", "weight_v")):
            raise ValueError(f"vocoder key {key!r} still carries weight norm; fold it into `weight` first "
                             f"(the original calls remove_weight_norm() before loading)")
        path = key
        for pattern, repl in _RENAMES:
            path = pattern.sub(repl, path)
        module, leaf = path.rsplit("/", 1)
        if leaf == "bias":
            flat[f"{module}/bias"] = jnp.asarray(sd[key])
        elif module.startswith("ups_"):
            flat[f"{module}/kernel"] = layout.conv_transpose(sd[key])
        else:
            flat[f"{module}/kernel"] = layout.conv(sd[key])
    return layout.nest(flat)


def abstract_params(model: vocoder.HifiGanGenerator) -> Any:
    mel = jax.ShapeDtypeStruct((1, 8, model.num_mels), jnp.float32)
    return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), mel))["params"]


def run_golden(fixture_dir, config, meta, params, io) -> dict:
    model = vocoder.HifiGanGenerator(**vocoder.kwargs_from_official(config["constructor"]["h"]))
    mel = np.swapaxes(io["mel"], 1, 2)  # [B, mels, T] -> [B, T, mels]
    wave = jax.jit(model.apply)({"params": convert(params)}, mel)
    return {"wave": (np.asarray(wave)[:, None], io["wave"])}


registry.register(registry.Component(
    name="hifigan_generator",
    convert=convert,
    full_abstract=lambda: abstract_params(vocoder.build("full")),
    run_golden=run_golden,
    manifest_prefix="audioldm.vocoder.",
))
