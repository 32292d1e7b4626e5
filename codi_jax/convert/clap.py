"""CoDi's CLAP audio branch (`clap.model.*` in CoDi_encoders.pth) -> our `codi_jax.models.clap.CLAPAudio`.

Official keys (prefix `model.` in the fixture, `clap.model.` in the checkpoint): `audio_branch.*` (HTSAT),
`audio_projection.{0,2}`, `audio_transform.sequential.{0,3}`. bn0's running statistics go to the
`batch_stats` collection (`convert_variables`); the registry's `convert` returns the params collection.
Constants are not read: Swin `relative_position_index` / `attn_mask`, `num_batches_tracked`, and the
torchlibrosa STFT / mel bases (`spectrogram_extractor`, `logmel_extractor`), which we recompute.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.convert import layout, registry
from codi_jax.models import clap as clap_model


def model_kwargs(htsat: Mapping[str, Any], clap: Mapping[str, Any]) -> dict:
    """Our CLAPAudio kwargs from the official `HTSAT_Swin_Transformer` and `CLAP` constructor arguments."""
    audio_cfg = htsat["config"]
    if htsat.get("enable_fusion", False) or clap.get("enable_fusion", False):
        raise ValueError("CLAP enable_fusion=True is not supported; expected False (CoDi disables fusion)")
    if clap.get("mlp_act", "relu") != "relu":
        raise ValueError(f"CLAP mlp_act {clap['mlp_act']!r} is not supported; expected 'relu'")
    stride = htsat.get("patch_stride", (4, 4))
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    return dict(spec_size=int(htsat["spec_size"]), patch_size=int(htsat["patch_size"]), patch_stride=stride,
                embed_dim=int(htsat["embed_dim"]), depths=tuple(htsat["depths"]), num_heads=tuple(htsat["num_heads"]),
                window_size=int(htsat["window_size"]), num_classes=int(htsat["num_classes"]),
                sample_rate=int(audio_cfg["sample_rate"]), n_fft=int(audio_cfg["window_size"]),
                hop_size=int(audio_cfg["hop_size"]), mel_bins=int(audio_cfg["mel_bins"]),
                fmin=float(audio_cfg["fmin"]), fmax=float(audio_cfg["fmax"]),
                clip_samples=int(audio_cfg["clip_samples"]), joint_embed_dim=int(clap["joint_embed_shape"]))


def convert_variables(sd: Mapping[str, Any]) -> dict:
    """Official CLAP state dict (no `model.` prefix) -> {"params": ..., "batch_stats": ...}."""
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    ab = "audio_branch"
    params[f"{ab}/bn0/scale"] = jnp.asarray(sd[f"{ab}.bn0.weight"])
    params[f"{ab}/bn0/bias"] = jnp.asarray(sd[f"{ab}.bn0.bias"])
    stats[f"{ab}/bn0/mean"] = jnp.asarray(sd[f"{ab}.bn0.running_mean"])
    stats[f"{ab}/bn0/var"] = jnp.asarray(sd[f"{ab}.bn0.running_var"])
    layout.copy_conv(params, sd, f"{ab}/patch_embed_proj", f"{ab}.patch_embed.proj")
    layout.copy_norm(params, sd, f"{ab}/patch_embed_norm", f"{ab}.patch_embed.norm")
    block = re.compile(rf"^{ab}\.layers\.(\d+)\.blocks\.(\d+)\.")
    for i, j in sorted({(int(m.group(1)), int(m.group(2))) for k in sd if (m := block.match(k))}):
        o, t = f"{ab}/layers_{i}_blocks_{j}", f"{ab}.layers.{i}.blocks.{j}"
        layout.copy_norm(params, sd, f"{o}/norm1", f"{t}.norm1")
        layout.copy_norm(params, sd, f"{o}/norm2", f"{t}.norm2")
        layout.copy_linear(params, sd, f"{o}/attn/qkv", f"{t}.attn.qkv")
        layout.copy_linear(params, sd, f"{o}/attn/proj", f"{t}.attn.proj")
        params[f"{o}/attn/relative_position_bias_table"] = jnp.asarray(sd[f"{t}.attn.relative_position_bias_table"])
        layout.copy_linear(params, sd, f"{o}/fc1", f"{t}.mlp.fc1")
        layout.copy_linear(params, sd, f"{o}/fc2", f"{t}.mlp.fc2")
    merge = re.compile(rf"^{ab}\.layers\.(\d+)\.downsample\.")
    for i in sorted({int(m.group(1)) for k in sd if (m := merge.match(k))}):
        o, t = f"{ab}/layers_{i}_downsample", f"{ab}.layers.{i}.downsample"
        layout.copy_norm(params, sd, f"{o}/norm", f"{t}.norm")
        layout.copy_linear(params, sd, f"{o}/reduction", f"{t}.reduction", bias=False)
    layout.copy_norm(params, sd, f"{ab}/norm", f"{ab}.norm")
    layout.copy_conv(params, sd, f"{ab}/tscam_conv", f"{ab}.tscam_conv")
    layout.copy_linear(params, sd, f"{ab}/head", f"{ab}.head")
    layout.copy_linear(params, sd, "audio_projection/fc1", "audio_projection.0")
    layout.copy_linear(params, sd, "audio_projection/fc2", "audio_projection.2")
    layout.copy_linear(params, sd, "audio_transform/fc1", "audio_transform.sequential.0")
    layout.copy_linear(params, sd, "audio_transform/fc2", "audio_transform.sequential.3")
    return {"params": layout.nest(params), "batch_stats": layout.nest(stats)}


def convert(sd: Mapping[str, Any]) -> dict:
    """The params collection (the registry contract); `convert_variables` also returns bn0's statistics."""
    return convert_variables(sd)["params"]


def abstract_variables(model: clap_model.CLAPAudio):
    """{"params", "batch_stats"} as ShapeDtypeStructs (params boxed with logical names): nothing allocated."""
    return jax.eval_shape(model.init, jax.random.key(0), *clap_model.init_inputs(model))


def full_abstract():
    return nn.meta.unbox(abstract_variables(clap_model.build("full"))["params"])


_CONSTANTS = re.compile(r"(relative_position_index|attn_mask|num_batches_tracked)$"
                        r"|^audio_branch\.(spectrogram_extractor|logmel_extractor)\.")


def ignored_keys(key: str) -> bool:
    return bool(_CONSTANTS.search(key))


def run_golden(fixture_dir, config, meta, params, io) -> dict:
    ctor = config["constructor"]
    model = clap_model.build(model_kwargs(ctor["HTSAT_Swin_Transformer"], ctor["CLAP"]))
    max_len = int(config.get("call", {}).get("max_len", model.clip_samples))
    if max_len != model.clip_samples:
        raise ValueError(f"fixture max_len {max_len} differs from clip_samples {model.clip_samples}; expected equal")
    variables = convert_variables(registry.strip_prefix(params, "model."))
    methods = clap_model.CLAPAudio

    @jax.jit
    def everything(wave):
        waveform = model.apply(variables, wave, method=methods.prepare_waveform)
        feats = model.apply(variables, waveform, method=methods.waveform_features)
        # The embedding is taken from the whole path, end to end; the rest are its intermediates.
        return dict(feats, waveform=waveform, embed=model.apply(variables, wave))

    results = {}
    cases = sorted(k[:-len("_wave16k")] for k in io if k.endswith("_wave16k"))
    for case in cases:
        wave = io[f"{case}_wave16k"][:, 0]
        ours = dict(everything(wave), wave48k=clap_model.resample(wave, clap_model.INPUT_SAMPLE_RATE,
                                                                  model.sample_rate))
        refs = {"wave48k": lambda r: r[:, 0], "waveform": lambda r: r, "logmel": lambda r: r[:, 0],
                "spec_image": lambda r: np.transpose(r, (0, 2, 3, 1)), "embedding": lambda r: r,
                "projected": lambda r: r, "embed": lambda r: r}
        for name, to_ours in refs.items():
            key = f"{case}_{name}"
            if key in io:
                results[key] = (np.asarray(ours[name]), to_ours(io[key]))
    return results


registry.register(registry.Component(
    name="clap_audio", convert=convert, full_abstract=full_abstract, run_golden=run_golden,
    manifest_prefix="clap.model.", ignored_keys=ignored_keys))
