"""Oracle on clean generator output (100 % over 1000 examples per modality), files, 'none' answers, and
the scores."""
import numpy as np
import pytest

from codi_jax.data import preprocess
from codi_jax.data import shapes_tones as st
from codi_jax.eval import oracle, scoring


def _truth(attributes, modality):
    return {name: attributes[name] for name in oracle.CARRIED[modality]}


def test_generator_to_oracle_is_exact_on_1000_examples_per_modality():
    wrong = {m: [] for m in oracle.CARRIED}
    for index in range(1000):
        example = st.generate("test", index)
        for modality in oracle.CARRIED:
            decoded = oracle.decode(modality, example[modality])
            if decoded != _truth(example["attributes"], modality):
                wrong[modality].append((index, decoded))
    assert wrong == {m: [] for m in oracle.CARRIED}


@pytest.mark.parametrize("resolution", [16, 32, 48])
def test_oracle_is_exact_at_other_resolutions(resolution):
    for index in range(150):
        example = st.generate("train", index, resolution)
        for modality in ("image", "video"):
            assert oracle.decode(modality, example[modality]) == _truth(example["attributes"], modality), index


def test_float_layouts_model_range_and_unit_range():
    example = st.generate("test", 7)
    truth = _truth(example["attributes"], "image")
    assert oracle.decode_image(preprocess.scale_to_unit_range(example["image"])) == truth
    assert oracle.decode_image(example["image"] / 255.0, value_range=(0, 1)) == truth
    video = preprocess.scale_to_unit_range(example["video"])
    assert oracle.decode_video(video) == _truth(example["attributes"], "video")


def test_none_answers():
    assert oracle.decode_image(np.zeros((64, 64, 3), np.uint8)) == {"color": None, "shape": None}
    assert oracle.decode_video(np.full((8, 32, 32, 3), -1.0, np.float32))["onset"] is None
    assert oracle.decode_audio(np.zeros(16384, np.float32)) == {"color": None, "shape": None, "onset": None}
    assert oracle.decode_text("a red blue circle moving left") == {"color": None, "shape": "circle", "motion": "left"}
    assert oracle.decode_text("nothing here") == {"color": None, "shape": None, "motion": None}
    # Repeated words (Optimus output often repeats) still name one value.
    assert oracle.decode_text("A RED red Circle, moving left.") == {"color": "red", "shape": "circle", "motion": "left"}


def test_static_video_has_no_motion():
    example = st.generate("test", 2)
    still = np.repeat(example["image"][None], 8, axis=0)
    decoded = oracle.decode_video(still)
    assert decoded["motion"] is None and decoded["onset"] == 0


def test_audio_at_another_sample_rate():
    example = st.generate("test", 11)
    wave = preprocess.resample_audio(example["audio"], 16000, 22050)
    assert oracle.decode_audio(wave, sample_rate=22050) == _truth(example["attributes"], "audio")


def test_decode_file_reads_exported_media(tmp_path):
    st.export("test", 6, tmp_path)
    for i in range(6):
        attributes = st.generate("test", i)["attributes"]
        folder = tmp_path / str(i)
        assert oracle.decode_file(folder / "image.png") == _truth(attributes, "image")
        assert oracle.decode_file(folder / "video.mp4") == _truth(attributes, "video")
        assert oracle.decode_file(folder / "video.gif") == _truth(attributes, "video")
        assert oracle.decode_file(folder / "audio.wav") == _truth(attributes, "audio")
        assert oracle.decode_file(folder / "text.txt") == _truth(attributes, "text")
    with pytest.raises(ValueError, match="unknown file type '.xyz'"):
        oracle.decode_file(tmp_path / "a.xyz")


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"expected channels-last RGB \[H, W, 3\]"):
        oracle.decode_image(np.zeros((3, 64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"expected a mono wave \[N\]"):
        oracle.decode_audio(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        oracle.decode("smell", None)


def test_conditional_accuracy_scores_what_both_sides_carry():
    targets = [{"color": "red", "shape": "circle", "motion": "left", "onset": 1},
               {"color": "yellow", "shape": "triangle", "motion": "up", "onset": 0}]
    # image -> audio: color and shape only (image carries no onset, audio carries no motion).
    decoded = [{"color": "red", "shape": "square", "onset": 3}, {"color": "yellow", "shape": "triangle", "onset": 2}]
    result = scoring.conditional_accuracy("image", "audio", targets, decoded)
    assert result["attributes"] == ("color", "shape") and result["scored"] == 4
    assert result["accuracy"] == 0.75 and result["per_attribute"] == {"color": 1.0, "shape": 0.5}
    assert result["seen"]["accuracy"] == 0.5 and result["unseen"]["accuracy"] == 1.0
    # text -> video: color, shape, motion; a None answer is wrong.
    decoded = [{"color": "red", "shape": "circle", "motion": None, "onset": 1}] * 2
    result = scoring.conditional_accuracy("text", "video", targets, decoded)
    assert result["attributes"] == ("color", "shape", "motion") and result["accuracy"] == pytest.approx(2 / 6)
    # video -> audio also scores the onset.
    assert scoring.conditional_accuracy("video", "audio", targets[:1], [{"color": "red", "shape": "circle",
                                                                         "onset": 1}])["attributes"] == (
        "color", "shape", "onset")


def test_multi_condition_accuracy_uses_what_the_inputs_agree_on():
    text = [{"color": "blue", "shape": "square", "motion": "left"}]
    image = [{"color": "red", "shape": "circle"}]
    # Color and shape disagree between the inputs: only the motion (text alone carries it) is scored.
    result = scoring.multi_condition_accuracy({"text": text, "image": image}, "video",
                                              [{"color": "red", "shape": "circle", "motion": "left", "onset": 0}])
    assert result["attributes"] == ("motion",) and result["accuracy"] == 1.0
    text = [{"color": "red", "shape": "circle", "motion": "left"}]
    result = scoring.multi_condition_accuracy({"text": text, "image": image}, "video",
                                              [{"color": "red", "shape": "square", "motion": "left", "onset": 0}])
    assert result["per_attribute"] == {"color": 1.0, "shape": 0.0, "motion": 1.0}


def test_joint_coherence_and_onset_sync():
    video = [{"color": "red", "shape": "circle", "motion": "left", "onset": 1},
             {"color": "blue", "shape": "square", "motion": "up", "onset": 2}]
    audio = [{"color": "red", "shape": "circle", "onset": 1}, {"color": "blue", "shape": "triangle", "onset": 3}]
    text = [{"color": "red", "shape": "circle", "motion": "right"}, {"color": None, "shape": "square", "motion": "up"}]
    result = scoring.joint_coherence({"video": video, "audio": audio, "text": text})
    assert result["onset_sync"] == 0.5
    assert result["pairs"]["video+audio"]["per_attribute"] == {"color": 1.0, "shape": 0.5, "onset": 0.5}
    assert result["pairs"]["video+text"]["agreement"] == pytest.approx(4 / 6)
    assert result["pairs"]["audio+text"]["agreement"] == pytest.approx(2 / 4)
    assert result["agreement"] == pytest.approx((4 + 4 + 2) / (6 + 6 + 4))
    assert scoring.CHANCE == {"color": 0.25, "shape": pytest.approx(1 / 3), "motion": 0.25, "onset": 0.25}


def test_attributes_from_batch_indices():
    out = scoring.attributes_from_indices(np.array([3, 0]), np.array([2, 0]), np.array([1, 2]), np.array([0, 3]))
    assert out == [{"color": "yellow", "shape": "triangle", "motion": "right", "onset": 0},
                   {"color": "red", "shape": "circle", "motion": "up", "onset": 3}]
