"""Our CLIP from the Hugging Face files of `openai/clip-vit-large-patch14` (config.json + model.safetensors).

    model, params = load_hf_clip("/data/clip-vit-large-patch14")   # a local directory
    model, params = load_hf_clip("openai/clip-vit-large-patch14")  # a hub repo id (huggingface_hub download)

The text and vision towers and both projections come from the files. The temporal layers CoDi adds
are not in them and keep their initialisation; `to_out` and the FF `proj_out` start at zero, so the
video path begins as frame-averaged image CLIP (the state CoDi's bridging alignment trains from).
Not a fixture component: nothing is registered, and importing this module does no work.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.convert import clip as clip_convert
from codi_jax.models import clip as clip_model

WEIGHTS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
CONFIG = "config.json"


def resolve(path_or_repo: str | pathlib.Path, revision: str | None = None) -> pathlib.Path:
    """A local directory as is; otherwise a hub repo id, fetched (config and safetensors only)."""
    path = pathlib.Path(path_or_repo)
    if path.is_dir():
        return path
    name = str(path_or_repo)
    if path.exists() or name.count("/") != 1:
        raise ValueError(f"{name!r} is neither a directory holding {CONFIG} and {WEIGHTS} nor a hub repo id "
                         f"(expected 'owner/name', e.g. 'openai/clip-vit-large-patch14')")
    from huggingface_hub import snapshot_download  # only the download path needs it

    return pathlib.Path(snapshot_download(name, revision=revision,
                                          allow_patterns=[CONFIG, WEIGHTS, SHARD_INDEX, "model-*.safetensors"]))


def read_state_dict(directory: pathlib.Path) -> dict[str, np.ndarray]:
    """model.safetensors (or its shards) as float32 numpy arrays under the HF key names."""
    from safetensors.numpy import load_file

    if (directory / WEIGHTS).is_file():
        files = [directory / WEIGHTS]
    elif (directory / SHARD_INDEX).is_file():
        index = json.loads((directory / SHARD_INDEX).read_text())
        files = [directory / f for f in sorted(set(index["weight_map"].values()))]
    else:
        raise FileNotFoundError(f"{directory}: no {WEIGHTS} or {SHARD_INDEX}; expected the HF safetensors weights")
    sd: dict[str, np.ndarray] = {}
    for f in files:
        sd.update(load_file(str(f)))
    return {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in sd.items()}


def model_kwargs(config: dict[str, Any]) -> dict:
    """Our CLIP kwargs from an HF CLIPConfig dict (either the `*_config` or the older `*_config_dict` fields)."""
    text = {**(config.get("text_config_dict") or {}), **(config.get("text_config") or {})}
    vision = {**(config.get("vision_config_dict") or {}), **(config.get("vision_config") or {})}
    return clip_convert.model_kwargs(text, vision, config.get("projection_dim", 512))


def load_hf_clip(path_or_repo: str | pathlib.Path, *, rng=None, dtype: Any = jnp.float32,
                 revision: str | None = None) -> tuple[clip_model.CLIP, dict]:
    """(CLIP module, params) with HF weights and freshly initialised temporal layers (seeded by `rng`)."""
    directory = resolve(path_or_repo, revision)
    if not (directory / CONFIG).is_file():
        raise FileNotFoundError(f"{directory}: no {CONFIG}; expected an HF CLIPModel config")
    model = clip_model.build(model_kwargs(json.loads((directory / CONFIG).read_text())), dtype=dtype)
    try:
        params = clip_convert.convert(read_state_dict(directory), temporal=False)
    except KeyError as e:
        raise ValueError(f"{directory}: {WEIGHTS} lacks CLIP weight {e.args[0]!r}; expected HF CLIPModel keys") from e
    rng = jax.random.key(0) if rng is None else rng
    # The same module the encoder layers build, so names, shapes and initialisers match.
    block = clip_model.SpatioTemporalAttention(model.vision_width, model.vision_heads, dtype)
    init_block = jax.jit(lambda key: nn.meta.unbox(block.init(key, jnp.zeros((1, 2, model.vision_width), dtype))))
    for i, key in enumerate(jax.random.split(rng, model.vision_layers)):
        params["vision_model"][f"layers_{i}"]["temporal_self_attn"] = init_block(key)["params"]
    expected = nn.meta.unbox(clip_convert.abstract_params(model))
    got = jax.tree.map(lambda x: x.shape, params)
    want = jax.tree.map(lambda x: x.shape, expected)
    if got != want:
        raise ValueError(f"{directory}: weights do not match the CLIP config in {CONFIG} "
                         f"(parameter shapes differ from the model the config describes)")
    return model, params
