"""PyTorch -> Flax weight layouts. jnp-only, so converters also run under jax.eval_shape."""
from __future__ import annotations

import jax.numpy as jnp


def linear(w):
    """nn.Linear weight [out, in] -> Dense kernel [in, out]."""
    return jnp.transpose(jnp.asarray(w))


def conv(w):
    """ConvNd weight [O, I, *k] -> Flax kernel [*k, I, O] (OIHW -> HWIO, OIL -> LIO, OIDHW -> DHWIO)."""
    w = jnp.asarray(w)
    return jnp.transpose(w, tuple(range(2, w.ndim)) + (1, 0))


def conv_transpose(w):
    """ConvTransposeNd weight [I, O, *k] -> kernel [*k, I, O] for a transposed conv written as a dilated conv.

    The taps are flipped so that `lax.conv_general_dilated(lhs_dilation=stride)` computes what PyTorch does.
    """
    w = jnp.asarray(w)
    spatial = tuple(range(2, w.ndim))
    w = jnp.flip(w, axis=spatial)
    return jnp.transpose(w, spatial + (0, 1))


def pointwise(w):
    """A 1x1 (x1) convolution weight [O, I, 1, ...] -> Dense kernel [I, O]."""
    w = jnp.asarray(w)
    return jnp.transpose(w.reshape(w.shape[0], w.shape[1]))


# Copy one torch layer's tensors (`theirs`, dotted state-dict prefix) into a flat {our/path: array} (`ours`).

def copy_linear(flat: dict, sd, ours: str, theirs: str, bias: bool = True) -> None:
    flat[f"{ours}/kernel"] = linear(sd[f"{theirs}.weight"])
    if bias:
        flat[f"{ours}/bias"] = jnp.asarray(sd[f"{theirs}.bias"])


def copy_norm(flat: dict, sd, ours: str, theirs: str) -> None:
    """LayerNorm / GroupNorm weight and bias -> scale and bias."""
    flat[f"{ours}/scale"] = jnp.asarray(sd[f"{theirs}.weight"])
    flat[f"{ours}/bias"] = jnp.asarray(sd[f"{theirs}.bias"])


def copy_conv(flat: dict, sd, ours: str, theirs: str) -> None:
    flat[f"{ours}/kernel"] = conv(sd[f"{theirs}.weight"])
    flat[f"{ours}/bias"] = jnp.asarray(sd[f"{theirs}.bias"])


def nest(flat: dict, sep: str = "/") -> dict:
    """{'a/b/c': x} -> {'a': {'b': {'c': x}}}: build param trees from path strings."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split(sep)
        for p in parents:
            node = node.setdefault(p, {})
        if leaf in node:
            raise ValueError(f"parameter path {path!r} filled twice")
        node[leaf] = value
    return tree
