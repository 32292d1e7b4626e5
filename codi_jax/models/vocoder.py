"""HiFi-GAN generator (AudioLDM's 16 kHz, 64-mel vocoder, weight norm already folded away).

mel [B, T, num_mels] (time first, the fbank layout) -> wave [B, prod(upsample_rates) * T + extra].
With the released rates [5,4,2,2,2] / kernels [16,16,8,4,4] the first transposed conv yields 5T + 1
samples, so the full model gives 160T + 32 (1024 frames -> 163,872 samples).

Structure: conv_pre (k7) -> per stage [leaky_relu(0.1) -> transposed conv (stride u, padding (k-u)//2)
-> MEAN of the resblocks] -> leaky_relu with slope 0.01 (torch's default, not 0.1) -> conv_post (k7)
-> tanh. Resblock "1": for each dilation d, x += conv_k(lrelu(conv_{k,d}(lrelu(x)))).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
LRELU_SLOPE = 0.1
FINAL_LRELU_SLOPE = 0.01

_kernel = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("kernel", "conv_in", "conv_out"))
_bias = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",))


def _conv1d(features: int, kernel: int, dilation: int, dtype: Dtype, name: str):
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(features, (kernel,), kernel_dilation=(dilation,), padding=[(pad, pad)], dtype=dtype,
                   kernel_init=_kernel, bias_init=_bias, name=name)


class ConvTranspose1d(nn.Module):
    """PyTorch ConvTranspose1d(stride, padding) as a dilated conv with a pre-flipped kernel [k, in, out].

    Output length (L - 1) * stride - 2 * padding + kernel, as torch.
    """
    features: int
    kernel_size: int
    stride: int
    padding: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _kernel, (self.kernel_size, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", _bias, (self.features,), jnp.float32)
        edge = self.kernel_size - 1 - self.padding
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(1,), padding=[(edge, edge)],
            lhs_dilation=(self.stride,), dimension_numbers=("NWC", "WIO", "NWC"))
        return y + bias.astype(self.dtype)


class ResBlock1(nn.Module):
    channels: int
    kernel_size: int
    dilations: Sequence[int]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for j, d in enumerate(self.dilations):
            h = _conv1d(self.channels, self.kernel_size, d, self.dtype, f"convs1_{j}")(
                nn.leaky_relu(x, LRELU_SLOPE))
            h = _conv1d(self.channels, self.kernel_size, 1, self.dtype, f"convs2_{j}")(
                nn.leaky_relu(h, LRELU_SLOPE))
            x = x + h
        return x


class HifiGanGenerator(nn.Module):
    num_mels: int = 64
    upsample_rates: Sequence[int] = (5, 4, 2, 2, 2)
    upsample_kernel_sizes: Sequence[int] = (16, 16, 8, 4, 4)
    upsample_initial_channel: int = 1024
    resblock_kernel_sizes: Sequence[int] = (3, 7, 11)
    resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, mel):
        mel = jnp.asarray(mel)
        if mel.ndim != 3 or mel.shape[-1] != self.num_mels:
            raise ValueError(f"vocoder input: expected a mel [B, T, {self.num_mels}], got shape {tuple(mel.shape)}")
        x = _conv1d(self.upsample_initial_channel, 7, 1, self.dtype, "conv_pre")(mel.astype(self.dtype))
        n_kernels = len(self.resblock_kernel_sizes)
        for i, (rate, k) in enumerate(zip(self.upsample_rates, self.upsample_kernel_sizes)):
            channels = self.upsample_initial_channel // 2 ** (i + 1)
            x = ConvTranspose1d(channels, k, rate, (k - rate) // 2, self.dtype, name=f"ups_{i}")(
                nn.leaky_relu(x, LRELU_SLOPE))
            total = None
            for j, (rk, rd) in enumerate(zip(self.resblock_kernel_sizes, self.resblock_dilation_sizes)):
                y = ResBlock1(channels, rk, tuple(rd), self.dtype, name=f"resblocks_{i * n_kernels + j}")(x)
                total = y if total is None else total + y
            x = total / n_kernels
        x = _conv1d(1, 7, 1, self.dtype, "conv_post")(nn.leaky_relu(x, FINAL_LRELU_SLOPE))
        return jnp.tanh(x[..., 0].astype(jnp.float32))


def kwargs_from_official(h: dict) -> dict:
    """Our constructor kwargs from the official HiFi-GAN hyper-parameter dict `h`."""
    if str(h.get("resblock", "1")) != "1":
        raise ValueError(f"HiFi-GAN resblock type {h['resblock']!r} is not supported; expected '1' (AudioLDM's)")
    return dict(num_mels=h["num_mels"], upsample_rates=tuple(h["upsample_rates"]),
                upsample_kernel_sizes=tuple(h["upsample_kernel_sizes"]),
                upsample_initial_channel=h["upsample_initial_channel"],
                resblock_kernel_sizes=tuple(h["resblock_kernel_sizes"]),
                resblock_dilation_sizes=tuple(tuple(d) for d in h["resblock_dilation_sizes"]))


CONFIGS = {
    # AudioLDM HIFIGAN_16K_64: 55,264,897 parameters.
    "full": dict(upsample_initial_channel=1024),
    "tiny": dict(upsample_initial_channel=32, resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3),)),
}


def build(variant: str | dict, **overrides) -> HifiGanGenerator:
    if isinstance(variant, str):
        if variant not in CONFIGS:
            raise ValueError(f"unknown vocoder variant {variant!r}; expected one of {sorted(CONFIGS)}")
        variant = CONFIGS[variant]
    return HifiGanGenerator(**{**variant, **overrides})


def output_length(model: HifiGanGenerator, frames: int) -> int:
    """Samples produced for `frames` mel frames (torch's transposed-conv length rule per stage)."""
    n = frames
    for rate, k in zip(model.upsample_rates, model.upsample_kernel_sizes):
        n = (n - 1) * rate - 2 * ((k - rate) // 2) + k
    return n
