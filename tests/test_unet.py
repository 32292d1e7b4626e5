"""UNet2D (image / video / audio): golden parity with the released modules, exact full-size counts and
groups, parameter shardings, joint (env encoder + connector) parity, options and bad inputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codi_jax.convert import golden
from codi_jax.convert.unet_image import golden_model, to_channels_first, to_channels_last
from codi_jax.models import unet
from codi_jax.parallel.mesh import make_mesh
from codi_jax.parallel.partitioning import tree_shardings


def _abstract(variant):
    model = unet.build(variant)
    spec = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), spec(1, 8, 8, model.in_channels),
                          jax.ShapeDtypeStruct((1,), jnp.int32), spec(1, 1, model.context_dim))


# ---------------------------------------------------------------- golden parity
@pytest.mark.parametrize("fixture", ["unet_image", "unet_video", "unet_audio"])
def test_golden_parity(goldens_dir, fixture):
    rows = golden.check(goldens_dir / fixture)
    expected = {"unet_image": {"out", "out_multitoken", "out_via_wrapper"},
                "unet_video": {"video_out", "video_out_standard_skip", "image_out", "image_out_via_wrapper"},
                "unet_audio": {"out", "out_via_wrapper"}}[fixture]
    assert {r[1] for r in rows} == expected
    for _, name, err, rel, passed in rows:
        assert passed and rel < 2e-5, f"{fixture}.{name}: abs {err:.3e} rel {rel:.3e}"


@pytest.mark.parametrize("fixture, x_key, output, conditions", [
    ("unet_video", "x_image", "joint_image_text.out_image", {"condition_text": 1.0}),
    pytest.param("unet_video", "x_video", "joint_video_text.out_video", {"condition_image": 1.0},
                 marks=pytest.mark.slow),
    ("unet_audio", "x_audio", "joint_image_audio.out_audio", {"condition_text": 0.25, "condition_audio": 0.75}),
])
def test_joint_generation_parity(goldens_dir, fixture, x_key, output, conditions):
    """The wrapper's joint path for one modality: V on its own latent -> connectors, aliased skip."""
    config, _, params, _ = golden.load_fixture(goldens_dir / fixture)
    *_, io = golden.load_fixture(goldens_dir / "unet_codi")
    model, variables = golden_model(config, params)
    x, t = to_channels_last(io[x_key]), jnp.asarray(io["timesteps"])
    context = sum(w * jnp.asarray(io[k]) for k, w in conditions.items())
    v = model.apply(variables, x, t, method=model.env_encode)
    assert v.shape == (2, 1, 32)
    np.testing.assert_allclose(jnp.linalg.norm(v, axis=-1), 1.0, rtol=1e-6)
    out = jax.jit(model.apply, static_argnames="aliased_skip")(
        variables, x, t, context, joint_context=v, aliased_skip=True)
    ref = io[output]
    assert np.abs(to_channels_first(out) - ref).max() <= 2e-5 * max(1.0, np.abs(ref).max())


# ---------------------------------------------------------------- sizes, groups, shardings
@pytest.mark.parametrize("variant, sizes", [
    ("full", {"base": 859_520_964, "temporal": 562_506_887, "env": 106_809_196, "joint": 243_947_200}),
    ("full_audio", {"base": 314_154_056, "temporal": 0, "env": 22_396_256, "joint": 94_758_720}),
])
def test_full_parameter_counts(variant, sizes):
    abstract = _abstract(variant)
    assert unet.group_sizes(abstract) == sizes
    assert sum(sizes.values()) == {"full": 1_772_784_247, "full_audio": 431_309_032}[variant]
    groups = unet.param_groups(abstract)
    assert groups["input_blocks_1/temporal/attn/to_q/kernel"] == "temporal" if variant == "full" else True
    assert groups["middle_block/block_1/attn/attn2/to_k/kernel"] == "base"
    assert groups["env/blocks_1/temporal/ff/proj_in/kernel" if variant == "full"
                  else "env/blocks_1/res/in_conv/kernel"] == "env"
    assert groups["output_connectors_11/attn/proj_in/kernel"] == "joint"


def test_group_mask_selects_exactly_the_group():
    abstract = _abstract("tiny")
    mask = unet.group_mask(abstract, ["env", "joint"])
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    picked = {jax.tree_util.keystr(p) for p, m in flat if m}
    assert picked and all("env" in p or "connectors" in p for p in picked)
    sizes = unet.group_sizes(abstract)
    leaves = jax.tree_util.tree_leaves(nn.meta.unbox(abstract))
    total = sum(int(np.prod(x.shape)) for x, m in zip(leaves, jax.tree_util.tree_leaves(mask)) if m)
    assert total == sizes["env"] + sizes["joint"]
    with pytest.raises(ValueError, match="unknown parameter groups"):
        unet.group_mask(abstract, ["decoder"])


EXPECTED_SPECS = {
    (1, 8, 1): {
        "input_blocks_1/res/in_conv/kernel": (None, None, "fsdp"),
        "input_blocks_1/res/in_norm/scale": (),
        "input_blocks_1/attn/attn1/to_q/kernel": ("fsdp",),
        "input_blocks_1/attn/attn1/to_out/kernel": (None, "fsdp"),
        "input_blocks_1/temporal/ff/proj_in/kernel": ("fsdp",),
        "input_blocks_0/kernel": (None, None, None, "fsdp"),  # 4 input channels: fsdp moves to conv_out
    },
    (1, 4, 2): {
        "input_blocks_1/res/in_conv/kernel": (None, None, "fsdp", "tensor"),
        "input_blocks_1/attn/attn1/to_q/kernel": ("fsdp", "tensor"),
        "input_blocks_1/attn/attn1/to_out/kernel": ("tensor", "fsdp"),
        "input_blocks_1/attn/ff/proj/bias": ("tensor",),
        "input_blocks_1/temporal/ff/proj_in/kernel": ("fsdp", "tensor"),
        "input_blocks_1/temporal/ff/proj_out/kernel": (None, "fsdp"),  # 853 rows: no tensor split
        "output_connectors_3/attn/attn2/to_k/kernel": ("fsdp", "tensor"),
        "env/out_conv/kernel": (None, None, "fsdp", "tensor"),
    },
}


@pytest.mark.parametrize("mesh_shape", list(EXPECTED_SPECS))
def test_full_parameter_shardings(mesh_shape):
    mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), mesh_shape)))
    shardings = tree_shardings(_abstract("full"), mesh)["params"]
    for path, spec in EXPECTED_SPECS[mesh_shape].items():
        node = shardings
        for key in path.split("/"):
            node = node[key]
        assert tuple(node.spec) == spec, f"{path} on {mesh_shape}: {node.spec}"


# ---------------------------------------------------------------- tiny model behaviour
def _random_params(model, *args):
    """Random parameters without compiling init: norm scales 1 + 0.1 N, everything else 0.05 N (no zeros)."""
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.asarray((1.0 if "scale" in jax.tree_util.keystr(p) else 0.0)
                                 + (0.1 if "scale" in jax.tree_util.keystr(p) else 0.05)
                                 * rng.standard_normal(a.shape), jnp.float32), abstract)


@pytest.fixture(scope="module")
def tiny():
    model = unet.build("tiny")
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    t, context = jnp.array([981, 17]), jax.random.normal(jax.random.key(2), (2, 1, 32))
    return model, _random_params(model, x, t, context), x, t, context


def test_video_and_joint_calls(tiny):
    model, params, x, t, context = tiny
    video = jnp.stack([x, 0.5 * x, -x], axis=1)
    v = jax.jit(lambda p, a: model.apply(p, a, t, method=model.env_encode))(params, video)
    assert v.shape == (2, 1, 32)
    np.testing.assert_allclose(jnp.linalg.norm(v, axis=-1), 1.0, rtol=1e-5)
    out = jax.jit(model.apply, static_argnames="aliased_skip")(params, video, t, context, v, aliased_skip=True)
    assert out.shape == video.shape and out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


# one level pair, no video, no V: the smallest UNet that still has every block kind
MICRO = dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 1), num_res_blocks=(1, 1),
             attention_levels=(True, False), num_heads=2, context_dim=32)


@pytest.fixture(scope="module")
def micro(tiny):
    _, _, x, t, context = tiny
    model = unet.build(MICRO)
    return model, _random_params(model, x, t, context), x, t, context


@pytest.mark.slow
def test_remat_keeps_values_and_gradients(micro):
    model, params, x, t, context = micro
    loss = lambda m: jax.jit(jax.value_and_grad(lambda p: jnp.mean(m.apply(p, x, t, context) ** 2)))
    value, grads = loss(model)(params)
    value_r, grads_r = loss(unet.build(MICRO, remat_policy="full"))(params)
    np.testing.assert_allclose(value_r, value, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(grads_r), jax.tree_util.tree_leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bf16_compute_with_fp32_params(micro):
    model, params, x, t, context = micro
    out = jax.jit(model.apply)(params, x, t, context)
    out_bf16 = jax.jit(unet.build(MICRO, dtype=jnp.bfloat16).apply)(params, x, t, context)
    assert out_bf16.dtype == jnp.float32
    assert float(jnp.abs(out_bf16 - out).max()) < 0.05 * float(jnp.abs(out).max())


def test_bad_inputs(tiny):
    model, params, x, t, context = tiny
    cases = [
        ((x[..., :3], t, context), "expects 4 input channels, got 3"),
        ((jnp.zeros((2, 31, 8, 8, 4)), t, context), "31 frames; at most 30"),
        ((x[0], t, context), "expects x"),
        ((x[:, :7, :7], t, context), "divisible by 2"),
        ((x, t[:1], context), "timesteps must have shape"),
        ((x, t, context[..., :16]), "context must be"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            model.apply(params, *args)
    with pytest.raises(ValueError, match="joint_context must be"):
        model.apply(params, x, t, context, jnp.zeros((2, 1, 16)))
    audio = unet.build("tiny_audio", joint=False)
    with pytest.raises(ValueError, match=r"expects x \[B, H, W, C\], got"):
        audio.init(jax.random.key(0), jnp.zeros((1, 2, 8, 8, 8)), jnp.zeros((1,)), jnp.zeros((1, 1, 32)))
    with pytest.raises(ValueError, match="unknown UNet2D variant"):
        unet.build("huge")
    with pytest.raises(ValueError, match="unknown remat_policy"):
        unet.build("tiny", remat_policy="some").init(jax.random.key(0), x, t, context)
    with pytest.raises(ValueError, match=r"unknown temporal_norm 'time'; expected one of \['channels', 'frames'\]"):
        unet.build("tiny", temporal_norm="time")


def test_channel_temporal_norm_keeps_the_parameter_tree_and_changes_only_video(tiny):
    # The cpu run's departure (temporal.NORMS): same parameters, so an image ldm's weights load into either;
    # images never reach the temporal modules; videos do.
    model, params, x, t, context = tiny
    channels = unet.build("tiny", temporal_norm="channels")
    np.testing.assert_array_equal(jax.jit(channels.apply)(params, x, t, context),
                                  jax.jit(model.apply)(params, x, t, context))
    video = jnp.stack([x, 0.5 * x, -x], axis=1)
    released, departed = (jax.jit(m.apply)(params, video, t, context) for m in (model, channels))
    assert float(jnp.abs(departed - released).max()) > 1e-4
