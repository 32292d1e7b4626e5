"""The compiled calls of sampling: prompt encoders, the whole guided denoising loop, the decoders.

Module level, with the networks as static arguments (flax modules hash and compare by their configuration), so
pipelines built from the same config in one process share every compiled program: one compile per shape, however
many times the CLI runs in-process.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from codi_jax.diffusion import samplers
from codi_jax.diffusion.guidance import cfg_denoiser
from codi_jax.diffusion.schedule import eps_from_prediction, make_schedule
from codi_jax.models import optimus


@functools.partial(jax.jit, static_argnames=("model", "method"))
def apply(variables, *args, model, method: str):
    return model.apply(variables, *args, method=method)


@functools.partial(jax.jit, static_argnames=("model",))
def encode_audio(variables, wave, rng, *, model):
    return model.apply(variables, wave, rng=rng, method="encode_audio")


@functools.partial(jax.jit, static_argnames=("model", "wiring", "aliased_skip", "method", "steps", "predictions"))
def sample(codi_variables, x_T, cond, uncond, scales, *, model, wiring: str, aliased_skip: bool, method: str,
            steps: int, predictions: tuple):
    """The whole denoising loop: classifier-free guidance over the joint CoDi forward, one shared t;
    `predictions` ((modality, "eps" | "v"), ...) says what each output's UNet predicts."""
    schedule = make_schedule()

    def model_fn(latents, t, context):
        out = model.apply(codi_variables, latents, t, context, wiring=wiring, aliased_skip=aliased_skip)
        return eps_from_prediction(schedule, latents, t, out, dict(predictions))

    denoise = cfg_denoiser(model_fn, cond, uncond, scales)
    return samplers.sample(denoise, x_T, schedule=schedule, method=method, steps=steps)


@functools.partial(jax.jit, static_argnames=("model",))
def decode_pixels(variables, z, *, model):
    """Latents -> uint8 pixels: the VAE's [-1, 1] output mapped to [0, 1] and clamped, as the original."""
    x = model.apply(variables, z, method="from_latent")
    return jnp.round(jnp.clip((x + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("vae",))
def decode_mel(vae_variables, z, *, vae):
    """Latents -> log-mel [B, T, 64], one example at a time (the latent clipping looks at a batch's max |z|)."""
    return jax.vmap(lambda zi: vae.apply(vae_variables, zi[None], method="from_latent")[0, ..., 0])(z)


@functools.partial(jax.jit, static_argnames=("vae", "vocoder", "samples"))
def decode_audio(vae_variables, vocoder_variables, z, *, vae, vocoder, samples: int):
    """Latents -> mel -> 16 kHz waves [B, samples] (the vocoder's tail beyond the mel frames dropped)."""
    mels = decode_mel(vae_variables, z, vae=vae)
    return jax.vmap(lambda m: vocoder.apply(vocoder_variables, m[None])[0, :samples])(mels)


@functools.partial(jax.jit, static_argnames=("model", "max_length", "greedy"))
def decode_text(variables, z, keys, *, model, max_length: int, greedy: bool):
    """Latents -> GPT-2 token ids [B, L] and lengths [B]; each row draws from its own key."""
    def one(zi, key):
        tokens, lengths = optimus.generate(model, variables["params"], zi[None], key, max_length=max_length,
                                           greedy=greedy)
        return tokens[0], lengths[0]

    return jax.vmap(one)(z, keys)
