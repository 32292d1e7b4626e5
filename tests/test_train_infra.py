"""Trainer infrastructure on the toy stage, in-process on 8 simulated devices.

Covers: the loss falls, frozen parameters stay bit-identical and stay out of the optimizer
state, gradient accumulation, EMA, the non-finite guard (skip and stop), metrics and
samples in TensorBoard, and start-up config errors (exit code 2, one line).
"""
import glob
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codi_jax.parallel import mesh as mesh_lib
from codi_jax.train import freeze, loop, validation
from codi_jax.train.defaults import load_config_file
from codi_jax.train.errors import ConfigError, NonFiniteError
from codi_jax.train.stages import toy

REPO = pathlib.Path(__file__).resolve().parents[1]
TOY = str(REPO / "configs" / "toy.py")


def toy_config(**overrides):
    config = load_config_file(TOY + ":tiny")
    config.update_from_flattened_dict({"tensorboard": False, **overrides})
    return config


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def mean_loss(trainer, params, batches, draws=4):
    """The stage loss averaged over fixed batches and fixed noise draws."""
    fn = jax.jit(trainer.stage.loss)
    values = [float(fn(params, b, jax.random.key(100 + i), 0)[0]) for b in batches for i in range(draws)]
    return float(np.mean(values))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """One 40-step tiny toy run: (trainer, initial state on host, final state, workdir)."""
    workdir = str(tmp_path_factory.mktemp("toy"))
    config = toy_config(tensorboard=True)
    trainer = loop.Trainer(config, workdir)
    initial = host(trainer.restore_or_init())
    final = loop.Trainer(config, workdir).run()
    return trainer, initial, final, workdir


def test_toy_loss_falls(toy_run):
    trainer, initial, final, _ = toy_run
    batches = [{"image": jnp.asarray(np.stack([toy._draw(999, i, 8) for i in range(16)]))}]
    before = mean_loss(trainer, freeze.merge(initial.params, initial.frozen), batches)
    after = mean_loss(trainer, final.full_params(), batches)
    # Random init predicts eps badly (MSE ~2.5); 40 steps bring it well below 1.5.
    assert after < 0.6 * before, (before, after)


def test_frozen_bit_identical_and_trainable_changed(toy_run):
    _, initial, final, _ = toy_run
    final = host(final)
    frozen_before, frozen_after = freeze.flatten(initial.frozen), freeze.flatten(final.frozen)
    assert sorted(frozen_before) == ["encoder/bias", "encoder/kernel"]
    for path in frozen_before:
        np.testing.assert_array_equal(frozen_before[path], frozen_after[path], err_msg=path)
    for path, value in freeze.flatten(initial.params).items():
        assert not np.array_equal(value, freeze.flatten(final.params)[path]), f"{path} did not train"
    assert int(final.step) == 40 and int(final.skipped) == 0


def test_optimizer_state_covers_only_trainable(toy_run):
    _, initial, _, _ = toy_run
    paths = {"/".join(str(k.key) for k in p if isinstance(k, jax.tree_util.DictKey))
             for p, _ in jax.tree_util.tree_flatten_with_path(initial.opt_state)[0]}
    assert not any(p.startswith("encoder") for p in paths)
    assert "block_0/Dense_0/kernel" in paths


def test_checkpoints_and_tensorboard(toy_run):
    _, _, _, workdir = toy_run
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["20", "40"]
    events = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    assert events
    import tensorflow as tf

    tags = set()
    for event in tf.compat.v1.train.summary_iterator(events[0]):
        tags |= {v.tag for v in event.summary.value}
    for tag in ("loss", "grad_norm", "learning_rate", "examples_per_sec", "tflops_per_sec_per_device",
                "denoised"):
        assert tag in tags, (tag, tags)


def test_state_shardings_follow_logical_names(toy_run):
    trainer = toy_run[0]
    spec = trainer.layout.shardings.params["block_0"]["Dense_0"]["kernel"].spec
    assert spec == jax.sharding.PartitionSpec("fsdp")  # ("embed", "mlp") on mesh data=1, fsdp=8, tensor=1
    mu = trainer.layout.shardings.opt_state[1][0].mu["block_0"]["Dense_0"]["kernel"]
    assert mu.spec == spec


def _deterministic_setup(grad_accum_steps, ema_decay=0.0):
    """A trainer whose loss has no randomness (denoise a fixed noise level), compiled for a 16-image batch."""
    config = toy_config(grad_accum_steps=grad_accum_steps, ema_decay=ema_decay)
    trainer = loop.Trainer(config, "/nonexistent-unused")
    model = trainer.stage.model

    def loss_fn(params, batch, rng, step):
        pred = model.apply({"params": params}, batch["image"], jnp.full((batch["image"].shape[0],), 0.5))
        mse = jnp.mean((pred - batch["image"]) ** 2)
        return mse, {"mse": mse}

    trainer.stage.loss = loss_fn
    return trainer, trainer.compile(_batch(np.stack([toy._draw(5, i, 8) for i in range(16)]), trainer))


def _batch(images, trainer):
    return mesh_lib.shard_host_batch({"image": images}, trainer.mesh)


@pytest.fixture(scope="module")
def deterministic():
    return _deterministic_setup(1, ema_decay=0.9)


def test_gradient_accumulation_matches_full_batch(deterministic):
    results = []
    for trainer, step in (deterministic, _deterministic_setup(2, ema_decay=0.9)):
        batch = _batch(np.stack([toy._draw(5, i, 8) for i in range(16)]), trainer)
        state = trainer.layout.init(trainer.init_key, {})
        for _ in range(3):
            state, metrics = step(state, batch)
        results.append((host(state.params), float(metrics["loss"])))
    (p1, l1), (p2, l2) = results
    assert abs(l1 - l2) < 1e-6
    # Same mean gradient, summed in another order: float32 round-off only.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5), p1, p2)


def test_ema_follows_warmup_formula(deterministic):
    trainer, step = deterministic
    batch = _batch(np.stack([toy._draw(5, i, 8) for i in range(16)]), trainer)
    state = trainer.layout.init(trainer.init_key, {})
    p0 = host(state.params)
    state, _ = step(state, batch)
    # Step 0: decay = min(0.9, 1/10) = 0.1, so ema = 0.1 * p0 + 0.9 * p1.
    expected = jax.tree.map(lambda a, b: 0.1 * a + 0.9 * b, p0, host(state.params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), expected, host(state.ema))


def test_nonfinite_update_is_skipped(deterministic):
    trainer, step = deterministic
    state = trainer.layout.init(trainer.init_key, {})
    before = host(state)
    bad = np.stack([toy._draw(5, i, 8) for i in range(16)])
    bad[3, 0, 0, 0] = np.nan
    state, metrics = step(state, _batch(bad, trainer))
    after = host(state)
    assert float(metrics["nonfinite"]) == 1.0 and int(after.skipped) == 1 and int(after.step) == 1
    jax.tree.map(np.testing.assert_array_equal, (before.params, before.opt_state, before.ema),
                 (after.params, after.opt_state, after.ema))


def test_nonfinite_stop_raises_and_saves_nothing_after(tmp_path, monkeypatch):
    original = toy.SyntheticImages.__next__

    def poisoned(self):
        batch = original(self)
        if self.batches == 25:
            batch["image"][0, 0, 0, 0] = np.nan
        return batch

    monkeypatch.setattr(toy.SyntheticImages, "__next__", poisoned)
    with pytest.raises(NonFiniteError, match="non-finite"):
        loop.train_and_evaluate(toy_config(nonfinite="stop"), str(tmp_path))
    assert os.listdir(tmp_path / "checkpoints") == ["20"]


@pytest.mark.parametrize("override, message", [
    ({"stage": "nope"}, "unknown stage 'nope'"),
    ({"mesh.data": -1, "mesh.fsdp": 3}, "does not divide the 8 devices"),
    ({"batch_size": 12}, "must be a multiple of data x fsdp (8)"),
    ({"optim.schedule": "linear"}, "config.optim.schedule must be"),
    ({"nonfinite": "ignore"}, "config.nonfinite must be one of"),
    ({"model.trainable": ()}, "no parameter is trainable"),
])
def test_bad_config_values_raise_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        loop.Trainer(toy_config(**override), "/nonexistent-unused")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_key_and_wrong_type():
    config = toy_config()
    config.unlock()
    config.lerning_rate = 1.0
    with pytest.raises(ConfigError, match="unknown config key lerning_rate; known keys there: .*'optim'"):
        validation.check(config)
    config = toy_config()
    config.optim.unlock()
    config.optim.lerning_rate = 1.0
    with pytest.raises(ConfigError, match=r"unknown config key optim.lerning_rate; did you mean optim.learning_rate\?"):
        validation.check(config)
    config = toy_config()
    config.unlock()
    del config["total_steps"]
    config.total_steps = "100"
    with pytest.raises(ConfigError, match="config.total_steps must be int, got str"):
        validation.check(config)


@pytest.mark.parametrize("flag, message", [
    ("--config.total_stpes=5", "unknown config key total_stpes; did you mean total_steps?"),
    ("--config.model.widht=5", "unknown config key model.widht; did you mean model.width?"),
    ("--config.total_steps=abc", "bad flags"),
    ("--config.mesh.fsdp=3", "needs 3 devices but 8 are available"),
])
def test_cli_config_errors_exit_2(tmp_path, flag, message):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "codi_jax.train", "--config", TOY + ":tiny",
                           "--workdir", str(tmp_path), flag], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("codi_jax.train:") and message in lines[0], proc.stderr


@pytest.mark.parametrize("config_name, key, value, message", [
    ("image_ldm", "model.modality", "smell", "unknown ldm modality 'smell'"),
    ("image_ldm", "model.conditions", ("text", "smell"), "unknown ldm condition modality 'smell'"),
    ("latent_align", "model.objectives", ("text_smell",), "unknown pair 'text_smell'"),
    ("latent_align", "model.wiring", "both", "unknown wiring 'both'"),
    ("autoencoders", "model.components", ("image_vae", "clip"), "unknown autoencoder component 'clip'"),
])
def test_unknown_modality_objective_component(config_name, key, value, message):
    config = load_config_file(str(REPO / "configs" / f"{config_name}.py") + ":tiny")
    config.update_from_flattened_dict({key: value})
    with pytest.raises(ConfigError) as info:
        loop.Trainer(config, "/nonexistent-unused")
    assert message in str(info.value) and "\n" not in str(info.value)
