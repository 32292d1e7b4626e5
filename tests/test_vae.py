"""Image and audio KL autoencoders: golden parity, full-size counts and shardings, behaviour, bad input."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codi_jax.convert import coverage, golden, registry
from codi_jax.models import autoencoder
from codi_jax.parallel.partitioning import tree_shardings


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _assert_no_large_replicated(abstract, limit_bytes=1 << 20):
    mesh = jax.make_mesh((1, 8, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    shardings = tree_shardings(abstract, mesh)
    shapes = nn.meta.unbox(abstract)
    flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
    flat_shardings = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
    assert len(flat_shapes) == len(flat_shardings)
    replicated = [jax.tree_util.keystr(p) for (p, x), s in zip(flat_shapes, flat_shardings)
                  if x.size * 4 > limit_bytes and all(a is None for a in s.spec)]
    assert not replicated, replicated


def random_params(model, *args, seed=0):
    """Random variables from shapes alone (numpy), so tests pay no compile for `init`."""
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = jax.tree_util.keystr(path[-1:])
        if "scale" in name:
            return jnp.ones(x.shape, x.dtype)
        if "bias" in name:
            return jnp.asarray(rng.normal(0, 0.02, x.shape), x.dtype)
        return jnp.asarray(rng.normal(0, 1 / np.sqrt(np.prod(x.shape[:-1])), x.shape), x.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _tiny(variant="tiny", **kw):
    model = autoencoder.build(variant, **kw)
    return model, random_params(model, jnp.zeros((1, 16, 16, model.in_channels)))


@pytest.mark.parametrize("fixture", ["autokl", "audio_vae"])
def test_golden(goldens_dir, fixture):
    rows = golden.check(goldens_dir / fixture)
    expected = {"autokl": {"moments", "mean", "logvar", "std", "z_codi", "dec", "dec_image01", "dec_of_mean",
                           "video_moments", "video_dec"},
                "audio_vae": {"moments", "mean", "logvar", "wave_fbank", "wave_moments", "wave_z_codi", "mel_dec",
                              "mel_dec_big", "wave_dec"}}[fixture]
    assert expected <= {r[1] for r in rows}
    failed = [r for r in rows if not r[4]]
    assert not failed, failed


@pytest.mark.parametrize("variant,in_ch,enc,dec", [
    ("full", 3, 34_163_592, 49_490_179),
    ("audio_full", 1, 22_395_024, 32_981_505),
])
def test_full_size_counts_and_fsdp_sharding(variant, in_ch, enc, dec):
    model = autoencoder.build(variant)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, in_ch), jnp.float32))
    params = nn.meta.unbox(abstract)["params"]
    assert _count(params["encoder"]) == enc
    assert _count(params["decoder"]) == dec
    assert _count(params) == {"full": 83_653_863, "audio_full": 55_376_873}[variant]
    _assert_no_large_replicated(abstract)


@pytest.mark.parametrize("component", ["image_autoencoder_kl", "audio_autoencoder_kl"])
def test_converter_covers_every_official_key(goldens_dir, component):
    manifest = json.loads((goldens_dir / "manifest_full.json").read_text())
    entries = {k: v for group in manifest["groups"].values() for k, v in group.items()}
    components = {n: c for n, c in registry.all_components().items()
                  if c.manifest_prefix and c.convert and c.full_abstract}
    owned = coverage.assign_keys(entries, components)
    report = coverage.component_report(components[component], owned[component], entries)
    assert report["ours"] == report["reference"]
    assert not report["unused"] and not report["missing"] and not report["wrong_shape"]


def test_shapes_latent_scale_and_video_folding():
    model, params = _tiny()
    x = jax.random.uniform(jax.random.key(1), (2, 16, 24, 3), minval=-1, maxval=1)
    posterior = model.apply(params, x, method=model.encode)
    assert posterior.mean.shape == (2, 8, 12, 4)
    z = model.apply(params, x, method=model.to_latent)
    np.testing.assert_allclose(z, autoencoder.IMAGE_SCALE * posterior.mean, rtol=1e-6)
    dec = model.apply(params, z, method=model.from_latent)
    np.testing.assert_allclose(dec, model.apply(params, posterior.mean, method=model.decode), atol=1e-5)
    # Video: frames are folded into the batch, so a clip equals its frames encoded one by one.
    video = x.reshape(1, 2, 16, 24, 3)
    v_post = model.apply(params, video, method=model.encode)
    np.testing.assert_allclose(v_post.mean[0], posterior.mean, atol=1e-6)
    v_dec = model.apply(params, v_post.mean, method=model.decode)
    assert v_dec.shape == (1, 2, 16, 24, 3)


def test_posterior_sampling_and_kl():
    mean = jnp.full((4000, 2), 1.5)
    post = autoencoder.DiagonalGaussian(mean, jnp.full((4000, 2), np.log(0.25)))
    s = np.asarray(post.sample(jax.random.key(0)))
    assert abs(s.mean() - 1.5) < 0.03 and abs(s.std() - 0.5) < 0.03
    zero = autoencoder.DiagonalGaussian(jnp.zeros((3, 5)), jnp.zeros((3, 5)))
    np.testing.assert_allclose(zero.kl(), 0.0)
    # KL(N(m, 1) || N(0, 1)) = m^2 / 2 per dim.
    np.testing.assert_allclose(autoencoder.DiagonalGaussian(jnp.ones((1, 5)), jnp.zeros((1, 5))).kl(), [2.5])


def test_logvar_is_clamped():
    model, params = _tiny()
    # Push quant_conv's logvar half far above 20.
    bias = params["params"]["quant_conv"]["bias"]
    params["params"]["quant_conv"]["bias"] = bias.at[4:].set(1e4)
    post = model.apply(params, jnp.zeros((1, 16, 16, 3)), method=model.encode)
    np.testing.assert_allclose(post.logvar, 20.0)


def test_audio_latent_clipping_and_wave_entry():
    model, params = _tiny("audio_tiny")
    z = jax.random.normal(jax.random.key(2), (1, 8, 8, 8)) * 3
    z_big = z.at[0, 0, 0, 0].set(150.0)
    clipped = model.apply(params, jnp.clip(z_big, -10, 10), method=model.from_latent)
    np.testing.assert_allclose(model.apply(params, z_big, method=model.from_latent), clipped, atol=1e-6)
    # Below the threshold nothing is clipped (values above 10 pass through).
    z_mid = z.at[0, 0, 0, 0].set(50.0)
    unclipped = model.apply(params, z_mid * (1 / autoencoder.AUDIO_SCALE), method=model.decode)
    np.testing.assert_allclose(model.apply(params, z_mid, method=model.from_latent), unclipped, atol=1e-5)
    wave = jax.random.normal(jax.random.key(3), (2, 3000))
    post = model.apply(params, wave, 32, method=model.encode_wave)
    assert post.mean.shape == (2, 16, 32, 8)


def test_norm_groups():
    """norm_groups reaches every GroupNorm: 16-wide presets (the CPU run's audio VAE) build with 4 groups and
    not with torch's 32; the same weights give another output with 8 groups than with 32."""
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)
    model32, model8 = autoencoder.build("tiny"), autoencoder.build("tiny", norm_groups=8)
    params = jax.jit(model32.init)(jax.random.key(0), x)
    out32 = model32.apply(params, x)[0]
    out8 = model8.apply(params, x)[0]
    assert out8.shape == out32.shape and float(jnp.abs(out8 - out32).max()) > 1e-3
    narrow = autoencoder.build("tiny", ch=16, norm_groups=4)
    assert narrow.apply(jax.jit(narrow.init)(jax.random.key(0), x), x)[0].shape == x.shape
    with pytest.raises(ValueError, match=r"Number of groups \(32\) does not divide the number of channels \(16\)"):
        jax.eval_shape(autoencoder.build("tiny", ch=16).init, jax.random.key(0), x)


def test_bad_input():
    model, params = _tiny()
    with pytest.raises(ValueError, match="expected 3 channels"):
        model.apply(params, jnp.zeros((1, 16, 16, 4)), method=model.encode)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        model.apply(params, jnp.zeros((16, 16, 3)), method=model.encode)
    with pytest.raises(ValueError, match="expected 4 channels"):
        model.apply(params, jnp.zeros((1, 2, 2, 8)), method=model.decode)
    with pytest.raises(ValueError, match="one-channel"):
        model.apply(params, jnp.zeros((1, 4000)), 8, method=model.encode_wave)
    with pytest.raises(ValueError, match="unknown autoencoder variant"):
        autoencoder.build("huge")
    audio, audio_params = _tiny("audio_tiny")
    with pytest.raises(ValueError, match="expected 16000 Hz"):
        audio.apply(audio_params, jnp.zeros((1, 4000)), 8, 22050, method=audio.encode_wave)
