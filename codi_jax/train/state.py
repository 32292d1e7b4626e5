"""The train state, its shardings, and its sharded creation.

`TrainState` holds the trainable and frozen parameters in separate trees (freeze.py);
optimizer moments and the EMA copy cover only the trainable tree. Shardings come from the
logical axis names of the stage's boxed init tree (parallel/partitioning.py); optimizer
leaves take the sharding of the parameter they mirror, everything else is replicated.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from codi_jax.parallel.partitioning import DEFAULT_RULES, tree_shardings, unbox_values
from codi_jax.train import freeze
from codi_jax.train.errors import ConfigError


@struct.dataclass
class TrainState:
    step: jax.Array            # int32 scalar: optimizer updates applied (skipped ones included)
    params: Any                # trainable parameters
    frozen: Any                # parameters the optimizer never touches
    opt_state: Any
    ema: Any                   # EMA of `params`, or {} when EMA is off
    skipped: jax.Array         # int32 scalar: updates dropped by the non-finite guard

    def full_params(self, use_ema: bool = False) -> dict:
        trainable = self.ema if use_ema and self.ema else self.params
        return freeze.merge(trainable, self.frozen)


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Everything about the state that is known without allocating it."""
    abstract: TrainState       # ShapeDtypeStructs carrying their shardings
    shardings: TrainState
    init: Callable             # (rng, overrides) -> TrainState, jitted


def _opt_state_shardings(opt_abstract, param_abstract, param_shardings, mesh: Mesh):
    """A leaf under the same dict path and shape as a parameter shares its sharding."""
    flat_abs = freeze.flatten(param_abstract)
    flat_sh = freeze.flatten(param_shardings)
    replicated = NamedSharding(mesh, P())

    def one(path, leaf):
        key = freeze.SEP.join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
        if key in flat_abs and flat_abs[key].shape == leaf.shape:
            return flat_sh[key]
        return replicated

    return jax.tree_util.tree_map_with_path(one, opt_abstract)


def _with_shardings(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def make_layout(init_params: Callable, is_trainable: Callable[[str], bool],
                optimizer: optax.GradientTransformation, mesh: Mesh, *, use_ema: bool,
                rng: jax.Array, rules=DEFAULT_RULES) -> StateLayout:
    """Shapes and shardings of the state, and a jitted initialiser writing straight into its shards.

    `init_params(rng)` returns the boxed params tree of the stage. The initialiser takes
    `overrides`, a flat {path: array} of pretrained values that replace the random ones
    (XLA drops the random init of every overridden leaf as dead code).
    """
    boxed = jax.eval_shape(init_params, rng)
    param_abs = unbox_values(boxed)
    param_sh = tree_shardings(boxed, mesh, rules)
    tr_abs, fr_abs = freeze.partition(param_abs, is_trainable)
    tr_sh, fr_sh = freeze.partition(param_sh, is_trainable)
    if not freeze.flatten(tr_abs):
        raise ConfigError("no parameter is trainable in this configuration; check the stage's trainable groups")
    opt_abs = jax.eval_shape(optimizer.init, tr_abs)
    replicated = NamedSharding(mesh, P())
    shardings = TrainState(
        step=replicated, params=tr_sh, frozen=fr_sh,
        opt_state=_opt_state_shardings(opt_abs, tr_abs, tr_sh, mesh),
        ema=tr_sh if use_ema else {}, skipped=replicated)

    def init(rng, overrides):
        flat = freeze.flatten(unbox_values(init_params(rng)))
        flat.update(overrides)
        trainable, frozen = freeze.partition(freeze.unflatten(flat), is_trainable)
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=trainable, frozen=frozen,
            opt_state=optimizer.init(trainable),
            ema=jax.tree.map(jnp.copy, trainable) if use_ema else {},
            skipped=jnp.zeros((), jnp.int32))

    abstract_state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=tr_abs, frozen=fr_abs, opt_state=opt_abs,
        ema=tr_abs if use_ema else {}, skipped=jax.ShapeDtypeStruct((), jnp.int32))
    # Overrides arrive already sharded (handoff.load_overrides), so their shardings are inferred.
    jitted_init = jax.jit(init, out_shardings=shardings)

    return StateLayout(abstract=_with_shardings(abstract_state, shardings), shardings=shardings,
                       init=jitted_init)
