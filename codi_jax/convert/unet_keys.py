"""Official `UNetModel2D` state-dict keys <-> our UNet2D parameter paths, and the conversion.

    params = convert_unet2d(sd)   # sd: official keys without the wrapper prefix; -> our `params` tree

Used by the unet_image / unet_video / unet_audio components and by the CoDi wrapper's
converter (which strips `unet_image.` / `unet_audio.` first). Driven by the keys alone:
the video layout (`input_blocks.N.0.0` ResBlock, `.0.1` temporal, `.1` SpatialTransformer)
and the SD layout (`input_blocks.N.0` ResBlock, `.1` SpatialTransformer) are both read.
Uses only jnp / shape operations, so it also runs under jax.eval_shape.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from codi_jax.convert import layout

# module path inside a block -> (our path, kind); the key's last token is the parameter name.
_RES = {
    "in_layers.0": ("in_norm", "norm"), "in_layers.2": ("in_conv", "conv"),
    "emb_layers.1": ("emb_proj", "linear"), "out_layers.0": ("out_norm", "norm"),
    "out_layers.3": ("out_conv", "conv"), "skip_connection": ("skip", "conv"),
}
_ST = {
    "norm": ("norm", "norm"), "proj_in": ("proj_in", "pointwise"), "proj_out": ("proj_out", "pointwise"),
    "transformer_blocks.0.norm1": ("norm1", "norm"), "transformer_blocks.0.norm2": ("norm2", "norm"),
    "transformer_blocks.0.norm3": ("norm3", "norm"),
    "transformer_blocks.0.ff.net.0.proj": ("ff/proj", "linear"), "transformer_blocks.0.ff.net.2": ("ff/out", "linear"),
    **{f"transformer_blocks.0.attn{a}.{p}": (f"attn{a}/{p}", "linear") for a in (1, 2) for p in ("to_q", "to_k", "to_v")},
    **{f"transformer_blocks.0.attn{a}.to_out.0": (f"attn{a}/to_out", "linear") for a in (1, 2)},
}
_TEMPORAL = {
    "temporal_attn.to_q": ("attn/to_q", "linear"), "temporal_attn.to_kv": ("attn/to_kv", "linear"),
    "temporal_attn.to_out": ("attn/to_out", "linear"),
    "temporal_rel_pos_bias.net.0.0": ("rel_pos/dense_0", "linear"),
    "temporal_rel_pos_bias.net.1.0": ("rel_pos/dense_1", "linear"),
    "temporal_rel_pos_bias.net.2": ("rel_pos/dense_2", "linear"),
    "ff.proj_in.0": ("ff/proj_in", "pointwise"), "ff.proj_out.1": ("ff/proj_out", "pointwise"),
    "frameshiftblock.out_layers.0": ("shift/norm", "norm"), "frameshiftblock.out_layers.2": ("shift/conv", "conv"),
}
# whole keys (no weight/bias split) inside a temporal module
_TEMPORAL_LEAVES = {
    "temporal_attn.pos_embeds": ("attn/pos_embeds", "table"),
    "temporal_attn.frame_rate_embeds": ("attn/frame_rate_embeds", "table"),
    "temporal_attn.norm.g": ("attn/norm_scale", "gain"),
    "ff.proj_out.0.g": ("ff/norm_scale", "gain"),
}
_TOP = {
    "time_embed.0": ("time_embed/linear_1", "linear"), "time_embed.2": ("time_embed/linear_2", "linear"),
    "input_blocks.0.0": ("input_blocks_0", "conv"), "out.0": ("out_norm", "norm"), "out.2": ("out_conv", "conv"),
    "connecters_out.0.0": ("env/blocks_0", "conv"),
}
_LEAF = {"norm": {"weight": "scale", "bias": "bias"}}
_DEFAULT_LEAF = {"weight": "kernel", "bias": "bias"}


def _in_table(table: Mapping[str, tuple[str, str]], module: str, leaf: str, our_prefix: str, key: str):
    if module not in table:
        raise KeyError(key)
    sub, kind = table[module]
    names = _LEAF.get(kind, _DEFAULT_LEAF)
    if leaf not in names:
        raise KeyError(key)
    return f"{our_prefix}/{sub}/{names[leaf]}", kind if leaf == "weight" else "vector"


def _module(kind: str, rest: str, our_prefix: str, key: str):
    """Map `rest` (the key below one res / temporal / attention module) to our path and its layout kind."""
    if kind == "temporal" and rest in _TEMPORAL_LEAVES:
        sub, leaf_kind = _TEMPORAL_LEAVES[rest]
        return f"{our_prefix}/{sub}", leaf_kind
    module, _, leaf = rest.rpartition(".")
    table = {"res": _RES, "attn": _ST, "temporal": _TEMPORAL}[kind]
    return _in_table(table, module, leaf, our_prefix, key)


def _block(toks: list[str], our: str, key: str):
    """Keys below one input/output/env block entry (TimestepEmbedSequential)."""
    head = toks[0]
    if head == "0" and toks[1] == "op":
        return _in_table({"op": ("down/conv", "conv")}, "op", toks[2], our, key)
    if head == "0" and toks[1] == "0":
        return _module("res", ".".join(toks[2:]), f"{our}/res", key)
    if head == "0" and toks[1] == "1":
        return _module("temporal", ".".join(toks[2:]), f"{our}/temporal", key)
    if head == "0":
        return _module("res", ".".join(toks[1:]), f"{our}/res", key)
    if head in ("1", "2") and toks[1] == "conv":
        return _in_table({"conv": ("up/conv", "conv")}, "conv", toks[2], our, key)
    if head == "1":
        return _module("attn", ".".join(toks[1:]), f"{our}/attn", key)
    raise KeyError(key)


def key_to_path(key: str) -> tuple[str, str]:
    """Official UNetModel2D key -> (our '/'-joined parameter path, layout kind). KeyError if unknown."""
    module, _, leaf = key.rpartition(".")
    if module in _TOP:
        path, kind = _in_table(_TOP, module, leaf, "", key)
        return path.lstrip("/"), kind
    toks = key.split(".")
    try:
        group, index, rest = toks[0], toks[1], toks[2:]
        if group == "input_blocks":
            return _block(rest, f"input_blocks_{index}", key)
        if group == "output_blocks":
            return _block(rest, f"output_blocks_{index}", key)
        if group == "middle_block":
            if index == "1":
                return _module("attn", ".".join(rest), "middle_block/block_1/attn", key)
            # middle_block.{0,2} are single entries (no TimestepEmbedSequential index of their own)
            return _block(["0"] + rest, f"middle_block/block_{index}", key)
        if group == "connecters_out":
            if rest in (["0", "weight"], ["0", "bias"]):
                return _in_table({"0": ("out_norm", "norm")}, "0", rest[1], "env", key)
            if rest[0] == "2":
                return _in_table({"2": ("out_conv", "conv")}, "2", rest[1], "env", key)
            return _block(rest, f"env/blocks_{index}", key)
        if group in ("input_block_connecters_in", "output_block_connecters_in") and rest[0] == "0":
            side = group.split("_", 1)[0]
            return _module("attn", ".".join(rest[1:]), f"{side}_connectors_{index}/attn", key)
    except IndexError:
        pass
    raise KeyError(key)


def _transform(kind: str, w):
    w = jnp.asarray(w)
    if kind == "linear":
        return layout.linear(w)
    if kind == "conv":
        return layout.conv(w)
    if kind == "pointwise":
        return layout.pointwise(w)
    if kind == "table":
        return w.reshape(w.shape[-2:])
    if kind == "gain":
        return w.reshape(-1)
    return w


def convert_unet2d(sd: Mapping[str, Any]) -> dict:
    """Official UNetModel2D state dict (no prefix) -> our UNet2D `params` collection (unboxed, nested).

    Every key must be known: an unmapped key raises ValueError, so nothing is silently dropped.
    """
    flat = {}
    for key in sd:
        try:
            path, kind = key_to_path(key)
        except KeyError:
            raise ValueError(f"unknown UNetModel2D key {key!r}") from None
        flat[path] = _transform(kind, sd[key])
    return layout.nest(flat)
