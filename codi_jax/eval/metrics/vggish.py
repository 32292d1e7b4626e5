"""VGGish as the Frechet Audio Distance runs it (torchvggish, `harritaylor/torchvggish` on torch hub, as
AudioLDM's evaluation and the frechet_audio_distance package load it): no PCA postprocessing and the
last ReLU removed, one 128-d embedding per 0.96 s of audio.

Front end (the AudioSet `mel_features` recipe): 16 kHz audio, 25 ms periodic-Hann frames every 10 ms
without padding, |rfft| with 512 points, 64 HTK-mel bands 125-7500 Hz (DC bin excluded), log(mel + 0.01),
then non-overlapping examples of 96 frames. A clip of N samples gives floor((1 + (N - 400) // 160) / 96)
examples; FAD pools the examples of all clips.

Weights: torchvggish's `vggish-10086976.pth` (or our .npz of it).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from codi_jax.data.mel import hann_window

SAMPLE_RATE = 16000
WINDOW = 400
HOP = 160
FFT = 512
MEL_BINS = 64
MEL_LOW, MEL_HIGH = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96
EMBEDDING_DIM = 128
WEIGHTS_FILE = "vggish-10086976.pth"


def _hz_to_mel(hz):
    return 1127.0 * np.log(1.0 + np.asarray(hz, np.float64) / 700.0)


@functools.lru_cache(maxsize=None)
def mel_matrix() -> np.ndarray:
    """[FFT // 2 + 1, MEL_BINS] HTK-mel triangles, linear in mel, the DC bin zeroed."""
    bins_mel = _hz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT // 2 + 1))
    edges = np.linspace(_hz_to_mel(MEL_LOW), _hz_to_mel(MEL_HIGH), MEL_BINS + 2)
    lower = (bins_mel[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])
    upper = (edges[None, 2:] - bins_mel[:, None]) / (edges[2:] - edges[1:-1])
    matrix = np.maximum(0.0, np.minimum(lower, upper))
    matrix[0] = 0.0
    return matrix.astype(np.float32)


def num_examples(num_samples: int) -> int:
    frames = 1 + (num_samples - WINDOW) // HOP
    return max(0, frames // EXAMPLE_FRAMES)


def log_mel_examples(waves):
    """[B, N] 16 kHz -> [B, E, 96, 64] log-mel examples (E = num_examples(N))."""
    b, n = waves.shape
    frames = 1 + (n - WINDOW) // HOP
    idx = np.arange(frames)[:, None] * HOP + np.arange(WINDOW)[None]
    magnitude = jnp.abs(jnp.fft.rfft(waves[:, idx] * hann_window(WINDOW), FFT, axis=-1))
    log_mel = jnp.log(magnitude @ mel_matrix() + LOG_OFFSET)
    examples = num_examples(n)
    return log_mel[:, :examples * EXAMPLE_FRAMES].reshape(b, examples, EXAMPLE_FRAMES, MEL_BINS)


class VGGish(nn.Module):
    """waves [B, N] at 16 kHz -> {"embedding": [B, E, 128]}, E examples of 0.96 s per clip."""

    @nn.compact
    def __call__(self, waves):
        examples = log_mel_examples(waves.astype(jnp.float32))
        b, e = examples.shape[:2]
        x = examples.reshape(b * e, EXAMPLE_FRAMES, MEL_BINS, 1)
        index = 0
        for block in ((64,), (128,), (256, 256), (512, 512)):
            for features in block:
                x = nn.relu(nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), name=f"features_{index}")(x))
                index += 2
            x = nn.max_pool(x, (2, 2), (2, 2))
            index += 1
        # torchvggish flattens channels-last (its transposes restore TF's order): our layout already.
        x = x.reshape(b * e, -1)
        x = nn.relu(nn.Dense(4096, name="embeddings_0")(x))
        x = nn.relu(nn.Dense(4096, name="embeddings_2")(x))
        return {"embedding": nn.Dense(EMBEDDING_DIM, name="embeddings_4")(x).reshape(b, e, EMBEDDING_DIM)}


def init_inputs(batch: int = 1):
    return (jnp.zeros((batch, SAMPLE_RATE), jnp.float32),)


def convert_state_dict(state_dict) -> dict:
    """torchvggish's state dict -> our flat paths (Sequential indices joined: features.3 -> features_3);
    the PCA parameters FAD does not use are left out."""
    from codi_jax.eval.metrics import torch_weights

    return torch_weights.to_flax(state_dict, rename=lambda m: None if m.startswith("pproc") else m.replace(".", "_"))
