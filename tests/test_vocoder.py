"""HiFi-GAN generator: golden parity, full-size count / length / sharding, transposed conv vs torch, bad input."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codi_jax.convert import coverage, golden, hifigan, layout, registry
from codi_jax.models import vocoder
from codi_jax.parallel.partitioning import tree_shardings


def _abstract(model, frames=8):
    return jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, frames, model.num_mels), jnp.float32))


def test_golden_hifigan(goldens_dir):
    rows = golden.check(goldens_dir / "hifigan")
    assert [r[1] for r in rows] == ["wave"]
    assert rows[0][4], rows


def test_full_size_count_length_and_fsdp_sharding():
    model = vocoder.build("full")
    abstract = _abstract(model)
    params = nn.meta.unbox(abstract)["params"]
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == 55_264_897
    # 1024 frames (10.24 s) -> 160 * 1024 + 32 samples.
    out = jax.eval_shape(model.apply, {"params": params}, jax.ShapeDtypeStruct((2, 1024, 64), jnp.float32))
    assert out.shape == (2, 163_872) and vocoder.output_length(model, 1024) == 163_872

    mesh = jax.make_mesh((1, 8, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    shardings = jax.tree.leaves(tree_shardings(abstract, mesh),
                                is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
    flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(abstract))[0]
    replicated = [jax.tree_util.keystr(p) for (p, x), s in zip(flat, shardings)
                  if x.size * 4 > 1 << 20 and all(a is None for a in s.spec)]
    assert not replicated, replicated


def test_converter_covers_every_official_key(goldens_dir):
    manifest = json.loads((goldens_dir / "manifest_full.json").read_text())
    entries = {k: v for group in manifest["groups"].values() for k, v in group.items()}
    components = {n: c for n, c in registry.all_components().items()
                  if c.manifest_prefix and c.convert and c.full_abstract}
    owned = coverage.assign_keys(entries, components)
    report = coverage.component_report(components["hifigan_generator"], owned["hifigan_generator"], entries)
    assert report["ours"] == report["reference"] == 55_264_897
    assert not report["unused"] and not report["missing"] and not report["wrong_shape"]


def test_tiny_runs_and_bounded():
    model = vocoder.build("tiny")
    mel = jax.random.normal(jax.random.key(1), (2, 7, 64))
    # HiFi-GAN-style random weights from shapes alone (no compile for init): N(0, (0.9 / sqrt(fan_in))^2).
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.9 / np.sqrt(np.prod(x.shape[:-1])), x.shape)
                                                if x.ndim > 1 else rng.normal(0, 0.02, x.shape), jnp.float32),
                          nn.meta.unbox(_abstract(model, 7)))
    wave = jax.jit(model.apply)(params, mel)
    assert wave.shape == (2, vocoder.output_length(model, 7)) == (2, 160 * 7 + 32)
    assert float(jnp.max(jnp.abs(wave))) < 1.0


def test_transposed_conv_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 5)).astype(np.float32)  # [B, L, C_in]
    weight = rng.normal(size=(5, 3, 16)).astype(np.float32)  # torch ConvTranspose1d [in, out, k]
    bias = rng.normal(size=(3,)).astype(np.float32)
    ref = torch.nn.functional.conv_transpose1d(torch.from_numpy(x.transpose(0, 2, 1)), torch.from_numpy(weight),
                                               torch.from_numpy(bias), stride=5, padding=5).numpy()
    layer = vocoder.ConvTranspose1d(3, 16, 5, 5)
    ours = layer.apply({"params": {"kernel": layout.conv_transpose(weight), "bias": bias}}, x)
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 2, 1), ref, atol=1e-5)


def test_bad_input_and_weight_norm_checkpoint():
    model = vocoder.build("tiny")
    with pytest.raises(ValueError, match=r"mel \[B, T, 64\]"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 7, 80), jnp.float32))
    with pytest.raises(ValueError, match=r"mel \[B, T, 64\]"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((7, 64), jnp.float32))
    with pytest.raises(ValueError, match="weight norm"):
        hifigan.convert({"conv_pre.weight_g": np.ones((4, 1, 1)), "conv_pre.weight_v": np.ones((4, 64, 7))})
    with pytest.raises(ValueError, match="resblock type '2'"):
        vocoder.kwargs_from_official({"resblock": "2"})
