"""`ldm`: one single-modality latent diffuser (image, video, audio or text), CoDi stage 1b.

eps-MSE (codi_jax.diffusion.loss: one t per example uniform in [0, 1000), CoDi's schedule) on
latents from the frozen autoencoder of `config.model.modality` (image / video: the image VAE,
frames folded; audio: the mel VAE on AudioLDM's fbank; text: Optimus' BERT mean), conditioned
on the frozen, aligned prompt encoders: each example takes the encoding of one of
`config.model.conditions` (drawn at random when several are listed). With probability
`config.model.cond_dropout` an example gets the original's unconditional input instead (CLIP of
"" for text, CLIP of an all-zero image / video, CLAP of a silent wave), which classifier-free
guidance needs at sampling time.

Only `config.model.trainable` trains (default: the UNet's "base" group; for video its "temporal"
group, the video UNet starting from the image UNet's weights via config.init_from.image_ldm).
Pretrained parts come from config.init_from: autoencoders (the latent coder), bridging_align
(clip / clap), image_ldm (unet_image, for video).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from codi_jax.data import pipeline, tokenizers
from codi_jax.diffusion import samplers
from codi_jax.diffusion.guidance import cfg_denoiser
from codi_jax.diffusion.loss import diffusion_loss
from codi_jax.diffusion.schedule import make_schedule
from codi_jax.train.errors import ConfigError
from codi_jax.train.stages.base import Pretrained, Stage, require_choice
from codi_jax.train.stages.components import (LATENT_CODER_OF, MODALITIES, PROMPT_ENCODER_OF, UNET_OF, LatentCoders,
                                              Networks, PromptEncoders, trainable_predicate)


class Conditioning:
    """Per-example prompt context [B, 1, D] from one of several condition modalities, with dropout."""

    def __init__(self, encoders: PromptEncoders, conditions, dropout: float):
        self.encoders, self.conditions, self.dropout = encoders, tuple(conditions), float(dropout)

    def __call__(self, params, batch, rng):
        k_pick, k_drop, *k_enc = jax.random.split(rng, 2 + 2 * len(self.conditions))
        encoded = jnp.stack([self.encoders.encode(params, m, batch, k) for m, k in
                             zip(self.conditions, k_enc[:len(self.conditions)])])
        null = jnp.stack([jnp.broadcast_to(self.encoders.unconditional(params, m, batch, k), encoded.shape[1:])
                          for m, k in zip(self.conditions, k_enc[len(self.conditions):])])
        b = encoded.shape[1]
        pick = jax.random.randint(k_pick, (b,), 0, len(self.conditions))
        rows = jnp.arange(b)
        drop = jax.random.uniform(k_drop, (b,)) < self.dropout
        context = jnp.where(drop[:, None, None], null[pick, rows], encoded[pick, rows])
        return jax.lax.stop_gradient(context)


def check_conditions(conditions, what: str) -> tuple[str, ...]:
    for m in conditions:
        require_choice(m, MODALITIES, f"{what} condition modality")
    return tuple(conditions)


class LdmStage(Stage):
    def __init__(self, config, mesh):
        super().__init__(config, mesh)
        m = config.model
        self.modality = require_choice(m.modality, MODALITIES, "ldm modality")
        self.conditions = check_conditions(m.conditions, "ldm")
        if not self.conditions:
            raise ConfigError("config.model.conditions is empty; expected e.g. ('text',)")
        self.unet_name = UNET_OF[self.modality]
        coder = LATENT_CODER_OF[self.modality]
        names = [self.unet_name, coder] + sorted({PROMPT_ENCODER_OF[c] for c in self.conditions})
        self.networks = Networks(m, list(dict.fromkeys(names)), dtype=jnp.dtype(config.dtype),
                                 remat_policy=config.remat_policy)
        specs = config.data.preprocess.text.tokenizers
        needs_clip_text = "text" in self.conditions
        if needs_clip_text and "clip" not in specs:
            raise ConfigError("text conditions need data.preprocess.text.tokenizers.clip")
        if self.modality == "text" and "bert" not in specs:
            raise ConfigError("the text ldm needs data.preprocess.text.tokenizers.bert (Optimus' encoder)")
        clip_tok = tokenizers.build_tokenizer("clip", specs.clip.path) if needs_clip_text else None
        encoders = PromptEncoders(self.networks, clip_tok, specs.clip.max_length if needs_clip_text else 0)
        self.conditioning = Conditioning(encoders, self.conditions, m.cond_dropout)
        self.coders = LatentCoders(self.networks, m.audio_frames)
        self.schedule = make_schedule()
        self._trainable = trainable_predicate(m.trainable)

    def init(self, rng):
        return self.networks.init(rng)

    def is_trainable(self, path: str) -> bool:
        return self._trainable(path)

    def dataset(self, *, global_batch_size, process_index, process_count, seed):
        return pipeline.make_dataset(self.config.data, global_batch_size=global_batch_size,
                                     process_index=process_index, process_count=process_count, seed=seed)

    def pretrained(self):
        sources = self.config.init_from
        out = []
        if sources.get("autoencoders"):
            out.append(Pretrained(sources.autoencoders, *(2 * (LATENT_CODER_OF[self.modality],))))
        if sources.get("bridging_align"):
            out += [Pretrained(sources.bridging_align, n, n) for n in self.networks.modules if n in ("clip", "clap")]
        if sources.get("image_ldm"):
            out.append(Pretrained(sources.image_ldm, "unet_image", "unet_image"))
        return out

    def _eps(self, params, xt, t, context):
        return {m: self.networks.apply(params, self.unet_name, x, t, context) for m, x in xt.items()}

    def loss(self, params, batch, rng, step):
        k_lat, k_cond, k_diff = jax.random.split(rng, 3)
        x0 = jax.lax.stop_gradient(self.coders.encode(params, self.modality, batch, k_lat))
        context = self.conditioning(params, batch, k_cond)
        loss, _ = diffusion_loss(self._eps, params, {self.modality: x0}, k_diff, self.schedule, context=context)
        return loss, {"eps_mse": loss, "latent_std": jnp.std(x0)}

    def samples(self, params, batch, rng):
        """A few DDIM samples with classifier-free guidance, conditioned like the batch's first examples."""
        if self.modality not in ("image", "video"):
            return {}
        m = self.config.model
        k_lat, k_cond, k_noise = jax.random.split(rng, 3)
        head = jax.tree.map(lambda a: a[:2], batch)
        x0 = self.coders.encode(params, self.modality, head, k_lat)
        cond = self.conditioning.encoders.encode(params, self.conditions[0], head, k_cond)
        null = self.conditioning.encoders.unconditional(params, self.conditions[0], head, k_cond)
        denoise = cfg_denoiser(lambda x, t, c: self._eps(params, x, t, c), cond,
                               jnp.broadcast_to(null, cond.shape), m.guidance_scale)
        noise = {self.modality: jax.random.normal(k_noise, x0.shape)}
        latent = samplers.sample(denoise, noise, schedule=self.schedule, steps=m.sample_steps)[self.modality]
        pixels = self.networks.apply(params, "image_vae", latent, method="from_latent")
        if self.modality == "video":
            pixels = pixels.reshape((-1,) + pixels.shape[2:])
        return {"images": {"generated": jnp.clip((pixels + 1.0) / 2.0, 0.0, 1.0)}}
