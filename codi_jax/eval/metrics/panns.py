"""PANNs CNN14 as AudioLDM's evaluation runs it (`audioldm_eval` in its CNN14 form, which defines the FD /
IS / KL that CoDi's text->audio table compares with AudioLDM): 16 kHz audio, 512-point STFT with hop 160, 64 mel bins 50-8000 Hz,
a batch norm over mel bins, six conv blocks, then max + mean over time.

Input: waves [B, N] at 16 kHz. AudioLDM's loader subtracts each clip's mean and pads clips shorter than
2 s with zeros (`prepare`). Output: {"embedding": the 2048-d ReLU'd fc1 output (FD's features),
"logits": the 527 AudioSet logits (IS and KL)}.

The STFT is computed with an FFT instead of torchlibrosa's DFT convolution and the mel matrix is
librosa's slaney filterbank (codi_jax.data.mel), so the checkpoint's frozen STFT kernels and `melW` are
not read (the parity test checks the filterbank against the reference's). Weights: `Cnn14_16k_mAP=0.438.pth`
from the PANNs release (or our .npz of it).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from codi_jax.data.mel import hann_window, mel_filterbank
from codi_jax.eval.metrics.norm import FrozenBatchNorm

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 160
MEL_BINS = 64
FMIN, FMAX = 50.0, 8000.0
MIN_SAMPLES = 32000
AMIN = 1e-10
NUM_CLASSES = 527
WEIGHTS_FILE = "Cnn14_16k_mAP=0.438.pth"


def prepare(wave: np.ndarray) -> np.ndarray:
    """One 16 kHz clip as AudioLDM's loader hands it to CNN14: mean removed, zero-padded to 2 s."""
    wave = np.asarray(wave, np.float32)
    wave = wave - wave.mean()
    return np.pad(wave, (0, max(0, MIN_SAMPLES - wave.size)))


def power_spectrogram(waves):
    """[B, N] -> [B, 1 + N // HOP, N_FFT // 2 + 1]: periodic Hann, centred frames (reflect padding)."""
    pad = N_FFT // 2
    x = jnp.pad(waves, ((0, 0), (pad, pad)), mode="reflect")
    count = 1 + (x.shape[1] - N_FFT) // HOP
    idx = np.arange(count)[:, None] * HOP + np.arange(N_FFT)[None]
    spectrum = jnp.fft.rfft(x[:, idx] * hann_window(N_FFT), axis=-1)
    return jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2


class ConvBlock(nn.Module):
    features: int
    pool: int = 2

    @nn.compact
    def __call__(self, x):
        for i in (1, 2):
            x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name=f"conv{i}")(x)
            x = nn.relu(FrozenBatchNorm(name=f"bn{i}")(x))
        return nn.avg_pool(x, (self.pool, self.pool), (self.pool, self.pool))


class Cnn14(nn.Module):
    """waves [B, N] at 16 kHz (after `prepare`) -> {"embedding" [B, 2048], "logits" [B, 527]}."""

    @nn.compact
    def __call__(self, waves):
        power = power_spectrogram(waves.astype(jnp.float32))
        mel = power @ mel_filterbank(SAMPLE_RATE, N_FFT, MEL_BINS, FMIN, FMAX).T
        x = 10.0 * jnp.log10(jnp.maximum(mel, AMIN))  # ref 1.0, no top_db
        x = FrozenBatchNorm(name="bn0")(x)[..., None]  # [B, T, mel, 1]: bn0 normalises mel bins
        for i, features in enumerate((64, 128, 256, 512, 1024, 2048), start=1):
            x = ConvBlock(features, pool=1 if i == 6 else 2, name=f"conv_block{i}")(x)
        x = jnp.mean(x, axis=2)  # over mel bins -> [B, T, C]
        x = jnp.max(x, axis=1) + jnp.mean(x, axis=1)
        embedding = nn.relu(nn.Dense(2048, name="fc1")(x))
        return {"embedding": embedding, "logits": nn.Dense(NUM_CLASSES, name="fc_audioset")(embedding)}


def init_inputs(batch: int = 1):
    return (jnp.zeros((batch, MIN_SAMPLES), jnp.float32),)


def convert_state_dict(state_dict) -> dict:
    """The PANNs checkpoint (torch names) -> our flat paths; the fixed front end is left out (see above)."""
    from codi_jax.eval.metrics import torch_weights

    frozen = ("spectrogram_extractor", "logmel_extractor")
    return torch_weights.to_flax(state_dict, rename=lambda m: None if m.startswith(frozen) else m)
