"""Training-workdir checkpoints written a bounded batch of arrays at a time.

The layout is the trainer's (codi_jax.train.checkpoint): WORKDIR/checkpoints/<step>/ with the items
`state` (a TrainState-shaped tree: step, params, frozen, opt_state, ema, skipped), `data` (per-process
iterator state) and `config` (JSON), so `config.init_from.<stage>` (train/handoff.py) and
`python -m codi_jax.sample --checkpoint` read it like any run's. The trainer's `Checkpointer.save`
hands orbax the whole state at once: every array in memory, then copied again while saving (measured
on 1 GB: +0.9 GB peak for jax arrays, +1.8 GB for numpy). Here each leaf is a `LazyArray`, which a
streaming type handler makes and writes in batches of at most BATCH_BYTES (a larger array alone),
dropping each batch before it makes the next, so a checkpoint of any size costs about one batch of
memory. The files are orbax's own (the wrapped handler's type name is recorded), so they restore as
ordinary numpy or jax arrays. There is no `integrity` item (digests of the values, which the trainer
computes on the whole state at once): the trainer restores such a checkpoint unverified, and
init_from and the sampler read it as any other.
"""
from __future__ import annotations

import asyncio
import dataclasses
import math
import os
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import future as ocp_future

from codi_jax.train import checkpoint


@dataclasses.dataclass(frozen=True)
class LazyArray:
    """A leaf to write: `make()` returns it (a numpy array, or a jax.Array laid out on a mesh)."""
    shape: tuple[int, ...]
    dtype: np.dtype
    make: Callable[[], Any]


# Arrays written together: orbax opens and commits each array on its own (tens of ms on a small one), so
# one at a time would spend minutes on the thousands of small arrays of CoDi; a batch of this many bytes
# bounds the memory the writer holds beyond the array being made.
BATCH_BYTES = 64 << 20


class _StreamingHandler(ocp.type_handlers.TypeHandler):
    """Writes LazyArrays through `base` (orbax's numpy or jax.Array handler), a bounded batch at a time."""

    def __init__(self, base: ocp.type_handlers.TypeHandler, batch_bytes: int):
        self._base, self._batch_bytes = base, batch_bytes

    def typestr(self) -> str:
        return self._base.typestr()

    async def metadata(self, infos):
        return await self._base.metadata(infos)

    async def deserialize(self, infos, args=None):
        return await self._base.deserialize(infos, args)

    async def serialize(self, values, infos, args=None):
        args = args or [ocp.SaveArgs()] * len(values)

        async def flush(batch):
            for commit in await self._base.serialize(*map(list, zip(*batch))):
                await asyncio.to_thread(commit.result)

        async def write_in_batches():
            batch, size = [], 0
            for lazy, info, arg in zip(values, infos, args):
                nbytes = math.prod(lazy.shape) * lazy.dtype.itemsize
                if batch and size + nbytes > self._batch_bytes:
                    await flush(batch)
                    batch, size = [], 0
                batch.append((lazy.make(), info, arg))
                size += nbytes
            if batch:
                await flush(batch)

        # orbax starts this once the item's directories exist, as it does its own handlers' writes.
        return [ocp_future.CommitFutureAwaitingContractedSignals(write_in_batches(), name="codi_stream")]


def write(workdir, state: dict, config: dict, *, sharded: bool, step: int = 0) -> None:
    """One checkpoint at `step` in `workdir` (created); `sharded`: the leaves make jax.Arrays on a mesh
    (written shard by shard, with their shardings recorded), else numpy arrays."""
    base = ocp.type_handlers.ArrayHandler() if sharded else ocp.type_handlers.NumpyHandler(
        deepcopy_host_arrays=False)  # each array is a fresh copy, written before it is dropped
    # jax.Array is registered too, or orbax turns off (and warns about) its array metadata store.
    registry = ocp.type_handlers.create_type_handler_registry(
        (int, ocp.type_handlers.ScalarHandler()), (jax.Array, ocp.type_handlers.ArrayHandler()),
        (LazyArray, _StreamingHandler(base, BATCH_BYTES)))
    manager = ocp.CheckpointManager(
        epath.Path(os.path.abspath(workdir)) / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False, create=True),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(type_handler_registry=registry),
                       "data": checkpoint.IteratorStateHandler(), "config": ocp.JsonCheckpointHandler()})
    with manager:
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state), data=checkpoint.IteratorStateSave({}),
            config=ocp.args.JsonSave(config)), force=True)
        manager.wait_until_finished()
