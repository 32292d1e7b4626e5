"""GAN discriminators the original autoencoders were trained against (the `autoencoders` stage trains them).

CoDi's released checkpoints hold none of these (they are training-only networks), so there is no
converter; the sizes follow the originals' training configs.

PatchDiscriminator: the pix2pix PatchGAN of taming / LDM (`NLayerDiscriminator`), used by SD's kl-f8
image VAE on [B, H, W, 3] images and by AudioLDM's mel VAE on the fbank "image" [B, T, 64, 1].
  conv4 s2 (bias) -> lrelu(0.2); for n in 1..n_layers: conv4 (stride 2, the last one stride 1, no bias)
  -> norm -> lrelu(0.2), ndf * min(2^n, 8) channels; conv4 s1 -> one logit per patch [B, h, w, 1].
  Every conv pads 1; weights start N(0, 0.02), norm scales N(1, 0.02) (the original's weights_init).
  Norm: GroupNorm, not the original's BatchNorm. BatchNorm in training mode keeps running statistics in
  a mutable collection that the trainer's single pure loss / single grad step does not thread through,
  and its batch statistics couple the examples of a batch (and, sharded, the devices); GroupNorm
  normalises each example alone and needs no state. It has the same affine parameters, so the count is
  the original's: 2,765,633 for 3 input channels, ndf 64, 3 layers (2,763,585 for the 1-channel mel).

HifiGanDiscriminator: HiFi-GAN's multi-period (MPD, periods 2, 3, 5, 7, 11) and multi-scale (MSD, 3
scales, the wave average-pooled (4, stride 2, pad 2) before each further scale) discriminators on waves
[B, N]. Each sub-discriminator returns (logits [B, n], feature maps after every conv), MPD first.
  Period p: reflect-pad N to a multiple of p, fold to [B, N/p, p, 1], convs (5, 1) with stride (3, 1)
  (the last stride 1) to 32, 128, 512, 1024, 1024 channels, lrelu(0.1), post conv (3, 1) -> 1.
  Scale: convs k 15/41/41/41/41/41/5, strides 1/2/2/4/4/1/1, groups 1/4/16/16/16/16/1, to
  128/128/256/512/1024/1024/1024 channels, lrelu(0.1), post conv 3 -> 1.
  Weight norm (w = g * v / ||v||, norm over all axes but the output one) on every conv. The original puts
  spectral norm on the first MSD scale instead; that needs a power-iteration vector carried from step to
  step (mutable state again), so that scale uses weight norm too: 4,097 more parameters (its g vectors)
  than the original's 29,618,821 MSD. Counts: MPD 41,105,770, MSD 29,622,918, together 70,728,688.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
PATCH_SLOPE = 0.2
HIFIGAN_SLOPE = 0.1

_CONV2D_AXES = ("kernel", "kernel", "conv_in", "conv_out")
_patch_kernel = nn.with_logical_partitioning(nn.initializers.normal(0.02), _CONV2D_AXES)
_bias = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",))
_norm_scale = nn.with_logical_partitioning(
    lambda rng, shape, dtype=jnp.float32: 1.0 + 0.02 * jax.random.normal(rng, shape, dtype), ("norm",))
_norm_bias = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",))
# torch's default conv init (kaiming uniform, a = sqrt(5)): U(+-1 / sqrt(fan_in)).
_torch_default = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class PatchDiscriminator(nn.Module):
    in_channels: int = 3
    ndf: int = 64
    n_layers: int = 3
    norm_groups: int = 32
    dtype: Dtype = jnp.float32

    def min_size(self) -> int:
        """Smallest height / width giving at least one patch: n_layers halvings, then two 4x4 s1 convs."""
        return 3 * 2 ** self.n_layers

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x)
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"patch discriminator input: expected [B, H, W, {self.in_channels}], "
                             f"got shape {tuple(x.shape)}")
        if min(x.shape[1:3]) < self.min_size():
            raise ValueError(f"patch discriminator input: height and width must be at least {self.min_size()} "
                             f"for {self.n_layers} layers, got {tuple(x.shape[1:3])}")

        def conv(features, stride, use_bias, name):
            return nn.Conv(features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=use_bias,
                           dtype=self.dtype, kernel_init=_patch_kernel, bias_init=_bias, name=name)

        h = nn.leaky_relu(conv(self.ndf, 2, True, "conv_0")(x.astype(self.dtype)), PATCH_SLOPE)
        for n in range(1, self.n_layers + 1):
            features = self.ndf * min(2 ** n, 8)
            if features % self.norm_groups:
                raise ValueError(f"patch discriminator: norm_groups {self.norm_groups} must divide the width "
                                 f"{features} of layer {n}")
            h = conv(features, 2 if n < self.n_layers else 1, False, f"conv_{n}")(h)
            h = nn.GroupNorm(num_groups=self.norm_groups, epsilon=1e-5, dtype=self.dtype, use_fast_variance=False,
                             scale_init=_norm_scale, bias_init=_norm_bias, name=f"norm_{n}")(h)
            h = nn.leaky_relu(h, PATCH_SLOPE)
        return conv(1, 1, True, "conv_out")(h).astype(jnp.float32)


class WeightNormConv(nn.Module):
    """Conv with weight norm (torch's weight_norm, dim 0): kernel v, per-output scale g = ||v|| at init,
    w = g * v / ||v||. Channels-last input; `kernel_size`, `strides`, `padding` have one entry per spatial axis."""
    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int]
    padding: Sequence[int]
    groups: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        rank = len(self.kernel_size)
        axes = ("kernel",) * rank + ("conv_in", "conv_out")
        shape = tuple(self.kernel_size) + (x.shape[-1] // self.groups, self.features)
        v = self.param("kernel", nn.with_logical_partitioning(_torch_default, axes), shape, jnp.float32)
        reduce = tuple(range(rank + 1))
        norm = lambda k: jnp.sqrt(jnp.sum(k ** 2, axis=reduce))
        g = self.param("scale", nn.with_logical_partitioning(lambda *_: norm(v), ("conv_out",)), (self.features,))
        b = self.param("bias", _bias, (self.features,), jnp.float32)
        w = v * (g / norm(v))
        spatial = "".join("HWD"[:rank])
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), w.astype(self.dtype), window_strides=tuple(self.strides),
            padding=[(p, p) for p in self.padding], feature_group_count=self.groups,
            dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
        return y + b.astype(self.dtype)


class PeriodDiscriminator(nn.Module):
    period: int
    channels: Sequence[int] = (32, 128, 512, 1024, 1024)
    kernel_size: int = 5
    stride: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, wave):
        b, n = wave.shape
        pad = (-n) % self.period
        if pad:
            wave = jnp.pad(wave, ((0, 0), (0, pad)), mode="reflect")
        x = wave.reshape(b, -1, self.period, 1).astype(self.dtype)
        features = []
        for i, c in enumerate(self.channels):
            stride = self.stride if i < len(self.channels) - 1 else 1
            x = WeightNormConv(c, (self.kernel_size, 1), (stride, 1), ((self.kernel_size - 1) // 2, 0),
                               dtype=self.dtype, name=f"convs_{i}")(x)
            x = nn.leaky_relu(x, HIFIGAN_SLOPE)
            features.append(x)
        x = WeightNormConv(1, (3, 1), (1, 1), (1, 0), dtype=self.dtype, name="conv_post")(x)
        features.append(x)
        return x.reshape(b, -1).astype(jnp.float32), features


class ScaleDiscriminator(nn.Module):
    channels: Sequence[int] = (128, 128, 256, 512, 1024, 1024, 1024)
    kernel_sizes: Sequence[int] = (15, 41, 41, 41, 41, 41, 5)
    strides: Sequence[int] = (1, 2, 2, 4, 4, 1, 1)
    groups: Sequence[int] = (1, 4, 16, 16, 16, 16, 1)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, wave):
        x = wave[..., None].astype(self.dtype)
        features = []
        for i, (c, k, s, g) in enumerate(zip(self.channels, self.kernel_sizes, self.strides, self.groups)):
            x = nn.leaky_relu(WeightNormConv(c, (k,), (s,), ((k - 1) // 2,), g, self.dtype, name=f"convs_{i}")(x),
                              HIFIGAN_SLOPE)
            features.append(x)
        x = WeightNormConv(1, (3,), (1,), (1,), dtype=self.dtype, name="conv_post")(x)
        features.append(x)
        return x.reshape(x.shape[0], -1).astype(jnp.float32), features


def _average_pool(wave):
    """torch AvgPool1d(4, 2, padding=2) (zero padding counted): [B, N] -> [B, N // 2 + 1]."""
    padded = jnp.pad(wave, ((0, 0), (2, 2)))
    return jax.lax.reduce_window(padded, 0.0, jax.lax.add, (1, 4), (1, 2), "VALID") / 4.0


class HifiGanDiscriminator(nn.Module):
    periods: Sequence[int] = (2, 3, 5, 7, 11)
    period_channels: Sequence[int] = (32, 128, 512, 1024, 1024)
    num_scales: int = 3
    scale_channels: Sequence[int] = (128, 128, 256, 512, 1024, 1024, 1024)
    scale_groups: Sequence[int] = (1, 4, 16, 16, 16, 16, 1)
    dtype: Dtype = jnp.float32

    def min_samples(self) -> int:
        return max(self.periods) + 1

    @nn.compact
    def __call__(self, wave):
        """wave [B, N] -> [(logits [B, n], [feature maps])] for every period, then every scale."""
        wave = jnp.asarray(wave)
        if wave.ndim != 2 or wave.shape[-1] < self.min_samples():
            raise ValueError(f"HiFi-GAN discriminator input: expected a wave [B, N] with N >= {self.min_samples()}, "
                             f"got shape {tuple(wave.shape)}")
        wave = wave.astype(jnp.float32)
        outputs = [PeriodDiscriminator(p, tuple(self.period_channels), dtype=self.dtype, name=f"period_{p}")(wave)
                   for p in self.periods]
        for i in range(self.num_scales):
            if i:
                wave = _average_pool(wave)
            outputs.append(ScaleDiscriminator(tuple(self.scale_channels), groups=tuple(self.scale_groups),
                                              dtype=self.dtype, name=f"scale_{i}")(wave))
        return outputs


_KINDS = {"patch": PatchDiscriminator, "hifigan": HifiGanDiscriminator}

CONFIGS = {
    # SD kl-f8's LPIPSWithDiscriminator: NLayerDiscriminator(3 channels, ndf 64, 3 layers), 2,765,633 parameters.
    "full": dict(kind="patch", in_channels=3, ndf=64, n_layers=3, norm_groups=32),
    "tiny": dict(kind="patch", in_channels=3, ndf=8, n_layers=2, norm_groups=4),
    # AudioLDM's mel VAE: the same discriminator on the 1-channel fbank, 2,763,585 parameters.
    "audio_full": dict(kind="patch", in_channels=1, ndf=64, n_layers=3, norm_groups=32),
    "audio_tiny": dict(kind="patch", in_channels=1, ndf=8, n_layers=2, norm_groups=4),
    # HiFi-GAN V1's MPD + MSD (AudioLDM's 16 kHz vocoder trained against them), 70,728,688 parameters.
    "hifigan_full": dict(kind="hifigan"),
    "hifigan_tiny": dict(kind="hifigan", periods=(2, 3), period_channels=(4, 8, 16, 16, 16), num_scales=2,
                         scale_channels=(8, 8, 16, 16, 16, 16, 16), scale_groups=(1, 2, 4, 4, 4, 4, 1)),
}


def build(variant: str | dict, **overrides) -> nn.Module:
    """A discriminator from a preset name in CONFIGS or an explicit dict (with its "kind": patch | hifigan)."""
    if isinstance(variant, str):
        if variant not in CONFIGS:
            raise ValueError(f"unknown discriminator variant {variant!r}; expected one of {sorted(CONFIGS)}")
        variant = CONFIGS[variant]
    kwargs = {**variant, **overrides}
    kind = kwargs.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"discriminator kind {kind!r} unknown; expected one of {sorted(_KINDS)}")
    return _KINDS[kind](**kwargs)


def init_inputs(module: nn.Module) -> tuple:
    """Zero inputs that create every parameter of `module` (the smallest size it accepts)."""
    if isinstance(module, PatchDiscriminator):
        side = module.min_size()
        return (jnp.zeros((1, side, side, module.in_channels)),)
    return (jnp.zeros((1, 8 * module.min_samples())),)
