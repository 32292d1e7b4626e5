"""Image VAE (`AutoencoderKL`, SD kl-f8): official state dict -> our params, and its golden runner.

The key translation is shared with the audio VAE (same blocks): see `convert_kl`.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.convert import layout, registry
from codi_jax.models import autoencoder

_KL_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
_RENAMES = (
    (re.compile(r"\.(down|up)\.(\d+)\.block\.(\d+)\."), r"/\1_\2_block_\3/"),
    (re.compile(r"\.(down|up)\.(\d+)\.attn\.(\d+)\."), r"/\1_\2_attn_\3/"),
    (re.compile(r"\.(down|up)\.(\d+)\.(downsample|upsample)\."), r"/\1_\2_\3/"),
    (re.compile(r"\.mid\.(block_\d|attn_\d)\."), r"/mid_\1/"),
)
_NORMS = {"norm", "norm1", "norm2", "norm_out"}
_ATTN_PROJ = {"q", "k", "v", "proj_out"}


def _our_path(key: str) -> str:
    for pattern, repl in _RENAMES:
        key = pattern.sub(repl, key)
    return key.replace(".", "/")


def convert_kl(sd: Mapping[str, Any]) -> dict:
    """Every `encoder.* / decoder.* / quant_conv.* / post_quant_conv.*` key -> our tree."""
    flat = {}
    for key in sd:
        if not key.startswith(_KL_ROOTS):
            continue
        *module_path, leaf = _our_path(key).split("/")
        module = module_path[-1]
        value = sd[key]
        if module in _NORMS:
            name, value = {"weight": "scale", "bias": "bias"}[leaf], jnp.asarray(value)
        elif leaf == "bias":
            name, value = "bias", jnp.asarray(value)
        elif module in _ATTN_PROJ and "attn" in module_path[-2]:
            # The attention block's 1x1 convs are Dense layers here.
            name, value = "kernel", layout.pointwise(value)
        else:
            name, value = "kernel", layout.conv(value)
        flat["/".join(module_path + [name])] = value
    return layout.nest(flat)


def abstract_params(model: autoencoder.AutoencoderKL) -> Any:
    x = jax.ShapeDtypeStruct((1, 64, 64, model.in_channels), jnp.float32)
    return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), x))["params"]


def to_channels_last(x):
    """NCHW -> NHWC and NCFHW -> NFHWC."""
    x = np.asarray(x)
    return np.moveaxis(x, 1, -1)


def to_channels_first(x):
    x = np.asarray(x)
    return np.moveaxis(x, -1, 1)


def run_golden(fixture_dir, config, meta, params, io) -> dict:
    ctor = config["constructor"]
    model = autoencoder.AutoencoderKL(**autoencoder.kwargs_from_official(ctor["ddconfig"], ctor["embed_dim"],
                                                                          audio=False))
    inputs = {k: to_channels_last(io[k]) for k in ("x", "z", "noise", "mean", "video_x", "video_z") if k in io}

    @jax.jit  # one program for every output: compiles the encoder and decoder once each
    def outputs(variables, inputs):
        def call(method, *args):
            return model.apply(variables, *args, method=method)

        posterior = call(model.encode, inputs["x"])
        dec = call(model.from_latent, inputs["z"])
        ours = {
            "moments": call(model.encode_moments, inputs["x"]),
            "mean": posterior.mean,
            "logvar": posterior.logvar,
            "std": posterior.std,
            "z_codi": model.scale_factor * posterior.sample_with(inputs["noise"]),
            "dec": dec,
            "dec_image01": jnp.clip((dec + 1.0) / 2.0, 0.0, 1.0),
            "dec_of_mean": call(model.decode, inputs["mean"]),
        }
        if "video_x" in inputs:
            ours["video_moments"] = call(model.encode_moments, inputs["video_x"])
        if "video_z" in inputs:
            ours["video_dec"] = call(model.decode, inputs["video_z"])
        return ours

    ours = outputs({"params": convert_kl(params)}, inputs)
    return {k: (to_channels_first(v), io[k]) for k, v in ours.items() if k in io}


registry.register(registry.Component(
    name="image_autoencoder_kl",
    convert=convert_kl,
    full_abstract=lambda: abstract_params(autoencoder.build("full")),
    run_golden=run_golden,
    manifest_prefix="autokl.",
))
