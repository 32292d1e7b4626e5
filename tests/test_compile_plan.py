"""Compiling for TPU slices this host does not have (codi_jax.compile_plan, parallel.topology / footprint): a tiny
stage's train step for v5p-8 with its shardings and figures, the splash attention kernel inside the UNet, the
largest-batch search, and the CLI's one-line errors. Needs libtpu, which the test extra installs (in CI a missing
libtpu fails the module instead of skipping it)."""
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from codi_jax.data import pipeline
from codi_jax.models import unet
from codi_jax.parallel import footprint, topology
from codi_jax.parallel.mesh import batch_spec, make_mesh
from codi_jax.parallel.partitioning import unbox_values
from codi_jax.train import loop
from codi_jax.train.defaults import load_config_file

try:
    import libtpu  # noqa: F401
except ImportError:  # the test extra installs it; only a hand-made environment lacks it, and CI must not
    if os.environ.get("CI"):
        raise
    pytest.skip("libtpu is not installed (pip install -e '.[tpu]')", allow_module_level=True)
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def v5p8():
    devices, chip = topology.tpu_devices("v5p-8")
    return devices, chip


def test_slice_names_and_grids():
    assert topology.parse("v5p-8")[1] == "v5p:2x2x1" and topology.parse("v5e-16")[1] == "v5e:4x4"
    assert topology.parse("v4:2x2x4")[0].name == "v4"
    with pytest.raises(topology.TopologyError, match="unknown TPU topology 'v9-8'"):
        topology.parse("v9-8")


def test_tiny_image_ldm_step_compiles_for_v5p8_sharded_as_configured(v5p8, tmp_path):
    devices, chip = v5p8
    assert len(devices) == 4 and devices[0].platform == "tpu"
    config = load_config_file(str(REPO / "configs" / "image_ldm.py") + ":tiny")
    config.update_from_flattened_dict({"tensorboard": False, "batch_size": 16})
    trainer = loop.Trainer(config, str(tmp_path), devices)  # the trainer's own mesh code, on the slice
    assert dict(trainer.mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 1}
    (objective,) = config.data.objectives
    shapes = pipeline.batch_shapes(config.data, objective, 16)
    batch = {k: jax.ShapeDtypeStruct(s, d, sharding=NamedSharding(trainer.mesh, batch_spec(len(s))))
             for k, (s, d) in shapes.items()}
    compiled = trainer.lower(batch).compile()
    state_shardings, batch_shardings = compiled.input_shardings[0][:2]
    # The batch splits over data x fsdp; the UNet's large kernels over fsdp, as the logical rules say.
    assert batch_shardings["image"].spec[0] == ("data", "fsdp") and set(batch_shardings["image"].spec[1:]) <= {None}
    specs = [s.spec for s in jax.tree.leaves(state_shardings.params, is_leaf=lambda x: isinstance(x, NamedSharding))]
    assert any("fsdp" in jax.tree.leaves(tuple(spec)) for spec in specs)
    fp = footprint.Footprint.of(compiled)
    assert fp.argument > 0 and fp.temp > 0 and fp.flops > 0
    assert fp.alias > 0  # the state is donated: its outputs reuse the argument buffers
    assert fp.total == fp.argument + fp.output - fp.alias + fp.temp + fp.code < 0.9 * chip.hbm_bytes


def _unet_hlo(impl, mesh):
    """The compiled TPU HLO of a micro UNet on 16 x 16 latents (256 tokens: the kernel's tiles of 128)."""
    model = unet.build(dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 1),
                            num_res_blocks=(1, 1), attention_levels=(True, False), num_heads=2, context_dim=32),
                       attn_impl=impl)
    batch = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, batch_spec(len(shape))))
    x, t, context = batch((4, 16, 16, 4)), batch((4,)), batch((4, 1, 32))
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 4)), jnp.zeros((1,)),
                            jnp.zeros((1, 1, 32)))
    replicated = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P())),
                              unbox_values(params))
    with loop.sharding_context(mesh):
        return jax.jit(model.apply).lower(replicated, x, t, context).compile().as_text()


def test_splash_attention_compiles_inside_the_unet_for_tpu(v5p8):
    mesh = make_mesh({"ici": {"data": 4, "fsdp": 1, "tensor": 1}}, v5p8[0])
    assert "tpu_custom_call" in _unet_hlo("splash", mesh)
    assert "tpu_custom_call" not in _unet_hlo("xla", mesh)


def test_largest_batch_is_the_largest_quantum_multiple_under_the_limit():
    # 100 MB fixed + 3 MB per example, limit 250 MB: 50 fits (250), 52 does not; quantum 4 -> 48.
    calls = []

    def total_at(batch):
        calls.append(batch)
        return 100 + 3 * batch

    best, seen = footprint.largest_batch(total_at, 8, 4, 250)
    assert best == 48 and seen[48] <= 250 < seen[52] and len(calls) == len(set(calls))
    # The compiler running out of memory (None) counts as not fitting.
    best, _ = footprint.largest_batch(lambda b: None if b > 20 else 10 * b, 4, 4, 10_000)
    assert best == 20
    assert footprint.largest_batch(lambda b: 1000, 8, 8, 10)[0] == 0


@pytest.mark.parametrize("argv,message", [
    (["--config", "configs/image_ldm.py:tiny", "--topology", "v9-8"], "unknown TPU topology 'v9-8'"),
    (["--config", "configs/image_ldm.py:tiny", "--topology", "v5p-8", "--batch", "0"], "--batch must be positive"),
    (["--config", "configs/image_ldm.py:tiny", "--topology", "v5p-8", "--mesh", "fsdp"], "mesh axis 'fsdp'"),
    (["--topology", "v5p-8"], "--config and --topology are required"),
    (["--config", "configs/image_ldm.py:tiny", "--topology", "v5p-8", "--mesh", "fsdp=4,tensr=1"],
     "mesh axis 'tensr': expected one of data, fsdp, tensor"),
    (["--config", "configs/toy.py", "--topology", "v5p-8"], "stage 'toy' has no config.data.objectives"),
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, message):
    result = subprocess.run([sys.executable, "-m", "codi_jax.compile_plan", *argv], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("codi_jax.compile_plan:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
