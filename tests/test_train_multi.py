"""Other device counts and process counts (toy stage).

- A checkpoint written on 8 devices restores onto 4 and onto 1 (fresh processes, each with its
  own simulated device count) and gives the same loss at the next step.
- 2 processes x 4 CPU devices (jax.distributed with a localhost coordinator, gloo collectives)
  train to the same parameters and loss as 1 process x 8 devices.
- Preemption on 2 processes x 4 devices: SIGTERM to both processes (a TPU maintenance event),
  then, on the resumed run, SIGTERM to only one of them. Each time both processes agree on one
  step, write one checkpoint holding both data states and exit 0; resuming to the end gives the
  parameters of the uninterrupted run.

This file doubles as the children's entry script: `python test_train_multi.py WORKDIR` (restore
and one step) and `python test_train_multi.py slow AFTER -- CLI ARGS` (the CLI with the toy data
slowed after AFTER batches, so that a signal lands mid-run).
"""
import json
import os
import pathlib
import shutil
import socket
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from codi_jax.train import freeze, loop
from codi_jax.train.defaults import load_config_file
from codi_jax.checkpoints import restore_params

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


def _run_child(devices: int, *args, stderr=subprocess.PIPE):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=stderr, text=True)


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


def _distributed_flags(workdir, port: int, process_id: int, checkpoint_every: int = STEPS) -> list[str]:
    return ["--config", TOY + ":tiny", "--workdir", str(workdir),
            f"--config.total_steps={STEPS}", f"--config.checkpoint_every_steps={checkpoint_every}",
            "--config.sample_every_steps=1000", "--config.tensorboard=False",
            "--config.distributed.initialize=True", f"--config.distributed.coordinator_address=localhost:{port}",
            "--config.distributed.num_processes=2", f"--config.distributed.process_id={process_id}"]


def _assert_same_params(workdir, reference) -> tuple[dict, dict]:
    """The 2-process run's final parameters equal the 1 x 8 reference's; returns both (flat)."""
    _, two = restore_params(str(workdir), False)
    _, one = restore_params(str(reference), False)
    assert sorted(two) == sorted(one)
    for path in one:
        # 2 x 4 against 1 x 8 devices: only the reduction order differs (float32 round-off).
        np.testing.assert_allclose(two[path], one[path], rtol=1e-5, atol=1e-6, err_msg=path)
    return two, one


def test_two_processes_match_one(reference, tmp_path):
    port = _free_port()
    procs = [_run_child(4, "-m", "codi_jax.train", *_distributed_flags(tmp_path, port, i)) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
    assert sorted(os.listdir(tmp_path / "checkpoints" / str(STEPS) / "data")) == [
        "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
    two, one = _assert_same_params(tmp_path, reference)

    trainer = loop.Trainer(_config(), str(tmp_path / "unused"))
    batch = trainer.next_batch()
    loss = jax.jit(trainer.stage.loss)
    rng = jax.random.key(7)
    l_two = float(loss(freeze.unflatten(two), batch, rng, 0)[0])
    l_one = float(loss(freeze.unflatten(one), batch, rng, 0)[0])
    assert abs(l_two - l_one) <= 1e-5 * abs(l_one), (l_two, l_one)


def _slow_cli_main():
    """`python test_train_multi.py slow AFTER -- CLI ARGS`: the toy data sleeps 0.5 s per batch after AFTER."""
    after, cli_args = int(sys.argv[2]), sys.argv[4:]
    from absl import app

    from codi_jax.train import __main__ as cli
    from codi_jax.train.stages import toy

    produce = toy.SyntheticImages.__next__

    def delayed(self):
        if self.batches >= after:
            time.sleep(0.5)
        return produce(self)

    toy.SyntheticImages.__next__ = delayed
    app.run(cli.main, argv=["codi_jax.train"] + cli_args, flags_parser=cli._parse)


def _preempted_run(workdir, signal_at: int, targets: tuple[int, ...]) -> int:
    """Starts 2 processes (resuming from `workdir` if it holds a checkpoint), sends SIGTERM to the
    processes in `targets` once process 0 reports step `signal_at`, and returns the step both saved."""
    port = _free_port()
    logs = [open(workdir.parent / f"{workdir.name}-p{i}-{signal_at}.log", "w+") for i in range(2)]
    procs = [_run_child(4, __file__, "slow", "2", "--", *_distributed_flags(workdir, port, i, checkpoint_every=1000),
                        "--config.log_every_steps=1", stderr=logs[i]) for i in range(2)]
    before = set(os.listdir(workdir / "checkpoints")) if (workdir / "checkpoints").is_dir() else set()
    deadline = time.time() + 300
    try:
        while f"step {signal_at}/{STEPS}" not in pathlib.Path(logs[0].name).read_text():
            assert all(p.poll() is None for p in procs), [pathlib.Path(f.name).read_text()[-3000:] for f in logs]
            assert time.time() < deadline, "no progress"
            time.sleep(0.1)
        for i in targets:
            procs[i].send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=120)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    errors = [pathlib.Path(f.name).read_text() for f in logs]
    for proc, err in zip(procs, errors):
        assert proc.returncode == 0, err[-3000:]
    new = sorted(set(os.listdir(workdir / "checkpoints")) - before)
    assert len(new) == 1, new  # one agreed step, written once
    step = int(new[0])
    assert signal_at <= step < STEPS, (signal_at, step)
    for err in errors:
        assert f"SIGTERM: checkpoint at step {step} written; stopping" in err
    data = workdir / "checkpoints" / str(step) / "data"
    for i in range(2):
        assert json.loads((data / f"process_{i}-of-2.json").read_text())["state"] == {"batches": step}
    return step


@pytest.mark.slow
def test_two_process_preemption_agrees_and_resumes(reference, tmp_path):
    workdir = tmp_path / "run"
    first = _preempted_run(workdir, signal_at=3, targets=(0, 1))  # maintenance event: every host
    second = _preempted_run(workdir, signal_at=first + 3, targets=(1,))  # one host only: no deadlock
    assert first < second
    port = _free_port()
    procs = [_run_child(4, "-m", "codi_jax.train", *_distributed_flags(workdir, port, i, checkpoint_every=1000))
             for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
    assert sorted(int(s) for s in os.listdir(workdir / "checkpoints")) == [first, second, STEPS]
    _assert_same_params(workdir, reference)


if __name__ == "__main__":
    if sys.argv[1] == "slow":
        _slow_cli_main()
    else:
        print(json.dumps({"devices": jax.device_count(), "loss": next_step_loss(sys.argv[1])}))
