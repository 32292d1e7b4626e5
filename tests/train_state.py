"""Helpers shared by the resume and fault tests: a train state on the host, compared bit for bit."""
import jax
import numpy as np


def host(state):
    """Everything a resume must reproduce: parameters, frozen part, optimiser, EMA, step and skip count."""
    return jax.tree.map(np.asarray, jax.device_get((state.params, state.frozen, state.opt_state, state.ema,
                                                    state.step, state.skipped)))


def assert_bitwise(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)
