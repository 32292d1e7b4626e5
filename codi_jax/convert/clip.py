"""CoDi's CLIP (`clip.model.*` in CoDi_encoders.pth) -> our `codi_jax.models.clip.CLIP` params.

Official keys are those of the modified HF `CLIPModel` (prefix `model.` stripped in the fixture,
`clip.model.` in the checkpoint). The same mapping reads Hugging Face CLIP files (see `hf_clip`), which
lack only the temporal layers. `position_ids` buffers are constants and are not read.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.convert import layout, registry
from codi_jax.models import clip as clip_model
from codi_jax.models import clip_preprocess

# Hugging Face CLIPTextConfig / CLIPVisionConfig defaults, for configs that leave a field out.
_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu")
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        image_size=224, patch_size=32, hidden_act="quick_gelu")


def model_kwargs(text_config: Mapping[str, Any], vision_config: Mapping[str, Any], projection_dim: int,
                 temporal: bool = True) -> dict:
    """Our CLIP constructor kwargs from official (HF-style) text / vision config dicts."""
    text = {**_TEXT_DEFAULTS, **text_config}
    vision = {**_VISION_DEFAULTS, **vision_config}
    for name, cfg in (("text", text), ("vision", vision)):
        if cfg["hidden_act"] != "quick_gelu":
            raise ValueError(f"CLIP {name} hidden_act {cfg['hidden_act']!r} is not supported; expected 'quick_gelu'")
    return dict(vocab_size=int(text["vocab_size"]), max_positions=int(text["max_position_embeddings"]),
                text_width=int(text["hidden_size"]), text_layers=int(text["num_hidden_layers"]),
                text_heads=int(text["num_attention_heads"]), text_mlp=int(text["intermediate_size"]),
                image_size=int(vision["image_size"]), patch_size=int(vision["patch_size"]),
                vision_width=int(vision["hidden_size"]), vision_layers=int(vision["num_hidden_layers"]),
                vision_heads=int(vision["num_attention_heads"]), vision_mlp=int(vision["intermediate_size"]),
                projection_dim=int(projection_dim), temporal=temporal)


def _layer_ids(sd: Mapping[str, Any], tower: str) -> list[int]:
    pattern = re.compile(rf"^{tower}\.encoder\.layers\.(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})


def _temporal(flat, sd, ours, theirs):
    attn, ta = f"{ours}/temporal_attn", f"{theirs}.temporal_attn"
    flat[f"{attn}/norm_g"] = jnp.asarray(sd[f"{ta}.norm.g"])
    for table in ("pos_embeds", "frame_rate_embeds"):
        t = jnp.asarray(sd[f"{ta}.{table}"])
        flat[f"{attn}/{table}"] = t.reshape(t.shape[-2:])  # [1, 30, C] -> [30, C]
    for proj in ("to_q", "to_kv", "to_out"):
        layout.copy_linear(flat, sd, f"{attn}/{proj}", f"{ta}.{proj}", bias=False)
    rel, tr = f"{ours}/temporal_rel_pos_bias", f"{theirs}.temporal_rel_pos_bias.net"
    layout.copy_linear(flat, sd, f"{rel}/net_0", f"{tr}.0.0")
    layout.copy_linear(flat, sd, f"{rel}/net_1", f"{tr}.1.0")
    layout.copy_linear(flat, sd, f"{rel}/net_2", f"{tr}.2")
    flat[f"{ours}/ff/proj_in/kernel"] = layout.pointwise(sd[f"{theirs}.ff.proj_in.0.weight"])
    g = jnp.asarray(sd[f"{theirs}.ff.proj_out.0.g"])
    flat[f"{ours}/ff/norm_g"] = g.reshape(g.shape[1])  # [1, inner, 1] -> [inner]
    flat[f"{ours}/ff/proj_out/kernel"] = layout.pointwise(sd[f"{theirs}.ff.proj_out.1.weight"])


def _encoder(flat, sd, ours, tower, temporal):
    for i in _layer_ids(sd, tower):
        o, t = f"{ours}/layers_{i}", f"{tower}.encoder.layers.{i}"
        layout.copy_norm(flat, sd, f"{o}/layer_norm1", f"{t}.layer_norm1")
        layout.copy_norm(flat, sd, f"{o}/layer_norm2", f"{t}.layer_norm2")
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            layout.copy_linear(flat, sd, f"{o}/self_attn/{proj}", f"{t}.self_attn.{proj}")
        layout.copy_linear(flat, sd, f"{o}/mlp/fc1", f"{t}.mlp.fc1")
        layout.copy_linear(flat, sd, f"{o}/mlp/fc2", f"{t}.mlp.fc2")
        if temporal:
            _temporal(flat, sd, f"{o}/temporal_self_attn", f"{t}.temporal_self_attn")


def convert(sd: Mapping[str, Any], temporal: bool = True) -> dict:
    """Official `CLIPModel` state dict (no `model.` prefix) -> our params; `temporal=False` for plain HF CLIP."""
    flat: dict[str, Any] = {}
    flat["text_model/token_embedding/embedding"] = jnp.asarray(sd["text_model.embeddings.token_embedding.weight"])
    flat["text_model/position_embedding"] = jnp.asarray(sd["text_model.embeddings.position_embedding.weight"])
    _encoder(flat, sd, "text_model", "text_model", temporal=False)
    layout.copy_norm(flat, sd, "text_model/final_layer_norm", "text_model.final_layer_norm")

    flat["vision_model/class_embedding"] = jnp.asarray(sd["vision_model.embeddings.class_embedding"])
    flat["vision_model/patch_embedding/kernel"] = layout.conv(sd["vision_model.embeddings.patch_embedding.weight"])
    flat["vision_model/position_embedding"] = jnp.asarray(sd["vision_model.embeddings.position_embedding.weight"])
    layout.copy_norm(flat, sd, "vision_model/pre_layrnorm", "vision_model.pre_layrnorm")
    _encoder(flat, sd, "vision_model", "vision_model", temporal=temporal)
    layout.copy_norm(flat, sd, "vision_model/post_layernorm", "vision_model.post_layernorm")

    layout.copy_linear(flat, sd, "text_projection", "text_projection", bias=False)
    layout.copy_linear(flat, sd, "visual_projection", "visual_projection", bias=False)
    flat["logit_scale"] = jnp.asarray(sd["logit_scale"])
    return layout.nest(flat)


def abstract_params(model: clip_model.CLIP):
    """The model's params tree as ShapeDtypeStructs (boxed, with logical names): nothing allocated."""
    return jax.eval_shape(model.init, jax.random.key(0), *clip_model.init_inputs(model))["params"]


def full_abstract():
    return nn.meta.unbox(abstract_params(clip_model.build("full")))


def ignored_keys(key: str) -> bool:
    return key.endswith("position_ids")


def run_golden(fixture_dir, config, meta, params, io) -> dict:
    ctor = config["constructor"]
    official = ctor["CLIPConfig"]
    model = clip_model.build(model_kwargs(official["text_config_dict"], official["vision_config_dict"],
                                          official["projection_dim"], temporal=ctor.get("add_temporal_attention",
                                                                                         True)))
    variables = {"params": convert(registry.strip_prefix(params, "model."), temporal=model.temporal)}
    processor = config.get("processor", {})
    size = int(processor.get("size", model.image_size))
    if int(processor.get("crop_size", size)) != size:
        raise ValueError(f"processor crop_size {processor['crop_size']} differs from size {size}; "
                         f"expected equal (shortest-edge resize then square crop)")
    # One compiled program per input kind: everything the fixture holds for it.
    text_fn = jax.jit(lambda ids: (model.apply(variables, ids, method=clip_model.CLIP.text_features),
                                   model.apply(variables, ids, method=clip_model.CLIP.encode_text)))
    vision_fn = lambda encode: jax.jit(lambda px: (model.apply(variables, px, method=clip_model.CLIP.vision_features),
                                                   model.apply(variables, px, method=encode)))
    results = {}
    (hidden, pooled), embed = text_fn(io["text_input_ids"])
    results["text_last_hidden_state"] = (hidden, io["text_last_hidden_state"])
    results["text_pooled"] = (pooled, io["text_pooled"])
    results["text_embed"] = (embed, io["text_embed"])

    # Pixel values are checked from the raw inputs; the towers start from the stored pixel values.
    cases = (("image", clip_preprocess.preprocess_images, (0, 2, 3, 1), (0, 2, 3, 1), clip_model.CLIP.encode_image),
             ("video", clip_preprocess.preprocess_videos, (0, 2, 3, 4, 1), (0, 1, 3, 4, 2),
              clip_model.CLIP.encode_video))
    for name, preprocess, raw_perm, pix_perm, encode in cases:
        if name not in io:
            continue
        ref_pixels = np.transpose(io[f"{name}_pixel_values"], pix_perm)
        results[f"{name}_pixel_values"] = (preprocess(np.transpose(io[name], raw_perm), size), ref_pixels)
        (hidden, pooled), embed = vision_fn(encode)(ref_pixels)
        results[f"{name}_last_hidden_state"] = (hidden, io[f"{name}_last_hidden_state"])
        results[f"{name}_pooled"] = (pooled, io[f"{name}_pooled"])
        results[f"{name}_embed"] = (embed, io[f"{name}_embed"])
    return {k: (np.asarray(ours), np.asarray(ref)) for k, (ours, ref) in results.items()}


registry.register(registry.Component(
    name="clip", convert=convert, full_abstract=full_abstract, run_golden=run_golden,
    manifest_prefix="clip.model.", ignored_keys=ignored_keys))
