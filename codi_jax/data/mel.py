"""AudioLDM's log-mel front end (TacotronSTFT + `wav_to_fbank`), written in jnp so it jits into a step.

Layouts: waves [B, N] at 16 kHz; spectra [B, frames, bins] (time before frequency, the layout the
audio VAE consumes as a one-channel image [B, T, 64, 1]).

The recipe, exactly as the released model preprocesses audio:
  1. `normalize_wav`: remove the mean, peak-normalise to 0.5, per row, on the WHOLE input;
  2. `pad_or_cut` to target_length * 160 samples (right zero-pad or cut);
  3. clip to [-1, 1];
  4. reflect-pad n_fft/2, frame with hop 160 and a periodic Hann window of 1024, |rfft| (the
     magnitude, not the power);
  5. Slaney mel filterbank (librosa's htk=False, norm="slaney" construction) and the natural log of
     clamp(mel, 1e-5);
  6. keep the first target_length frames (there are N/160 + 1).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

SAMPLE_RATE = 16000
N_FFT = 1024
WIN_LENGTH = 1024
HOP_LENGTH = 160
N_MELS = 64
FMIN = 0.0
FMAX = 8000.0
LOG_FLOOR = 1e-5
# AudioLDM counts 1024 frames per 10 s clip (so a "10 s" clip is 163,840 samples, 10.24 s).
FRAMES_PER_SECOND = 102.4


def frames_for_seconds(seconds: float) -> int:
    """The fbank length AudioLDM uses for a clip of `seconds` (int(seconds * 102.4), as the original)."""
    return int(seconds * FRAMES_PER_SECOND)


def _hz_to_mel_slaney(hz):
    hz = np.asarray(hz, np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    linear = hz / f_sp
    log = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log, linear)


def _mel_to_hz_slaney(mel):
    mel = np.asarray(mel, np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    linear = f_sp * mel
    log = min_log_hz * np.exp(logstep * (mel - min_log_mel))
    return np.where(mel >= min_log_mel, log, linear)


@functools.lru_cache(maxsize=None)
def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters [n_mels, n_fft//2 + 1], float32.

    Same construction as librosa.filters.mel(htk=False, norm="slaney"): filter edges equally spaced on
    the Slaney mel scale (linear below 1 kHz, logarithmic above), each triangle scaled to unit area
    (2 / bandwidth). Computed in float64, stored in float32 like librosa's default.
    """
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


@functools.lru_cache(maxsize=None)
def hann_window(length: int = WIN_LENGTH) -> np.ndarray:
    """Periodic Hann window (scipy get_window('hann', fftbins=True)), float32."""
    n = np.arange(length, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)).astype(np.float32)


def _check_wave(wave, sample_rate: int | None, name: str = "wave") -> jax.Array:
    if sample_rate is not None and int(sample_rate) != SAMPLE_RATE:
        raise ValueError(f"{name}: sample rate {sample_rate} Hz is not supported; expected {SAMPLE_RATE} Hz")
    wave = jnp.asarray(wave, jnp.float32)
    if wave.ndim != 2:
        raise ValueError(f"{name}: expected a batch of waves [B, N], got shape {tuple(wave.shape)}")
    return wave


def normalize_wav(wave) -> jax.Array:
    """(w - mean(w)) / (max|w - mean(w)| + 1e-8) * 0.5 per row of [B, N]."""
    wave = _check_wave(wave, None)
    centred = wave - jnp.mean(wave, axis=-1, keepdims=True)
    peak = jnp.max(jnp.abs(centred), axis=-1, keepdims=True)
    return centred / (peak + 1e-8) * 0.5


def pad_or_cut(wave, num_samples: int) -> jax.Array:
    """Right zero-pad or cut [B, N] to [B, num_samples]."""
    wave = _check_wave(wave, None)
    n = wave.shape[-1]
    if n >= num_samples:
        return wave[:, :num_samples]
    return jnp.pad(wave, ((0, 0), (0, num_samples - n)))


def stft_magnitude(wave, sample_rate: int | None = None) -> jax.Array:
    """|STFT| [B, N // 160 + 1, 513]: reflect-padded, periodic Hann, hop 160, n_fft 1024."""
    wave = _check_wave(wave, sample_rate)
    pad = N_FFT // 2
    if wave.shape[-1] <= pad:
        raise ValueError(f"wave: {wave.shape[-1]} samples is too short for the reflect padding; "
                         f"expected more than {pad} samples")
    padded = jnp.pad(wave, ((0, 0), (pad, pad)), mode="reflect")
    num_frames = (padded.shape[-1] - N_FFT) // HOP_LENGTH + 1
    index = np.arange(num_frames)[:, None] * HOP_LENGTH + np.arange(N_FFT)[None, :]
    frames = padded[:, index] * jnp.asarray(hann_window(WIN_LENGTH))
    return jnp.abs(jnp.fft.rfft(frames, n=N_FFT, axis=-1)).astype(jnp.float32)


def log_mel(wave, sample_rate: int | None = None) -> jax.Array:
    """Natural-log mel spectrogram [B, N // 160 + 1, 64] of 16 kHz waves [B, N] (expected in [-1, 1])."""
    magnitude = stft_magnitude(wave, sample_rate)
    mel = jnp.einsum("btf,mf->btm", magnitude, jnp.asarray(mel_filterbank()),
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, LOG_FLOOR))


def wav_to_fbank(wave, target_length: int, sample_rate: int | None = None) -> jax.Array:
    """AudioLDM's `wav_to_fbank`: [B, N] 16 kHz waves -> log-mel [B, target_length, 64] fed to the audio VAE."""
    wave = _check_wave(wave, sample_rate)
    if int(target_length) < 1:
        raise ValueError(f"target_length must be a positive number of frames, got {target_length}")
    segment = pad_or_cut(normalize_wav(wave), int(target_length) * HOP_LENGTH)
    return log_mel(jnp.clip(segment, -1.0, 1.0))[:, :int(target_length)]
