"""Converter and golden runner for the CoDi wrapper (`UNetModelCoDi`: unet_image, unet_text, unet_audio).

    params = convert_codi(sd)   # sd: keys `unet_image.*`, `unet_text.*`, `unet_audio.*` -> our CoDi params

Each branch goes through its UNet's converter (`unet_keys.convert_unet2d`, `unet_text.convert_unet_text`);
a branch without keys is left out (a model may configure any subset of the UNets). Coverage of the
released weights is reported per UNet by the unet_video / unet_text / unet_audio components.

Fixture `unet_codi` has no params file: its state dict is the union of the files named in
config.json `params_from` (prefix -> path relative to the fixture). Every case in config.json runs
through our CoDi forward the way the released wrapper does: conditions mixed with the case's
mix_weight, wiring "own", aliased first skip; `<case>.out_<modality>` is compared for every output.
"""
from __future__ import annotations

import pathlib
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from codi_jax.convert.registry import Component, register, strip_prefix
from codi_jax.convert.unet_keys import convert_unet2d
from codi_jax.convert.unet_text import convert_unet_text
from codi_jax.models import codi, unet, unet_text

_BRANCHES = (("unet_image", convert_unet2d), ("unet_text", convert_unet_text), ("unet_audio", convert_unet2d))


def convert_codi(sd: Mapping[str, Any]) -> dict:
    """Official UNetModelCoDi state dict (no `model.diffusion_model.` prefix) -> our CoDi `params` collection."""
    prefixes = tuple(f"{name}." for name, _ in _BRANCHES)
    stray = [k for k in sd if not k.startswith(prefixes)]
    if stray:
        raise ValueError(f"unknown UNetModelCoDi key {stray[0]!r}; expected keys under {', '.join(prefixes)}")
    params = {}
    for name, convert in _BRANCHES:
        branch = strip_prefix(sd, f"{name}.")
        if branch:
            params[name] = convert(branch)
    return params


def load_state_dict(fixture_dir, params_from: Mapping[str, str]) -> dict:
    """The wrapper's state dict assembled from per-UNet safetensors files: {prefix: path} -> {prefix+key: array}."""
    from safetensors.numpy import load_file

    sd = {}
    for prefix, rel in params_from.items():
        for key, value in load_file(str(pathlib.Path(fixture_dir) / rel)).items():
            sd[prefix + key] = value
    return sd


def golden_model(config: dict) -> codi.CoDi:
    """Our CoDi built from the official wrapper arguments: the three UNet configs and model_type."""
    ctor = config["constructor"]
    model_type = set(ctor["model_type"])
    return codi.CoDi(
        unet_image=unet.from_official(ctor["unet_image_cfg"]["args"]) if model_type & {"image", "video"} else None,
        unet_text=unet_text.from_official(ctor["unet_text_cfg"]["args"]) if "text" in model_type else None,
        unet_audio=unet.from_official(ctor["unet_audio_cfg"]["args"]) if "audio" in model_type else None)


def _to_ours(modality: str, x):
    """PyTorch layout (NCHW / NCFHW; text [B, Z]) -> channels-last."""
    x = jnp.asarray(x)
    return x if modality == "text" else jnp.moveaxis(x, 1, -1)


def _to_official(modality: str, x):
    x = np.asarray(x)
    return x if modality == "text" else np.moveaxis(x, -1, 1)


def run_golden(fixture_dir, config, meta, params, io):
    model = golden_model(config)
    sd = dict(params) or load_state_dict(fixture_dir, config["params_from"])
    variables = {"params": convert_codi(sd)}
    t = jnp.asarray(io["timesteps"])
    results = {}
    for case in config["forward"]["cases"]:
        latents = {m: _to_ours(m, io[name]) for m, name in zip(case["xtype"], case["inputs"])}
        conds = {ct: jnp.asarray(io[name]) for ct, name in zip(case["condition_types"], case["conditions"])}
        context = codi.mix_conditions(conds, case["mix_weight"])
        eps = model.apply(variables, latents, t, context, wiring="own", aliased_skip=True)
        for m in case["xtype"]:
            name = f"{case['name']}.out_{m}"
            results[name] = (_to_official(m, eps[m]), io[name])
    return results


COMPONENT = register(Component(name="unet_codi", convert=convert_codi, run_golden=run_golden))
