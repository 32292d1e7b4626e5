"""`ldm`: one single-modality latent diffuser (image, video, audio or text), CoDi stage 1b.

Denoising loss (codi_jax.diffusion.loss: one t per example uniform in [0, 1000), CoDi's schedule; target
`config.model.prediction`: the released "eps" or "v") on latents from the frozen autoencoder of
`config.model.modality` (image / video: the image VAE, frames folded; audio: the mel VAE on AudioLDM's
fbank; text: Optimus' BERT mean), or on the cached posteriors of codi_jax.precompute where the batch
carries them, conditioned on the frozen, aligned prompt encoders: each example takes the encoding of one
of `config.model.conditions` (drawn at random when several are listed), or with `model.mix_conditions` the
equal-weight mix of a random subset of them, as multi-condition generation mixes its inputs.
With probability `config.model.cond_dropout` an example gets the original's unconditional input instead
(CLIP of "" for text, CLIP of an all-zero image / video, CLAP of a silent wave, mixed alike), which
classifier-free guidance needs at sampling time.

`config.model.also_train_on` names other modalities of the same UNet trained from their own data
objectives (the video diffuser keeps generating images: "image"); each batch carries one objective.
Only `config.model.trainable` trains (default: the UNet's "base" group; for video its "temporal"
group, the video UNet starting from the image UNet's weights via config.init_from.image_ldm).
Pretrained parts come from config.init_from: autoencoders (the latent coder), bridging_align
(clip / clap), image_ldm (unet_image, for video).
The probe (`config.probe.kind = "generation"`) generates the probe examples' modality from each condition
modality alone and reads the outputs back with the oracle.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from codi_jax.data import pipeline, tokenizers
from codi_jax.diffusion import samplers
from codi_jax.diffusion.guidance import cfg_denoiser
from codi_jax.diffusion.loss import diffusion_loss
from codi_jax.diffusion.schedule import PREDICTIONS, eps_from_prediction, make_schedule
from codi_jax.eval import probes
from codi_jax.models import optimus
from codi_jax.models.catalogue import LATENT_CODER_OF, MODALITIES, PROMPT_ENCODER_OF, UNET_OF
from codi_jax.models.networks import Networks
from codi_jax.train.errors import ConfigError
from codi_jax.train.stages.base import Pretrained, Stage, require_choice
from codi_jax.train.stages.components import (LatentCoders, PromptEncoders, has_input, media_shapes,
                                              with_measured_scales, trainable_predicate)


class Conditioning:
    """Per-example prompt context [B, 1, D] from one of several condition modalities (or a mix of some of
    them), with dropout to the matching unconditional mix."""

    def __init__(self, encoders: PromptEncoders, conditions, dropout: float, mix: bool = False):
        self.encoders, self.conditions, self.dropout = encoders, tuple(conditions), float(dropout)
        self.mix = bool(mix)

    def weights(self, rng, b: int) -> jax.Array:
        """[n_conditions, B] mixing weights summing to 1 per example: one-hot, or equal over a random subset
        (each condition kept with probability 1/2; one drawn at random when none is)."""
        k_pick, k_subset = jax.random.split(rng)
        n = len(self.conditions)
        one_hot = jax.nn.one_hot(jax.random.randint(k_pick, (b,), 0, n), n).T
        if not self.mix:
            return one_hot
        subset = jax.random.bernoulli(k_subset, 0.5, (n, b)).astype(jnp.float32)
        subset = jnp.where(subset.sum(0, keepdims=True) > 0, subset, one_hot)
        return subset / subset.sum(0, keepdims=True)

    def __call__(self, params, batch, rng):
        k_weights, k_drop, *k_enc = jax.random.split(rng, 2 + 2 * len(self.conditions))
        n = len(self.conditions)
        encoded = jnp.stack([self.encoders.encode(params, m, batch, k) for m, k in zip(self.conditions, k_enc[:n])])
        null = jnp.stack([self.encoders.unconditional(params, m, k) for m, k in zip(self.conditions, k_enc[n:])])
        b = encoded.shape[1]
        w = self.weights(k_weights, b)[:, :, None, None]
        drop = jax.random.uniform(k_drop, (b,)) < self.dropout
        context = jnp.where(drop[:, None, None], jnp.sum(w * null, axis=0), jnp.sum(w * encoded, axis=0))
        return jax.lax.stop_gradient(context)


def check_conditions(conditions, what: str) -> tuple[str, ...]:
    for m in conditions:
        require_choice(m, MODALITIES, f"{what} condition modality")
    return tuple(conditions)


def guided_sample(eps_fn, cond, uncond, noise, *, schedule, guidance: float, method: str, steps: int):
    """Latents from `noise` ({modality: x_T}) by `method` with classifier-free guidance; eps_fn(x, t, c)."""
    denoise = cfg_denoiser(eps_fn, cond, jnp.broadcast_to(uncond, cond.shape), guidance)
    return samplers.sample(denoise, noise, schedule=schedule, method=method, steps=steps)


class LdmStage(Stage):
    def __init__(self, config, mesh):
        super().__init__(config, mesh)
        m = config.model
        self.modality = require_choice(m.modality, MODALITIES, "ldm modality")
        self.modalities = (self.modality,) + tuple(m.get("also_train_on", ()))
        self.unet_name = UNET_OF[self.modality]
        for extra in self.modalities[1:]:
            require_choice(extra, MODALITIES, "ldm also_train_on modality")
            if UNET_OF[extra] != self.unet_name:
                raise ConfigError(f"also_train_on {extra!r} is generated by {UNET_OF[extra]}, not by this stage's "
                                  f"{self.unet_name}")
        self.conditions = check_conditions(m.conditions, "ldm")
        if not self.conditions:
            raise ConfigError("config.model.conditions is empty; expected e.g. ('text',)")
        self.prediction = require_choice(m.get("prediction", "eps"), PREDICTIONS, "prediction")
        # The measured latent scales become part of this run's config (saved with its checkpoints).
        config.model = m = with_measured_scales(m, config.init_from.get("autoencoders", ""))
        coders = [LATENT_CODER_OF[x] for x in self.modalities]
        names = [self.unet_name] + coders + sorted({PROMPT_ENCODER_OF[c] for c in self.conditions})
        self.networks = Networks(m, list(dict.fromkeys(names)), dtype=jnp.dtype(config.dtype),
                                 remat_policy=config.remat_policy, attn_impl=config.attn_impl)
        specs = config.data.preprocess.text.tokenizers
        needs_clip_text = "text" in self.conditions
        if needs_clip_text and "clip" not in specs:
            raise ConfigError("text conditions need data.preprocess.text.tokenizers.clip")
        if "text" in self.modalities and "bert" not in specs and not pipeline.reads_encodings(config.data):
            raise ConfigError("the text ldm needs data.preprocess.text.tokenizers.bert (Optimus' encoder)")
        clip_tok = tokenizers.build_tokenizer("clip", specs.clip.path) if needs_clip_text else None
        encoders = PromptEncoders(self.networks, clip_tok, specs.clip.max_length if needs_clip_text else 0,
                                  media_shapes(config.data))
        self.conditioning = Conditioning(encoders, self.conditions, m.cond_dropout, m.get("mix_conditions", False))
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
            out += [Pretrained(sources.autoencoders, c, c) for c in dict.fromkeys(
                LATENT_CODER_OF[x] for x in self.modalities)]
        if sources.get("bridging_align"):
            out += [Pretrained(sources.bridging_align, n, n) for n in self.networks.modules if n in ("clip", "clap")]
        if sources.get("image_ldm"):
            out.append(Pretrained(sources.image_ldm, "unet_image", "unet_image"))
        return out

    def _eps(self, params, xt, t, context):
        return {m: self.networks.apply(params, self.unet_name, x, t, context) for m, x in xt.items()}

    def loss(self, params, batch, rng, step):
        # The first of (modality, *also_train_on) the batch carries: a video batch may also carry its images
        # (as a condition), an image batch never carries video.
        present = [x for x in self.modalities if has_input(batch, x, "latent")]
        if not present:
            raise ConfigError(f"a batch must carry one of {list(self.modalities)}; it has keys {sorted(batch)}")
        modality = present[0]
        k_lat, k_cond, k_diff = jax.random.split(rng, 3)
        x0 = jax.lax.stop_gradient(self.coders.encode(params, modality, batch, k_lat))
        context = self.conditioning(params, batch, k_cond)
        loss, _ = diffusion_loss(self._eps, params, {modality: x0}, k_diff, self.schedule, context=context,
                                 prediction=self.prediction)
        return loss, {f"{modality}/loss": loss, f"{modality}/latent_std": jnp.std(x0)}

    # -- generation (probe and TensorBoard samples) --------------------------------------------------------

    def generate(self, params, modality: str, condition: str, batch, rng):
        """Latents of `modality` for the batch's examples, conditioned on their `condition` encodings."""
        probe = self.config.get("probe", {})
        k_cond, k_noise = jax.random.split(rng)
        cond = self.conditioning.encoders.encode(params, condition, batch, k_cond)
        uncond = self.conditioning.encoders.unconditional(params, condition, k_cond)
        shape = self.coders.latent_shape(params, modality, batch)
        noise = {modality: jax.random.normal(k_noise, (cond.shape[0],) + shape)}

        def eps_fn(x, t, c):
            return eps_from_prediction(self.schedule, x, t, self._eps(params, x, t, c), self.prediction)

        return guided_sample(eps_fn, cond, uncond, noise, schedule=self.schedule,
                             guidance=float(probe.get("guidance", self.config.model.guidance_scale)),
                             method=probe.get("sampler", "ddim"),
                             steps=int(probe.get("steps", self.config.model.sample_steps)))[modality]

    def decode(self, params, modality: str, latents):
        if modality == "text":
            return optimus.generate(self.networks["optimus"], params["optimus"]["params"], latents,
                                    jax.random.key(0), greedy=True,
                                    max_length=int(self.config.get("probe", {}).get("text_max_tokens", 30)))
        return self.coders.decode(params, modality, latents)

    def probe_outputs(self, params, batch, rng):
        """{condition: {modality: decoded outputs}} for every condition alone and every trained modality it is
        not (an image is not scored on reproducing itself)."""
        out = {}
        for i, condition in enumerate(self.conditions):
            for j, modality in enumerate(self.modalities):
                if modality != condition:
                    key = jax.random.fold_in(rng, len(self.modalities) * i + j)
                    out.setdefault(condition, {})[modality] = self.decode(params, modality, self.generate(
                        params, modality, condition, batch, key))
        return out

    def probe(self):
        spec = self.probe_spec("generation")
        if spec is None:
            return None
        needed = set(self.conditions) | set(self.modalities)
        batch = pipeline.probe_batch(self.config.data, sorted(needed), spec.num_examples)
        return probes.Probe("generation", batch, self.probe_outputs, finish=self._finish)

    def _finish(self, outputs):
        gpt2 = tokenizers.build_tokenizer("gpt2", self.config.data.preprocess.text.tokenizers.get(
            "gpt2", {}).get("path", ""))
        samples = self.config.data.preprocess.audio.num_samples
        for generated in outputs.values():
            if "audio" in generated:
                generated["audio"] = probes.waves_from_mels(generated["audio"], samples)
            if "text" in generated:
                generated["text"] = optimus.decode_text(gpt2, *generated["text"])
        return outputs

    def samples(self, params, batch, rng):
        """A few guided samples conditioned like the batch's first examples."""
        modality = next((x for x in self.modalities if has_input(batch, x, "latent")), None)
        if modality not in ("image", "video"):
            return {}
        head = jax.tree.map(lambda a: a[:2], batch)
        condition = next((c for c in self.conditions if has_input(head, c, "prompt")), None)
        if condition is None:
            return {}
        pixels = self.decode(params, modality, self.generate(params, modality, condition, head, rng))
        if modality == "video":
            pixels = pixels.reshape((-1,) + pixels.shape[2:])
        return {"images": {"generated": pixels}}
