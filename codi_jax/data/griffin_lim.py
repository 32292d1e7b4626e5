"""Log-mel spectrogram -> waveform without a vocoder: non-negative mel inversion, then Griffin-Lim.

Uses the framing of `codi_jax.data.mel` (16 kHz, n_fft 1024, periodic Hann 1024, hop 160, reflect-padded
centred frames, |STFT| magnitudes, Slaney mel filterbank), so `mel_to_wave(log_mel(w))` is a lossy round
trip of w. The oracle's robustness tests use it to check that band energies survive a mel spectrogram,
and it lets anyone listen to a generated mel latent's decode before a vocoder exists. numpy only.
"""
from __future__ import annotations

import numpy as np

from codi_jax.data import mel


def stft(wave: np.ndarray) -> np.ndarray:
    """Complex STFT [N // 160 + 1, 513] of a mono wave [N], framed exactly like mel.stft_magnitude."""
    pad = mel.N_FFT // 2
    padded = np.pad(np.asarray(wave, np.float64), pad, mode="reflect")
    count = (padded.size - mel.N_FFT) // mel.HOP_LENGTH + 1
    index = np.arange(count)[:, None] * mel.HOP_LENGTH + np.arange(mel.N_FFT)[None, :]
    return np.fft.rfft(padded[index] * mel.hann_window(mel.WIN_LENGTH), axis=-1)


def istft(spectrum: np.ndarray, num_samples: int) -> np.ndarray:
    """Least-squares inverse of `stft` (windowed overlap-add divided by the summed squared window)."""
    window = mel.hann_window(mel.WIN_LENGTH).astype(np.float64)
    frames = np.fft.irfft(spectrum, n=mel.N_FFT, axis=-1) * window
    total = (spectrum.shape[0] - 1) * mel.HOP_LENGTH + mel.N_FFT
    signal = np.zeros(total)
    norm = np.zeros(total)
    for t, frame in enumerate(frames):
        start = t * mel.HOP_LENGTH
        signal[start:start + mel.N_FFT] += frame
        norm[start:start + mel.N_FFT] += window ** 2
    pad = mel.N_FFT // 2
    return (signal / np.maximum(norm, 1e-8))[pad:pad + num_samples]


def mel_to_magnitude(log_mel: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Natural-log mel [T, 64] -> a non-negative |STFT| [T, 513] whose mel matches it (least squares).

    Multiplicative non-negative least-squares updates from M^T mel: a pseudo-inverse would put negative
    lobes between filters, which Griffin-Lim cannot represent.
    """
    from scipy import sparse

    # Each FFT bin lies under at most two triangles: sparse products keep this cheap.
    basis = sparse.csr_matrix(mel.mel_filterbank().astype(np.float64))
    target = np.exp(np.asarray(log_mel, np.float64))
    numerator = np.asarray((basis.T @ target.T).T)
    magnitude = np.maximum(numerator, 1e-10)
    for _ in range(iterations):
        projected = basis.T @ (basis @ magnitude.T)
        magnitude *= numerator / np.maximum(np.asarray(projected).T, 1e-12)
    return magnitude


def griffin_lim(magnitude: np.ndarray, num_samples: int, iterations: int = 32, seed: int = 0) -> np.ndarray:
    """A wave [num_samples] whose |STFT| approximates `magnitude` [T, 513] (random initial phase)."""
    rng = np.random.default_rng(seed)
    phase = np.exp(2j * np.pi * rng.random(magnitude.shape))
    wave = istft(magnitude * phase, num_samples)
    for _ in range(iterations):
        spectrum = stft(wave)
        wave = istft(magnitude * np.exp(1j * np.angle(spectrum)), num_samples)
    return wave.astype(np.float32)


def mel_to_wave(log_mel, num_samples: int | None = None, iterations: int = 32, seed: int = 0) -> np.ndarray:
    """Natural-log mel [T, 64] (mel.log_mel's layout) -> float32 wave [num_samples] at 16 kHz."""
    log_mel = np.asarray(log_mel)
    if log_mel.ndim != 2 or log_mel.shape[-1] != mel.N_MELS:
        raise ValueError(f"log_mel: expected [frames, {mel.N_MELS}], got shape {log_mel.shape}")
    if num_samples is None:
        num_samples = (log_mel.shape[0] - 1) * mel.HOP_LENGTH
    return griffin_lim(mel_to_magnitude(log_mel), num_samples, iterations, seed)


def mels_to_waves(log_mels, num_samples: int, iterations: int = 8) -> np.ndarray:
    """A batch of log-mels [B, T, 64] -> waves [B, num_samples]: each inverted over its own frames, then cut or
    zero-padded to num_samples (the vocoder's output length), as generated audio is decoded without a vocoder."""
    log_mels = np.asarray(log_mels, np.float32)
    waves = np.zeros((log_mels.shape[0], num_samples), np.float32)
    for i, m in enumerate(log_mels):
        wave = mel_to_wave(m, iterations=iterations)[:num_samples]
        waves[i, :wave.size] = wave
    return waves

