"""Logical axis names for parameters and activations, and their mapping onto mesh axes.

Every parameter in codi_jax is created through `param_with_axes`-style logical names
(`nn.with_logical_partitioning`). The vocabulary below is the whole set; rules map each
name to a mesh axis (`data`, `fsdp`, `tensor`) or to None (replicated).

Vocabulary (parameter dims):
  embed     a model-width dimension (input of up-projections, output of down-projections)
  mlp       a hidden / expanded dimension (FF inner, q/k/v joined heads, projection outputs)
  heads     joined attention heads x head_dim (q/k/v output, out-proj input)
  vocab     token vocabulary
  conv_in   input channels of a convolution
  conv_out  output channels of a convolution
  kernel    spatial / temporal kernel taps (never sharded)
  norm      scale / bias of a normalisation layer (never sharded)
  pos       positions of a learned position table (never sharded)
Activations: batch, length, act_embed, act_mlp, act_heads, height, width, frames.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# One rule list for every network. Each logical name maps to a mesh axis or None. `fsdp`
# sits on the width dims, `tensor` on the expanded dims, so fsdp+tensor shards a dense
# kernel on both of its dims.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("embed", "fsdp"),
    ("conv_in", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("conv_out", "tensor"),
    ("vocab", "tensor"),
    ("kernel", None),
    ("norm", None),
    ("pos", None),
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("height", None),
    ("width", None),
    ("frames", None),
)


def dense_init(init=nn.initializers.lecun_normal(), axes=("embed", "mlp")):
    """A kernel initialiser carrying logical axis names."""
    return nn.with_logical_partitioning(init, axes)


def logical_spec(
    names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh, rules=DEFAULT_RULES, spill: bool = True
) -> P:
    """PartitionSpec for one array from its logical names, its shape and the mesh.

    A mesh axis is used at most once per array and only on a dim it divides. Where a
    rule's mesh axis cannot be placed (the dim does not divide, or the axis is taken), it
    moves (`spill`) to the largest remaining dim it divides, so no large parameter stays replicated
    because one of its dims is odd (e.g. the temporal FF's 1706-wide projection).
    """
    if names is None:
        return P()
    rule_map = dict(rules)
    spec: list[Any] = [None] * len(shape)
    used: set[str] = set()
    pending: list[str] = []
    for i, name in enumerate(names):
        axes = rule_map.get(name) if name is not None else None
        if axes is None:
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        placed = []
        for ax in axes:
            size = mesh.shape.get(ax, 1)
            if ax in used or size == 1:
                continue
            if shape[i] % (int(np.prod([mesh.shape[a] for a in placed])) * size) == 0:
                placed.append(ax)
                used.add(ax)
            else:
                pending.append(ax)
        if placed:
            spec[i] = placed[0] if len(placed) == 1 else tuple(placed)
    for ax in pending if spill else ():
        if ax in used:
            continue
        size = mesh.shape[ax]
        free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % size == 0
                and names[i] not in ("kernel", "norm", "pos")]
        if free:
            i = max(free, key=lambda j: shape[j])
            spec[i] = ax
            used.add(ax)
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def unbox_values(tree):
    """The values inside flax's axis-metadata boxes, with no sharding constraint applied.

    `nn.meta.unbox` constrains every value to its logical sharding whenever a global mesh is
    set; under `jax.set_mesh` with logical rules that is an eager `with_sharding_constraint`
    on abstract or unsharded values, which fails. Shardings here are always explicit
    (`tree_shardings`, jit out_shardings), so the constraint adds nothing.
    """
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)

    def one(x):
        if isinstance(x, nn.meta.Partitioned):
            return unbox_values(x.unbox(apply_constraint=False))
        return unbox_values(x.unbox()) if is_box(x) else x

    return jax.tree.map(one, tree, is_leaf=is_box)


def tree_shardings(abstract_tree, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a tree of (possibly boxed) abstract arrays from `jax.eval_shape(init)`.

    Safe inside `jax.set_mesh(...)` and `nn.logical_axis_rules(...)`: only the logical names
    and shapes are read, no constraint is applied.
    """
    specs = nn.get_partition_spec(abstract_tree)
    shapes = unbox_values(abstract_tree)

    def one(spec, leaf):
        names = tuple(spec) if spec is not None else None
        return NamedSharding(mesh, logical_spec(names, leaf.shape, mesh, rules))

    return jax.tree.map(one, specs, shapes, is_leaf=lambda x: isinstance(x, P))


def sharded_init(init_fn, mesh: Mesh, *args, rules=DEFAULT_RULES):
    """Initialise a parameter tree directly into its shards: eval_shape -> specs -> jit(out_shardings).

    Returns (params, shardings) with logical boxes removed. Logical rules are switched off
    while `init_fn` traces: flax's layers would otherwise constrain each fresh parameter by
    its names, which flax rejects for repeated names (a conv kernel's ("kernel", "kernel", ...))
    and which the explicit out_shardings make redundant.
    """
    with nn.logical_axis_rules(()):
        abstract = jax.eval_shape(init_fn, *args)
        shardings = tree_shardings(abstract, mesh, rules)
        params = jax.jit(lambda *a: unbox_values(init_fn(*a)), out_shardings=shardings)(*args)
    return params, shardings


def context_rules():
    """The rules of the enclosing `nn.logical_axis_rules` (the trainer's `config.sharding_rules`), else the default."""
    return nn.get_logical_axis_rules() or DEFAULT_RULES


def with_constraint(x, names: Sequence[str | None]):
    """Constrain an activation to the sharding its logical names get under the mesh and the rules in context
    (`jax.set_mesh` + `nn.logical_axis_rules`, as the trainer traces); a no-op without either, so sampling
    and single-device use are untouched. A mesh axis that does not divide its dim leaves that dim whole
    (no spill: an activation's batch split must not move onto its height)."""
    mesh, rules = jax.sharding.get_abstract_mesh(), nn.get_logical_axis_rules()
    if mesh.empty or not rules:
        return x
    return jax.lax.with_sharding_constraint(x, logical_spec(names, x.shape, mesh, rules, spill=False))


def check_rules(rules, mesh_axes: Sequence[str]) -> None:
    """Raises ValueError naming the first rule that is not (logical name, mesh axis | tuple of them | None)."""
    known = {name for name, _ in DEFAULT_RULES}
    for rule in rules:
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ValueError(f"each rule must be (logical name, mesh axes), got {rule!r}")
        name, axes = rule
        if name not in known:
            raise ValueError(f"unknown logical axis {name!r} in {rule!r}; known: {sorted(known)}")
        for ax in (() if axes is None else (axes,) if isinstance(axes, str) else axes):
            if ax not in mesh_axes:
                raise ValueError(f"rule {rule!r} names mesh axis {ax!r}; the mesh has {list(mesh_axes)}")
