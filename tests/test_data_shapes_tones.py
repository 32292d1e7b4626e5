"""Shapes & Tones generator: the spec's numbers, determinism, splits, captions and the export command."""
import json

import numpy as np
import pytest

from codi_jax.data import shapes_tones as st


def test_constants_follow_the_spec():
    assert st.COLORS == ("red", "green", "blue", "yellow")
    assert st.SHAPES == ("circle", "square", "triangle")
    assert st.MOTIONS == ("left", "right", "up", "down")
    assert st.ONSETS == (0, 1, 2, 3)
    assert st.object_size(64) == 20 and st.step_size(64) == 4
    assert st.NUM_SAMPLES == 16384 and st.SAMPLE_RATE == 16000 and st.SAMPLES_PER_FRAME == 2048
    np.testing.assert_allclose(st.PALETTE[3], (0.90, 0.80, 0.15))


def test_generate_is_deterministic_and_shaped():
    a, b = st.generate("test", 17), st.generate("test", 17)
    assert a["image"].shape == (64, 64, 3) and a["image"].dtype == np.uint8
    assert a["video"].shape == (8, 64, 64, 3) and a["video"].dtype == np.uint8
    assert a["audio"].shape == (16384,) and a["audio"].dtype == np.float32
    assert isinstance(a["text"], str)
    for key in ("image", "video", "audio"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["text"] == b["text"] and a["attributes"] == b["attributes"]
    assert st.generate("test", 5, resolution=32)["video"].shape == (8, 32, 32, 3)


def test_image_draws_the_object_at_its_start_position():
    for index in range(20):
        e = st.generate("train", index)
        a = e["attributes"]
        row, col = a["position"]
        size = st.object_size(64)
        mask = e["image"].max(axis=-1) > 0
        np.testing.assert_array_equal(mask[row:row + size, col:col + size], st.shape_mask(a["shape"], size, size))
        assert mask.sum() == st.shape_mask(a["shape"], size, size).sum()
        colors = np.unique(e["image"][mask], axis=0)
        np.testing.assert_array_equal(colors, [np.round(st.PALETTE[st.COLORS.index(a["color"])] * 255)])


def test_shape_fill_ratios():
    assert st.shape_mask("square", 20, 20).mean() == 1.0
    assert abs(st.shape_mask("circle", 20, 20).mean() - np.pi / 4) < 0.02
    assert abs(st.shape_mask("triangle", 20, 20).mean() - 0.5) < 0.03


def test_video_onset_and_motion():
    for index in range(40):
        e = st.generate("test", index)
        a = e["attributes"]
        visible = e["video"].max(axis=(1, 2, 3)) > 0
        np.testing.assert_array_equal(visible, np.arange(8) >= a["onset"])
        np.testing.assert_array_equal(e["video"][a["onset"]], e["image"])
        rows, cols = np.nonzero(e["video"][7].max(axis=-1))
        rows0, cols0 = np.nonzero(e["image"].max(axis=-1))
        d_row, d_col = st.MOTION_DIRECTIONS[a["motion"]]
        travel = (7 - a["onset"]) * st.step_size(64)
        assert (rows.min() - rows0.min(), cols.min() - cols0.min()) == (d_row * travel, d_col * travel)
        # Inside the frame for every one of the 8 frame positions, whatever the onset.
        end_row, end_col = np.add(a["position"], np.multiply((d_row, d_col), 7 * st.step_size(64)))
        assert 0 <= min(end_row, end_col) and max(end_row, end_col) + 20 <= 64


def test_audio_onset_peak_and_pitch():
    for index in range(24):
        e = st.generate("test", index)
        a, wave = e["attributes"], e["audio"]
        start = 2048 * a["onset"]
        assert np.all(wave[:start] == 0) and np.abs(wave[start + 200:start + 400]).max() > 0.2
        assert abs(np.abs(wave).max() - 0.5) < 1e-6
        # 10 ms linear attack and release.
        assert abs(wave[start]) < 1e-6 and abs(wave[-1]) < 0.5 * 2 / 160
        spectrum = np.abs(np.fft.rfft(wave[start:] * np.hanning(16384 - start), n=1 << 17))
        freqs = np.fft.rfftfreq(1 << 17, 1 / 16000)
        band = (freqs > 200) & (freqs < 600)
        peak = freqs[band][np.argmax(spectrum[band])]
        assert abs(peak - st.PITCHES_HZ[st.COLORS.index(a["color"])]) < 2.0


def test_timbre_harmonics():
    assert st.harmonics("circle", 261.63) == [(1, 1.0)]
    square = st.harmonics("square", 523.25)
    assert [n for n, _ in square] == [1, 3, 5, 7, 9, 11, 13] and square[1][1] == pytest.approx(1 / 3)
    triangle = st.harmonics("triangle", 261.63)
    assert max(n for n, _ in triangle) * 261.63 < 7000 and triangle[1][1] == pytest.approx(-1 / 9)


def test_captions_name_color_shape_motion_never_onset():
    assert len(st.TEMPLATES) >= 4
    assert st.caption("red", "circle", "left", 0) == "a red circle moving left"
    for template in range(len(st.TEMPLATES)):
        text = st.caption("blue", "triangle", "up", template)
        assert {"blue", "triangle", "up"} <= set(text.replace(",", " ").split())
        assert not any(ch.isdigit() for ch in text) and "onset" not in text and "frame" not in text
    with pytest.raises(ValueError, match="unknown color 'pink'"):
        st.caption("pink", "circle", "left")


def test_splits_hold_out_two_combinations_and_cover_the_rest():
    pairs = {split: {(a["color"], a["shape"]) for a in (st.sample_attributes(split, i) for i in range(3000))}
             for split in st.SPLITS}
    held = set(st.HELD_OUT)
    assert held == {("yellow", "triangle"), ("green", "square")}
    assert not pairs["train"] & held and not pairs["validation"] & held
    assert pairs["test"] >= held and len(pairs["test"]) == 12 and len(pairs["train"]) == 10
    # Each split draws from its own seeds.
    assert [st.sample_attributes("train", i) for i in range(50)] != [st.sample_attributes("test", i) for i in range(50)]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        st.generate("dev", 0)
    with pytest.raises(ValueError, match="non-negative integer"):
        st.generate("train", -1)
    with pytest.raises(ValueError, match="resolution must be an integer >= 16"):
        st.generate("train", 0, resolution=8)
    with pytest.raises(ValueError, match="unknown modalities"):
        st.generate("train", 0, modalities=("smell",))


def test_export_command_writes_media_and_attributes(tmp_path):
    st.main(["export", "--split", "test", "--num", "3", "--out", str(tmp_path), "--resolution", "32"])
    lines = [json.loads(line) for line in (tmp_path / "attributes.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ["0", "1", "2"]
    for i, line in enumerate(lines):
        a = st.generate("test", i, 32)["attributes"]
        assert line == {"id": str(i), "color": a["color"], "shape": a["shape"], "motion": a["motion"],
                        "onset": a["onset"]}
        for name in ("image.png", "video.mp4", "video.gif", "audio.wav", "text.txt"):
            assert (tmp_path / str(i) / name).stat().st_size > 0
