"""The trainer under faults (toy stage, 8 simulated devices): damaged checkpoints, failed saves,
a read-only workdir, config mismatches, a kill in the middle of a checkpoint write.

A module-scoped run writes checkpoints 4 and 8; each test copies it and breaks it one way.
Resumes are compared bit for bit with an uninterrupted run restored from step 4. Every Trainer
compiles the same programs, so JAX's persistent compilation cache (one directory for the module,
shared with the child processes) turns every compile after the first into a file read.

This file doubles as the entry script of the killed child: `python test_train_faults.py MARKER
-- CLI ARGS` runs the CLI with orbax's JSON writer stalled (after writing MARKER), so that a
SIGKILL lands while the checkpoint is half written.
"""
import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.experimental.compilation_cache import compilation_cache

from codi_jax.train import config_diff, integrity, loop
from codi_jax.train.defaults import load_config_file
from codi_jax.train.errors import CheckpointError, ConfigError, NonFiniteError
from codi_jax.train.stages import toy

from train_state import assert_bitwise, host

REPO = pathlib.Path(__file__).resolve().parents[1]
TOY = str(REPO / "configs" / "toy.py")
SETTINGS = {"total_steps": 8, "checkpoint_every_steps": 4, "log_every_steps": 4, "sample_every_steps": 1000,
            "keep_checkpoints": 5, "tensorboard": False}
CACHE_OPTIONS = {"jax_persistent_cache_min_compile_time_secs": 0, "jax_persistent_cache_min_entry_size_bytes": 0}


def _config(**overrides):
    config = load_config_file(TOY + ":tiny")
    config.update_from_flattened_dict({**SETTINGS, **overrides})
    return config


def _listing(workdir) -> list[str]:
    return sorted(os.listdir(pathlib.Path(workdir) / "checkpoints"))


def _copy(base, tmp_path, *, drop=()) -> pathlib.Path:
    workdir = tmp_path / "run"
    shutil.copytree(base, workdir)
    for step in drop:
        shutil.rmtree(workdir / "checkpoints" / str(step))
    return workdir


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("jax_cache")
    previous = {name: getattr(jax.config, name) for name in ("jax_compilation_cache_dir", *CACHE_OPTIONS)}
    jax.config.update("jax_compilation_cache_dir", str(directory))
    for name, value in CACHE_OPTIONS.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # the cache is set up once per process: make it read the new settings
    yield directory
    for name, value in previous.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 8-step run with checkpoints 4 and 8."""
    workdir = tmp_path_factory.mktemp("base")
    loop.Trainer(_config(), str(workdir)).run()
    assert _listing(workdir) == ["4", "8"]
    return workdir


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
    """Host state of an uninterrupted run from checkpoint 4 to step 8."""
    workdir = _copy(base, tmp_path_factory.mktemp("reference"), drop=(8,))
    return host(loop.Trainer(_config(), str(workdir)).run())


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


def _alter_values(step_dir: pathlib.Path, abstract_state) -> None:
    """Rewrites the state item, through orbax, with one element of one kernel changed: a checkpoint
    that reads back without error, as flipped bytes inside an incompressible chunk would."""
    checkpointer = ocp.StandardCheckpointer()
    state = checkpointer.restore(step_dir / "state", abstract_state)
    kernel = state.params["out"]["kernel"]
    state = state.replace(params={**state.params, "out": {**state.params["out"],
                                                          "kernel": kernel.at[0, 0].add(1e-3)}})
    shutil.rmtree(step_dir / "state")
    checkpointer.save(step_dir / "state", state)
    checkpointer.wait_until_finished()
    checkpointer.close()


def _damage(step_dir: pathlib.Path, kind: str, abstract_state) -> None:
    if kind == "truncated array file":
        path = _largest_array_file(step_dir)
        os.truncate(path, path.stat().st_size // 2)
    elif kind == "deleted state/_METADATA":
        (step_dir / "state" / "_METADATA").unlink()
    elif kind == "emptied state":
        shutil.rmtree(step_dir / "state")
        (step_dir / "state").mkdir()
    elif kind == "flipped bytes":
        path = _largest_array_file(step_dir)
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 256] = bytes(b ^ 0xFF for b in data[middle:middle + 256])
        path.write_bytes(bytes(data))
    elif kind == "altered values":
        _alter_values(step_dir, abstract_state)
    elif kind == "deleted iterator file":
        (step_dir / "data" / "process_0-of-1.json").unlink()
    else:
        raise ValueError(kind)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("kind, reason", [
    ("truncated array file", r"unreadable: OUT_OF_RANGE"),
    ("deleted state/_METADATA", r"state metadata \(state/_METADATA\) is missing"),
    ("emptied state", r"state metadata \(state/_METADATA\) is missing"),
    ("flipped bytes", r"unreadable|do not match their digests"),  # by where the bytes fall in the chunks
    ("altered values", r"params/out/kernel do not match their digests"),
    ("deleted iterator file", r"the data-iterator state of this process, .* is missing"),
])
def test_damaged_latest_checkpoint_is_moved_aside(base, tmp_path, caplog, kind, reason):
    workdir = _copy(base, tmp_path)
    trainer = loop.Trainer(_config(), str(workdir))
    _damage(workdir / "checkpoints" / "8", kind, trainer.layout.abstract)
    with caplog.at_level(logging.WARNING):
        state = trainer.restore_or_init()
    trainer.checkpoints.close()
    assert int(state.step) == 4 and trainer.data.get_state() == {"batches": 4}
    assert _listing(workdir) == ["4", "8.damaged"]  # renamed, not deleted
    moved = [m for m in _warnings(caplog) if "checkpoint 8 is damaged" in m]
    assert len(moved) == 1 and re.search(reason, moved[0]) and "moved it to 8.damaged" in moved[0], moved
    assert "\n" not in moved[0]
    if kind == "deleted iterator file":
        assert "process count" not in moved[0]


def test_resume_after_fallback_is_bitwise_identical(base, reference, tmp_path):
    workdir = _copy(base, tmp_path)
    trainer = loop.Trainer(_config(), str(workdir))
    _damage(workdir / "checkpoints" / "8", "altered values", trainer.layout.abstract)
    final = trainer.run()
    assert_bitwise(host(final), reference)
    assert _listing(workdir) == ["4", "8", "8.damaged"]


def test_no_readable_checkpoint_stops_and_never_starts_afresh(base, tmp_path):
    workdir = _copy(base, tmp_path)
    abstract = loop.Trainer(_config(), str(workdir)).layout.abstract
    _damage(workdir / "checkpoints" / "8", "deleted iterator file", abstract)
    _damage(workdir / "checkpoints" / "4", "emptied state", abstract)
    for _ in range(2):  # the second start finds only the moved-aside ones: still no fresh start
        with pytest.raises(CheckpointError, match="no readable checkpoint in .*4.damaged, 8.damaged moved aside"):
            loop.Trainer(_config(), str(workdir)).restore_or_init()
    assert _listing(workdir) == ["4.damaged", "8.damaged"]


def _child_env(cache_dir) -> dict:
    return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
                JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                **{name.upper(): str(value) for name, value in CACHE_OPTIONS.items()})


def _cli_flags(workdir, **overrides) -> list[str]:
    return ["--config", TOY + ":tiny", "--workdir", str(workdir),
            *(f"--config.{k}={v}" for k, v in {**SETTINGS, **overrides}.items())]


def test_kill_during_write_then_resume(base, reference, compile_cache, tmp_path):
    workdir = _copy(base, tmp_path, drop=(8,))
    marker = tmp_path / "stalled"
    with subprocess.Popen([sys.executable, __file__, str(marker), "--", *_cli_flags(workdir)], cwd=REPO,
                          env=_child_env(compile_cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as proc:
        deadline = time.time() + 240
        try:
            while not marker.exists():
                assert proc.poll() is None, proc.stderr.read()
                assert time.time() < deadline, "the save of checkpoint 8 never started"
                time.sleep(0.2)
        finally:
            proc.kill()  # SIGKILL with checkpoint 8 half written
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    unfinished = [name for name in _listing(workdir) if name not in ("4", "8")]
    assert unfinished and "8" not in _listing(workdir), _listing(workdir)

    trainer = loop.Trainer(_config(), str(workdir))
    trainer.checkpoints.prepare_to_write(trainer.layout.abstract)  # removes them (in an orbax thread)
    deadline = time.time() + 30
    while _listing(workdir) != ["4"]:
        assert time.time() < deadline, _listing(workdir)
        time.sleep(0.1)
    assert_bitwise(host(trainer.run()), reference)
    assert _listing(workdir) == ["4", "8"]


def test_failed_background_save_stops_within_two_steps(base, tmp_path, monkeypatch):
    """Resumed at 4, the save at step 5 fails in orbax's background thread; the next save would come
    only with the last step (8), so stopping before it shows the per-step check at work."""
    workdir = _copy(base, tmp_path, drop=(8,))
    config = _config(checkpoint_every_steps=5, keep_checkpoints=1)  # a completed save 5 would delete 4
    trainer = loop.Trainer(config, str(workdir))
    failed_at = []

    async def disk_full(self, item, directory):  # orbax's JSON writer, run in its background commit thread
        failed_at.append(trainer.data.batches)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))

    produce = toy.SyntheticImages.__next__

    def slowed(self):  # steps of a real size, so that "two steps" leaves orbax time to report
        if self.batches >= 5:
            time.sleep(0.25)
        return produce(self)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", disk_full)
    monkeypatch.setattr(toy.SyntheticImages, "__next__", slowed)
    with pytest.raises(CheckpointError) as info:
        trainer.run()
    message = str(info.value)
    assert f"checkpoint 5 could not be written to {workdir / 'checkpoints' / '5'}: " in message
    assert "No space left on device" in message and "the last complete one is step 4" in message
    assert "\n" not in message
    # Steps done = batches drawn: the run stopped within two steps of the failure, before step 8.
    assert trainer.data.batches <= min(failed_at) + 2 < 8, (failed_at, trainer.data.batches)
    assert "4" in _listing(workdir)
    monkeypatch.undo()
    again = loop.Trainer(config, str(workdir))
    assert int(again.restore_or_init().step) == 4
    again.checkpoints.close()


@contextlib.contextmanager
def _read_only(path: pathlib.Path):
    """`path` and everything under it unwritable, for root too (the immutable attribute)."""
    if os.geteuid() != 0:
        dirs = [path, *(p for p in path.rglob("*") if p.is_dir())]
        for d in dirs:
            d.chmod(0o555)
        try:
            yield
        finally:
            for d in dirs:
                d.chmod(0o755)
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root without chattr +i: no way to make a directory read-only here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], check=True)


def test_read_only_workdir_is_one_line_and_exit_1(base, compile_cache, tmp_path):
    workdir = _copy(base, tmp_path)
    before = _listing(workdir)
    with _read_only(workdir):
        proc = subprocess.run([sys.executable, "-m", "codi_jax.train", *_cli_flags(workdir, total_steps=12)],
                              cwd=REPO, env=_child_env(compile_cache), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"codi_jax.train: cannot write checkpoints in {workdir / 'checkpoints'}: "), proc.stderr
    assert _listing(workdir) == before


def test_full_disk_is_refused_before_the_first_step(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(free=2**19))  # 512 KiB left
    with pytest.raises(CheckpointError, match=r"not enough space for checkpoints in .*: 0 MiB free, a checkpoint "
                                              r"takes up to 1 MiB"):
        loop.Trainer(_config(), str(tmp_path)).run()
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("key, value, named", [
    ("model.width", 32, "model.width 64 in the checkpoint, 32 now"),
    ("ema_decay", 0.0, "ema_decay 0.9 in the checkpoint, 0.0 now"),
    ("model.trainable", ("block_.*", "out/.*"), "model.trainable ["),
])
def test_state_shaping_config_change_is_refused(base, tmp_path, key, value, named):
    workdir = _copy(base, tmp_path)
    with pytest.raises(ConfigError) as info:
        loop.Trainer(_config(**{key: value}), str(workdir)).restore_or_init()
    assert named in str(info.value) and "checkpoint 8" in str(info.value) and "\n" not in str(info.value)
    assert _listing(workdir) == ["4", "8"]  # a mismatch is not damage: nothing moved


def test_other_config_changes_resume_and_are_logged(base, tmp_path, caplog):
    workdir = _copy(base, tmp_path)
    trainer = loop.Trainer(_config(total_steps=20, log_every_steps=2, **{"optim.warmup_steps": 7}), str(workdir))
    with caplog.at_level(logging.INFO):
        assert int(trainer.restore_or_init().step) == 8
    trainer.checkpoints.close()
    logged = [r.getMessage() for r in caplog.records if "do not shape the state" in r.getMessage()]
    assert len(logged) == 1
    for change in ("total_steps 8 in the checkpoint, 20 now", "log_every_steps 4 in the checkpoint, 2 now",
                   "optim.warmup_steps 5 in the checkpoint, 7 now"):
        assert change in logged[0]


def test_layout_comparison_catches_what_the_key_rules_miss(base, tmp_path, monkeypatch):
    """A state-shaping key the rules do not know (here: all of them) still stops the resume, naming the leaves."""
    monkeypatch.setattr(config_diff, "_shapes_state", lambda difference: False)
    workdir = _copy(base, tmp_path)
    with pytest.raises(ConfigError, match=r"holds a differently shaped state: .*float32\[64, 128\] in the "
                                          r"checkpoint, float32\[32, 64\] now.*config differences: model.width"):
        loop.Trainer(_config(**{"model.width": 32}), str(workdir)).restore_or_init()
    assert _listing(workdir) == ["4", "8"]


def test_nonfinite_state_is_neither_saved_nor_restored(tmp_path, monkeypatch):
    trainer = loop.Trainer(_config(), str(tmp_path))
    state = trainer.restore_or_init()
    bad = state.replace(ema={**state.ema, "time": {**state.ema["time"],
                                                   "bias": state.ema["time"]["bias"].at[3].set(np.nan)}})
    with pytest.raises(NonFiniteError, match="refusing to save checkpoint 1: non-finite values in ema/time/bias"):
        trainer.save(1, bad)
    assert _listing(tmp_path) == []

    # Written anyway (the refusal bypassed), such a checkpoint is damaged to a resume.
    real = integrity.fingerprint
    monkeypatch.setattr(integrity, "fingerprint", lambda tree: dataclasses.replace(real(tree), nonfinite=[]))
    trainer.save(1, bad)
    trainer.checkpoints.close()
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="1.damaged moved aside"):
        loop.Trainer(_config(), str(tmp_path)).restore_or_init()


def _child_main():
    """`python test_train_faults.py MARKER -- CLI ARGS`: the CLI with orbax's JSON writer stalled."""
    marker, cli_args = pathlib.Path(sys.argv[1]), sys.argv[3:]
    from absl import app

    from codi_jax.train import __main__ as cli

    async def stalled(self, item, directory):
        marker.write_text(json.dumps(str(directory)))
        await asyncio.sleep(3600)

    ocp.JsonCheckpointHandler._save_fn = stalled
    app.run(cli.main, argv=["codi_jax.train"] + cli_args, flags_parser=cli._parse)


if __name__ == "__main__":
    _child_main()


def test_a_workdir_without_checkpoints_is_one_config_error(tmp_path):
    from codi_jax import checkpoints
    from codi_jax.train import handoff
    from codi_jax.train.errors import ConfigError
    from codi_jax.train.stages.base import Pretrained

    with pytest.raises(ConfigError, match=f"^no checkpoints directory at {re.escape(str(tmp_path))}/checkpoints$"):
        checkpoints.saved_config(str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match=r"^init_from: .*/checkpoints holds no finished checkpoint$"):
        handoff.load_overrides([Pretrained(str(tmp_path), "clip", "clip")], {}, use_ema=False)
