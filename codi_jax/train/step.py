"""The train step: `(state, batch) -> (state, metrics)`, one pure function for every stage.

- Gradients only for the trainable tree; the frozen tree enters the loss as a constant.
- Gradient accumulation: the batch is split into `grad_accum_steps` micro-batches inside
  one `lax.scan`, so one compiled step still consumes one global batch.
- Non-finite guard: if the loss or the gradient norm is NaN/inf the update is dropped
  (parameters, moments and EMA keep their old values, `skipped` counts it); the loop
  decides whether to go on or stop. A non-finite state therefore never exists to be saved.
- The per-step rng is `fold_in(seed key, step)`, so a resumed run draws the same noise.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from codi_jax.parallel.mesh import batch_spec
from codi_jax.train import freeze
from codi_jax.train.state import TrainState

LossFn = Callable[[dict, dict, jax.Array, jax.Array], tuple[jax.Array, dict]]


def _split_microbatches(x: jax.Array, k: int) -> jax.Array:
    """[B, ...] -> [k, B/k, ...] taking every k-th row, so each micro-batch keeps the batch sharding."""
    b = x.shape[0]
    x = x.reshape((b // k, k) + x.shape[1:])
    x = jnp.moveaxis(x, 1, 0)
    return jax.lax.with_sharding_constraint(x, P(None, *batch_spec(x.ndim - 1)))


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """The usual warm-up so early EMA is not dominated by the random init: min(d, (1+s)/(10+s))."""
    s = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + s) / (10.0 + s))


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, schedule: optax.Schedule, *,
                    seed_key: jax.Array, grad_accum_steps: int = 1, ema_decay: float = 0.0):
    k = int(grad_accum_steps)

    def step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(seed_key, state.step)

        def loss_of(trainable, micro, r):
            loss, metrics = loss_fn(freeze.merge(trainable, state.frozen), micro, r, state.step)
            return loss.astype(jnp.float32), metrics

        grad_fn = jax.value_and_grad(loss_of, has_aux=True)
        if k == 1:
            (loss, metrics), grads = grad_fn(state.params, batch, rng)
        else:
            micro = jax.tree.map(lambda x: _split_microbatches(x, k), batch)
            first = jax.tree.map(lambda x: x[0], micro)
            (l_shape, m_shape), g_shape = jax.eval_shape(grad_fn, state.params, first, rng)
            zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)

            def body(carry, xs):
                mb, i = xs
                (l, m), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, (l, m, g)), None

            (loss, metrics, grads), _ = jax.lax.scan(
                body, zeros((l_shape, m_shape, g_shape)), (micro, jnp.arange(k)))
            loss, metrics, grads = jax.tree.map(lambda x: x / k, (loss, metrics, grads))

        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema:
            d = ema_decay_at(state.step, ema_decay)
            ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema, params)

        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = state.replace(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            ema=keep(ema, state.ema),
            skipped=state.skipped + (~finite).astype(jnp.int32))
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, learning_rate=schedule(state.step),
                       nonfinite=(~finite).astype(jnp.float32))
        return new_state, metrics

    return step
