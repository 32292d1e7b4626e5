"""Feature extraction over the mesh: one compiled call per global batch, the batch split over the mesh's
data axes, the weights replicated, one batch in flight while the previous one's features come back.

The caller streams host batches in and folds the features into running statistics, so host memory holds
a batch and the statistics, not the dataset. On several hosts each one passes its own share of every
global batch (`per_host_batch`) and gets back the features of its share.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from codi_jax.parallel import mesh as mesh_lib


class FeatureExtractor:
    """`fn(params, batch) -> {name: [B, ...]}` run sharded on `mesh` in global batches of `batch_size`."""

    def __init__(self, fn: Callable[[Any, Any], Mapping[str, Any]], params, mesh, batch_size: int):
        divisor = mesh_lib.batch_divisor(mesh)
        if batch_size % divisor:
            raise ValueError(f"batch size {batch_size} does not divide over the mesh's {divisor} data shards; "
                             f"use a multiple of {divisor}")
        self.mesh, self.batch_size = mesh, int(batch_size)
        self.per_host_batch = self.batch_size // jax.process_count()
        replicated = NamedSharding(mesh, P())
        self.params = jax.device_put(params, replicated)
        self._fn = jax.jit(fn, out_shardings=replicated)
        self.seconds = 0.0
        self.count = 0

    def _pad(self, batch: np.ndarray) -> tuple[np.ndarray, int]:
        n = batch.shape[0]
        if n > self.per_host_batch:
            raise ValueError(f"a batch of {n} is larger than the extractor's per-host batch {self.per_host_batch}")
        if n < self.per_host_batch:
            # Copies of the last example: every call has one shape, so one compile serves the whole set.
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.per_host_batch - n, axis=0)])
        return batch, n

    def stream(self, batches: Iterable[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Features of each host batch (at most `per_host_batch` examples; the last may be short), in order."""
        start = time.perf_counter()
        pending = None
        for batch in batches:
            padded, n = self._pad(np.asarray(batch))
            out = self._fn(self.params, mesh_lib.shard_host_batch(padded, self.mesh))
            if pending is not None:
                yield self._fetch(*pending)
            pending = (out, n)
        if pending is not None:
            yield self._fetch(*pending)
        self.seconds += time.perf_counter() - start

    def _fetch(self, out, n: int) -> dict[str, np.ndarray]:
        self.count += n
        return {k: np.asarray(v)[:n] for k, v in out.items()}


def batched(examples: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Stack a stream of equally shaped examples into batches of `size` (the last one shorter)."""
    chunk: list[np.ndarray] = []
    for example in examples:
        chunk.append(np.asarray(example))
        if len(chunk) == size:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)
