"""Registry of training stages: config.stage -> the Stage class that builds it.

Stages are imported on first use, so a stage whose networks are not importable only
fails when a config asks for it.
"""
from __future__ import annotations

import importlib

from codi_jax.train.errors import ConfigError

STAGES = {
    "toy": "codi_jax.train.stages.toy:ToyStage",
    "autoencoders": "codi_jax.train.stages.autoencoders:AutoencodersStage",
    "bridging_align": "codi_jax.train.stages.bridging_align:BridgingAlignStage",
    "ldm": "codi_jax.train.stages.ldm:LdmStage",
    "latent_align": "codi_jax.train.stages.latent_align:LatentAlignStage",
}


def get(name: str):
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; expected one of {sorted(STAGES)}")
    module, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build(config, mesh):
    return get(config.stage)(config, mesh)
