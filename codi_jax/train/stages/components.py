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
import ml_collections
import numpy as np

from codi_jax import checkpoints
from codi_jax.models import unet
from codi_jax.models.networks import Networks
from codi_jax.models.catalogue import LATENT_CODER_OF, LATENT_CODERS, MODALITIES, UNETS
from codi_jax.models.clip_preprocess import OPENAI_MEAN, OPENAI_STD
from codi_jax.train.errors import ConfigError

# The batch entry each modality is read from by the prompt encoders and by the latent coders.
PROMPT_KEY = {"image": "image", "video": "video", "audio": "audio", "text": "text_ids/clip"}
LATENT_KEY = {"image": "image", "video": "video", "audio": "audio", "text": "text_ids/bert"}

def with_measured_scales(model_config, autoencoders_workdir: str):
    """`model_config` with the latent scale (`overrides.scale_factor`) of every coder whose spec says
    `latent_scale: "measured"` taken from the autoencoders run that trained it (its checkpoint's
    `measured.latent_scale`, 1 / the rms of its latents); other coders keep their configured scale."""
    wanted = [n for n in LATENT_CODERS if n in model_config and model_config[n].get("latent_scale") == "measured"]
    if not wanted:
        return model_config
    if not autoencoders_workdir:
        raise ConfigError(f"config.model.{wanted[0]}.latent_scale 'measured' needs config.init_from.autoencoders "
                          "(the run that measured it)")
    resolved = ml_collections.ConfigDict(model_config.to_dict())
    for name in wanted:
        scale = checkpoints.measured_latent_scale(autoencoders_workdir, name)
        if scale is None:
            raise ConfigError(f"init_from.autoencoders {autoencoders_workdir} measured no latent scale for {name}")
        resolved[name].overrides.scale_factor = scale
    return resolved


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


def clip_pixels(x, size: int):
    """Images [..., H, W, 3] in [-1, 1] -> CLIP pixel values at size x size (bicubic, OpenAI mean/std), in jnp."""
    lead = x.shape[:-3]
    flat = x.reshape((-1,) + x.shape[-3:]).astype(jnp.float32)
    resized = jax.image.resize(flat, (flat.shape[0], size, size, 3), "bicubic")
    unit = jnp.clip((resized + 1.0) / 2.0, 0.0, 1.0)
    return ((unit - OPENAI_MEAN) / OPENAI_STD).reshape(lead + (size, size, 3))


def media_shapes(data_config) -> dict[str, tuple[int, ...]]:
    """One example's image / video / audio shape as the data config preprocesses it."""
    p = data_config.preprocess
    return {"image": (p.image.size, p.image.size, 3), "video": (p.video.num_frames, p.video.size, p.video.size, 3),
            "audio": (p.audio.num_samples,)}


# Batch entries of cached encodings (codi_jax.precompute): a prompt encoding [B, D] per modality, and each
# autoencoder's posterior mean and standard deviation, unscaled (Optimus: the mean only, CoDi uses no sample).
EMBEDDING_KEY = {m: f"embedding/{m}" for m in MODALITIES}
LATENT_MEAN_KEY = {m: f"latent/{m}" for m in MODALITIES}
LATENT_STD_KEY = {m: f"latent_std/{m}" for m in MODALITIES}


def has_input(batch, modality: str, role: str) -> bool:
    """Whether the batch carries `modality` for the prompt encoders (role "prompt") or the latent coders
    ("latent"), as media or as cached encodings."""
    keys = (PROMPT_KEY, EMBEDDING_KEY) if role == "prompt" else (LATENT_KEY, LATENT_MEAN_KEY)
    return any(k[modality] in batch for k in keys)


class PromptEncoders:
    """Conditioning vectors [B, 1, D] of each modality (cached encodings where the batch has them), and the
    original's unconditional inputs (empty text, an all-zero i.e. mid-grey image / video, a silent wave)."""

    def __init__(self, networks: Networks, clip_tokenizer=None, text_length: int = 0, shapes=None):
        self.networks, self.shapes = networks, dict(shapes or {})
        self.empty_text = None if clip_tokenizer is None else np.asarray(clip_tokenizer.encode([""], text_length))

    def encode(self, params, modality: str, batch, rng):
        n = self.networks
        if EMBEDDING_KEY.get(modality) in batch:
            return jnp.asarray(batch[EMBEDDING_KEY[modality]], jnp.float32)[:, None, :]
        if modality == "text":
            return n.apply(params, "clip", batch["text_ids/clip"], method="encode_text")
        if modality == "image":
            return n.apply(params, "clip", clip_pixels(batch["image"], n["clip"].image_size), method="encode_image")
        if modality == "video":
            return n.apply(params, "clip", clip_pixels(batch["video"], n["clip"].image_size), method="encode_video")
        if modality == "audio":
            return n.apply(params, "clap", batch["audio"], rng=rng, method="encode_audio")
        raise ConfigError(f"unknown conditioning modality {modality!r}; expected one of {list(MODALITIES)}")

    def unconditional(self, params, modality: str, rng):
        """The unconditional embedding [1, 1, D] (of one example of the configured media shape)."""
        if modality == "text":
            return self.encode(params, "text", {"text_ids/clip": jnp.asarray(self.empty_text)}, rng)
        return self.encode(params, modality, {modality: jnp.zeros((1,) + self.shapes[modality])}, rng)


class LatentCoders:
    """Batch media (or cached posteriors) -> scaled diffusion latents with the frozen autoencoders (CoDi's encode
    helpers); a cached posterior is sampled with the same noise the media path draws."""

    def __init__(self, networks: Networks, audio_frames: int = 0):
        self.networks, self.audio_frames = networks, audio_frames

    def encode(self, params, modality: str, batch, rng):
        n = self.networks
        coder = n[LATENT_CODER_OF[modality]]
        if LATENT_MEAN_KEY[modality] in batch:
            mean = jnp.asarray(batch[LATENT_MEAN_KEY[modality]], jnp.float32)
            if modality != "text":
                mean = mean + jnp.asarray(batch[LATENT_STD_KEY[modality]], jnp.float32) * jax.random.normal(
                    rng, mean.shape, mean.dtype)
            return coder.scale_factor * mean
        if modality in ("image", "video"):
            return n.apply(params, "image_vae", batch[modality], rng, method="to_latent")
        if modality == "audio":
            posterior = n.apply(params, "audio_vae", batch["audio"], self.audio_frames, method="encode_wave")
            return coder.scale_factor * posterior.sample(rng)
        if modality == "text":
            return n.apply(params, "optimus", batch["text_ids/bert"], method="to_latent")
        raise ConfigError(f"unknown modality {modality!r}; expected one of {list(MODALITIES)}")

    def latent_shape(self, params, modality: str, batch) -> tuple[int, ...]:
        """One example's latent shape (traced on the batch's first example: nothing runs)."""
        head = jax.tree.map(lambda a: a[:1], batch)
        encode = lambda p, h: self.encode(p, modality, h, jax.random.key(0))  # noqa: E731
        return tuple(jax.eval_shape(encode, params, head).shape[1:])

    def posterior(self, params, modality: str, batch):
        """(mean, std) of the unscaled posterior, what the cache stores (Optimus: std None)."""
        n = self.networks
        if modality in ("image", "video"):
            p = n.apply(params, "image_vae", batch[modality], method="encode")
        elif modality == "audio":
            p = n.apply(params, "audio_vae", batch["audio"], self.audio_frames, method="encode_wave")
        else:
            return n.apply(params, "optimus", batch["text_ids/bert"], method="encode")[2], None
        return p.mean, p.std

    def decode(self, params, modality: str, latents):
        """Scaled latents -> image / video pixels in [0, 1], or the audio VAE's log-mel [B, T, 64]."""
        n = self.networks
        if modality in ("image", "video"):
            return jnp.clip((n.apply(params, "image_vae", latents, method="from_latent") + 1.0) / 2.0, 0.0, 1.0)
        if modality == "audio":
            return n.apply(params, "audio_vae", latents, method="from_latent")[..., 0]
        raise ConfigError(f"decode: {modality!r} latents are decoded by the text generator, not here")
