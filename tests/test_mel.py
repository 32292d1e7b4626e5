"""AudioLDM log-mel front end: golden parity, analytic properties, jit, bad input."""
import jax
import numpy as np
import pytest

from codi_jax.convert import golden
from codi_jax.data import mel


def test_golden_mel_frontend(goldens_dir):
    rows = golden.check(goldens_dir / "mel_frontend")
    names = {r[1] for r in rows}
    assert {"mel_basis", "pad_fbank", "cut_fbank", "pad_magnitude", "cut_logmel"} <= names
    failed = [r for r in rows if not r[4]]
    assert not failed, failed


def test_filterbank_shape_and_slaney_area():
    fb = mel.mel_filterbank()
    assert fb.shape == (64, 513) and fb.dtype == np.float32
    assert (fb >= 0).all()
    # Slaney norm: each triangle has height 2/(f_hi - f_lo), so its area in Hz is 1.
    bin_hz = mel.SAMPLE_RATE / mel.N_FFT
    areas = fb.sum(axis=1) * bin_hz
    np.testing.assert_allclose(areas[8:], 1.0, atol=0.05)


def test_sine_peaks_in_its_mel_band():
    t = np.arange(16000) / mel.SAMPLE_RATE
    freq = 2000.0
    wave = 0.5 * np.sin(2 * np.pi * freq * t)[None]
    spec = np.asarray(mel.log_mel(wave))
    assert spec.shape == (1, 16000 // 160 + 1, 64)
    peak_band = int(np.argmax(spec[0, 50]))
    assert peak_band == int(np.argmax(mel.mel_filterbank()[:, round(freq / (mel.SAMPLE_RATE / mel.N_FFT))]))


def test_silence_logs_to_floor_and_lengths():
    fb = np.asarray(mel.wav_to_fbank(np.zeros((3, 2000), np.float32), 40))
    assert fb.shape == (3, 40, 64)
    np.testing.assert_allclose(fb, np.log(1e-5), rtol=1e-6)
    assert mel.frames_for_seconds(10.0) == 1024 and mel.frames_for_seconds(0.3125) == 32


def test_normalize_is_peak_half_zero_mean():
    w = np.random.default_rng(0).normal(size=(2, 999)).astype(np.float32) * 7 + 3
    n = np.asarray(mel.normalize_wav(w))
    np.testing.assert_allclose(np.abs(n).max(axis=1), 0.5, rtol=1e-6)
    np.testing.assert_allclose(n.mean(axis=1), 0.0, atol=1e-6)


def test_jit_matches_eager():
    w = np.random.default_rng(1).normal(size=(2, 3000)).astype(np.float32)
    eager = mel.wav_to_fbank(w, 24)
    jitted = jax.jit(mel.wav_to_fbank, static_argnums=1)(w, 24)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5)


def test_bad_input():
    w = np.zeros((1, 4000), np.float32)
    with pytest.raises(ValueError, match="expected 16000 Hz"):
        mel.log_mel(w, sample_rate=44100)
    with pytest.raises(ValueError, match="expected 16000 Hz"):
        mel.wav_to_fbank(w, 10, sample_rate=22050)
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        mel.log_mel(np.zeros(4000, np.float32))
    with pytest.raises(ValueError, match="too short"):
        mel.stft_magnitude(np.zeros((1, 100), np.float32))
    with pytest.raises(ValueError, match="positive"):
        mel.wav_to_fbank(w, 0)
