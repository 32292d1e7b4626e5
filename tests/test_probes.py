"""Stage probes score what they exist to measure: the ground truth scores 100 %, shuffled outputs score chance.

The "outputs" here are the Shapes & Tones validation examples themselves (what a perfect autoencoder, prompt
encoder or diffuser would give back), and the same outputs paired with the wrong examples.
"""
import pathlib

import numpy as np
import pytest

from codi_jax.data import shapes_tones as st
from codi_jax.eval import probes, scoring

N = 96
RESOLUTION = 32


@pytest.fixture(scope="module")
def examples():
    generated = [st.generate("validation", i, RESOLUTION) for i in range(N)]
    indices = [st.attribute_indices(g["attributes"]) for g in generated]
    batch = {name: np.array([x[name] for x in indices], np.int32) for name in st.ATTRIBUTES}
    media = {"image": np.stack([g["image"] for g in generated]) / 255.0,
             "video": np.stack([g["video"] for g in generated]) / 255.0,
             "audio": np.stack([g["audio"] for g in generated]),
             "text": [g["text"] for g in generated]}
    return batch, media


def _shuffled(media, seed=0):
    order = np.random.default_rng(seed).permutation(N)
    return {m: [v[i] for i in order] if m == "text" else v[order] for m, v in media.items()}


def _chance(attributes):
    return np.mean([scoring.CHANCE[a] for a in attributes])


def test_attributes_of_a_batch(examples):
    batch, _ = examples
    targets = probes.attributes_of(batch)
    assert targets[0] == {k: v for k, v in st.generate("validation", 0, RESOLUTION)["attributes"].items()
                          if k in st.ATTRIBUTES}


def test_reconstruction_probe(examples):
    batch, media = examples
    targets = probes.attributes_of(batch)
    perfect = probes.score_reconstruction(media, targets)
    assert perfect["accuracy"] == 1.0
    assert perfect["video/onset"] == perfect["audio/onset"] == perfect["text/motion"] == 1.0
    shuffled = probes.score_reconstruction(_shuffled(media), targets)
    for modality in media:
        carried = probes.oracle.CARRIED[modality]
        assert abs(shuffled[f"{modality}/accuracy"] - _chance(carried)) < 0.12, modality


def test_retrieval_probe(examples):
    batch, _ = examples
    targets = probes.attributes_of(batch)
    pairs = (("text", "audio"), ("audio", "video"), ("text", "image"))

    def class_codes(modality):
        # A perfect encoder: one direction per value of every attribute the modality carries.
        carried = probes.oracle.CARRIED[modality]
        code = np.zeros((N, 16))
        for i, t in enumerate(targets):
            for k, name in enumerate(("color", "shape", "motion", "onset")):
                if name in carried:
                    code[i, 4 * k + ([*st.COLORS], [*st.SHAPES], [*st.MOTIONS], [*st.ONSETS])[k].index(t[name])] = 1
        return code

    embeddings = {m: class_codes(m) for m in ("text", "audio", "video", "image")}
    perfect = probes.score_retrieval(embeddings, targets, pairs)
    assert perfect["text_audio/top1"] == perfect["audio_video/top1"] == perfect["text_image/top1"] == 1.0
    rng = np.random.default_rng(1)
    shuffled = {m: e[rng.permutation(N)] for m, e in embeddings.items()}
    scores = probes.score_retrieval(shuffled, targets, pairs)
    # Chance is the probability that a random example shares the query's class.
    assert scores["text_audio/top1"] < 0.25 and scores["audio_video/top1"] < 0.15
    assert abs(scores["text_image/top1"] - 1 / 12) < 0.1


def test_generation_probe(examples):
    batch, media = examples
    targets = probes.attributes_of(batch)
    outputs = {"text": {"image": media["image"], "video": media["video"]}, "audio": {"video": media["video"]}}
    perfect = probes.score_generation(outputs, targets)
    assert perfect["accuracy"] == 1.0
    # audio -> video scores colour, shape and onset (audio carries no motion).
    assert set(k.split("/")[1] for k in perfect if k.startswith("audio->video/")) == {"accuracy", "color", "shape",
                                                                                        "onset"}
    shuffled = probes.score_generation({c: _shuffled(o) for c, o in outputs.items()}, targets)
    assert abs(shuffled["text->video/accuracy"] - _chance(("color", "shape", "motion"))) < 0.12


def test_joint_probe(examples):
    batch, media = examples
    targets = probes.attributes_of(batch)
    together = {"video": media["video"], "audio": media["audio"]}
    apart = {"video": media["video"], "audio": _shuffled(media)["audio"]}
    scores = probes.score_joint({"joint": together, "independent": apart}, targets)
    assert scores["joint/onset_agreement"] == scores["joint/agreement"] == 1.0
    assert abs(scores["independent/onset_agreement"] - 0.25) < 0.12
    assert scores["joint/video_accuracy"] == 1.0 and abs(scores["independent/audio_accuracy"] - 0.29) < 0.12


def _onehots(batch, names):
    return np.concatenate([np.eye(len(values))[batch[name]] for name, values in
                           (("color", st.COLORS), ("shape", st.SHAPES), ("motion", st.MOTIONS), ("onset", range(4)))
                           if name in names], axis=1)


def test_env_readout_finds_what_the_encodings_carry_and_nothing_else(examples):
    """Encodings that are the attributes' one-hots read back 100 % by nearest centroid; encodings without the onset
    read it at chance (the run4 diagnosis: V carried colour and shape, not onset)."""
    batch, _ = examples
    targets = probes.attributes_of(batch)
    rng = np.random.default_rng(0)
    full, no_onset = (x + 0.05 * rng.normal(size=x.shape) for x in (_onehots(batch, st.ATTRIBUTES),
                                                                     _onehots(batch, ("color", "shape"))))
    scores = probes.score_env({"video@0": full, "audio@500": no_onset[:, None]}, targets)
    assert {k: v for k, v in scores.items() if k.startswith("env/video@0/")} == {
        f"env/video@0/{a}": 1.0 for a in ("color", "shape", "motion", "onset")}
    assert set(scores) - {k for k in scores if k.startswith("env/video@0/")} == {
        "env/audio@500/color", "env/audio@500/shape", "env/audio@500/onset"}  # audio carries no motion
    assert scores["env/audio@500/color"] == scores["env/audio@500/shape"] == 1.0
    assert abs(scores["env/audio@500/onset"] - 0.25) < 0.12
    joint = probes.score_joint({"joint": {"video": examples[1]["video"]}, "env": {"video@0": full}}, targets)
    assert joint["env/video@0/onset"] == 1.0 and joint["joint/video_accuracy"] == 1.0


def test_probe_log_keeps_every_step_and_replaces_a_repeat(tmp_path):
    log = probes.ProbeLog(tmp_path)
    log.add(10, {"accuracy": 0.5})
    log.add(20, {"accuracy": 0.75})
    log.add(20, {"accuracy": 0.8})
    again = probes.ProbeLog(tmp_path)
    assert [e["step"] for e in again.entries] == [10, 20] and again.latest() == {"accuracy": 0.8}


def test_a_probe_of_another_stage_is_one_config_error():
    import jax

    from codi_jax.parallel import mesh as mesh_lib
    from codi_jax.train import stages
    from codi_jax.train.defaults import load_config_file
    from codi_jax.train.errors import ConfigError

    config = load_config_file(f"{pathlib.Path(__file__).resolve().parents[1]}/configs/bridging_align.py:tiny")
    config.probe.kind = "generation"
    stage = stages.build(config, mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1]))
    with pytest.raises(ConfigError, match=r"^config.probe.kind 'generation': the bridging_align stage's probe is "
                                          r"'retrieval'$"):
        stage.probe()


def test_report_table_shows_headlines_with_their_attributes_and_what_v_carries():
    from codi_jax.eval import probe_report

    scores = {"joint/onset_agreement": 0.5, "joint/agreement": 0.75, "joint/video_accuracy": 0.9,
              "env/video@0/color": 1.0, "env/video@0/onset": 0.25, "env/audio@500/onset": 0.5}
    rows = probe_report.table({"latent_align": [{"step": 10, "scores": {}}, {"step": 20, "scores": scores}]})
    assert rows[2] == ("| latent_align | 20 | joint/agreement 75.0 (video_accuracy 90); joint/onset_agreement 50.0 "
                       "(video_accuracy 90); env/audio@500 (onset 50); env/video@0 (color 100, onset 25) |")
