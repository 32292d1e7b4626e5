"""Audio mel VAE (`AudioAutoencoderKL`, AudioLDM): official state dict -> our params, and its golden runner.

Keys under `audioldm.` : the VAE blocks share the image VAE's translation (`autokl.convert_kl`);
`vocoder.*` belongs to the HiFi-GAN component (longest prefix wins in coverage); `fn_STFT.*` are the
constant STFT / mel bases that `codi_jax.data.mel` recomputes.
"""
from __future__ import annotations

import jax
import numpy as np

from codi_jax.convert import autokl, hifigan, registry
from codi_jax.data import mel
from codi_jax.models import autoencoder, vocoder


def _fixture_models(config):
    ctor = config["constructor"]
    vae = autoencoder.AutoencoderKL(**autoencoder.kwargs_from_official(ctor["ddconfig"], ctor["embed_dim"],
                                                                       audio=True))
    voc = vocoder.HifiGanGenerator(**vocoder.kwargs_from_official(config["vocoder_h"]))
    return vae, voc


def run_golden(fixture_dir, config, meta, params, io) -> dict:
    vae, voc = _fixture_models(config)
    variables = {"params": autokl.convert_kl(params)}
    voc_variables = {"params": hifigan.convert(registry.strip_prefix(params, "vocoder."))}
    target_length = mel.frames_for_seconds(float(io["time"])) if "time" in io \
        else int(config["call"]["target_length"])
    # Fixture mels are [B, 1, T, mels]; ours are one-channel images [B, T, mels, 1].
    inputs = {k: autokl.to_channels_last(io[k]) for k in ("mel", "z", "z_big", "wave_noise")}
    inputs["wave"] = io["wave"]

    @jax.jit  # one program for every output: compiles the encoder and decoder once each
    def outputs(variables, voc_variables, inputs):
        def call(method, *args):
            return vae.apply(variables, *args, method=method)

        posterior = call(vae.encode, inputs["mel"])
        fbank = mel.wav_to_fbank(inputs["wave"], target_length)[..., None]
        wave_posterior = call(vae.encode_wave, inputs["wave"], target_length)
        mel_dec = call(vae.from_latent, inputs["z"])
        ours = {
            "moments": call(vae.encode_moments, inputs["mel"]),
            "mean": posterior.mean,
            "logvar": posterior.logvar,
            "wave_fbank": fbank,
            "wave_moments": call(vae.encode_moments, fbank),
            "wave_z_codi": vae.scale_factor * wave_posterior.sample_with(inputs["wave_noise"]),
            "mel_dec": mel_dec,
            "mel_dec_big": call(vae.from_latent, inputs["z_big"]),
        }
        return ours, voc.apply(voc_variables, mel_dec[..., 0])

    ours, wave = outputs(variables, voc_variables, inputs)
    results = {k: (autokl.to_channels_first(v), io[k]) for k, v in ours.items() if k in io}
    if "wave_dec" in io:
        results["wave_dec"] = (np.asarray(wave)[:, None], io["wave_dec"])
    return results


registry.register(registry.Component(
    name="audio_autoencoder_kl",
    convert=autokl.convert_kl,
    full_abstract=lambda: autokl.abstract_params(autoencoder.build("audio_full")),
    run_golden=run_golden,
    manifest_prefix="audioldm.",
    ignored_keys=lambda key: key.startswith("fn_STFT."),
))
