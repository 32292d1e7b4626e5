"""CLAP audio encoder: golden parity, full size, sharding, front-end analytics, Swin helpers, bad input."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codi_jax.convert import clap as clap_convert
from codi_jax.convert import golden
from codi_jax.models import clap
from codi_jax.parallel.partitioning import tree_shardings

P = jax.sharding.PartitionSpec


@pytest.fixture(scope="module")
def tiny():
    # Smaller than "tiny" to keep compiles short, still with shifted and unshifted windows in each stage.
    model = clap.build("tiny", clip_samples=9600, spec_size=64, mel_bins=16, depths=(2, 2), num_heads=(2, 2),
                       window_size=4)
    variables = jax.jit(model.init)(jax.random.key(0), *clap.init_inputs(model))
    return model, nn.meta.unbox(variables)


@pytest.fixture(scope="module")
def full_variables():
    return clap_convert.abstract_variables(clap.build("full"))


def test_golden_clap(goldens_dir):
    rows = golden.check(goldens_dir / "clap")
    names = {r[1] for r in rows}
    for case in ("exact", "repeat"):
        assert {f"{case}_{n}" for n in ("wave48k", "logmel", "spec_image", "embedding", "projected", "embed")} <= names
    assert "repeat_waveform" in names
    failed = [r for r in rows if not r[4]]
    assert not failed, failed


def test_full_parameter_count(full_variables):
    params = nn.meta.unbox(full_variables["params"])
    count = lambda t: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))
    assert count(params) == 280_951_959
    assert count(params["audio_branch"]) == 277_606_551
    assert count(params["audio_projection"]) == 2_164_224
    assert count(params["audio_transform"]) == 1_181_184
    assert params["audio_branch"]["tscam_conv"]["kernel"].shape == (2, 3, 2048, 527)
    # Stage 3 sits at 8 x 8 = the window: a 15 x 15 table; bn0 statistics are batch_stats, not params.
    assert params["audio_branch"]["layers_3_blocks_1"]["attn"]["relative_position_bias_table"].shape == (225, 32)
    assert jax.tree.map(lambda x: x.shape, full_variables["batch_stats"]) == \
        {"audio_branch": {"bn0": {"mean": (64,), "var": (64,)}}}


def test_fsdp_sharding_full_size(full_variables):
    mesh = jax.make_mesh((1, 8, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    abstract = full_variables["params"]
    shardings = tree_shardings(abstract, mesh)
    flat_s = dict(jax.tree_util.tree_flatten_with_path(shardings)[0])
    leaves = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(abstract))[0]
    big_replicated = {jax.tree_util.keystr(p) for p, x in leaves if x.size * 4 > 2 ** 20 and flat_s[p].is_fully_replicated}
    # The unused AudioSet head is 527 x 527 and 527 = 17 * 31: no 8-way split exists, so it stays whole (1.1 MB).
    assert big_replicated == {"['audio_branch']['head']['kernel']"}
    branch = shardings["audio_branch"]
    assert branch["layers_2_blocks_5"]["attn"]["qkv"]["kernel"].spec == P("fsdp")
    assert branch["layers_2_downsample"]["reduction"]["kernel"].spec == P(None, "fsdp")
    assert branch["tscam_conv"]["kernel"].spec == P(None, None, "fsdp")
    assert shardings["audio_projection"]["fc1"]["kernel"].spec == P("fsdp")


def test_resample_matches_a_band_limited_sine():
    t16 = np.arange(1600) / 16000
    t48 = np.arange(4800) / 48000
    out = np.asarray(clap.resample(np.sin(2 * np.pi * 1000 * t16)[None], 16000, 48000))
    assert out.shape == (1, 4800)
    # Away from the zero-padded ends the windowed sinc reproduces the 48 kHz sine closely.
    np.testing.assert_allclose(out[0, 300:-300], np.sin(2 * np.pi * 1000 * t48)[300:-300], atol=2e-3)
    assert clap.resample(np.zeros((2, 7)), 16000, 48000).shape == (2, 21)


def test_fit_to_clip_repeat_pad_equal_and_crop():
    wave = jnp.arange(1.0, 8.0)[None]  # 7 samples
    padded = np.asarray(clap.fit_to_clip(wave, 20))
    np.testing.assert_array_equal(padded[0], np.concatenate([np.tile(np.arange(1.0, 8.0), 2), np.zeros(6)]))
    np.testing.assert_array_equal(clap.fit_to_clip(wave, 7), wave)
    long = jnp.tile(jnp.arange(100.0)[None], (3, 1))
    crop = np.asarray(clap.fit_to_clip(long, 10, rng=jax.random.key(3)))
    assert crop.shape == (3, 10)
    np.testing.assert_array_equal(np.diff(crop, axis=1), 1.0)  # contiguous slices
    np.testing.assert_array_equal(crop, clap.fit_to_clip(long, 10, rng=jax.random.key(3)))
    with pytest.raises(ValueError, match="pass rng"):
        clap.fit_to_clip(long, 10)


def test_log_mel_silence_and_sine():
    silence = np.asarray(clap.log_mel_db(np.zeros((1, 4800)), 48000, 1024, 480, 32, 50.0, 14000.0))
    assert silence.shape == (1, 11, 32)
    np.testing.assert_array_equal(silence, -100.0)
    tone = np.sin(2 * np.pi * 3000 * np.arange(9600) / 48000)[None]
    spec = np.asarray(clap.log_mel_db(tone, 48000, 1024, 480, 32, 50.0, 14000.0))
    fb = clap.mel_filterbank(48000, 1024, 32, 50.0, 14000.0)
    assert int(np.argmax(spec[0, 10])) == int(np.argmax(fb[:, round(3000 / (48000 / 1024))]))


def test_spectrogram_image_stacks_time_chunks_along_frequency():
    x = jnp.arange(2 * 64 * 4, dtype=jnp.float32).reshape(2, 64, 4)  # [B, T, F]: spec 16, ratio 4, no resize
    img = np.asarray(clap.spectrogram_image(x, 16, 4))
    assert img.shape == (2, 16, 16, 1)
    for r in range(4):
        np.testing.assert_array_equal(img[:, r * 4:(r + 1) * 4, :, 0], np.swapaxes(x[:, r * 16:(r + 1) * 16], 1, 2))


def test_bicubic_align_corners_keeps_ends_and_constants():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 11, 3)), jnp.float32)
    up = np.asarray(clap._bicubic_resize(x, 1, 40))
    np.testing.assert_allclose(up[:, [0, -1]], np.asarray(x)[:, [0, -1]], atol=1e-6)
    np.testing.assert_allclose(clap._bicubic_resize(jnp.full((1, 11, 3), 2.5), 1, 40), 2.5, rtol=1e-6)
    with pytest.raises(ValueError, match="exceeds the Swin input"):
        clap.spectrogram_image(jnp.zeros((1, 70, 4)), 16, 4)


def test_swin_window_helpers():
    mask = clap._shift_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16) and set(np.unique(mask)) == {0.0, -100.0}
    np.testing.assert_array_equal(mask[0], 0.0)  # the top-left window holds a single region
    assert np.all(np.diagonal(mask, axis1=1, axis2=2) == 0.0)
    index = clap._relative_position_index(8)
    assert index.shape == (64, 64) and index.min() == 0 and index.max() == 224 and index[0, 0] == 112
    assert clap.effective_window((8, 8), 8, 4) == (8, 0) and clap.effective_window((4, 4), 8, 4) == (4, 0)
    assert clap.effective_window((16, 16), 8, 4) == (8, 4)


def test_tiny_end_to_end_paths(tiny):
    model, variables = tiny
    encode = jax.jit(lambda w, rng: model.apply(variables, w, rng=rng))
    rng = np.random.default_rng(0)
    exact = jnp.asarray(rng.normal(size=(2, 3200)), jnp.float32)  # exactly clip_samples after resampling
    out = np.asarray(encode(exact, None))
    assert out.shape == (2, 1, model.joint_embed_dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)
    longer = jnp.concatenate([exact, exact], axis=1)  # twice the clip: a random crop
    a, b = encode(longer, jax.random.key(0)), encode(longer, jax.random.key(0))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 1, model.joint_embed_dim)


def test_bad_inputs(tiny):
    model, variables = tiny
    with pytest.raises(ValueError, match="expected 16000 Hz"):
        model.apply(variables, jnp.zeros((1, 3200)), sample_rate=44100)
    with pytest.raises(ValueError, match=r"expected waves \[B, N\]"):
        model.apply(variables, jnp.zeros((1, 1, 3200)))
    with pytest.raises(ValueError, match="pass rng"):
        model.apply(variables, jnp.zeros((1, 6400)))
    with pytest.raises(ValueError, match="expected clips"):
        model.apply(variables, jnp.zeros((1, 100)), method=clap.CLAPAudio.waveform_features)
    with pytest.raises(ValueError, match="unknown CLAP variant"):
        clap.build("huge")
