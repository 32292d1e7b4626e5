"""Converter and golden runner for the text UNet (`UNetModel0D_MultiDim`, the CoDi wrapper's `unet_text`).

    params = convert_unet_text(sd)   # sd: official keys without the `unet_text.` prefix

Official layout: `input_blocks.0.0` Linear_MultiDim in; `input_blocks.N.0` FCBlock_MultiDim
(or, alone, a square down Linear), `.1` SpatialTransformer; `output_blocks.N.0` FCBlock,
`.1` SpatialTransformer, `.1`/`.2` up Linear (weight + bias only); `middle_block.{0,2}`
FCBlocks, `.1` SpatialTransformer; `connecters_out.0.0` V's first Linear, `.N.0` FCBlocks or
down Linears, the last entry GN (`.0`) + Linear (`.2`); `out.0` GN, `out.2` Linear. The
SpatialTransformer, connector and time-embedding keys read exactly as in UNetModel2D, so their
mapping is `unet_keys.key_to_path`. Flat-vector weights keep their order (the model is
channel-major inside): 1x1 convs [O, I, 1, 1] and Linears [O, I] become Dense kernels [I, O].
Uses only jnp / shape operations (runs under jax.eval_shape for coverage).

Fixture `unet_text`: `out` (class forward on [B, Z, 1, 1], standard skips) and
`out_via_wrapper` ([B, Z], the wrapper's aliased first skip).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.convert import layout
from codi_jax.convert.registry import Component, register
from codi_jax.convert.unet_keys import key_to_path as unet2d_key_to_path
from codi_jax.models import unet_text

_FC_RES = {
    "in_layers.0": ("in_norm", "norm"), "in_layers.2": ("in_proj", "pointwise"),
    "emb_layers.1": ("emb_proj", "linear"), "out_layers.0": ("out_norm", "norm"),
    "out_layers.3": ("out_proj", "pointwise"), "skip_connection": ("skip", "pointwise"),
}
_LEAVES = {"norm": {"weight": "scale", "bias": "bias"}}
_DEFAULT_LEAVES = {"weight": "kernel", "bias": "bias"}


def _leaf(our_module: str, kind: str, leaf: str, key: str) -> tuple[str, str]:
    names = _LEAVES.get(kind, _DEFAULT_LEAVES)
    if leaf not in names:
        raise KeyError(key)
    return f"{our_module}/{names[leaf]}", kind


def _fc_res(rest: list[str], our: str, key: str) -> tuple[str, str]:
    module, leaf = ".".join(rest[:-1]), rest[-1]
    if module not in _FC_RES:
        raise KeyError(key)
    sub, kind = _FC_RES[module]
    return _leaf(f"{our}/{sub}", kind, leaf, key)


def _is_linear(rest: list[str], entry: str) -> bool:
    """`<entry>.weight` / `<entry>.bias` directly under a block: a Linear_MultiDim, not a submodule."""
    return len(rest) == 2 and rest[0] == entry and rest[1] in ("weight", "bias")


def key_to_path(key: str, env_head: int | None = None) -> tuple[str, str]:
    """Official UNetModel0D_MultiDim key -> (our '/'-joined parameter path, layout kind); KeyError if unknown.

    env_head: index of V's last entry (`connecters_out.<env_head>`, the GN + Linear head), which
    the key alone cannot tell from a down Linear.
    """
    toks = key.split(".")
    try:
        group, index, rest = toks[0], toks[1], toks[2:]
        if group == "time_embed" or group.endswith("_block_connecters_in"):
            return unet2d_key_to_path(key)
        if group == "out" and len(rest) == 1:
            if index == "0":
                return _leaf("out_norm", "norm", rest[0], key)
            if index == "2":
                return _leaf("out_proj", "linear", rest[0], key)
        if group == "input_blocks":
            our = f"input_blocks_{index}"
            if index == "0" and _is_linear(rest, "0"):
                return _leaf(our, "linear", rest[1], key)
            if _is_linear(rest, "0"):
                return _leaf(f"{our}/down", "linear", rest[1], key)
            if rest[0] == "0":
                return _fc_res(rest[1:], f"{our}/res", key)
            if rest[0] == "1":
                return unet2d_key_to_path(key)
        if group == "output_blocks":
            our = f"output_blocks_{index}"
            if _is_linear(rest, "1") or _is_linear(rest, "2"):
                return _leaf(f"{our}/up", "linear", rest[1], key)
            if rest[0] == "0":
                return _fc_res(rest[1:], f"{our}/res", key)
            if rest[0] == "1":
                return unet2d_key_to_path(key)
        if group == "middle_block":
            if index == "1":
                return unet2d_key_to_path(key)
            if index in ("0", "2"):
                return _fc_res(rest, f"middle_block/block_{index}/res", key)
        if group == "connecters_out":
            our = f"env/blocks_{index}"
            if index == "0" and _is_linear(rest, "0"):
                return _leaf(our, "linear", rest[1], key)
            if env_head is not None and int(index) == env_head:
                if _is_linear(rest, "0"):
                    return _leaf("env/out_norm", "norm", rest[1], key)
                if _is_linear(rest, "2"):
                    return _leaf("env/out_proj", "linear", rest[1], key)
            elif _is_linear(rest, "0"):
                return _leaf(f"{our}/down", "linear", rest[1], key)
            elif rest[0] == "0":
                return _fc_res(rest[1:], f"{our}/res", key)
    except (IndexError, ValueError):
        pass
    raise KeyError(key)


def _transform(kind: str, w):
    if kind == "linear":
        return layout.linear(w)
    if kind == "pointwise":
        return layout.pointwise(w)
    if kind in ("norm", "vector"):
        return jnp.asarray(w)
    raise ValueError(f"unexpected layout kind {kind!r} in the text UNet")


def convert_unet_text(sd: Mapping[str, Any]) -> dict:
    """Official UNetModel0D_MultiDim state dict (no prefix) -> our UNetText `params` collection (nested).

    Every key must be known: an unmapped key raises ValueError, so nothing is silently dropped.
    """
    env_indices = [int(k.split(".")[1]) for k in sd if k.startswith("connecters_out.")]
    env_head = max(env_indices) if env_indices else None
    flat = {}
    for key in sd:
        try:
            path, kind = key_to_path(key, env_head)
        except KeyError:
            raise ValueError(f"unknown UNetModel0D_MultiDim key {key!r}") from None
        flat[path] = _transform("vector" if key.endswith(".bias") else kind, sd[key])
    return layout.nest(flat)


def abstract_params(model: unet_text.UNetText):
    """Shapes of a UNetText params tree (V and connectors included); nothing is allocated."""
    x = jax.ShapeDtypeStruct((1, model.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    context = jax.ShapeDtypeStruct((1, 1, model.context_dim), jnp.float32)
    return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), x, t, context))["params"]


def run_golden(fixture_dir, config, meta, params, io):
    model = unet_text.from_official(config["constructor"])
    variables = {"params": convert_unet_text(params)}
    x = jnp.asarray(io["x"]).reshape(io["x"].shape[:2])
    t, context = jnp.asarray(io["timesteps"]), jnp.asarray(io["context"])
    run = lambda aliased: np.asarray(model.apply(variables, x, t, context, aliased_skip=aliased))
    out = run(False)
    return {
        "out": (out.reshape(out.shape + (1, 1)), io["out"]),
        "out_via_wrapper": (run(True), io["out_via_wrapper"]),
    }


COMPONENT = register(Component(
    name="unet_text",
    convert=convert_unet_text,
    full_abstract=lambda: abstract_params(unet_text.build("full")),
    run_golden=run_golden,
    manifest_prefix="model.diffusion_model.unet_text.",
))
