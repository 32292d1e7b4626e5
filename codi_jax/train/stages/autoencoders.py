"""`autoencoders`: the image KL-VAE, the audio mel VAE, the HiFi-GAN vocoder and the Optimus text VAE.

Every component named in `config.model.components` trains on each batch (one data objective
carrying all the modalities they need; train one component per run by naming only it). Those named in
`config.model.carried` are read from `config.init_from.autoencoders` and kept as they are, so this run's
checkpoint hands them on too.
Reconstruction losses:
- image / audio VAE (LDM's weighting, divided through by the input size): mean |x - x_hat| (or the
  squared error: losses.reconstruction.<vae> = "l2")
  (+ perceptual_weight * mean LPIPS(x, x_hat) when losses.lpips_path names a local LPIPS weights
  file) + kl_weight * warm-up(step) * KL / input elements; the audio VAE works on AudioLDM's
  log-mel fbank [B, T, 64, 1] of the batch's wave.
- vocoder: mel of the real wave -> generator -> wave; L1 between log-mels (HiFi-GAN's 45x
  mel loss) + multi-resolution STFT loss (spectral convergence + log magnitude).
- Optimus: BERT posterior sample -> GPT-2 teacher forcing; token cross-entropy summed per
  sentence + beta * warm-up(step) * KL with Optimus' dimension-wise free bits.
Adversarial losses (`losses.adversarial=True`; adversarial.py has the formulas and the gradient routing):
- image / audio VAE: LDM's LPIPSWithDiscriminator GAN part, a PatchGAN (`config.model.<vae>_disc`) with the
  hinge loss and the adaptive generator weight on the decoder's conv_out kernel, from step losses.disc_start.
- vocoder: HiFi-GAN's MPD + MSD (`config.model.vocoder_disc`), least-squares losses and feature matching
  (losses.feature_weight), from step losses.vocoder_disc_start.
- Optimus: none (the original has none).
The discriminators are trainable components of this stage's parameter tree (`<component>_disc`), so the
one optimizer updates them with the generators; LPIPS weights sit in the frozen tree as `lpips`. Later
stages copy only the autoencoders (`image_vae`, ...), never the discriminators.
Where this differs from the originals' training: one optimizer instead of a second one for the
discriminators (Adam's moments are per parameter, but the schedule and any global-norm clipping are
shared), simultaneous instead of alternating updates, LDM's learned output log-variance held at 0
(the reconstruction term is L1 (+ LPIPS) as such), and the vocoder's discriminators see the whole
training wave rather than HiFi-GAN's 8192-sample segments.
"""
from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.data import mel, pipeline, tokenizers
from codi_jax.eval import probes
from codi_jax.models import discriminators, optimus
from codi_jax.models.discriminators import HifiGanDiscriminator, PatchDiscriminator
from codi_jax.models.networks import Networks
from codi_jax.train.errors import ConfigError
from codi_jax.train.stages import adversarial
from codi_jax.train.stages.base import Pretrained, Stage, require_choice
from codi_jax.train.stages.components import trainable_predicate

AUTOENCODERS = ("image_vae", "audio_vae", "vocoder", "optimus")
NEEDS = {"image_vae": ("image",), "audio_vae": ("audio",), "vocoder": ("audio",), "optimus": ("text",)}
VAES = ("image_vae", "audio_vae")
# The discriminator each component trains against when losses.adversarial is on (Optimus has none).
DISCRIMINATED = {"image_vae": PatchDiscriminator, "audio_vae": PatchDiscriminator, "vocoder": HifiGanDiscriminator}
LPIPS = "lpips"
# The last layer of the VAE decoder, whose kernel gradients set LDM's adaptive GAN weight.
LAST_LAYER = ("decoder", "conv_out")


def disc_name(component: str) -> str:
    return f"{component}_disc"


def _stft_magnitude(wave, n_fft: int, hop: int):
    """|STFT| with a smooth floor (sqrt(re^2 + im^2 + 1e-7)) so gradients stay finite at silent bins."""
    pad = n_fft // 2
    padded = jnp.pad(wave, ((0, 0), (pad, pad)), mode="reflect")
    frames = (padded.shape[-1] - n_fft) // hop + 1
    index = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
    spec = jnp.fft.rfft(padded[:, index] * jnp.asarray(np.hanning(n_fft + 1)[:-1], jnp.float32), axis=-1)
    return jnp.sqrt(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2 + 1e-7)


def _log_mel(wave):
    magnitude = _stft_magnitude(wave, mel.N_FFT, mel.HOP_LENGTH)
    return jnp.log(jnp.maximum(magnitude @ jnp.asarray(mel.mel_filterbank()).T, mel.LOG_FLOOR))


def multi_resolution_stft_loss(fake, real, resolutions):
    total = 0.0
    for n_fft, hop in resolutions:
        f, r = _stft_magnitude(fake, n_fft, hop), _stft_magnitude(real, n_fft, hop)
        convergence = jnp.linalg.norm(r - f) / (jnp.linalg.norm(r) + 1e-7)
        total += convergence + jnp.mean(jnp.abs(jnp.log(r) - jnp.log(f)))
    return total / len(resolutions)


def _warmup(step, steps: int):
    return jnp.minimum(1.0, (step.astype(jnp.float32) + 1.0) / max(steps, 1))


class AutoencodersStage(Stage):
    def __init__(self, config, mesh):
        super().__init__(config, mesh)
        self.components = tuple(config.model.components)
        for name in self.components:
            require_choice(name, AUTOENCODERS, "autoencoder component")
        for name in VAES:
            require_choice(config.losses.reconstruction[name], ("l1", "l2"), f"losses.reconstruction.{name}")
        if not self.components:
            raise ConfigError("config.model.components is empty; name at least one of " + str(list(AUTOENCODERS)))
        # Components read from init_from.autoencoders and carried into this run's checkpoint untrained, so one
        # workdir hands every autoencoder on (e.g. Optimus, trained alone for more of its cheap steps first).
        self.carried = tuple(config.model.get("carried", ()))
        for name in self.carried:
            require_choice(name, AUTOENCODERS, "carried autoencoder")
            if name in self.components:
                raise ConfigError(f"{name!r} is both in config.model.components and config.model.carried")
        if self.carried and not config.init_from.get("autoencoders"):
            raise ConfigError(f"config.model.carried {list(self.carried)} needs config.init_from.autoencoders "
                              "(the workdir that trained them)")
        losses = config.losses
        dtype = jnp.dtype(config.dtype)
        self.networks = Networks(config.model, self.components + self.carried, dtype=dtype,
                                 remat_policy=config.remat_policy, attn_impl=config.attn_impl)
        self.discriminators = {}
        if losses.adversarial:
            for name in self.components:
                if name in DISCRIMINATED:
                    self.discriminators[disc_name(name)] = self._discriminator(config.model, name, dtype)
        self.lpips, self.lpips_weights = None, None
        if losses.lpips_path and any(c in VAES for c in self.components):
            try:
                self.lpips_weights = adversarial.load_lpips(losses.lpips_path)
            except ValueError as e:
                raise ConfigError(f"losses.lpips_path: {e}") from None
            self.lpips = adversarial.Lpips(dtype=dtype)
        self._trainable = trainable_predicate([f"{c}:*" for c in self.components + tuple(self.discriminators)])
        objective = next(iter(config.data.objectives.values()))
        missing = {m for c in self.components for m in NEEDS[c]} - set(objective.modalities)
        if missing:
            raise ConfigError(f"the data objective has no {sorted(missing)}; components {list(self.components)} "
                              "need them")
        if "optimus" in self.components:
            specs = config.data.preprocess.text.tokenizers
            if "bert" not in specs or "gpt2" not in specs:
                raise ConfigError("optimus needs data.preprocess.text.tokenizers 'bert' and 'gpt2'")
            if not 0.0 <= losses.optimus_word_dropout < 1.0:
                raise ConfigError(f"losses.optimus_word_dropout must be in [0, 1), got {losses.optimus_word_dropout}")
            self.gpt2_pad = tokenizers.build_tokenizer("gpt2", specs.gpt2.path).pad_id

    def _discriminator(self, model, component: str, dtype):
        name = disc_name(component)
        if name not in model:
            raise ConfigError(f"losses.adversarial=True needs config.model.{name} (a preset of "
                              f"codi_jax.models.discriminators.CONFIGS, e.g. {{'variant': 'tiny'}})")
        spec = model[name]
        overrides = spec.overrides.to_dict() if "overrides" in spec else {}
        try:
            module = discriminators.build(spec.variant, **overrides, dtype=dtype)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"config.model.{name}: {e}") from None
        kind = DISCRIMINATED[component]
        if not isinstance(module, kind):
            raise ConfigError(f"config.model.{name} is a {type(module).__name__}; {component} needs a {kind.__name__}")
        if kind is PatchDiscriminator and module.in_channels != self.networks[component].in_channels:
            raise ConfigError(f"config.model.{name} takes {module.in_channels} channels; {component} makes "
                              f"{self.networks[component].in_channels}")
        return module

    def init(self, rng):
        params = self.networks.init(rng)
        for i, (name, module) in enumerate(self.discriminators.items()):
            params[name] = module.init(jax.random.fold_in(rng, 1000 + i), *discriminators.init_inputs(module))
        if self.lpips is not None:
            params[LPIPS] = adversarial.lpips_variables(self.lpips, self.lpips_weights)
        return params

    def is_trainable(self, path: str) -> bool:
        return self._trainable(path)

    def pretrained(self):
        return [Pretrained(self.config.init_from.autoencoders, name, name) for name in self.carried]

    def dataset(self, *, global_batch_size, process_index, process_count, seed):
        return pipeline.make_dataset(self.config.data, global_batch_size=global_batch_size,
                                     process_index=process_index, process_count=process_count, seed=seed)

    def loss(self, params, batch, rng, step):
        losses = self.config.losses
        keys = dict(zip(self.components, jax.random.split(rng, len(self.components))))
        metrics, total = {}, 0.0
        for name in self.components:
            loss, parts = getattr(self, f"_{name}")(params, batch, keys[name], step, losses)
            metrics.update({f"{name}/{k}": v for k, v in parts.items()})
            metrics[f"{name}/loss"] = loss
            total += loss
        return total, metrics

    def _reconstruction(self, name, params, x, recon):
        """(L1 (or the squared error, losses.reconstruction.<name> = "l2") + perceptual_weight * LPIPS, parts):
        LDM's reconstruction term, as a mean per element."""
        kind = self.config.losses.reconstruction[name]
        error = jnp.mean(jnp.abs(recon - x) if kind == "l1" else jnp.square(recon - x))
        if self.lpips is None:
            return error, {kind: error}
        perceptual = jnp.mean(self.lpips.apply(params[LPIPS], x, recon))
        return error + self.config.losses.perceptual_weight * perceptual, {kind: error, "perceptual": perceptual}

    def _vae(self, name, params, x, rng, step, losses):
        disc = disc_name(name)
        tap = adversarial.LastLayerTap(LAST_LAYER)
        with tap if disc in self.discriminators else contextlib.nullcontext():
            recon, posterior = self.networks.apply(params, name, x, rng)
        rec, parts = self._reconstruction(name, params, x, recon)
        kl = jnp.mean(posterior.kl()) / np.prod(x.shape[1:])
        parts["kl"] = kl
        loss = rec + losses.kl_weight * _warmup(step, losses.kl_warmup_steps) * kl
        if disc in self.discriminators:
            gan = functools.partial(self._patch_gan, disc, tap, losses.disc_weight)
            adv, adv_parts = adversarial.after_start(step, losses.disc_start, gan, params, x, recon)
            loss = loss + adv
            parts.update(adv_parts)
        return loss, parts

    def _patch_gan(self, disc, tap, disc_weight, params, x, recon):
        """Hinge discriminator loss + adaptive-weighted generator loss (the sum one grad trains)."""
        module, own = self.discriminators[disc], params[disc]
        logits_real = module.apply(own, x)
        logits_fake = module.apply(own, jax.lax.stop_gradient(recon))
        d_loss = adversarial.hinge_d_loss(logits_real, logits_fake)
        frozen = jax.lax.stop_gradient(own)
        g_of = lambda r: adversarial.hinge_g_loss(module.apply(frozen, r))
        g_loss = g_of(recon)
        vae = disc.removesuffix("_disc")
        d_weight = adversarial.adaptive_weight(tap.kernel_grad(lambda r: self._reconstruction(vae, params, x, r)[0]),
                                               tap.kernel_grad(g_of), disc_weight)
        return d_weight * g_loss + d_loss, {"g_loss": g_loss, "d_weight": d_weight, "d_loss": d_loss,
                                            "logits_real": jnp.mean(logits_real), "logits_fake": jnp.mean(logits_fake)}

    def _image_vae(self, params, batch, rng, step, losses):
        return self._vae("image_vae", params, batch["image"], rng, step, losses)

    def _audio_vae(self, params, batch, rng, step, losses):
        fbank = mel.wav_to_fbank(batch["audio"], losses.audio_frames)[..., None]
        return self._vae("audio_vae", params, fbank, rng, step, losses)

    def _vocoder(self, params, batch, rng, step, losses):
        real = batch["audio"]
        fake = self.networks.apply(params, "vocoder", mel.log_mel(real))[:, :real.shape[-1]]
        mel_l1 = jnp.mean(jnp.abs(_log_mel(fake) - _log_mel(real)))
        stft = multi_resolution_stft_loss(fake, real, losses.stft_resolutions)
        loss, parts = losses.mel_weight * mel_l1 + stft, {"mel_l1": mel_l1, "stft": stft}
        if disc_name("vocoder") in self.discriminators:
            gan = functools.partial(self._hifigan_gan, losses.feature_weight)
            adv, adv_parts = adversarial.after_start(step, losses.vocoder_disc_start, gan,
                                                     params[disc_name("vocoder")], real, fake)
            loss = loss + adv
            parts.update(adv_parts)
        return loss, parts

    def _hifigan_gan(self, feature_weight, own, real, fake):
        """Least-squares discriminator + generator losses and feature matching over MPD + MSD."""
        module = self.discriminators[disc_name("vocoder")]
        real_out = module.apply(own, real)
        fake_out = module.apply(own, jax.lax.stop_gradient(fake))
        d_loss = adversarial.least_squares_d_loss([o[0] for o in real_out], [o[0] for o in fake_out])
        fake_g = module.apply(jax.lax.stop_gradient(own), fake)
        g_loss = adversarial.least_squares_g_loss([o[0] for o in fake_g])
        fm = adversarial.feature_matching_loss(jax.lax.stop_gradient([o[1] for o in real_out]), [o[1] for o in fake_g])
        return g_loss + feature_weight * fm + d_loss, {"g_loss": g_loss, "feature_matching": fm, "d_loss": d_loss}

    def _optimus(self, params, batch, rng, step, losses):
        _, _, mu, logvar = self.networks.apply(params, "optimus", batch["text_ids/bert"], method="encode")
        k_z, k_drop = jax.random.split(rng)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(k_z, mu.shape)
        ids = batch["text_ids/gpt2"]
        inputs = ids[:, :-1]
        if losses.optimus_word_dropout > 0:
            # Bowman et al.'s word dropout: decoder inputs after <BOS> become <PAD> at random, so the next word
            # must come from z rather than from the words before it.
            drop = jax.random.bernoulli(k_drop, losses.optimus_word_dropout, inputs.shape)
            inputs = jnp.where(drop.at[:, 0].set(False), self.gpt2_pad, inputs)
        logits, _ = self.networks.apply(params, "optimus", inputs, z, method="decoder_logits")
        targets = ids[:, 1:]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        mask = (targets != self.gpt2_pad).astype(jnp.float32)
        ce = jnp.mean(jnp.sum(nll * mask, axis=-1))
        kl_dim = jnp.mean(0.5 * (mu ** 2 + jnp.exp(logvar) - 1.0 - logvar), axis=0)
        kl = jnp.sum(jnp.maximum(kl_dim, losses.optimus_free_bits))
        beta = losses.optimus_beta * _warmup(step, losses.kl_warmup_steps)
        tokens = jnp.sum(mask) / ids.shape[0]
        return ce + beta * kl, {"ce_per_token": ce / tokens, "kl": jnp.sum(kl_dim)}

    def samples(self, params, batch, rng):
        out = {"images": {}, "audio": {}}
        if "image_vae" in self.components:
            x = batch["image"][:4]
            recon, _ = self.networks.apply(params, "image_vae", x)
            to_unit = lambda a: jnp.clip((a + 1.0) / 2.0, 0.0, 1.0)
            out["images"].update({"image_input": to_unit(x), "image_reconstruction": to_unit(recon)})
        if "vocoder" in self.components:
            real = batch["audio"][:2]
            out["audio"].update({"vocoder_input": real,
                                 "vocoder_output": self.networks.apply(params, "vocoder", mel.log_mel(real))})
        return out

    # -- measurements: the latent scale each coder's diffusers will use ----------------------------------------

    def measurements(self, params) -> dict:
        """{"latent_scale": {coder: 1 / rms of its latents}} over 256 validation examples: the scale that gives
        the diffusers unit-variance latents (configs whose coder says latent_scale "measured" take it)."""
        coders = [c for c in self.components + self.carried if c in ("image_vae", "audio_vae", "optimus")]
        if not coders:
            return {}
        if not hasattr(self, "_measure"):
            needs = sorted({m for c in coders for m in NEEDS[c]})
            self._measure_batch = pipeline.probe_batch(self.config.data, needs, 256)
            self._measure = jax.jit(functools.partial(self._latent_rms, coders=tuple(coders)))
        rms = jax.device_get(self._measure(params, self._measure_batch))
        return {"latent_scale": {c: float(1.0 / v) for c, v in rms.items()}}

    def _latent_rms(self, params, batch, coders):
        n, out = self.networks, {}
        for c in coders:
            if c == "optimus":
                z = n.apply(params, "optimus", batch["text_ids/bert"], method="encode")[2]
                out[c] = jnp.sqrt(jnp.mean(jnp.square(z)))
                continue
            if c == "image_vae":
                posterior = n.apply(params, c, batch["image"], method="encode")
            else:
                posterior = n.apply(params, c, batch["audio"], self.config.losses.audio_frames, method="encode_wave")
            # rms of posterior samples: E[z^2] = mean^2 + std^2
            out[c] = jnp.sqrt(jnp.mean(jnp.square(posterior.mean) + jnp.square(posterior.std)))
        return out

    # -- probe: what each trained autoencoder gives back -------------------------------------------------------

    def probe_outputs(self, params, batch, rng):
        """{modality: reconstruction} through every trained component (posterior means; greedy text)."""
        n, out = self.networks, {}
        unit = lambda a: jnp.clip((a + 1.0) / 2.0, 0.0, 1.0)  # noqa: E731
        if "image_vae" in self.components:
            for m in ("image", "video"):
                latent = n.apply(params, "image_vae", batch[m], method="to_latent")
                out[m] = unit(n.apply(params, "image_vae", latent, method="from_latent"))
        if "audio_vae" in self.components:
            frames = self.config.losses.audio_frames
            posterior = n.apply(params, "audio_vae", batch["audio"], frames, method="encode_wave")
            out["audio"] = n.apply(params, "audio_vae", posterior.mean, method="decode")[..., 0]
        if "vocoder" in self.components:
            out["vocoder"] = n.apply(params, "vocoder", mel.log_mel(batch["audio"]))
        if "optimus" in self.components:
            z = n.apply(params, "optimus", batch["text_ids/bert"], method="to_latent")
            out["text"] = optimus.generate(n["optimus"], params["optimus"]["params"], z, rng, greedy=True,
                                           max_length=batch["text_ids/gpt2"].shape[1])
        return out

    def probe(self):
        spec = self.probe_spec("reconstruction")
        if spec is None:
            return None
        objective = next(iter(self.config.data.objectives.values()))
        modalities = set(objective.modalities) | ({"video"} if "image_vae" in self.components else set())
        batch = pipeline.probe_batch(self.config.data, sorted(modalities), spec.num_examples)
        samples = self.config.data.preprocess.audio.num_samples
        gpt2 = tokenizers.build_tokenizer("gpt2", self.config.data.preprocess.text.tokenizers.get(
            "gpt2", {}).get("path", ""))

        def finish(outputs):
            if "audio" in outputs:
                outputs["audio"] = probes.waves_from_mels(outputs["audio"], samples)
            if "vocoder" in outputs:
                outputs["audio:vocoder"] = outputs.pop("vocoder")
            if "text" in outputs:
                outputs["text"] = optimus.decode_text(gpt2, *outputs["text"])
            return outputs

        return probes.Probe("reconstruction", batch, self.probe_outputs, finish=finish)

