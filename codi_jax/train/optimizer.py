"""AdamW with linear warm-up, cosine (or constant) decay and global-norm clipping.

The optimizer sees only the trainable tree (see freeze.py), so frozen parameters have
no moments in the optimizer state and no gradients. Weight decay skips vectors
(biases, norm scales) and applies to matrices and kernels.
"""
from __future__ import annotations

import jax
import optax


def learning_rate_schedule(optim, total_steps: int) -> optax.Schedule:
    peak = float(optim.learning_rate)
    warmup = int(optim.warmup_steps)
    if optim.schedule == "constant":
        # linear_schedule holds its end value after the transition.
        return optax.linear_schedule(0.0, peak, warmup) if warmup else optax.constant_schedule(peak)
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak, warmup_steps=warmup,
            decay_steps=max(int(total_steps), warmup + 1),
            end_value=peak * float(optim.end_learning_rate_factor))
    raise ValueError(f"unknown optim.schedule {optim.schedule!r}; expected 'cosine' or 'constant'")


def _decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(optim, total_steps)
    parts = []
    if optim.grad_clip_norm and optim.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(float(optim.grad_clip_norm)))
    parts.append(optax.adamw(schedule, b1=float(optim.b1), b2=float(optim.b2), eps=float(optim.eps),
                             weight_decay=float(optim.weight_decay), mask=_decay_mask))
    return optax.chain(*parts), schedule
