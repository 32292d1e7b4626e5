"""A converter run one output leaf at a time.

The registry's converters map a whole state dict to a whole parameter tree. Run eagerly on a 12 GB
file that would hold every converted array at once. Instead the converter is traced once on shapes
(`jax.make_jaxpr`, nothing allocated); the trace says, for every output leaf, which official keys it
reads and which operations (transposes, reshapes, flips, ...) produce it. `LazyConversion.leaf(path,
read)` then evaluates only that slice of the trace on only those inputs, so a writer can convert,
write and drop one array before it touches the next.
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
        """The converted value of one leaf; `read(key)` returns an official tensor as an array."""
        outvar = self._outvars[path]
        eqns, inputs, consts = self._slice(outvar)
        if not eqns:  # the leaf is an official tensor as it stands (a bias, a norm scale)
            return read(self._key_of[outvar]) if outvar in self._key_of else self._const_of[outvar]
        inputs, consts = sorted(inputs, key=self._key_of.get), list(consts)
        names = jex.DebugInfo("LazyConversion.leaf", path, tuple(self._key_of[v] for v in inputs), (path,))
        piece = jex.Jaxpr(constvars=consts, invars=inputs, outvars=[outvar], eqns=eqns, debug_info=names)
        run = jex.jaxpr_as_fun(jex.ClosedJaxpr(piece, [self._const_of[c] for c in consts]))
        (value,) = run(*(read(self._key_of[v]) for v in inputs))
        return value
