"""PANNs CNN14 (AudioLDM's evaluation) and VGGish (FAD) against the reference modules with the same
random weights (fixtures written by metric_goldens/make_goldens.py)."""
import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from codi_jax.data.mel import mel_filterbank
from codi_jax.eval.metrics import panns, torch_weights, vggish

GOLDENS = pathlib.Path(__file__).parent / "metric_goldens"
sys.path.insert(0, str(GOLDENS))
from random_state import random_state_dict  # noqa: E402


def _golden(name):
    with np.load(GOLDENS / f"{name}.npz") as g:
        return {k: g[k] for k in g.files}


def _relative(got, want):
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


def test_panns_matches_audioldm_eval():
    g = _golden("panns")
    state = random_state_dict(json.loads(str(g["shapes"])), int(g["seed"]))
    model = panns.Cnn14()
    params = torch_weights.fit(panns.convert_state_dict(state), torch_weights.abstract(model, *panns.init_inputs()),
                               "panns")
    # Our initial mel matrix (for random-weight runs) is the reference's: librosa's slaney filterbank.
    ours = mel_filterbank(panns.SAMPLE_RATE, panns.N_FFT, panns.MEL_BINS, panns.FMIN, panns.FMAX).T
    np.testing.assert_allclose(ours, g["melW"], rtol=1e-5, atol=1e-7)
    waves = np.stack([panns.prepare(w) for w in g["waves"]])
    out = jax.jit(model.apply)({"params": params}, waves)
    assert _relative(out["embedding"], g["embedding"]) < 1e-4
    assert _relative(out["logits"], g["logits"]) < 1e-4


def test_panns_prepare_is_audioldm_loading():
    short = np.full(1000, 0.5, np.float32)
    prepared = panns.prepare(short)
    assert prepared.shape == (panns.MIN_SAMPLES,) and np.all(prepared == 0.0)  # mean removed, zero padded


def test_vggish_matches_torch_hub_model():
    g = _golden("vggish")
    state = random_state_dict(json.loads(str(g["shapes"])), int(g["seed"]))
    model = vggish.VGGish()
    params = torch_weights.fit(vggish.convert_state_dict(state), torch_weights.abstract(model, *vggish.init_inputs()),
                               "vggish")
    out = jax.jit(model.apply)({"params": params}, g["waves"])["embedding"]
    assert out.shape == g["embedding"].shape == (2, vggish.num_examples(g["waves"].shape[1]), 128)
    assert _relative(out, g["embedding"]) < 1e-4


def test_published_file_converts_to_npz_and_loads_back(tmp_path, capsys):
    """A .pth in the published layout -> `python -m codi_jax.eval.metrics.convert` -> .npz -> the same params."""
    torch = pytest.importorskip("torch")
    from codi_jax.eval.metrics import convert

    g = _golden("vggish")
    state = random_state_dict(json.loads(str(g["shapes"])), 7)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / vggish.WEIGHTS_FILE)
    assert convert.main(["--network", "vggish", "--src", str(tmp_path / vggish.WEIGHTS_FILE),
                         "--out", str(tmp_path / "vggish.npz")]) == 0
    abstract = torch_weights.abstract(vggish.VGGish(), *vggish.init_inputs())
    loaded = torch_weights.load_params(tmp_path / "vggish.npz", abstract, vggish.convert_state_dict, "vggish")
    np.testing.assert_array_equal(loaded["features_3"]["kernel"],
                                  np.transpose(state["features.3.weight"], (2, 3, 1, 0)))
    np.testing.assert_array_equal(loaded["embeddings_4"]["kernel"], state["embeddings.4.weight"].T)
    assert convert.main(["--network", "vggish", "--src", str(tmp_path / "absent.pth"),
                         "--out", str(tmp_path / "x.npz")]) == 2
    assert "expected the weights file" in capsys.readouterr().err
