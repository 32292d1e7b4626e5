"""I3D (FVD's network) against piergiaj's pytorch_i3d with the same random weights."""
import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from codi_jax.eval.metrics import i3d, torch_weights

GOLDENS = pathlib.Path(__file__).parent / "metric_goldens"
sys.path.insert(0, str(GOLDENS))
from random_state import random_state_dict  # noqa: E402


def test_matches_pytorch_i3d():
    with np.load(GOLDENS / "i3d.npz") as g:
        g = {k: g[k] for k in g.files}
    state = random_state_dict(json.loads(str(g["shapes"])), int(g["seed"]))
    model = i3d.InceptionI3d()
    params = torch_weights.fit(i3d.convert_state_dict(state), torch_weights.abstract(model, *i3d.init_inputs()), "i3d")
    out = np.asarray(jax.jit(model.apply)({"params": params}, g["videos"])["logits"], np.float64)
    assert out.shape == (2, 400)
    assert np.max(np.abs(out - g["logits"])) / np.max(np.abs(g["logits"])) < 1e-4


def test_same_padding_is_tensorflows():
    # size divisible by the stride: k - s in total; otherwise k - size % s; the odd one goes to the back
    assert i3d.same_padding((16, 224, 224), (7, 7, 7), (2, 2, 2)) == [(2, 3), (2, 3), (2, 3)]
    assert i3d.same_padding((7,), (3,), (2,)) == [(1, 1)]
    assert i3d.same_padding((1,), (2,), (2,)) == [(0, 1)]


def test_short_clips_are_repeated_up_to_fvd_length():
    clips = np.arange(2 * 8).reshape(2, 8)
    repeated = i3d.repeat_frames(clips)
    assert repeated.shape == (2, i3d.FVD_FRAMES)
    np.testing.assert_array_equal(repeated[0], np.repeat(np.arange(8), 2))
    with pytest.raises(ValueError, match="at least 9 frames"):
        jax.eval_shape(lambda: i3d.InceptionI3d().init(jax.random.key(0), np.zeros((1, 8, 32, 32, 3), np.uint8)))
