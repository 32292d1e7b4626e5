"""Symmetric InfoNCE over the GLOBAL batch, with a learnable temperature.

Each data shard holds B/n rows of both embeddings. Inside `shard_map` every shard all-gathers
the other side's rows, scores its own rows against all B (so every example has B-1 negatives,
not B/n-1), and the summed cross-entropies are psum-ed. The gradient flows back through the
all-gather (a reduce-scatter), as in CLIP's distributed training. Optional hard negatives are one
more candidate per row (row i of `a` is also scored against row i of `hard_b`, and b against
`hard_a`), sharded like the rows they belong to.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp of the learned log-temperature
INIT_LOGIT_SCALE = math.log(1 / 0.07)


def info_nce(a: jax.Array, b: jax.Array, logit_scale: jax.Array, mesh: Mesh, *,
             hard_a: jax.Array | None = None, hard_b: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(loss, top-1 accuracy) for L2-normalised a, b [B, D] whose row i is a positive pair; with hard_a, hard_b
    [B, D] (both or neither), row i of a must also beat hard_b[i] and row i of b must beat hard_a[i]."""
    if (hard_a is None) != (hard_b is None):
        raise ValueError("info_nce: pass both hard_a and hard_b, or neither")
    flat = lambda x: x.reshape(x.shape[0], -1).astype(jnp.float32)  # noqa: E731
    a, b = flat(a), flat(b)
    hard = () if hard_a is None else (flat(hard_a), flat(hard_b))

    def per_shard(a, b, log_scale, *hard):
        n = a.shape[0]
        labels = jax.lax.axis_index(BATCH_AXES) * n + jnp.arange(n)
        scale = jnp.exp(jnp.minimum(log_scale, MAX_LOGIT_SCALE))
        a_all = jax.lax.all_gather(a, BATCH_AXES, tiled=True)
        b_all = jax.lax.all_gather(b, BATCH_AXES, tiled=True)
        both = [(a, b_all), (b, a_all)]
        all_logits = [scale * q @ k.T for q, k in both]
        if hard:  # one more column per row: the anchor against its own hard negative from the other side
            hard_a, hard_b = hard
            all_logits = [jnp.concatenate([logits, scale * jnp.sum(q * h, -1, keepdims=True)], axis=-1)
                          for logits, (q, _), h in zip(all_logits, both, (hard_b, hard_a))]
        loss, correct = 0.0, 0.0
        for logits in all_logits:
            logp = jax.nn.log_softmax(logits, axis=-1)
            loss -= jnp.take_along_axis(logp, labels[:, None], axis=-1).sum()
            correct += (jnp.argmax(logits, axis=-1) == labels).sum()
        total = n * jax.lax.psum(1, BATCH_AXES)
        return jax.lax.psum(loss, BATCH_AXES) / (2 * total), jax.lax.psum(correct, BATCH_AXES) / (2 * total)

    rows = P(BATCH_AXES)
    return jax.shard_map(per_shard, mesh=mesh, in_specs=(rows, rows, P()) + (rows,) * len(hard),
                         out_specs=(P(), P()))(a, b, logit_scale, *hard)
