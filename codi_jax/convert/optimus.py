"""Optimus (BERT encoder + GPT-2 decoder): official state dict -> our params, and its golden runner.

Constants the converter leaves unread: each GPT-2 layer's causal-mask buffers (`attn.bias`,
`attn.masked_bias`) and `decoder.lm_head.weight`, which is tied to `decoder.transformer.wte.weight`
(our lm_head reads wte directly). GPT-2 `Conv1D` weights are already [in, out].
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.convert import layout, registry
from codi_jax.models import optimus

_BERT_LAYER = re.compile(r"^encoder\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_BERT_LAYER_MODULES = {
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "attention_out", "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "intermediate", "output.dense": "output", "output.LayerNorm": "output_norm",
}
_BERT_TOP = {
    "encoder.embeddings.word_embeddings.weight": ("encoder/word_embeddings/embedding", "table"),
    "encoder.embeddings.position_embeddings.weight": ("encoder/position_embeddings/embedding", "table"),
    "encoder.embeddings.token_type_embeddings.weight": ("encoder/token_type_embeddings/embedding", "table"),
    "encoder.embeddings.LayerNorm.weight": ("encoder/embeddings_norm/scale", "table"),
    "encoder.embeddings.LayerNorm.bias": ("encoder/embeddings_norm/bias", "table"),
    "encoder.pooler.dense.weight": ("encoder/pooler/kernel", "linear"),
    "encoder.pooler.dense.bias": ("encoder/pooler/bias", "table"),
    "encoder.linear.weight": ("encoder/linear/kernel", "linear"),
}
_GPT_LAYER = re.compile(r"^decoder\.transformer\.h\.(\d+)\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)"
                        r"\.(weight|bias)$")
_GPT_LAYER_MODULES = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.c_attn": "c_attn", "attn.c_proj": "c_proj",
                      "mlp.c_fc": "c_fc", "mlp.c_proj": "mlp_c_proj"}
_GPT_TOP = {
    "decoder.transformer.wte.weight": ("decoder/wte/embedding", "table"),
    "decoder.transformer.wpe.weight": ("decoder/wpe/embedding", "table"),
    "decoder.transformer.ln_f.weight": ("decoder/ln_f/scale", "table"),
    "decoder.transformer.ln_f.bias": ("decoder/ln_f/bias", "table"),
    "decoder.transformer.linear.weight": ("decoder/linear/kernel", "linear"),
    "decoder.transformer.linear_emb.weight": ("decoder/linear_emb/kernel", "linear"),
}
_CONSTANT = re.compile(r"^decoder\.(transformer\.h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight)$")


def ignored_keys(key: str) -> bool:
    return bool(_CONSTANT.match(key))


_TOP = {**_BERT_TOP, **_GPT_TOP}


def _layer_leaf(module_path: str, kind: str, is_norm: bool, transpose: bool, value) -> tuple[str, Any]:
    if kind == "bias":
        return f"{module_path}/bias", jnp.asarray(value)
    if is_norm:
        return f"{module_path}/scale", jnp.asarray(value)
    return f"{module_path}/kernel", layout.linear(value) if transpose else jnp.asarray(value)


def convert(sd: Mapping[str, Any]) -> dict:
    flat = {}
    for key in sd:
        if ignored_keys(key):
            continue
        if key in _TOP:
            path, how = _TOP[key]
            flat[path] = layout.linear(sd[key]) if how == "linear" else jnp.asarray(sd[key])
        elif m := _BERT_LAYER.match(key):
            layer, module, kind = m.groups()
            if module not in _BERT_LAYER_MODULES:
                raise KeyError(f"unexpected BERT key {key!r}")
            name = _BERT_LAYER_MODULES[module]
            # nn.Linear weights are [out, in].
            path, value = _layer_leaf(f"encoder/layer_{layer}/{name}", kind, name.endswith("norm"), True, sd[key])
            flat[path] = value
        elif m := _GPT_LAYER.match(key):
            layer, module, kind = m.groups()
            name = _GPT_LAYER_MODULES[module]
            # GPT-2 Conv1D weights are already [in, out].
            path, value = _layer_leaf(f"decoder/h_{layer}/{name}", kind, name.startswith("ln_"), False, sd[key])
            flat[path] = value
        else:
            raise KeyError(f"unexpected Optimus key {key!r}")
    return layout.nest(flat)


def abstract_params(model: optimus.Optimus) -> Any:
    enc = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    dec = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), enc, dec))["params"]


def run_golden(fixture_dir, config, meta, params, io) -> dict:
    ctor = config["constructor"]
    model = optimus.build(optimus.kwargs_from_official(
        ctor["encoder"]["config"], ctor["encoder"]["latent_size"], ctor["decoder"]["config"]))
    scale = float(config.get("text_scale_factor", optimus.TEXT_SCALE))
    model = model.clone(scale_factor=scale)
    variables = {"params": convert(params)}
    seq, pooled, mu, logvar = model.apply(variables, io["enc_input_ids"], method=optimus.Optimus.encode)
    latent = io["z_codi"] * np.float32(1.0 / scale)
    logits, presents = model.apply(variables, io["dec_input_ids"], latent, method=optimus.Optimus.decoder_logits)
    ours = {
        "enc_sequence_output": seq,
        "enc_pooled": pooled,
        "enc_linear": jnp.concatenate([mu, logvar], axis=-1),
        "enc_mu": mu,
        "enc_logvar": logvar,
        "enc_z_codi": model.apply(variables, io["enc_input_ids"], method=optimus.Optimus.to_latent),
        "dec_latent": latent,
        "dec_logits": logits,
    }
    for i, (k, v) in enumerate(presents):
        ours[f"dec_present_{i}"] = jnp.stack([k, v])
    return {name: (np.asarray(value), io[name]) for name, value in ours.items() if name in io}


registry.register(registry.Component(
    name="optimus",
    convert=convert,
    full_abstract=lambda: abstract_params(optimus.build("full")),
    run_golden=run_golden,
    manifest_prefix="optimus.",
    ignored_keys=ignored_keys,
))
