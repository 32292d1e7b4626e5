"""A converter run one output leaf at a time.

The registry's converters map a whole state dict to a whole parameter tree. Run eagerly on a 12 GB
file that would hold every converted array at once. Instead the converter is traced once on shapes
(`jax.make_jaxpr`, nothing allocated); the trace says, for every output leaf, which official keys it
reads and which operations (transposes, reshapes, flips, ...) produce it. `LazyConversion.leaf(path,
read)` then evaluates only that slice of the trace on only those inputs, so a writer can convert,
write and drop one array before it touches the next.

The slice runs in numpy rather than as eager jax operations: the released converters only move data
(transpose, reshape, rev), which numpy does exactly and on views of the memory-mapped files. Eager jax
would copy every input into a device buffer and compile each operation once per distinct shape, keeping
the compiled code: on the full-size audio diffuser that cache alone grew by 0.1-0.2 GB per stage written.
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.extend.core as jex
import numpy as np
from flax import traverse_util

from codi_jax.convert.registry import TrackingDict


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(dict(tree), sep="/")


class LazyConversion:
    """`convert(sd) -> nested dict` traced on `{key: ShapeDtypeStruct}`.

    Attributes: `shapes` {leaf path: ShapeDtypeStruct} of the converted tree, `read` the official keys
    the converter reads, `sources` {leaf path: keys it is computed from}. Tracing raises what the
    converter raises (a KeyError for a key it needs and the state dict lacks, ...).
    """

    def __init__(self, convert: Callable[[Mapping], Mapping], abstract: Mapping[str, jax.ShapeDtypeStruct]):
        self._keys = sorted(abstract)
        self.read: set[str] = set()

        def flat_convert(*arrays):
            sd = TrackingDict(dict(zip(self._keys, arrays)))
            out = _flat(convert(sd))
            self.read = set(sd.read)
            return out

        self._closed, out_shapes = jax.make_jaxpr(flat_convert, return_shape=True)(
            *(abstract[k] for k in self._keys))
        jaxpr = self._closed.jaxpr
        # make_jaxpr flattens the output dict in sorted key order, as jax.tree does.
        self.shapes = {path: out_shapes[path] for path in sorted(out_shapes)}
        self._outvars = dict(zip(self.shapes, jaxpr.outvars))
        self._key_of = dict(zip(jaxpr.invars, self._keys))
        self._const_of = dict(zip(jaxpr.constvars, self._closed.consts))
        self._producer = {var: eqn for eqn in jaxpr.eqns for var in eqn.outvars}
        self.sources = {path: sorted(self._key_of[v] for v in self._slice(var)[1]) for path, var in
                        self._outvars.items()}

    def _slice(self, outvar):
        """(equations in trace order, input vars, constant vars) that `outvar` depends on."""
        eqns, inputs, consts, stack, seen, taken = [], set(), set(), [outvar], set(), set()
        while stack:
            var = stack.pop()
            if isinstance(var, jex.Literal) or var in seen:
                continue
            seen.add(var)
            if var in self._key_of:
                inputs.add(var)
            elif var in self._const_of:
                consts.add(var)
            else:
                eqn = self._producer[var]
                if id(eqn) not in taken:  # an equation with several outputs is reached once per output
                    taken.add(id(eqn))
                    eqns.append(eqn)
                    stack.extend(eqn.invars)
        order = {id(eqn): i for i, eqn in enumerate(self._closed.jaxpr.eqns)}
        return sorted(eqns, key=lambda e: order[id(e)]), inputs, consts

    def leaf(self, path: str, read: Callable[[str], np.ndarray]):
        """The converted value of one leaf; `read(key)` returns an official tensor as an array. The value
        may be a view of what `read` returned (a bias as it stands, a transposed kernel)."""
        outvar = self._outvars[path]
        eqns, inputs, consts = self._slice(outvar)
        env = {**{v: read(self._key_of[v]) for v in inputs}, **{c: self._const_of[c] for c in consts}}
        return _value(_evaluate(eqns, env), outvar)


def _evaluate(eqns, env: dict) -> dict:
    """`env` {var: value} of the inputs, with the outputs of the equations `eqns` (in trace order) added."""
    for eqn in eqns:
        args = [_value(env, v) for v in eqn.invars]
        rule = _NUMPY.get(eqn.primitive.name)
        # Anything else (arithmetic a future converter may do) runs as the eager converter would run it.
        outs = rule(eqn.params, *args) if rule else eqn.primitive.bind(*args, **eqn.params)
        env.update(zip(eqn.outvars, outs if eqn.primitive.multiple_results else [outs]))
    return env


def _value(env: dict, var):
    return var.val if isinstance(var, jex.Literal) else env[var]


def _nested(params, *args) -> list:
    """A jit inside the converter (jnp.flip is one): its own equations, evaluated the same way."""
    jaxpr, consts = params["jaxpr"].jaxpr, params["jaxpr"].consts
    env = _evaluate(jaxpr.eqns, {**dict(zip(jaxpr.invars, args)), **dict(zip(jaxpr.constvars, consts))})
    return [_value(env, v) for v in jaxpr.outvars]


def _reshape(params, x):
    if params["dimensions"] is not None:  # lax.reshape's optional transpose before the row-major reshape
        x = np.transpose(x, params["dimensions"])
    return np.reshape(x, params["new_sizes"])


# The data movements of the converters, as numpy does them (exactly, as XLA does).
_NUMPY = {
    "transpose": lambda params, x: np.transpose(x, params["permutation"]),
    "reshape": _reshape,
    "rev": lambda params, x: np.flip(x, params["dimensions"]),
    "jit": _nested,
}
