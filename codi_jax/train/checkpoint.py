"""Orbax checkpoints of a training run: train state, data-iterator state and config.

One `CheckpointManager` in `<workdir>/checkpoints` with three items per step:
- `state`: the TrainState (StandardCheckpointHandler; async, sharded). Restoring takes an
  abstract target whose leaves carry the shardings of the *current* mesh, so a checkpoint
  written on 8 devices restores onto 4 or 1.
- `data`: each process's iterator state (`get_state()`), one JSON file per process, so
  every host resumes its own shard exactly at the next batch.
- `config`: the run's config as JSON, for people and for loaders of later stages.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


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
    """Per-process iterator state as `process_<i>-of-<n>.json` (any JSON-able value or bytes)."""

    @staticmethod
    def _file(directory: epath.Path) -> epath.Path:
        return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    def save(self, directory: epath.Path, args: "IteratorStateSave"):
        directory.mkdir(parents=True, exist_ok=True)
        self._file(directory).write_text(json.dumps(_to_json(args.state)))

    def restore(self, directory: epath.Path, args: "IteratorStateRestore" = None):
        path = self._file(directory)
        if not path.exists():
            raise ValueError(f"no data-iterator state for this process at {path}: the checkpoint was written "
                             "with a different process count")
        return _from_json(json.loads(path.read_text()))


@ocp.args.register_with_handler(IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class IteratorStateSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class IteratorStateRestore(ocp.args.CheckpointArgs):
    pass


class Checkpointer:
    """Save / restore / resume for one workdir."""

    def __init__(self, workdir: str, *, max_to_keep: int, async_save: bool = True):
        self.directory = epath.Path(os.path.abspath(workdir)) / "checkpoints"  # orbax wants absolute paths
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": IteratorStateHandler(),
                           "config": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state, config_json: str) -> None:
        """Starts an (async) save; the data state is captured now, before the iterator moves on."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=IteratorStateSave(data_state),
            config=ocp.args.JsonSave(json.loads(config_json))), force=True)

    def restore(self, step: int, abstract_state) -> tuple[Any, Any]:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=IteratorStateRestore()))
        return restored.state, restored.data

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

