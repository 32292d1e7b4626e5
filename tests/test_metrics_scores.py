"""Inception score, KL and similarity scores against the reference functions' own outputs."""
import pathlib

import numpy as np
import pytest

from codi_jax.eval.metrics import frechet, scores

GOLDENS = pathlib.Path(__file__).parent / "metric_goldens"


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDENS / "scores.npz") as g:
        return {k: g[k] for k in g.files}


def test_inception_score_matches_torch_fidelity_and_audioldm(golden):
    got = scores.inception_score(golden["logits"])
    assert got["mean"] == pytest.approx(float(golden["fidelity_is_mean"]), rel=1e-6)
    assert got["std"] == pytest.approx(float(golden["fidelity_is_std"]), rel=1e-5)
    assert got["mean"] == pytest.approx(float(golden["audioldm_is_mean"]), rel=1e-6)


def test_inception_score_bounds():
    """One confident class per sample, all classes equally used -> IS = number of classes; one class for
    every sample -> 1."""
    spread = np.tile(np.eye(5) * 60.0, (10, 1))
    assert scores.inception_score(spread, shuffle=False)["mean"] == pytest.approx(5.0, rel=1e-6)
    collapsed = np.tile([60.0, 0, 0, 0, 0], (50, 1))
    assert scores.inception_score(collapsed)["mean"] == pytest.approx(1.0, abs=1e-9)


def test_kl_matches_audioldm(golden):
    got = scores.kl_divergence(golden["logits"], golden["logits_ref"])
    assert got["softmax"] == pytest.approx(float(golden["kl_softmax"]), rel=1e-5)
    assert got["sigmoid"] == pytest.approx(float(golden["kl_sigmoid"]), rel=1e-5)


def test_kl_of_identical_predictions_is_near_zero(golden):
    got = scores.kl_divergence(golden["logits"], golden["logits"])
    assert abs(got["softmax"]) < 1e-4


def test_audioldm_fd_is_our_frechet_distance(golden):
    ours = frechet.statistics_of(golden["fd_features"]).distance(frechet.statistics_of(golden["fd_features2"]))
    assert ours == pytest.approx(float(golden["audioldm_fd"]), rel=1e-6)


def test_clipsim_and_clip_score():
    rng = np.random.default_rng(0)
    text = rng.standard_normal((3, 8))
    frames = np.repeat(text[:, None], 4, axis=1) * 2.0  # every frame points along its caption
    assert scores.clipsim(frames, text) == pytest.approx(1.0)
    assert scores.clipsim(-frames, text) == pytest.approx(-1.0)
    assert scores.clip_score(frames[:, 0], text) == pytest.approx(100.0)
    assert scores.clip_score(-frames[:, 0], text) == 0.0  # negative similarities count as 0
    with pytest.raises(ValueError, match="CLIPSIM"):
        scores.clipsim(frames[:2], text)
