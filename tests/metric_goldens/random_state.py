"""Random weights for a reference network's state dict, reproducible from (seed, key, shape) alone.

Numpy only, so the golden maker (run beside the reference packages) and the parity tests (run beside
ours) draw the same tensors: the fixtures store the keys and shapes, not the weights. Scales keep
activations O(1) through deep conv stacks: He-normal kernels, batch norms near identity.
"""
import zlib

import numpy as np


def draw(key: str, shape, seed: int, is_norm_weight: bool) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    shape = tuple(int(s) for s in shape)
    name = key.rpartition(".")[2]
    if name == "running_var":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if name == "running_mean":
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if is_norm_weight:
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return (np.sqrt(2.0 / fan_in) * rng.standard_normal(shape)).astype(np.float32)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def random_state_dict(shapes: dict, seed: int) -> dict:
    """{key: float32 array} for {key: shape}; a 1-D `weight` next to a `running_mean` is a norm scale."""
    keys = set(shapes)
    out = {}
    for key, shape in shapes.items():
        prefix = key.rpartition(".")[0]
        out[key] = draw(key, shape, seed, key.endswith(".weight") and f"{prefix}.running_mean" in keys)
    return out
