"""`autoencoders`: the image KL-VAE, the audio mel VAE, the HiFi-GAN vocoder and the Optimus text VAE.

Every component named in `config.model.components` trains on each batch (one data objective
carrying all the modalities they need; train one component per run by naming only it).
Losses, GAN-free (the adversarial terms of the originals are not implemented; a config that
asks for them with `losses.adversarial=True` stops at start-up):
- image / audio VAE (LDM's weighting, divided through by the input size): mean |x - x_hat|
  + kl_weight * warm-up(step) * KL / input elements; the audio VAE works on AudioLDM's
  log-mel fbank [B, T, 64, 1] of the batch's wave.
- vocoder: mel of the real wave -> generator -> wave; L1 between log-mels (HiFi-GAN's 45x
  mel loss) + multi-resolution STFT loss (spectral convergence + log magnitude).
- Optimus: BERT posterior sample -> GPT-2 teacher forcing; token cross-entropy summed per
  sentence + beta * warm-up(step) * KL with Optimus' dimension-wise free bits.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.data import mel, pipeline, tokenizers
from codi_jax.train.errors import ConfigError
from codi_jax.train.stages.base import Stage, require_choice
from codi_jax.train.stages.components import Networks, trainable_predicate

AUTOENCODERS = ("image_vae", "audio_vae", "vocoder", "optimus")
NEEDS = {"image_vae": ("image",), "audio_vae": ("audio",), "vocoder": ("audio",), "optimus": ("text",)}


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
        if not self.components:
            raise ConfigError("config.model.components is empty; name at least one of " + str(list(AUTOENCODERS)))
        losses = config.losses
        if losses.adversarial:
            raise ConfigError("losses.adversarial=True: the discriminators of the original autoencoders (SD's "
                              "LPIPS + PatchGAN, HiFi-GAN's MPD/MSD) are not implemented in codi_jax; set "
                              "losses.adversarial=False to train with the reconstruction losses only")
        self.networks = Networks(config.model, self.components, dtype=jnp.dtype(config.dtype),
                                 remat_policy=config.remat_policy)
        self._trainable = trainable_predicate([f"{c}:*" for c in self.components])
        objective = next(iter(config.data.objectives.values()))
        missing = {m for c in self.components for m in NEEDS[c]} - set(objective.modalities)
        if missing:
            raise ConfigError(f"the data objective has no {sorted(missing)}; components {list(self.components)} "
                              "need them")
        if "optimus" in self.components:
            specs = config.data.preprocess.text.tokenizers
            if "bert" not in specs or "gpt2" not in specs:
                raise ConfigError("optimus needs data.preprocess.text.tokenizers 'bert' and 'gpt2'")
            self.gpt2_pad = tokenizers.build_tokenizer("gpt2", specs.gpt2.path).pad_id

    def init(self, rng):
        return self.networks.init(rng)

    def is_trainable(self, path: str) -> bool:
        return self._trainable(path)

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

    def _vae(self, name, params, x, rng, step, losses):
        recon, posterior = self.networks.apply(params, name, x, rng)
        rec = jnp.mean(jnp.abs(recon - x))
        kl = jnp.mean(posterior.kl()) / np.prod(x.shape[1:])
        weight = losses.kl_weight * _warmup(step, losses.kl_warmup_steps)
        return rec + weight * kl, {"l1": rec, "kl": kl}

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
        return losses.mel_weight * mel_l1 + stft, {"mel_l1": mel_l1, "stft": stft}

    def _optimus(self, params, batch, rng, step, losses):
        _, _, mu, logvar = self.networks.apply(params, "optimus", batch["text_ids/bert"], method="encode")
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape)
        ids = batch["text_ids/gpt2"]
        logits, _ = self.networks.apply(params, "optimus", ids[:, :-1], z, method="decoder_logits")
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
