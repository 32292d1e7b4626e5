"""The sampler's files: inputs read into model layouts (audio at 16 kHz), outputs written under fixed
names with every frame and sample, and one-line errors naming the file."""
import numpy as np
import pytest
import soundfile as sf

from codi_jax import media


def _frames(num=6, size=32):
    frames = np.zeros((num, size, size, 3), np.uint8)
    for k in range(2, num):
        frames[k, 4:12, 4 + 2 * k:12 + 2 * k] = (230, 38, 38)
    return frames  # frames 0 and 1 are identical: a GIF writer may merge them, the count must survive


def test_write_outputs_then_read_inputs(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    frames = _frames()
    wave = (0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)).astype(np.float32)
    written = media.write_outputs(tmp_path, {"image": image, "video": frames, "audio": wave, "text": "a red circle"},
                                  fps=7.8125)
    assert sorted(p.name for p in written) == ["audio.wav", "image.png", "text.txt", "video.gif", "video.mp4"]
    np.testing.assert_array_equal(media.read_input("image", tmp_path / "image.png"), image)
    for name in ("video.mp4", "video.gif"):
        back = media.read_input("video", tmp_path / name)
        assert back.shape == frames.shape, name
        assert np.abs(back.astype(int) - frames).mean() < 3, name
    info = sf.info(str(tmp_path / "audio.wav"))
    assert (info.samplerate, info.frames, info.channels) == (16000, 8000, 1)
    np.testing.assert_allclose(media.read_input("audio", tmp_path / "audio.wav"), wave, atol=1e-4)
    assert (tmp_path / "text.txt").read_text() == "a red circle\n"


def test_audio_input_is_resampled_to_16k_mono(tmp_path):
    t = np.arange(48000) / 48000
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t)] * 2, axis=1)
    sf.write(str(tmp_path / "s.wav"), stereo, 48000)
    back = media.read_input("audio", tmp_path / "s.wav")
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert back.shape == (16000,) and back.dtype == np.float32
    np.testing.assert_allclose(back[1000:-1000], expected[1000:-1000], atol=1e-3)


@pytest.mark.parametrize("modality,name,content,message", [
    ("image", "missing.png", None, "no such file"),
    ("image", "x.txt", b"hello", "unsupported file type '.txt'"),
    ("image", "clip.wav", b"RIFF", "unsupported file type '.wav'"),
    ("image", "broken.png", b"not a png", "unreadable image"),
    ("video", "broken.mp4", b"\x00" * 64, "unreadable video"),
    ("audio", "broken.wav", b"RIFF0000WAVE", "no readable audio"),
    ("audio", "pic.png", b"\x89PNG", "unsupported file type '.png'"),
])
def test_bad_inputs_raise_one_line_naming_the_file(tmp_path, modality, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(media.MediaError, match=message) as info:
        media.read_input(modality, path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{modality} {path}")


def test_output_folder_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(media.MediaError, match="cannot create it"):
        media.write_outputs(tmp_path / "file" / "sub", {"text": "x"}, fps=8)
