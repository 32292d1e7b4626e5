"""The CoDi networks as training stages use them: built from config, initialised, grouped, applied.

A stage's parameter tree holds one entry per component, under the component's name, with that
network's flax variables (`<name>/params/...`, and `clap/batch_stats/...` for CLAP's frozen
input norm). The names are the same in every stage, so a later stage copies a component from
an earlier stage's checkpoint by name (config.init_from):

    clip, clap                         prompt encoders (bridging_align trains them)
    image_vae, audio_vae, vocoder, optimus    autoencoders (the autoencoders stage)
    unet_image (image and video), unet_audio, unet_text    diffusers (ldm, latent_align)

Each component is configured as `config.model.<name> = {variant: <preset in its module's CONFIGS>,
overrides: {constructor kwargs}}`. Parameter groups (for freezing) are "<component>:<group>":
UNets base / temporal / env / joint (the models' own `param_group`), CLIP text / vision /
temporal, everything else "all"; the `batch_stats` collection is never trainable.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.models import autoencoder, clap, clip, optimus, unet, unet_text, vocoder
from codi_jax.models.clip_preprocess import OPENAI_MEAN, OPENAI_STD
from codi_jax.train.errors import ConfigError

COMPONENTS = ("clip", "clap", "image_vae", "audio_vae", "vocoder", "optimus", "unet_image", "unet_audio",
              "unet_text")
UNETS = ("unet_image", "unet_audio", "unet_text")
UNET_OF = {"image": "unet_image", "video": "unet_image", "audio": "unet_audio", "text": "unet_text"}
LATENT_CODER_OF = {"image": "image_vae", "video": "image_vae", "audio": "audio_vae", "text": "optimus"}
PROMPT_ENCODER_OF = {"text": "clip", "image": "clip", "video": "clip", "audio": "clap"}
MODALITIES = ("image", "video", "audio", "text")
# The batch entry each modality is read from by the prompt encoders and by the latent coders.
PROMPT_KEY = {"image": "image", "video": "video", "audio": "audio", "text": "text_ids/clip"}
LATENT_KEY = {"image": "image", "video": "video", "audio": "audio", "text": "text_ids/bert"}

_BUILDERS = {"clip": clip.build, "clap": clap.build, "image_vae": autoencoder.build, "audio_vae": autoencoder.build,
             "vocoder": vocoder.build, "unet_image": unet.build, "unet_audio": unet.build,
             "unet_text": unet_text.build}
# Which constructor options each network takes from the trainer's dtype / remat_policy.
_TAKES_REMAT = set(UNETS)


def _to_dict(value) -> dict:
    return value.to_dict() if hasattr(value, "to_dict") else dict(value or {})


def build(name: str, spec, *, dtype, remat_policy: str):
    """One network from `{variant, overrides}`; ConfigError for an unknown component or preset."""
    if name not in COMPONENTS:
        raise ConfigError(f"unknown component {name!r}; expected one of {list(COMPONENTS)}")
    variant, overrides = spec.variant, _to_dict(spec.get("overrides"))
    try:
        if name == "optimus":
            preset = dict(optimus.CONFIGS[variant]) if isinstance(variant, str) else dict(variant)
            for part in ("encoder", "decoder"):
                preset[part] = {**preset[part], **overrides.get(part, {})}
            return optimus.build(preset, dtype=dtype)
        extra = {"dtype": dtype}
        if name in _TAKES_REMAT:
            extra["remat_policy"] = remat_policy
        return _BUILDERS[name](variant, **overrides, **extra)
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


def param_group(path: str) -> str:
    """'<component>:<group>' of a stage parameter path ('unet_image/params/env/...' -> 'unet_image:env')."""
    component, collection, rest = (path.split("/", 2) + ["", ""])[:3]
    if collection != "params":
        return f"{component}:{collection}"
    if component in UNETS:
        return f"{component}:{unet.param_group(rest)}"
    if component == "clip":
        if re.search(r"(^|/)temporal", rest):
            return "clip:temporal"
        if rest.startswith("text_"):
            return "clip:text"
        if rest.startswith(("vision_", "visual_")):
            return "clip:vision"
        return "clip:other"  # logit_scale: CLIP's own temperature, unused by CoDi
    return f"{component}:all"


def trainable_predicate(groups):
    """Path predicate from ("clap:*", "clip:temporal", ...); batch_stats never train."""
    wanted = set(groups)

    def is_trainable(path: str) -> bool:
        group = param_group(path)
        component, name = group.split(":", 1)
        if name == "batch_stats":
            return False
        return group in wanted or f"{component}:*" in wanted

    return is_trainable


class Networks:
    """The components a stage names, built once; `apply(params, name, *args, method=...)` runs one."""

    def __init__(self, model_config, names, *, dtype, remat_policy: str):
        missing = [n for n in names if n not in model_config]
        if missing:
            raise ConfigError(f"config.model is missing the component(s) {missing} this stage needs")
        self.modules = {n: build(n, model_config[n], dtype=dtype, remat_policy=remat_policy) for n in names}

    def __getitem__(self, name: str):
        return self.modules[name]

    def init(self, rng) -> dict:
        keys = jax.random.split(rng, len(self.modules))
        return {n: init_variables(n, m, k) for (n, m), k in zip(self.modules.items(), keys)}

    def apply(self, params, name: str, *args, method=None, **kwargs):
        module = self.modules[name]
        fn = getattr(module, method) if isinstance(method, str) else method
        return module.apply(params[name], *args, method=fn, **kwargs)


def clip_pixels(x, size: int):
    """Images [..., H, W, 3] in [-1, 1] -> CLIP pixel values at size x size (bicubic, OpenAI mean/std), in jnp."""
    lead = x.shape[:-3]
    flat = x.reshape((-1,) + x.shape[-3:]).astype(jnp.float32)
    resized = jax.image.resize(flat, (flat.shape[0], size, size, 3), "bicubic")
    unit = jnp.clip((resized + 1.0) / 2.0, 0.0, 1.0)
    return ((unit - OPENAI_MEAN) / OPENAI_STD).reshape(lead + (size, size, 3))


class PromptEncoders:
    """Conditioning vectors [B, 1, D] of each modality, and the original's unconditional inputs
    (empty text, an all-zero i.e. mid-grey image / video, a silent wave)."""

    def __init__(self, networks: Networks, clip_tokenizer=None, text_length: int = 0):
        self.networks = networks
        self.empty_text = None if clip_tokenizer is None else np.asarray(clip_tokenizer.encode([""], text_length))

    def encode(self, params, modality: str, batch, rng):
        n = self.networks
        if modality == "text":
            return n.apply(params, "clip", batch["text_ids/clip"], method="encode_text")
        if modality == "image":
            return n.apply(params, "clip", clip_pixels(batch["image"], n["clip"].image_size), method="encode_image")
        if modality == "video":
            return n.apply(params, "clip", clip_pixels(batch["video"], n["clip"].image_size), method="encode_video")
        if modality == "audio":
            return n.apply(params, "clap", batch["audio"], rng=rng, method="encode_audio")
        raise ConfigError(f"unknown conditioning modality {modality!r}; expected one of {list(MODALITIES)}")

    def unconditional(self, params, modality: str, batch, rng):
        """The unconditional embedding [1, 1, D] (computed on one example shaped like the batch's)."""
        if modality == "text":
            return self.encode(params, "text", {"text_ids/clip": jnp.asarray(self.empty_text)}, rng)
        return self.encode(params, modality, {modality: jnp.zeros_like(batch[modality][:1])}, rng)


class LatentCoders:
    """Batch media -> scaled diffusion latents with the frozen autoencoders (CoDi's encode helpers)."""

    def __init__(self, networks: Networks, audio_frames: int = 0):
        self.networks, self.audio_frames = networks, audio_frames

    def encode(self, params, modality: str, batch, rng):
        n = self.networks
        if modality in ("image", "video"):
            return n.apply(params, "image_vae", batch[modality], rng, method="to_latent")
        if modality == "audio":
            vae = n["audio_vae"]
            posterior = n.apply(params, "audio_vae", batch["audio"], self.audio_frames, method="encode_wave")
            return vae.scale_factor * posterior.sample(rng)
        if modality == "text":
            return n.apply(params, "optimus", batch["text_ids/bert"], method="to_latent")
        raise ConfigError(f"unknown modality {modality!r}; expected one of {list(MODALITIES)}")
