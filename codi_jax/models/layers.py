"""Building blocks shared by the CoDi UNets (image / video / audio here, text in unet_text).

Data is channels-last everywhere: images [N, H, W, C], token sequences [N, L, D].
Parameters are float32 and carry logical axis names (codi_jax.parallel.partitioning);
`dtype` is the compute dtype. Normalisations compute their statistics in float32.

Public API (signatures are stable; other modules import them):
  dense(features, axes, *, use_bias=True, zero_init=False, dtype, name) -> nn.Dense
  conv(features, kernel_size=3, *, stride=1, zero_init=False, dtype, name) -> nn.Conv  ("same" padding)
  timestep_embedding(t, dim) -> [N, dim]               cos half first, then sin
  TimeEmbed(dim_in, dim_out)(t) -> [N, dim_out]        sinusoid(dim_in) -> Linear, SiLU, Linear
  GroupNorm32(eps=1e-5)(x) -> x                        32 groups over the last axis; stats over
                                                       every axis but the first (batch) one
  LayerNorm(eps=1e-5)(x) -> x                          over the last axis
  ResBlock(out_channels, eps=1e-5)(x [N,H,W,C], emb [N,E]) -> [N,H,W,out_channels]
  Downsample(channels)(x) -> x at half resolution      conv3x3 stride 2, pad 1
  Upsample(channels)(x) -> x at double resolution      nearest x2, conv3x3
  Attention(num_heads, head_dim, out_dim)(x [N,L,D], context [N,M,Dc] | None) -> [N,L,out_dim]
  GEGLUFeedForward(dim, mult=4)(x) -> x
  SpatialTransformer(channels, num_heads, head_dim, context_dim)(x [N,H,W,C], context [N,L,Dc]) -> x
Every module also takes `dtype` (compute dtype, default float32); attention-bearing ones take
`attn_impl` (see codi_jax.models.attention).
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from codi_jax.models.attention import dot_product_attention

Dtype = jnp.dtype

# PyTorch's default Linear/Conv init (kaiming-uniform with a=sqrt(5)) has variance 1/(3 fan_in).
DEFAULT_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def partitioned(init, names: Sequence[str]):
    """`init` whose parameter carries the logical axis `names` (the sharding rules map them to mesh axes)."""
    return nn.with_logical_partitioning(init, tuple(names))


def dense(features: int, axes: tuple[str, str], *, use_bias: bool = True, zero_init: bool = False,
          kernel_init=None, dtype=jnp.float32, name: str | None = None) -> nn.Dense:
    """A Dense layer whose kernel [in, out] carries `axes` and whose bias carries axes[1]; the kernel drawn
    from `kernel_init` (default: PyTorch's Linear init), zeros with `zero_init`."""
    kernel_init = nn.initializers.zeros_init() if zero_init else kernel_init or DEFAULT_INIT
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=partitioned(kernel_init, axes),
                    bias_init=partitioned(nn.initializers.zeros_init(), (axes[1],)), name=name)


def conv(features: int, kernel_size: int = 3, *, stride: int = 1, padding=None, zero_init: bool = False,
         kernel_init=None, dtype=jnp.float32, name: str | None = None) -> nn.Conv:
    """A 2-D conv, HWIO kernel carrying (kernel, kernel, conv_in, conv_out); `padding` defaults to PyTorch's
    symmetric `kernel_size // 2`, the kernel init as `dense`'s."""
    pad = kernel_size // 2
    kernel_init = nn.initializers.zeros_init() if zero_init else kernel_init or DEFAULT_INIT
    return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)) if padding is None else padding, dtype=dtype,
                   param_dtype=jnp.float32,
                   kernel_init=partitioned(kernel_init, ("kernel", "kernel", "conv_in", "conv_out")),
                   bias_init=partitioned(nn.initializers.zeros_init(), ("conv_out",)), name=name)


def layer_norm(epsilon: float, *, exact_variance: bool = False, dtype=jnp.float32,
               name: str | None = None) -> nn.LayerNorm:
    """flax's LayerNorm with scale and bias on the `norm` axis; `exact_variance` takes the two-pass variance
    (as torch), where E[x^2] - E[x]^2 would drift (GPT-2's large activations)."""
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, use_fast_variance=not exact_variance, name=name,
                        scale_init=partitioned(nn.initializers.ones_init(), ("norm",)),
                        bias_init=partitioned(nn.initializers.zeros_init(), ("norm",)))


def timestep_embedding(t, dim: int):
    """Sinusoidal embedding [N, dim] of timesteps [N]: cos half first, then sin.

    Frequencies exp(-ln(1e4) * i / half), i < half = dim // 2 (the divisor is half, not
    half - 1, as in the released UNets). An odd dim gets a zero last column.
    """
    t = jnp.asarray(t, jnp.float32)
    if t.ndim != 1:
        raise ValueError(f"timesteps must have shape [batch], got {t.shape}")
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimeEmbed(nn.Module):
    """Timesteps [N] -> sinusoid(dim_in) -> Linear(dim_in, dim_out), SiLU, Linear(dim_out, dim_out)."""
    dim_in: int
    dim_out: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t):
        h = timestep_embedding(t, self.dim_in)
        h = dense(self.dim_out, ("embed", "mlp"), dtype=self.dtype, name="linear_1")(h)
        h = dense(self.dim_out, ("mlp", "embed"), dtype=self.dtype, name="linear_2")(nn.silu(h))
        return h


class GroupNorm32(nn.Module):
    """GroupNorm with 32 groups over the last (channel) axis, two-pass float32 statistics.

    Statistics span every axis except the first, so frames folded into the batch get
    per-frame statistics, as in the released video UNet.
    """
    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    groups: int = 32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        if channels % self.groups:
            raise ValueError(f"GroupNorm32 needs channels divisible by {self.groups}, got {channels}")
        scale = self.param("scale", partitioned(nn.initializers.ones_init(), ("norm",)), (channels,))
        bias = self.param("bias", partitioned(nn.initializers.zeros_init(), ("norm",)), (channels,))
        xf = x.astype(jnp.float32).reshape(x.shape[:-1] + (self.groups, channels // self.groups))
        axes = tuple(range(1, xf.ndim - 2)) + (xf.ndim - 1,)
        mean = jnp.mean(xf, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=axes, keepdims=True)
        y = ((xf - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        return (y * scale + bias).astype(self.dtype)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with two-pass float32 statistics."""
    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        scale = self.param("scale", partitioned(nn.initializers.ones_init(), ("norm",)), (channels,))
        bias = self.param("bias", partitioned(nn.initializers.zeros_init(), ("norm",)), (channels,))
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        return ((xf - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias).astype(self.dtype)


class ResBlock(nn.Module):
    """GN, SiLU, conv3x3, + Linear(SiLU(emb)), GN, SiLU, conv3x3 (zero-init); 1x1-conv skip if widths differ."""
    out_channels: int
    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb):
        h = nn.silu(GroupNorm32(self.eps, self.dtype, name="in_norm")(x))
        h = conv(self.out_channels, 3, dtype=self.dtype, name="in_conv")(h)
        e = dense(self.out_channels, ("embed", "conv_out"), dtype=self.dtype, name="emb_proj")(nn.silu(emb))
        h = h + e.reshape(e.shape[:1] + (1,) * (h.ndim - 2) + e.shape[-1:])
        h = nn.silu(GroupNorm32(self.eps, self.dtype, name="out_norm")(h))
        h = conv(self.out_channels, 3, zero_init=True, dtype=self.dtype, name="out_conv")(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, dtype=self.dtype, name="skip")(x)
        return x.astype(self.dtype) + h


class Downsample(nn.Module):
    """conv3x3, stride 2, padding 1 (PyTorch's output size for odd sides too)."""
    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return conv(self.channels, 3, stride=2, dtype=self.dtype, name="conv")(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 on H and W, then conv3x3."""
    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv(self.channels, 3, dtype=self.dtype, name="conv")(x)


class Attention(nn.Module):
    """Multi-head attention: q/k/v projections without bias, output projection with bias.

    Self-attention when `context` is None, cross-attention over `context` otherwise.
    """
    num_heads: int
    head_dim: int
    out_dim: int
    attn_impl: str = "xla"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None):
        context = x if context is None else context
        inner = self.num_heads * self.head_dim
        proj = lambda name: dense(inner, ("embed", "heads"), use_bias=False, dtype=self.dtype, name=name)
        split = lambda t: t.reshape(t.shape[:2] + (self.num_heads, self.head_dim))
        q, k, v = split(proj("to_q")(x)), split(proj("to_k")(context)), split(proj("to_v")(context))
        out = dot_product_attention(q, k, v, impl=self.attn_impl)
        out = out.reshape(out.shape[:2] + (inner,))
        return dense(self.out_dim, ("heads", "embed"), dtype=self.dtype, name="to_out")(out)


class GEGLUFeedForward(nn.Module):
    """Linear(dim -> 2*mult*dim) split into value | gate, value * GELU(gate) (exact erf), Linear back to dim."""
    dim: int
    mult: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        inner = self.mult * self.dim
        h = dense(2 * inner, ("embed", "mlp"), dtype=self.dtype, name="proj")(x)
        value, gate = h[..., :inner], h[..., inner:]
        h = value * jax.nn.gelu(gate, approximate=False)
        return dense(self.dim, ("mlp", "embed"), dtype=self.dtype, name="out")(h)


class SpatialTransformer(nn.Module):
    """GN(eps 1e-6), 1x1 proj_in, [LN, self-attn], [LN, cross-attn], [LN, GEGLU FF], 1x1 proj_out, + input.

    x [N, H, W, C]: tokens are the H*W positions in row-major order (the text UNet passes
    [N, second_dim, 1, C]). context [N, L, context_dim]. One transformer block (CoDi's depth).
    """
    channels: int
    num_heads: int
    head_dim: int
    context_dim: int
    attn_impl: str = "xla"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        if x.ndim != 4 or x.shape[-1] != self.channels:
            raise ValueError(f"SpatialTransformer expects x [N, H, W, {self.channels}], got {x.shape}")
        if context.ndim != 3 or context.shape[-1] != self.context_dim:
            raise ValueError(f"SpatialTransformer expects context [N, L, {self.context_dim}], got {context.shape}")
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"context batch {context.shape[0]} does not match x batch {x.shape[0]}")
        n, height, width, _ = x.shape
        inner = self.num_heads * self.head_dim
        h = GroupNorm32(1e-6, self.dtype, name="norm")(x)
        h = dense(inner, ("embed", "mlp"), dtype=self.dtype, name="proj_in")(h)
        h = h.reshape(n, height * width, inner)
        context = context.astype(self.dtype)
        attn = lambda name: Attention(self.num_heads, self.head_dim, inner, self.attn_impl, self.dtype, name=name)
        h = h + attn("attn1")(LayerNorm(1e-5, self.dtype, name="norm1")(h))
        h = h + attn("attn2")(LayerNorm(1e-5, self.dtype, name="norm2")(h), context)
        h = h + GEGLUFeedForward(inner, 4, self.dtype, name="ff")(LayerNorm(1e-5, self.dtype, name="norm3")(h))
        h = dense(self.channels, ("mlp", "embed"), zero_init=True, dtype=self.dtype, name="proj_out")(h)
        return x.astype(self.dtype) + h.reshape(n, height, width, self.channels)
