"""SpatioTemporalAttention: identity on images, the released quirks as analytic properties, bad inputs.

Numerical parity with the released module is checked through the unet_video goldens (tests/test_unet.py).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codi_jax.models import temporal
from codi_jax.models.temporal import LatentShift, SpatioTemporalAttention, TemporalFeedForward

C = 64


def _randomise(params, seed=1):
    """Every parameter non-zero (the zero-initialised projections would hide the computation)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape) + (1.0 if x.ndim == 1 else 0.0), jnp.float32),
        params)


@pytest.fixture(scope="module")
def sta():
    model = SpatioTemporalAttention(C)
    video = jax.random.normal(jax.random.key(0), (2, 6, 4, 4, C))
    params = _randomise(nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), video)))
    return model, params, video


def test_identity_on_images(sta):
    model, params, _ = sta
    image = jax.random.normal(jax.random.key(2), (3, 4, 4, C))
    np.testing.assert_array_equal(model.apply(params, image), image)


def test_image_init_has_the_video_tree(sta):
    model, params, _ = sta
    image_tree = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 4, C))))
    shapes = lambda t: jax.tree.map(lambda a: a.shape, t)
    assert shapes(image_tree) == shapes(params)


def test_video_output_and_frame_rate_embedding_is_inert(sta):
    model, params, video = sta
    apply = jax.jit(model.apply)
    out = apply(params, video)
    assert out.shape == video.shape and float(jnp.abs(out - video).max()) > 1e-2
    # The hard-wired frame-rate embedding is constant over frames and the norm is over frames.
    moved = jax.tree_util.tree_map_with_path(
        lambda p, a: a + 5.0 if "frame_rate_embeds" in jax.tree_util.keystr(p) else a, params)
    np.testing.assert_allclose(apply(moved, video), out, rtol=1e-4, atol=1e-4)
    moved = jax.tree_util.tree_map_with_path(
        lambda p, a: a.at[2].add(5.0) if "pos_embeds" in jax.tree_util.keystr(p) else a, params)
    assert float(jnp.abs(apply(moved, video) - out).max()) > 1e-3


def test_frames_beyond_input_do_not_matter(sta):
    # pos_embeds rows >= F are never read; rows < F are.
    model, params, video = sta
    apply = jax.jit(model.apply)
    moved = jax.tree_util.tree_map_with_path(
        lambda p, a: a.at[6:].add(3.0) if "pos_embeds" in jax.tree_util.keystr(p) else a, params)
    np.testing.assert_array_equal(apply(moved, video), apply(params, video))


def _changed_frames(module, x, frame):
    params = _randomise(nn.meta.unbox(jax.jit(module.init)(jax.random.key(0), x)))
    apply = jax.jit(module.apply)
    y0 = apply(params, x)
    y1 = apply(params, x.at[:, frame].add(1.0))
    return [int(f) for f in np.nonzero(np.abs(np.asarray(y1 - y0)).max(axis=(0, 2, 3, 4)) > 0)[0]]


def test_token_shift_reaches_exactly_one_frame_forward():
    x = jax.random.normal(jax.random.key(3), (1, 6, 2, 2, C))
    assert _changed_frames(TemporalFeedForward(C), x, 3) == [3, 4]


def test_latent_shift_moves_chunk_i_by_i_frames():
    x = jax.random.normal(jax.random.key(4), (1, 12, 2, 2, C))
    assert _changed_frames(LatentShift(C), x, 2) == list(range(2, 10))  # chunks 0..7
    model = LatentShift(C)
    params = _randomise(nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), x)))
    out = jax.jit(model.apply)(params, x[:, :3])  # 3 frames: chunks 3..7 are all zero
    chunk = C // 8
    assert float(jnp.abs(out[..., 3 * chunk:]).max()) == 0.0
    for i in range(3):
        assert not np.any(np.asarray(out[:, :i, ..., i * chunk:(i + 1) * chunk]))
        assert float(jnp.abs(out[:, i:, ..., i * chunk:(i + 1) * chunk]).max()) > 0.0


def test_chunking_follows_torch_chunk():
    assert temporal._torch_chunks(853, 2) == [(0, 427), (427, 853)]
    assert temporal._torch_chunks(64, 8) == [(8 * i, 8 * i + 8) for i in range(8)]
    x = jnp.arange(4.0).reshape(1, 4)
    np.testing.assert_array_equal(temporal._shift_frames(x, 1), [[0, 0, 1, 2]])
    np.testing.assert_array_equal(temporal._shift_frames(x, 5), [[0, 0, 0, 0]])


def test_bad_inputs(sta):
    model, params, _ = sta
    with pytest.raises(ValueError, match="at most 30"):
        model.apply(params, jnp.zeros((1, 31, 2, 2, C)))
    with pytest.raises(ValueError, match="expects 64 channels, got 32"):
        model.apply(params, jnp.zeros((1, 4, 2, 2, 32)))
    with pytest.raises(ValueError, match="rank 3"):
        model.apply(params, jnp.zeros((4, 2, C)))


def _attention_change(norm: str, shift):
    """How much a frame-constant shift of the tokens [N, F, C] moves the temporal attention's own contribution
    (output minus its residual input)."""
    module = temporal.TemporalAttention(C, temporal.TEMPORAL_HEADS, C // 4, norm=norm)
    tokens = jax.random.normal(jax.random.key(5), (3, 6, C))
    bias = jnp.zeros((temporal.TEMPORAL_HEADS, 6, 6))
    params = _randomise(nn.meta.unbox(module.init(jax.random.key(0), tokens, bias)))
    delta = lambda x: module.apply(params, x, bias) - x
    return float(jnp.abs(delta(tokens + shift) - delta(tokens)).max())


def test_frame_norm_cancels_a_frame_constant_condition_and_channel_norm_keeps_it():
    # One context token reaches every frame as the same vector: the released frame norm removes it before
    # the attention, the channel norm does not.
    condition = 2.0 * jax.random.normal(jax.random.key(6), (3, 1, C))
    assert _attention_change("frames", condition) < 1e-4
    assert _attention_change("channels", condition) > 1e-1


def test_unknown_norm_is_one_error():
    with pytest.raises(ValueError, match="unknown temporal norm 'time'; expected one of"):
        SpatioTemporalAttention(C, norm="time").init(jax.random.key(0), jnp.zeros((1, 2, 2, 2, C)))
