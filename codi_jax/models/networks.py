"""CoDi's networks built from config by name, initialised and applied: what training stages and sampling share.

Each network is configured as `{variant: <preset in its module's CONFIGS>, overrides: {constructor kwargs}}`
(`config.model.<name>` in training configs, `config.models.<name>` in sampling configs), under its one name
from the catalogue.
"""
from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp

from codi_jax.errors import ConfigError
from codi_jax.models import catalogue, clap, clip, codi, optimus
from codi_jax.models.catalogue import NAMES, UNETS

# Which constructor options each network takes from the caller's dtype / remat_policy / attn_impl (CLAP's
# 64-token windows and GPT-2's cached decoding keep their own attention: no kernel serves them).
_TAKES_REMAT = set(UNETS)
_TAKES_ATTN_IMPL = set(UNETS) | {"clip", "optimus"}


def _to_dict(value) -> dict:
    return value.to_dict() if hasattr(value, "to_dict") else dict(value or {})


def build(name: str, spec, *, dtype, remat_policy: str = "none", attn_impl: str = "xla"):
    """One network from `{variant, overrides}`; ConfigError for an unknown network or preset."""
    if name not in NAMES:
        raise ConfigError(f"unknown component {name!r}; expected one of {list(NAMES)}")
    variant, overrides = spec.variant, _to_dict(spec.get("overrides"))
    try:
        if name == "optimus":
            preset = dict(optimus.CONFIGS[variant]) if isinstance(variant, str) else dict(variant)
            for part in ("encoder", "decoder"):
                preset[part] = {**preset[part], **overrides.get(part, {})}
            preset.update({k: v for k, v in overrides.items() if k not in ("encoder", "decoder")})
            return optimus.build(preset, dtype=dtype, attn_impl=attn_impl)
        extra = {"dtype": dtype}
        if name in _TAKES_REMAT:
            extra["remat_policy"] = remat_policy
        if name in _TAKES_ATTN_IMPL:
            extra["attn_impl"] = attn_impl
        builder = importlib.import_module(f"codi_jax.models.{catalogue.NETWORKS[name].module}").build
        return builder(variant, **overrides, **extra)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"config.model.{name}: {e}") from None


def init_variables(name: str, module, rng) -> dict:
    """The network's variables from inputs that create every parameter (video input for unet_image)."""
    if name == "clip":
        return module.init(rng, *clip.init_inputs(module))
    if name == "clap":
        return module.init(rng, *clap.init_inputs(module))
    if name in ("image_vae", "audio_vae"):
        side = 4 * 2 ** len(module.ch_mult)
        return module.init(rng, jnp.zeros((1, side, side, module.in_channels)))
    if name == "vocoder":
        return module.init(rng, jnp.zeros((1, 8, module.num_mels)))
    if name == "optimus":
        ids = jnp.zeros((1, 4), jnp.int32)
        return module.init(rng, ids, ids)
    t = jnp.zeros((1,), jnp.int32)
    context = jnp.zeros((1, 1, module.context_dim))
    if name == "unet_text":
        return module.init(rng, jnp.zeros((1, module.in_channels)), t, context)
    side = 2 ** len(module.channel_mult)
    frames = (2,) if module.video else ()
    return module.init(rng, jnp.zeros((1,) + frames + (side, side, module.in_channels)), t, context)


class Networks:
    """The named networks of a config, built once and unbound: `nets["clip"]` or `nets.clip`;
    `apply(params, name, *args, method=...)` runs one, `codi` is the joint model over the UNets present."""

    def __init__(self, model_config, names, *, dtype, remat_policy: str = "none", attn_impl: str = "xla"):
        missing = [n for n in names if n not in model_config]
        if missing:
            raise ConfigError(f"config.model is missing the component(s) {missing} this stage needs")
        self.modules = {n: build(n, model_config[n], dtype=dtype, remat_policy=remat_policy, attn_impl=attn_impl)
                        for n in names}

    def __getitem__(self, name: str):
        return self.modules[name]

    def __getattr__(self, name: str):
        modules = self.__dict__.get("modules", {})
        if name in modules:
            return modules[name]
        raise AttributeError(name)

    @functools.cached_property
    def codi(self) -> codi.CoDi:
        return codi.build({name: self.modules[name] for name in UNETS if name in self.modules})

    def init(self, rng) -> dict:
        keys = jax.random.split(rng, len(self.modules))
        return {n: init_variables(n, m, k) for (n, m), k in zip(self.modules.items(), keys)}

    def apply(self, params, name: str, *args, method=None, **kwargs):
        module = self.modules[name]
        fn = getattr(module, method) if isinstance(method, str) else method
        return module.apply(params[name], *args, method=fn, **kwargs)
