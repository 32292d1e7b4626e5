"""Mesh construction, logical sharding rules and sharded init on 8 simulated devices."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from codi_jax.parallel import mesh as mesh_lib
from codi_jax.parallel import partitioning as part


class ToyBlock(nn.Module):
    """A dense up/down block and a conv, with logical names like the real networks."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(16, (3, 3), kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("kernel", "kernel", "conv_in", "conv_out")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)), name="conv")(x)
        h = h.mean(axis=(1, 2))
        h = nn.Dense(64, kernel_init=part.dense_init(axes=("embed", "mlp")), use_bias=False, name="up")(h)
        h = nn.gelu(h)
        h = nn.LayerNorm(scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), name="ln")(h)
        return nn.Dense(8, kernel_init=part.dense_init(axes=("mlp", "embed")), use_bias=False, name="down")(h)


def test_mesh_fills_and_rejects():
    m = mesh_lib.make_mesh({"data": 2, "fsdp": -1, "tensor": 1})
    assert dict(m.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)
    with pytest.raises(mesh_lib.MeshConfigError, match="does not divide the 8 devices"):
        mesh_lib.make_mesh({"data": 3})
    with pytest.raises(mesh_lib.MeshConfigError, match="needs 4 devices but 8"):
        mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 1})
    with pytest.raises(mesh_lib.MeshConfigError, match="at most one mesh axis may be -1"):
        mesh_lib.make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(mesh_lib.MeshConfigError, match="unknown mesh axes"):
        mesh_lib.make_mesh({"model": 8})


def test_logical_spec_fallback_to_divisible_dim():
    m = mesh_lib.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    # embed (320) divides 8: fsdp goes there.
    assert part.logical_spec(("embed", "mlp"), (320, 1706), m) == P("fsdp")
    # embed (4) does not divide: fsdp moves to the largest divisible dim.
    assert part.logical_spec(("conv_in", "conv_out"), (4, 320), m) == P(None, "fsdp")
    # kernel taps and norms are never sharded.
    assert part.logical_spec(("kernel", "kernel", "conv_in", "conv_out"), (3, 3, 3, 5), m) == P()
    assert part.logical_spec(("norm",), (1024,), m) == P()


def test_sharded_init_specs_on_2x4_mesh():
    m = mesh_lib.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    model = ToyBlock()
    x = jnp.ones((8, 8, 8, 8))
    params, shardings = part.sharded_init(lambda r: model.init(r, x), m, jax.random.key(0))
    specs = jax.tree.map(lambda s: s.spec, shardings)["params"]
    assert specs["conv"]["kernel"] == P(None, None, "fsdp", "tensor")
    assert specs["conv"]["bias"] == P("tensor")
    assert specs["up"]["kernel"] == P("fsdp", "tensor")
    assert specs["down"]["kernel"] == P("tensor", "fsdp")
    assert specs["ln"]["scale"] == P()
    assert params["params"]["up"]["kernel"].sharding.spec == P("fsdp", "tensor")


def test_tree_shardings_inside_set_mesh_and_rules():
    # The train loop holds jax.set_mesh + logical_axis_rules while it builds its state; reading
    # the shardings there must not apply (eager) sharding constraints to abstract values.
    m = mesh_lib.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    model = ToyBlock()
    x = jnp.ones((8, 8, 8, 8))
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)
    outside = part.tree_shardings(abstract, m)
    with jax.set_mesh(m), nn.logical_axis_rules(part.DEFAULT_RULES):
        inside = part.tree_shardings(abstract, m)
        params, shardings = part.sharded_init(lambda r: model.init(r, x), m, jax.random.key(0))
        values = part.unbox_values(abstract)
    assert inside == outside == shardings
    assert inside["params"]["up"]["kernel"].spec == P("fsdp", "tensor")
    assert params["params"]["down"]["kernel"].sharding.spec == P("tensor", "fsdp")
    assert values["params"]["conv"]["kernel"].shape == (3, 3, 8, 16)
    assert not any(isinstance(v, nn.meta.AxisMetadata)
                   for v in jax.tree.leaves(values, is_leaf=lambda v: isinstance(v, nn.meta.AxisMetadata)))


def _loss_and_step(model):
    opt = optax.adamw(1e-2)

    def loss_fn(params, batch):
        pred = model.apply(params, batch["x"])
        return jnp.mean((pred - batch["y"]) ** 2)

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return opt, step


@pytest.mark.parametrize("axes", [{"data": 2, "fsdp": 4, "tensor": 1}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_sharded_train_step_matches_single_device(axes):
    model = ToyBlock()
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(8, 8, 8, 8)).astype(np.float32),
             "y": rng.normal(size=(8, 8)).astype(np.float32)}
    opt, step = _loss_and_step(model)

    single = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    multi = mesh_lib.make_mesh(axes)
    losses = []
    for m in (single, multi):
        params, shardings = part.sharded_init(lambda r: model.init(r, batch["x"]), m, jax.random.key(0))
        opt_state = opt.init(params)
        sharded = mesh_lib.shard_host_batch(batch, m)
        assert sharded["x"].sharding.spec == P(("data", "fsdp"), None, None, None)
        jitted = jax.jit(step, in_shardings=(shardings, None, mesh_lib.batch_shardings(batch, m)),
                         out_shardings=(shardings, None, None), donate_argnums=(0, 1))
        for _ in range(3):
            params, opt_state, loss = jitted(params, opt_state, sharded)
        losses.append(float(loss))
    # Same math, different reduction order across shards: fp32 round-off only.
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_with_constraint_follows_the_rules_in_context_and_is_a_noop_without_them():
    m = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    names = ("batch", "height", "width", "act_embed")
    # A fresh function per lowering: jit's trace cache does not key on flax's rules context.
    lowered = lambda x: jax.jit(lambda a: part.with_constraint(a * 2.0, names)).lower(x).as_text()
    x = jnp.ones((8, 4, 4, 16))
    assert "sharding_constraint" not in lowered(x)  # no rules in context: untouched
    with jax.set_mesh(m), nn.logical_axis_rules(part.DEFAULT_RULES):
        assert '[{"data", "fsdp"}, {}, {}, {}]' in lowered(x)
        # A batch of 6 takes data (2) but not data x fsdp, and the split does not spill onto height or width.
        assert '[{"data"}, {}, {}, {}]' in lowered(jnp.ones((6, 8, 8, 16)))
    with jax.set_mesh(m), nn.logical_axis_rules((("batch", "data"), ("act_embed", "fsdp"))):
        assert '[{"data"}, {}, {}, {"fsdp"}]' in lowered(x)


def test_config_sharding_rules_lay_out_the_unet_activations_and_parameters_of_the_train_step(tmp_path):
    from jax.sharding import NamedSharding

    from codi_jax.data import pipeline
    from codi_jax.train import loop
    from codi_jax.train.defaults import load_config_file

    def trainer_and_text(rules=None):
        config = load_config_file("configs/image_ldm.py:tiny")
        config.update_from_flattened_dict({"tensorboard": False, "batch_size": 8, "mesh.data": 2})
        if rules is not None:
            config.sharding_rules = rules
        trainer = loop.Trainer(config, str(tmp_path))
        (objective,) = config.data.objectives
        batch = {k: jax.ShapeDtypeStruct(s, d, sharding=NamedSharding(trainer.mesh, mesh_lib.batch_spec(len(s))))
                 for k, (s, d) in pipeline.batch_shapes(config.data, objective, 8).items()}
        return trainer, trainer.lower(batch).as_text()

    default, text = trainer_and_text()
    # Each UNet block's output [8, h, w, c] is constrained to the batch split over data x fsdp.
    assert len(re.findall(r'sharding_constraint .*\[\{"data", "fsdp"\}, \{\}, \{\}, \{\}\]> : tensor<8x', text)) >= 8
    trainer, text = trainer_and_text((("batch", "data"), ("conv_in", None), ("conv_out", "fsdp")))
    assert '[{"data"}, {}, {}, {}]> : tensor<8x' in text
    assert not re.search(r'sharding_constraint [^\n]*\{"data", "fsdp"\}', text)
    # ... and the parameters: a ResBlock conv's input channels over fsdp by default, its output channels here.
    conv = lambda t: t.layout.shardings.params["unet_image"]["params"]["middle_block"]["block_2"]["res"]["out_conv"]
    assert conv(default)["kernel"].spec == P(None, None, "fsdp")
    assert conv(trainer)["kernel"].spec == P(None, None, None, "fsdp")


def test_a_bad_sharding_rule_is_one_config_error():
    from codi_jax.train import validation
    from codi_jax.train.defaults import load_config_file
    from codi_jax.train.errors import ConfigError

    config = load_config_file("configs/toy.py")
    for rules, message in (((("batch", "pod"),), "rule ('batch', 'pod') names mesh axis 'pod'"),
                           ((("hieght", None),), "unknown logical axis 'hieght'"),
                           (("batch",), "each rule must be (logical name, mesh axes), got 'batch'")):
        config.sharding_rules = rules
        with pytest.raises(ConfigError, match=r"^config\.sharding_rules: " + re.escape(message)):
            validation.check(config)
