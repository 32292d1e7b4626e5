"""Other device counts and process counts (toy stage).

- A checkpoint written on 8 devices restores onto 4 and onto 1 (fresh processes, each with its
  own simulated device count) and gives the same loss at the next step.
- 2 processes x 4 CPU devices (jax.distributed with a localhost coordinator, gloo collectives)
  train to the same parameters and loss as 1 process x 8 devices.

This file doubles as the restoring child's entry script (`python test_train_multi.py WORKDIR`).
"""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from codi_jax.train import freeze, loop
from codi_jax.train.defaults import load_config_file
from codi_jax.train.handoff import restore_params

REPO = pathlib.Path(__file__).resolve().parents[1]
TOY = str(REPO / "configs" / "toy.py")
STEPS = 10


def _config(**overrides):
    config = load_config_file(TOY + ":tiny")
    config.total_steps, config.checkpoint_every_steps = STEPS, STEPS
    config.tensorboard, config.sample_every_steps = False, 1000
    for key, value in overrides.items():
        config[key] = value
    return config


def next_step_loss(workdir: str) -> float:
    """Restore the latest checkpoint onto this process's devices and run one more step (nothing saved)."""
    trainer = loop.Trainer(_config(total_steps=STEPS + 1), workdir)
    state = trainer.restore_or_init()
    assert int(jax.device_get(state.step)) == STEPS
    batch = trainer.next_batch()
    _, metrics = trainer.compile(batch)(state, batch)
    trainer.checkpoints.close()
    return float(metrics["loss"])


def _run_child(devices: int, *args):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """STEPS steps on 1 process x 8 devices."""
    workdir = tmp_path_factory.mktemp("eight")
    loop.Trainer(_config(), str(workdir)).run()
    return workdir


def test_restore_onto_4_and_1_devices(reference, tmp_path):
    copies = {n: tmp_path / f"on{n}" for n in (8, 4, 1)}
    for path in copies.values():
        shutil.copytree(reference, path)
    children = {n: _run_child(n, __file__, str(copies[n])) for n in (4, 1)}
    loss8 = next_step_loss(str(copies[8]))
    for n, proc in children.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        result = json.loads(out.strip().splitlines()[-1])
        assert result["devices"] == n
        # Same parameters and batch; only the reduction order over shards differs (float32 round-off).
        assert abs(result["loss"] - loss8) <= 1e-5 * abs(loss8), (n, result["loss"], loss8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(reference, tmp_path):
    port = _free_port()
    procs = [_run_child(4, "-m", "codi_jax.train", "--config", TOY + ":tiny", "--workdir", str(tmp_path),
                        f"--config.total_steps={STEPS}", f"--config.checkpoint_every_steps={STEPS}",
                        "--config.sample_every_steps=1000", "--config.tensorboard=False",
                        "--config.distributed.initialize=True",
                        f"--config.distributed.coordinator_address=localhost:{port}",
                        "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}")
             for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
    assert sorted(os.listdir(tmp_path / "checkpoints" / str(STEPS) / "data")) == [
        "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
    _, two = restore_params(str(tmp_path), False)
    _, one = restore_params(str(reference), False)
    assert sorted(two) == sorted(one)
    for path in one:
        np.testing.assert_allclose(two[path], one[path], rtol=1e-5, atol=1e-6, err_msg=path)

    trainer = loop.Trainer(_config(), str(tmp_path / "unused"))
    batch = trainer.next_batch()
    loss = jax.jit(trainer.stage.loss)
    rng = jax.random.key(7)
    l_two = float(loss(freeze.unflatten(two), batch, rng, 0)[0])
    l_one = float(loss(freeze.unflatten(one), batch, rng, 0)[0])
    assert abs(l_two - l_one) <= 1e-5 * abs(l_one), (l_two, l_one)


if __name__ == "__main__":
    print(json.dumps({"devices": jax.device_count(), "loss": next_step_loss(sys.argv[1])}))
