"""Exact resume after SIGKILL, and SIGTERM -> checkpoint + exit 0 + resume (toy stage, 8 devices).

The interrupted runs are real `python -m codi_jax.train` processes. So that the signal lands
at a known point, this file doubles as their entry script: it slows or stalls the toy data
source after a given number of batches, then hands over to the CLI.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from codi_jax.train import loop
from codi_jax.train.defaults import load_config_file

from train_state import assert_bitwise, host

REPO = pathlib.Path(__file__).resolve().parents[1]
TOY = str(REPO / "configs" / "toy.py")
N = 10
COMMON_FLAGS = [f"--config.total_steps={2 * N}", "--config.tensorboard=False", "--config.log_every_steps=1",
                f"--config.sample_every_steps={2 * N}"]


def _child_main():
    """`python test_train_resume.py stall|slow AFTER -- CLI ARGS`: the toy data waits after AFTER batches."""
    mode, after, cli_args = sys.argv[1], int(sys.argv[2]), sys.argv[4:]
    from absl import app

    from codi_jax.train import __main__ as cli
    from codi_jax.train.stages import toy

    produce = toy.SyntheticImages.__next__

    def delayed(self):
        if self.batches >= after:
            time.sleep(3600 if mode == "stall" else 0.5)
        return produce(self)

    toy.SyntheticImages.__next__ = delayed
    app.run(cli.main, argv=["codi_jax.train"] + cli_args, flags_parser=cli._parse)


def _config(**overrides):
    config = load_config_file(TOY + ":tiny")
    config.total_steps, config.tensorboard, config.sample_every_steps = 2 * N, False, 2 * N
    for key, value in overrides.items():
        config[key] = value
    return config


def _data_state(workdir, step):
    path = pathlib.Path(workdir) / "checkpoints" / str(step) / "data" / "process_0-of-1.json"
    return json.loads(path.read_text())["state"]


def _spawn(mode, after, workdir, *flags):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    return subprocess.Popen(
        [sys.executable, __file__, mode, str(after), "--", "--config", TOY + ":tiny", "--workdir", str(workdir),
         *COMMON_FLAGS, *flags],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """2N steps without interruption: the reference."""
    workdir = tmp_path_factory.mktemp("straight")
    state = loop.Trainer(_config(checkpoint_every_steps=N), str(workdir)).run()
    return host(state), workdir


def test_sigkill_then_resume_is_bitwise_identical(straight, tmp_path):
    reference, ref_dir = straight
    proc = _spawn("stall", N, tmp_path, f"--config.checkpoint_every_steps={N}")
    finished = tmp_path / "checkpoints" / str(N)
    deadline = time.time() + 240
    try:
        while not finished.is_dir():  # orbax renames the step directory into place once it is complete
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "checkpoint N never appeared"
            time.sleep(0.2)
    finally:
        proc.kill()  # SIGKILL while the run waits for batch N+1
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [str(N)]
    assert _data_state(tmp_path, N) == {"batches": N}

    resumed = loop.Trainer(_config(checkpoint_every_steps=N), str(tmp_path)).run()
    # Same compiled program, same data order (iterator state restored), same per-step rng
    # (fold_in(seed, step)): the resumed parameters, moments and EMA equal the straight run's bit for bit.
    assert_bitwise(host(resumed), reference)
    assert _data_state(tmp_path, 2 * N) == _data_state(ref_dir, 2 * N) == {"batches": 2 * N}


def test_sigterm_writes_checkpoint_exits_zero_and_resumes(straight, tmp_path):
    reference, _ = straight
    proc = _spawn("slow", N // 2, tmp_path, "--config.checkpoint_every_steps=1000")
    deadline = time.time() + 240
    try:
        for line in proc.stderr:  # progress lines: "step k/20 ..."
            assert time.time() < deadline, "no progress"
            if f"step {N // 2 + 1}/{2 * N}" in line:
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "SIGTERM: checkpoint at step" in rest
    steps = [int(s) for s in os.listdir(tmp_path / "checkpoints")]
    assert len(steps) == 1 and N // 2 < steps[0] < 2 * N, steps
    assert _data_state(tmp_path, steps[0]) == {"batches": steps[0]}

    resumed = loop.Trainer(_config(checkpoint_every_steps=1000), str(tmp_path)).run()
    assert_bitwise(host(resumed), reference)


if __name__ == "__main__":
    _child_main()
