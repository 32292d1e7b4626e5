"""Orbax checkpoints of a training run: train state, data-iterator state, config and digests.

One `CheckpointManager` in `<workdir>/checkpoints` with four items per step:
- `state`: the TrainState (StandardCheckpointHandler; async, sharded). Restoring takes an
  abstract target whose leaves carry the shardings of the *current* mesh, so a checkpoint
  written on 8 devices restores onto 4 or 1.
- `data`: each process's iterator state (`get_state()`) and its sha256, one JSON file per
  process, so every host resumes its own shard exactly at the next batch.
- `config`: the run's config as JSON, for people, for loaders of later stages, and for the
  comparison with the config of a resuming run (config_diff.py).
- `integrity`: the layout and value digests of every state leaf and the config's sha256
  (integrity.py), checked after every restore.

Faults: a run checks that the directory takes a file and has room before its first step, and
removes the temporary directories of writes a killed run left. A save that fails, in the call
or later in orbax's background thread, raises CheckpointError at the next step with the path
and the cause; orbax then deletes nothing, so the last complete checkpoint stays. A checkpoint
that does not read back, does not match its digests or holds NaN/inf is renamed
`<step>.damaged` (never deleted) and the one before it is tried.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from codi_jax.train import config_diff, integrity
from codi_jax.train.errors import CheckpointError, ConfigError, NonFiniteError

DAMAGED = ".damaged"  # suffix of a step directory moved aside


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return base64.b64decode(value["__bytes__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


class IteratorStateHandler(ocp.CheckpointHandler):
    """Per-process iterator state as `process_<i>-of-<n>.json`: {"state": any JSON-able value or bytes,
    "sha256": its digest}."""

    @staticmethod
    def _file(directory: epath.Path) -> epath.Path:
        return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    def save(self, directory: epath.Path, args: "IteratorStateSave"):
        directory.mkdir(parents=True, exist_ok=True)
        state = _to_json(args.state)
        self._file(directory).write_text(json.dumps({"state": state, "sha256": integrity.json_sha256(state)}))

    def restore(self, directory: epath.Path, args: "IteratorStateRestore"):
        path = self._file(directory)
        if not path.exists():
            others = sorted(p.name for p in directory.glob("process_*-of-*.json"))
            if others and not any(n.endswith(f"-of-{jax.process_count()}.json") for n in others):
                raise ConfigError(f"{directory} holds the data-iterator states of a run with another process "
                                  f"count ({', '.join(others)}); this run has {jax.process_count()} processes")
            raise FileNotFoundError(f"the data-iterator state of this process, {path}, is missing")
        stored = json.loads(path.read_text())
        if isinstance(stored, dict) and stored.keys() == {"state", "sha256"}:
            if integrity.json_sha256(stored["state"]) != stored["sha256"]:
                raise ValueError(f"{path} does not match its digest")
            return _from_json(stored["state"])
        if args.verify:
            raise ValueError(f"{path} has no digest")
        return _from_json(stored)  # written before digests were kept


@ocp.args.register_with_handler(IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class IteratorStateSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class IteratorStateRestore(ocp.args.CheckpointArgs):
    verify: bool = True  # False for checkpoints written before digests were kept: a bare state


class _Damaged(Exception):
    """A checkpoint that does not read back intact (the message says why, in one line)."""


def _cause(error: BaseException) -> str:
    """The innermost error of a chain (the OS or TensorStore error under orbax's wrappers), on one line."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def _agreed(ok: bool) -> bool:
    """Whether `ok` holds on every process: all hosts must take the same branch, or the next
    collective (the state read, the digests) waits forever for those that took the other."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.bool_(ok))))


def _listing(differences) -> str:
    return "; ".join(str(d) for d in differences)


class Checkpointer:
    """Save / restore / resume for one workdir. Nothing touches the disk before first use.

    A run calls `prepare_to_write` before its first step, `restore_latest`, then `save` at
    checkpoint steps, `raise_if_failed` after every step and `close` at the end.
    """

    def __init__(self, workdir: str, *, max_to_keep: int, async_save: bool = True):
        self.directory = epath.Path(os.path.abspath(workdir)) / "checkpoints"  # orbax wants absolute paths
        self._max_to_keep, self._async_save = max_to_keep, async_save
        self._manager: ocp.CheckpointManager | None = None
        self._saving: int | None = None  # the step whose save may still be running

    def _open(self, cleanup: bool = False) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=self._max_to_keep, enable_async_checkpointing=self._async_save, create=True,
                cleanup_tmp_directories=cleanup,
                # Made in the background, a directory that cannot be created leaves every writer
                # waiting 5 minutes for a signal that never comes; made in `save`, it fails there.
                async_options=ocp.AsyncOptions(create_directories_asynchronously=False)),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": IteratorStateHandler(),
                           "config": ocp.JsonCheckpointHandler(), "integrity": ocp.JsonCheckpointHandler()})

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            self._manager = self._open()
        return self._manager

    def prepare_to_write(self, abstract_state) -> None:
        """Before a run's first step: the directory must take a file and have room for about one
        checkpoint of `abstract_state`; temporary directories of writes a killed run left are
        removed (only a writer may: a reader could delete a running job's save in progress)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".write-test-{jax.process_index()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise CheckpointError(f"cannot write checkpoints in {self.directory}: {e.strerror or e}") from None
        need = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))
        free = shutil.disk_usage(self.directory).free
        if free < need:
            raise CheckpointError(f"not enough space for checkpoints in {self.directory}: {free / 2**20:.0f} MiB "
                                  f"free, a checkpoint takes up to {need / 2**20:.0f} MiB")
        if self._manager is not None:
            self._manager.close()
        self._manager = self._open(cleanup=True)

    def save(self, step: int, state, data_state, config_json: str) -> None:
        """Starts an (async) save; the data state is captured now, before the iterator moves on.
        Refuses a state holding NaN/inf, which would become the checkpoint every resume picks."""
        self._finish()  # a failure of the previous save is reported under its own step
        fp = integrity.fingerprint(state)
        if fp.nonfinite:
            raise NonFiniteError(f"refusing to save checkpoint {step}: non-finite values in "
                                 f"{', '.join(fp.nonfinite[:3])}{' ...' if len(fp.nonfinite) > 3 else ''}")
        config = json.loads(config_json)
        with self._failure(step):
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=IteratorStateSave(data_state),
                config=ocp.args.JsonSave(config),
                integrity=ocp.args.JsonSave(integrity.record(fp, config))), force=True)
        self._saving = step

    def raise_if_failed(self) -> None:
        """Raises CheckpointError if the save in flight has failed; returns at once while it runs
        (cheap enough to call after every step)."""
        if self._saving is not None and not self.manager.is_saving_in_progress():
            self._finish()

    def wait(self) -> None:
        """Waits for the save in flight; CheckpointError if it failed."""
        self._finish()

    def close(self) -> None:
        try:
            self._finish()
        finally:
            if self._manager is not None:
                self._manager.close()
                self._manager = None

    def _finish(self) -> None:
        if self._saving is None:
            return
        step, self._saving = self._saving, None
        with self._failure(step):
            self.manager.wait_until_finished()

    @contextlib.contextmanager
    def _failure(self, step: int):
        try:
            yield
        except Exception as e:
            self.manager.reload()
            kept = self.manager.latest_step()
            raise CheckpointError(
                f"checkpoint {step} could not be written to {self.directory / str(step)}: {_cause(e)}; "
                + (f"the last complete one is step {kept}" if kept is not None else "no complete checkpoint yet")
            ) from e

    def restore_latest(self, abstract_state, config_json: str) -> tuple[int, Any, Any] | None:
        """(step, state, data state) of the newest checkpoint that reads back intact, or None when the
        workdir holds none. Each damaged one is renamed `<step>.damaged` with a one-line warning and
        the next older one is tried; if none is left, CheckpointError. A checkpoint of another
        config that shapes the state differently is a ConfigError (nothing is moved)."""
        config = json.loads(config_json)
        self.manager.reload()
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, data_state = self._restore_verified(step, abstract_state, config)
            except _Damaged as e:
                self._move_aside(step, str(e))
                continue
            return step, state, data_state
        aside = sorted(p.name for p in self.directory.glob(f"*{DAMAGED}*")) if self.directory.exists() else []
        if aside:
            raise CheckpointError(f"no readable checkpoint in {self.directory}: {', '.join(aside)} moved aside as "
                                  "damaged; to start afresh, use another workdir")
        return None

    def _restore_verified(self, step: int, abstract_state, config: dict) -> tuple[Any, Any]:
        # Written before digests were kept (or by codi_jax.convert): restorable, but unverified.
        verified = (self.directory / str(step) / "integrity").exists()
        if not verified:
            logging.warning("checkpoint %d has no integrity record; restoring it unverified", step)
        try:
            items = {"config": ocp.args.JsonRestore()}
            if verified:
                items["integrity"] = ocp.args.JsonRestore()
            small = self.manager.restore(step, args=ocp.args.Composite(**items))
            error = None
            # Without it orbax reports only a tree-structure mismatch of the restore target.
            if self.manager.item_metadata(step).state is None:
                error = "its state metadata (state/_METADATA) is missing or unreadable"
            elif verified and integrity.json_sha256(small.config) != small.integrity["config_sha256"]:
                error = "its config does not match its digest"
        except Exception as e:
            error = f"unreadable: {_cause(e)}"
        if not _agreed(error is None):
            raise _Damaged(error or "unreadable on another process")
        changes = self._check_compatible(step, small, abstract_state, config, verified)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=IteratorStateRestore(verify=verified)))
            error = None
        except ConfigError:
            raise
        except Exception as e:
            error = f"unreadable: {_cause(e)}"
        if not _agreed(error is None):
            raise _Damaged(error or "unreadable on another process")
        fp = integrity.fingerprint(restored.state)
        wrong = integrity.mismatched(small.integrity, fp) if verified else []
        if wrong:
            raise _Damaged(f"{', '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''} do not match their digests")
        if fp.nonfinite:
            raise _Damaged(f"non-finite values in {', '.join(fp.nonfinite[:3])}")
        if changes:
            logging.info("resuming checkpoint %d under config changes that do not shape the state: %s", step,
                         _listing(changes))
        return restored.state, restored.data

    def _check_compatible(self, step: int, small, abstract_state, config: dict, verified: bool) -> list:
        """ConfigError when the checkpoint's config or state layout differs in what shapes the state;
        else the config differences that do not."""
        shaping, other = config_diff.compare(small.config, config)
        where = f"checkpoint {step} in {self.directory}"
        if shaping:
            raise ConfigError(f"{where} was written by a config that shapes the state differently: "
                              f"{_listing(shaping)}; resume with its values or use another workdir")
        if verified:
            theirs, ours = integrity.layout(small.integrity["leaves"]), integrity.abstract_layout(abstract_state)
            changed = [f"{p} {theirs.get(p, 'absent')} in the checkpoint, {ours.get(p, 'absent')} now"
                       for p in sorted(theirs.keys() | ours.keys()) if theirs.get(p) != ours.get(p)]
            if changed:
                more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
                raise ConfigError(f"{where} holds a differently shaped state: {'; '.join(changed[:3])}{more}"
                                  + (f"; config differences: {_listing(other)}" if other else ""))
        return other

    def _move_aside(self, step: int, reason: str) -> None:
        source = self.directory / str(step)
        target, n = self.directory / f"{step}{DAMAGED}", 1
        while target.exists():
            target, n = self.directory / f"{step}{DAMAGED}.{n}", n + 1
        if jax.process_index() == 0:
            try:
                source.rename(target)
            except OSError as e:
                raise CheckpointError(f"checkpoint {step} is damaged ({reason}) and cannot be moved aside: "
                                      f"{e.strerror or e}") from None
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"codi_jax checkpoint {step} moved aside")
        self.manager.reload()
        logging.warning("checkpoint %d is damaged (%s); moved it to %s and trying the one before", step, reason,
                        target.name)
