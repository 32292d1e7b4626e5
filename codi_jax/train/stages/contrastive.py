"""Symmetric InfoNCE over the GLOBAL batch, with a learnable temperature.

Each data shard holds B/n rows of both embeddings. Inside `shard_map` every shard all-gathers
the other side's rows, scores its own rows against all B (so every example has B-1 negatives,
not B/n-1), and the summed cross-entropies are psum-ed. The gradient flows back through the
all-gather (a reduce-scatter), as in CLIP's distributed training.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp of the learned log-temperature
INIT_LOGIT_SCALE = math.log(1 / 0.07)


def info_nce(a: jax.Array, b: jax.Array, logit_scale: jax.Array, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    """(loss, top-1 accuracy) for L2-normalised a, b [B, D] whose row i is a positive pair."""
    a = a.reshape(a.shape[0], -1).astype(jnp.float32)
    b = b.reshape(b.shape[0], -1).astype(jnp.float32)

    def per_shard(a, b, log_scale):
        n = a.shape[0]
        labels = jax.lax.axis_index(BATCH_AXES) * n + jnp.arange(n)
        scale = jnp.exp(jnp.minimum(log_scale, MAX_LOGIT_SCALE))
        a_all = jax.lax.all_gather(a, BATCH_AXES, tiled=True)
        b_all = jax.lax.all_gather(b, BATCH_AXES, tiled=True)
        loss, correct = 0.0, 0.0
        for logits in (scale * a @ b_all.T, scale * b @ a_all.T):
            logp = jax.nn.log_softmax(logits, axis=-1)
            loss -= jnp.take_along_axis(logp, labels[:, None], axis=-1).sum()
            correct += (jnp.argmax(logits, axis=-1) == labels).sum()
        total = n * jax.lax.psum(1, BATCH_AXES)
        return jax.lax.psum(loss, BATCH_AXES) / (2 * total), jax.lax.psum(correct, BATCH_AXES) / (2 * total)

    return jax.shard_map(per_shard, mesh=mesh, in_specs=(P(BATCH_AXES), P(BATCH_AXES), P()),
                         out_specs=(P(), P()))(a, b, logit_scale)
