"""Preprocessing shared with real data: image resize / crop / scaling, frame sampling, audio level and rate."""
import numpy as np
import pytest

from codi_jax.data import preprocess


def test_image_resize_center_crop_and_scaling():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 30:50] = 255  # a white band in the centre of a wide image
    out = preprocess.preprocess_image(image, 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.float32
    # Width 80 -> 40, centre 20 columns kept: the band (15..25 after resizing) sits in the middle.
    assert out[:, 10].min() > 0.9 and out[:, 0].max() < -0.9
    assert out.min() >= -1.0 and out.max() <= 1.0
    np.testing.assert_array_equal(preprocess.resize_center_crop(image[:, :40], 40), image[:, :40])
    assert preprocess.resize_shortest_side(image, 10).shape == (10, 20, 3)
    np.testing.assert_array_equal(preprocess.from_unit_range(preprocess.scale_to_unit_range(image)), image)


def test_frame_sampling_is_uniform():
    np.testing.assert_array_equal(preprocess.sample_frame_indices(8, 8), np.arange(8))
    np.testing.assert_array_equal(preprocess.sample_frame_indices(16, 4), [2, 6, 10, 14])
    np.testing.assert_array_equal(preprocess.sample_frame_indices(30, 3), [5, 15, 25])
    frames = np.arange(12, dtype=np.uint8)[:, None, None, None] * np.ones((12, 8, 8, 3), np.uint8)
    out = preprocess.preprocess_video(frames, 4, 8)
    assert out.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(preprocess.from_unit_range(out)[:, 0, 0, 0], [1, 4, 7, 10])


def test_audio_resampling_keeps_pitch_and_duration():
    rate = 44100
    t = np.arange(rate) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    out = preprocess.resample_audio(wave, rate, 16000)
    assert out.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / out.size - 440.0) <= 1.0


def test_audio_mean_removal_peak_normalisation_and_length():
    wave = np.linspace(-0.1, 0.3, 1000).astype(np.float32)
    out = preprocess.preprocess_audio(wave, 16000, 1200)
    assert out.shape == (1200,)
    assert abs(out[:1000].mean()) < 1e-6 and abs(np.abs(out).max() - 0.5) < 1e-6
    assert np.all(out[1000:] == 0)
    assert preprocess.preprocess_audio(wave, 16000, 500, normalize=False).tolist() == wave[:500].tolist()
    np.testing.assert_array_equal(preprocess.normalize_audio(np.zeros(10, np.float32)), np.zeros(10))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="expected 3 channels"):
        preprocess.preprocess_image(np.zeros((8, 8, 4), np.uint8), 8)
    with pytest.raises(ValueError, match="expected rank 3"):
        preprocess.preprocess_image(np.zeros((8, 8), np.uint8), 8)
    with pytest.raises(ValueError, match="expected uint8"):
        preprocess.preprocess_image(np.zeros((8, 8, 3), np.float32), 8)
    with pytest.raises(ValueError, match="video has 3 frames, too few: expected at least 8"):
        preprocess.preprocess_video(np.zeros((3, 8, 8, 3), np.uint8), 8, 8)
    with pytest.raises(ValueError, match="sample rate must be a positive integer"):
        preprocess.preprocess_audio(np.zeros(10, np.float32), 0, 10)
    with pytest.raises(ValueError, match=r"expected a mono wave \[N\]"):
        preprocess.preprocess_audio(np.zeros((10, 2), np.float32), 16000, 10)
