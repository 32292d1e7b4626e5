"""README command 1 as written (`python -m codi_jax.train --config configs/latent_align.py`, at 2 steps a stage):
every earlier stage built in its own sub-workdir, latent alignment trained on them with the UNets frozen, samples
on disk and the joint table printed; run again, it skips everything; then README's generation command samples
what it left. This is also CI's tiny run of every training stage."""
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

from codi_jax.checkpoints import saved_config
from codi_jax.train import prerequisites, showcase
from codi_jax.train.defaults import load_config_file
from codi_jax.train.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
STAGES = ("autoencoders", "bridging_align", "image_ldm", "video_ldm", "audio_ldm", "text_ldm")


def _readme_block(heading: str) -> str:
    text = (REPO / "README.md").read_text().split(heading, 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return text.replace("\\\n", " ")


def _readme_train_command() -> list[str]:
    """The training part of README command 1 (after the set-up's `&&`s), as a shell would split it."""
    line = next(line for line in _readme_block("## Two commands").splitlines() if "codi_jax.train" in line)
    return shlex.split(line.rsplit("&&", 1)[1])


def _reduced() -> list[str]:
    """Overrides that cut every stage (the prerequisites too) to 2 steps and the probe and samples to 2 steps."""
    default = load_config_file(str(REPO / "configs" / "latent_align.py"))
    entries = tuple(f"{e} total_steps=2 checkpoint_every_steps=2" for e in default.prerequisites)
    return [f"--config.prerequisites={entries!r}", "--config.total_steps=2", "--config.checkpoint_every_steps=2",
            "--config.probe.num_examples=2", "--config.probe.steps=2"]


def test_the_default_lists_every_earlier_stage_in_order():
    config = load_config_file(str(REPO / "configs" / "latent_align.py"))
    assert [prerequisites.stage_name(prerequisites.parse(e)[0]) for e in config.prerequisites] == list(STAGES)
    assert config.model.trainable == ()  # the paper's way: the UNets frozen
    assert all(not path for path in config.init_from.values())


def test_prerequisite_entries_parse_and_refuse_unknown_keys():
    spec, overrides = prerequisites.parse("configs/image_ldm.py:quickstart total_steps=2 model.prediction=eps")
    assert (spec, overrides) == ("configs/image_ldm.py:quickstart", {"total_steps": 2, "model.prediction": "eps"})
    assert prerequisites.load("configs/image_ldm.py:quickstart total_steps=2").total_steps == 2
    with pytest.raises(ConfigError, match="has no key model.predicton"):
        prerequisites.load("configs/image_ldm.py:quickstart model.predicton=v")
    with pytest.raises(ConfigError, match="is not key=value"):
        prerequisites.parse("configs/image_ldm.py:quickstart total_steps")


def test_hand_over_fills_only_empty_entries():
    config = load_config_file(str(REPO / "configs" / "video_ldm.py") + ":quickstart")
    config.init_from.bridging_align = "/given"
    prerequisites.hand_over(config, {"image_ldm": "/a", "bridging_align": "/b", "text_ldm": "/c"})
    assert (config.init_from.image_ldm, config.init_from.bridging_align) == ("/a", "/given")
    assert "text_ldm" not in config.init_from


def test_the_table_reads_the_joint_probe_scores():
    lines = showcase.table({"joint/onset_agreement": 0.5, "joint/agreement": 0.25, "joint/video_accuracy": 1.0,
                            "joint/audio_accuracy": 0.75, "independent/onset_agreement": 0.125}, 16).splitlines()
    assert "16 validation captions" in lines[0] and "25%" in lines[0]
    assert lines[2].split() == ["joint", "50.0%", "25.0%", "100.0%", "75.0%"]
    assert lines[3].split() == ["independent", "12.5%", "–", "–", "–"]


def test_readme_command_1_builds_every_stage_then_samples_and_scores(tmp_path):
    argv = _readme_train_command()
    assert argv == ["python", "-m", "codi_jax.train", "--config", "configs/latent_align.py"]
    (tmp_path / "configs").symlink_to(REPO / "configs")  # the command is run from a checkout's root
    # As a newcomer runs it: on the host's devices, not on the tests' 8 simulated ones (which multiply its compiles).
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
    command = [sys.executable] + argv[1:] + _reduced()
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert first.returncode == 0, first.stderr[-3000:]
    workdir = tmp_path / "workdirs" / "latent_align"
    for index, stage in enumerate(STAGES, 1):
        assert f"prerequisite {index}/{len(STAGES)} {stage}: 2 steps into {workdir / 'stages' / stage}" in first.stderr
        assert sorted(os.listdir(workdir / "stages" / stage / "checkpoints")) == ["2"]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
    # Latent alignment stood on them: its saved config points at every stage's sub-workdir.
    assert {s: saved_config(str(workdir))["init_from"][s] for s in STAGES} == {
        s: str(workdir / "stages" / s) for s in STAGES}
    samples = workdir / "samples"
    names = {p.relative_to(samples).as_posix() for p in samples.rglob("*") if p.is_file()}
    for index in range(2):
        assert {f"{index}_text_to_image/image.png", f"{index}_text_to_video_audio/video.gif",
                f"{index}_text_to_video_audio/video.mp4", f"{index}_text_to_video_audio/audio.wav",
                f"{index}_image_to_text/text.txt"} <= names
    for line in ("samples: " + str(samples), "onset agreement", "joint", "independent"):
        assert line in first.stdout
    joint = next(line for line in first.stdout.splitlines() if line.startswith("joint "))
    assert joint.count("%") == 4

    # Again: every stage is found finished, nothing trains.
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert again.returncode == 0, again.stderr[-3000:]
    for index, stage in enumerate(STAGES, 1):
        assert f"prerequisite {index}/{len(STAGES)} {stage}: finished in" in again.stderr
    assert "step 2/2 (100%)" in first.stderr and "step 2/2 (100%)" not in again.stderr
    assert "showcase: the samples of step 2 exist, kept" in again.stderr

    # README's generation command samples what command 1 left, as written (bar the step count).
    generate = shlex.split(_readme_block("## Generation").strip().splitlines()[0])
    assert generate[:3] == ["python", "-m", "codi_jax.sample"] and "--config" not in generate
    generate[generate.index("--steps") + 1] = "2"
    sampled = subprocess.run([sys.executable] + generate[1:] + ["--no-progress"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=900)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    out = tmp_path / generate[generate.index("--out") + 1]
    assert sorted(p.name for p in out.iterdir()) == ["audio.wav", "request.json", "video.gif", "video.mp4"]
