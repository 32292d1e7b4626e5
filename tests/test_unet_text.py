"""The text UNet (UNetModel0D_MultiDim): golden parity, released sizes, shardings, layout, options, errors."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import AxisType, Mesh, PartitionSpec as P

from codi_jax.convert import golden
from codi_jax.convert import unet_text as convert
from codi_jax.models import unet_text
from codi_jax.parallel.partitioning import tree_shardings

TINY = unet_text.CONFIGS["tiny"]


def _inputs(batch=2, seed=0):
    kx, kc = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (batch, TINY["in_channels"]))
    context = jax.random.normal(kc, (batch, 1, TINY["context_dim"]))
    return x, jnp.array([981, 17][:batch]), context


def random_params(model, *inputs, seed=0):
    """A params tree of the right structure filled from numpy (no init compile): norm scales 1 + 0.1 N,
    everything else 0.05 N, so no zero-initialised output layer hides an effect."""
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *inputs))["params"]
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(abstract, sep="/")
    return {"params": traverse_util.unflatten_dict({
        path: (1.0 if path.endswith("scale") else 0.0) + rng.normal(0.0, 0.1 if path.endswith("scale") else 0.05,
                                                                     leaf.shape).astype(np.float32)
        for path, leaf in flat.items()}, sep="/")}


@pytest.fixture(scope="module")
def tiny():
    model = unet_text.build("tiny")
    return model, random_params(model, *_inputs())


@pytest.fixture(scope="module")
def full_abstract():
    return convert.abstract_params(unet_text.build("full"))


def test_golden_parity(goldens_dir):
    rows = golden.check(goldens_dir / "unet_text")
    assert {r[1] for r in rows} == {"out", "out_via_wrapper"}
    for fixture, name, err, rel, passed in rows:
        assert passed, f"{name}: relative error {rel:.3e}"
        assert rel < 2e-5, f"{name}: relative error {rel:.3e} (expected ~2e-6, the reference's own BLAS noise)"


def test_full_size_counts_and_groups(full_abstract):
    sizes = unet_text.group_sizes(full_abstract)
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(full_abstract)) == 2_048_385_408
    assert (sizes["base"], sizes["env"], sizes["joint"], sizes["temporal"]) == (1_708_848_448, 95_589_760,
                                                                             243_947_200, 0)
    groups = unet_text.param_groups(full_abstract)
    assert groups["env/blocks_5/res/in_proj/kernel"] == "env"
    assert groups["input_connectors_1/attn/attn2/to_k/kernel"] == "joint"
    assert groups["output_connectors_11/attn/proj_out/kernel"] == "joint"
    assert groups["middle_block/block_1/attn/attn1/to_q/kernel"] == "base"
    # the released connector positions: after input blocks {1,2,4,5,7,8}, output blocks {3..11}
    positions = lambda side: sorted(int(k.split("_")[-1]) for k in full_abstract if k.startswith(f"{side}_connectors_"))
    assert positions("input") == [1, 2, 4, 5, 7, 8]
    assert positions("output") == list(range(3, 12))


def test_coverage_of_released_keys(goldens_dir):
    from codi_jax.convert import coverage

    assert coverage.main(["--manifest", str(goldens_dir / "manifest_full.json"), "--component", "unet_text"]) == 0


@pytest.mark.parametrize("axes, expected", [
    ((1, 8, 1), {"input_blocks_1/res/in_proj/kernel": P("fsdp"),
                 "input_blocks_1/res/emb_proj/kernel": P("fsdp"),
                 "input_blocks_1/attn/attn1/to_q/kernel": P("fsdp"),
                 "input_blocks_1/attn/attn1/to_out/kernel": P(None, "fsdp"),
                 "input_blocks_0/kernel": P("fsdp"),
                 "env/out_proj/kernel": P("fsdp"),
                 "out_norm/scale": P()}),
    ((1, 4, 2), {"input_blocks_1/res/in_proj/kernel": P("fsdp", "tensor"),
                 "input_blocks_1/res/in_proj/bias": P("tensor"),
                 "input_blocks_1/res/in_norm/scale": P(),
                 "input_blocks_1/attn/attn1/to_q/kernel": P("fsdp", "tensor"),
                 "input_blocks_1/attn/attn1/to_out/kernel": P("tensor", "fsdp"),
                 "input_blocks_1/attn/ff/proj/kernel": P("fsdp", "tensor"),
                 "output_connectors_3/attn/attn2/to_k/kernel": P("fsdp", "tensor"),
                 "out_proj/kernel": P("fsdp", "tensor")}),
])
def test_partition_specs(axes, expected):
    model = unet_text.build("full")
    x = jax.ShapeDtypeStruct((1, 768), jnp.float32)
    boxed = jax.eval_shape(model.init, jax.random.key(0), x, jax.ShapeDtypeStruct((1,), jnp.int32),
                           jax.ShapeDtypeStruct((1, 1, 768), jnp.float32))["params"]
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(axes), ("data", "fsdp", "tensor"),
                axis_types=(AxisType.Auto,) * 3)
    shardings = {"/".join(str(k.key) for k in path): s
                 for path, s in jax.tree_util.tree_flatten_with_path(tree_shardings(boxed, mesh))[0]}
    for path, spec in expected.items():
        assert shardings[path].spec == spec, path


def test_flat_hidden_is_channel_major():
    channels, positions = 3, 4
    h = jnp.arange(2 * channels * positions, dtype=jnp.float32).reshape(2, -1)
    tokens = unet_text.to_tokens(h, channels)
    assert tokens.shape == (2, positions, 1, channels)
    # official index c * second_dim + s is token s, channel c
    assert float(tokens[1, 2, 0, 1]) == float(h[1, 1 * positions + 2])
    np.testing.assert_array_equal(unet_text.from_tokens(tokens), h)


def test_fc_groupnorm_groups_consecutive_features():
    """The FC blocks' norm on a flat [B, 64] vector (16 channels x 4 positions): each of the 32 groups is
    2 consecutive features, i.e. half of one channel's positions, not whole channels."""
    x = jnp.arange(2 * 64, dtype=jnp.float32).reshape(2, 64) ** 2
    norm = unet_text.GroupNorm32(1e-5)
    ours = norm.apply(norm.init(jax.random.key(0), x), x)
    h = x.reshape(2, 32, 2)
    expected = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(ours, expected.reshape(2, 64), atol=1e-5)


def test_forward_shapes_and_env(tiny):
    model, variables = tiny
    x, t, context = _inputs()
    eps = model.apply(variables, x, t, context)
    assert eps.shape == (2, 16) and eps.dtype == jnp.float32
    v = model.apply(variables, x, t, method=model.env_encode)
    assert v.shape == (2, 1, 32)
    np.testing.assert_allclose(jnp.linalg.norm(v, axis=-1), 1.0, rtol=1e-6)
    joint = model.apply(variables, x, t, context, joint_context=v)
    assert not np.allclose(joint, eps), "connectors must act when a joint context is given"
    aliased = model.apply(variables, x, t, context, aliased_skip=True)
    assert not np.allclose(aliased, eps), "the aliased first skip changes the output"


def test_remat_and_bf16_options(tiny):
    model, variables = tiny
    x, t, context = _inputs()
    ref = model.apply(variables, x, t, context)
    remat = unet_text.build("tiny", remat_policy="full")
    np.testing.assert_allclose(remat.apply(variables, x, t, context), ref, atol=1e-6)
    bf16 = unet_text.build("tiny", dtype=jnp.bfloat16)
    out = bf16.apply(variables, x, t, context)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, atol=0.1 * float(jnp.abs(ref).max()))


def test_key_mapping():
    assert convert.key_to_path("input_blocks.0.0.weight") == ("input_blocks_0/kernel", "linear")
    assert convert.key_to_path("input_blocks.3.0.weight") == ("input_blocks_3/down/kernel", "linear")
    assert convert.key_to_path("input_blocks.1.0.in_layers.2.weight") == ("input_blocks_1/res/in_proj/kernel",
                                                                          "pointwise")
    assert convert.key_to_path("output_blocks.2.2.weight") == ("output_blocks_2/up/kernel", "linear")
    assert convert.key_to_path("output_blocks.1.1.bias")[0] == "output_blocks_1/up/bias"
    assert convert.key_to_path("connecters_out.6.0.weight", env_head=6) == ("env/out_norm/scale", "norm")
    assert convert.key_to_path("connecters_out.4.0.weight", env_head=6)[0] == "env/blocks_4/down/kernel"
    with pytest.raises(ValueError, match="unknown UNetModel0D_MultiDim key 'input_blocks.1.7.weight'"):
        convert.convert_unet_text({"input_blocks.1.7.weight": np.zeros((2, 2), np.float32)})


def test_bad_inputs(tiny):
    model, variables = tiny
    x, t, context = _inputs()
    cases = [
        ((x[:, :, None, None], t, context), {}, r"expects x \[B, 16\], got shape \(2, 16, 1, 1\)"),
        ((x[:, :8], t, context), {}, r"expects x \[B, 16\]"),
        ((x, t[:1], context), {}, r"timesteps must have shape \[2\]"),
        ((x, t, context[..., :8]), {}, r"context must be \[2, L, 32\]"),
        ((x, t, context), {"joint_context": context[:, :, :16]}, r"joint_context must be \[2, 1, 32\]"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            model.apply(variables, *args, **kwargs)
    plain = unet_text.build({**TINY, "joint": False})
    plain_vars = plain.init(jax.random.key(0), x, t, context)
    with pytest.raises(ValueError, match="no joint connectors"):
        plain.apply(plain_vars, x, t, context, joint_context=jnp.ones((2, 1, 32)))
    with pytest.raises(ValueError, match="env_encode needs the environment encoder"):
        plain.apply(plain_vars, x, t, method=plain.env_encode)


@pytest.mark.parametrize("change, message", [
    ({"model_channels": 24}, "out head (model_channels*channel_mult[0]) is 24 wide; GroupNorm needs a multiple of 32"),
    ({"second_dim": (4, 2)}, "second_dim (4, 2): a decoder block"),
    ({"second_dim": (4,)}, "second_dim has 1 entries; expected one per level (2)"),
    ({"remat_policy": "some"}, "unknown remat_policy 'some'"),
])
def test_bad_configs(change, message):
    x, t, context = _inputs()
    with pytest.raises(ValueError, match=re.escape(message)):
        unet_text.build({**TINY, **change}).init(jax.random.key(0), x, t, context)


def test_from_official_and_unknown_variant():
    model = unet_text.from_official({"input_channels": 16, "model_channels": 32, "output_channels": 16,
                                     "second_dim": [4, 4], "channel_mult": [1, 1], "num_noattn_blocks": [1, 1],
                                     "with_attn": [True, False], "use_checkpoint": True})
    assert model.joint and model.remat_policy == "full" and model.second_dim == (4, 4)
    with pytest.raises(ValueError, match="unknown UNetModel0D_MultiDim argument 'foo'"):
        unet_text.from_official({"foo": 1})
    with pytest.raises(ValueError, match="unknown UNetText variant 'huge'"):
        unet_text.build("huge")
