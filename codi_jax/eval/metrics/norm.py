"""Batch normalisation in inference form for the metric networks: the reference's running statistics and
affine weights, all held as params (the extractors never train)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class FrozenBatchNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, as torch's BatchNorm in eval mode."""
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones_init(), (c,))
        bias = self.param("bias", nn.initializers.zeros_init(), (c,))
        mean = self.param("mean", nn.initializers.zeros_init(), (c,))
        var = self.param("var", nn.initializers.ones_init(), (c,))
        return (x - mean) * (scale / jnp.sqrt(var + self.epsilon)) + bias
