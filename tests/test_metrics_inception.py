"""InceptionV3 (pytorch-fid's FID network) against the reference module with the same random weights."""
import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from codi_jax.eval.metrics import inception, torch_weights

GOLDENS = pathlib.Path(__file__).parent / "metric_goldens"
sys.path.insert(0, str(GOLDENS))
from random_state import random_state_dict  # noqa: E402


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDENS / "inception.npz") as g:
        return {k: g[k] for k in g.files}


@pytest.fixture(scope="module")
def params(golden):
    state = random_state_dict(json.loads(str(golden["shapes"])), int(golden["seed"]))
    model = inception.InceptionV3()
    abstract = torch_weights.abstract(model, *inception.init_inputs())
    return torch_weights.fit(inception.convert_state_dict(state), abstract, "inception")


def _relative(got, want):
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("case", ["small", "large"])
def test_matches_pytorch_fid(golden, params, case):
    """Upsampled (72x96) and downsampled (320x330) inputs: resize, scaling and every block."""
    out = jax.jit(inception.InceptionV3().apply)({"params": params}, golden[f"{case}_images"])
    assert _relative(np.asarray(out["pool"]), golden[f"{case}_pool2048"]) < 1e-4
    assert _relative(np.asarray(out["logits"]), golden[f"{case}_logits"]) < 1e-4


@pytest.mark.parametrize("dims", [64, 192, 768])
def test_earlier_blocks_match_pytorch_fid_dims(golden, params, dims):
    """pytorch-fid's --dims: the truncated network reads only the weights it builds."""
    model = inception.InceptionV3(dims=dims, logits=False)
    flat = inception.convert_state_dict(random_state_dict(json.loads(str(golden["shapes"])), int(golden["seed"])))
    truncated = torch_weights.fit(flat, torch_weights.abstract(model, *inception.init_inputs()), "inception",
                                  subset=True)
    assert "Mixed_7c" not in truncated
    out = jax.jit(model.apply)({"params": truncated}, golden["small_images"])
    assert set(out) == {"pool"} and out["pool"].shape == (2, dims)
    assert _relative(np.asarray(out["pool"]), golden[f"small_pool{dims}"]) < 1e-4


def test_converter_refuses_a_file_that_does_not_fit(golden, tmp_path):
    state = random_state_dict(json.loads(str(golden["shapes"])), 0)
    flat = inception.convert_state_dict(state)
    abstract = torch_weights.abstract(inception.InceptionV3(), *inception.init_inputs())
    del flat["Mixed_7c/branch_pool/bn/var"]
    with pytest.raises(torch_weights.WeightsError, match="Mixed_7c/branch_pool/bn/var is missing"):
        torch_weights.fit(flat, abstract, "inception")
    with pytest.raises(torch_weights.WeightsError, match=f"expected the weights file .*{inception.WEIGHTS_FILE}"):
        torch_weights.load_params(tmp_path / inception.WEIGHTS_FILE, abstract, inception.convert_state_dict,
                                  "inception")
