"""The oracle reads model-like outputs: every attribute stays exact under these degradations.

Stated levels (at R = 64, object side 20 px; pixel values on a [0, 1] scale):
  image / video  Gaussian blur sigma 2.0 px; Gaussian pixel noise sigma 0.1 (clipped to [0, 1]);
                 colour shift: per-channel gain 0.8-1.2 and offset -0.1..+0.1; JPEG quality 20;
                 blur 1.5 px + noise 0.05 together; video files as H.264 MP4 and GIF.
  audio          white noise at 10 dB SNR; gain x0.05 plus a 0.02 DC offset; a round trip through
                 22.05 kHz; 16-bit WAV; a log-mel spectrogram (codi_jax.data.mel, 64 bands) inverted
                 by non-negative least squares and 16 Griffin-Lim iterations.
  text           case, punctuation and repeated words.
"""
import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from codi_jax.data import media, mel, preprocess
from codi_jax.data import shapes_tones as st
from codi_jax.data import griffin_lim
from codi_jax.eval import oracle

NUM_VISUAL = 120


def _unit(x):
    return np.asarray(x, np.float64) / 255.0


def blur(x, rng):
    del rng
    spatial = [0] * (x.ndim - 3) + [2.0, 2.0, 0]
    return ndimage.gaussian_filter(_unit(x), sigma=spatial)


def noise(x, rng):
    return np.clip(_unit(x) + rng.normal(0.0, 0.1, x.shape), 0.0, 1.0)


def color_shift(x, rng):
    return np.clip(_unit(x) * rng.uniform(0.8, 1.2, 3) + rng.uniform(-0.1, 0.1, 3), 0.0, 1.0)


def blur_and_noise(x, rng):
    spatial = [0] * (x.ndim - 3) + [1.5, 1.5, 0]
    return np.clip(ndimage.gaussian_filter(_unit(x), sigma=spatial) + rng.normal(0.0, 0.05, x.shape), 0.0, 1.0)


def jpeg(x, rng):
    del rng

    def one(image):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=20)
        return np.asarray(Image.open(buffer))

    return one(x) if x.ndim == 3 else np.stack([one(frame) for frame in x])


@pytest.mark.parametrize("degrade", [blur, noise, color_shift, blur_and_noise, jpeg], ids=lambda f: f.__name__)
def test_image_and_video_survive(degrade):
    rng = np.random.default_rng(0)
    wrong = []
    for index in range(NUM_VISUAL):
        example = st.generate("test", index)
        a = example["attributes"]
        image = degrade(example["image"], rng)
        video = degrade(example["video"], rng)
        # Float outputs of the degradations are on a [0, 1] scale; JPEG gives uint8 back.
        got_image = oracle.decode_image(image, value_range=(0.0, 1.0))
        got_video = oracle.decode_video(video, value_range=(0.0, 1.0))
        if got_image != {k: a[k] for k in oracle.CARRIED["image"]}:
            wrong.append(("image", index, got_image))
        if got_video != {k: a[k] for k in oracle.CARRIED["video"]}:
            wrong.append(("video", index, got_video))
    assert wrong == []


def test_video_files_survive_h264_and_gif(tmp_path):
    for index in range(40):
        example = st.generate("test", index)
        truth = {k: example["attributes"][k] for k in oracle.CARRIED["video"]}
        for suffix in (".mp4", ".gif"):
            path = tmp_path / f"{index}{suffix}"
            media.write_video(path, example["video"], st.VIDEO_FPS)
            assert oracle.decode_file(path) == truth, (index, suffix)


def _audio_cases():
    # Every colour x shape, each at two onsets, so every pitch and timbre is covered.
    for k, (color, shape) in enumerate((c, s) for c in st.COLORS for s in st.SHAPES):
        for onset in (k % 4, (k + 2) % 4):
            attributes = {"color": color, "shape": shape, "onset": onset}
            yield attributes, st.synthesize_audio(attributes)


def _check_audio(transform):
    wrong = []
    for attributes, wave in _audio_cases():
        got = transform(wave)
        if got != attributes:
            wrong.append((attributes, got))
    assert wrong == []


def test_audio_survives_noise_gain_and_offset():
    rng = np.random.default_rng(1)

    def noisy(wave):
        power = np.mean(wave[wave != 0] ** 2)
        return oracle.decode_audio(wave + rng.normal(0.0, np.sqrt(power / 10.0), wave.shape).astype(np.float32))

    _check_audio(noisy)
    _check_audio(lambda wave: oracle.decode_audio(0.05 * wave + 0.02))


def test_audio_survives_resampling_and_16_bit_files(tmp_path):
    _check_audio(lambda wave: oracle.decode_audio(preprocess.resample_audio(wave, 16000, 22050), 22050))
    path = tmp_path / "a.wav"

    def through_file(wave):
        media.write_audio(path, wave, 16000)
        return oracle.decode_file(path)

    _check_audio(through_file)


def test_audio_survives_a_mel_spectrogram_round_trip():
    import jax

    log_mel = jax.jit(mel.log_mel)

    def round_trip(wave):
        spectrogram = np.asarray(log_mel(wave[None]))[0]
        return oracle.decode_audio(griffin_lim.mel_to_wave(spectrogram, wave.size, iterations=16))

    _check_audio(round_trip)


def test_text_survives_case_punctuation_and_repeats():
    for template in range(len(st.TEMPLATES)):
        text = st.caption("green", "triangle", "down", template)
        expected = {"color": "green", "shape": "triangle", "motion": "down"}
        assert oracle.decode_text(text.upper() + "!!") == expected
        assert oracle.decode_text(" ".join(w for word in text.split() for w in (word, word))) == expected
