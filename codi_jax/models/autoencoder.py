"""KL autoencoder (LDM `AutoencoderKL`): the image VAE (SD kl-f8) and the AudioLDM mel VAE.

One network serves both: the audio VAE is the same encoder/decoder with one input channel (a log-mel
image [B, T, 64, 1]), 8 latent channels, two downsamplings (x4 in time and mel) and its own latent
scale, plus the decode-time latent clipping of CoDi's audio helper.

Layouts (channels-last): images [B, H, W, C], video [B, F, H, W, C] (frames are folded into the batch:
the released image VAE has no temporal layers), latents [B, h, w, embed_dim] / [B, F, h, w, embed_dim],
mel images [B, T, 64, 1], waves [B, N].

Module methods (call through `apply(..., method=...)`):
  encode_moments(x) -> [..., 2*embed_dim] quant_conv(encoder(x)), logvar not yet clamped
  encode(x) -> DiagonalGaussian          posterior over the unscaled latent
  decode(z) -> x                         from an unscaled latent
  to_latent(x, rng=None) -> z            CoDi's encode helper: scale * sample (rng None: the mean)
  from_latent(z) -> x                    CoDi's decode helper: clip (audio) -> z / scale -> decode
  encode_wave(wave, target_length)       the audio VAE's waveform entry: fbank -> encode
"""
from __future__ import annotations

import functools

from typing import Any, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from codi_jax.data import mel
from codi_jax.models.layers import conv, dense

Dtype = Any

GN_GROUPS = 32
GN_EPS = 1e-6
LOGVAR_RANGE = (-30.0, 20.0)
IMAGE_SCALE = 0.18215
AUDIO_SCALE = 0.9228
# CoDi's audio decode helper clips latents to [-10, 10] whenever the batch's max |z| exceeds 100.
AUDIO_LATENT_CLIP = (100.0, 10.0)

_norm_scale = nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",))
_norm_bias = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",))


@flax.struct.dataclass
class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)); logvar already clamped to [-30, 20] as the original does."""
    mean: jax.Array
    logvar: jax.Array

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    def sample(self, rng: jax.Array) -> jax.Array:
        return self.sample_with(jax.random.normal(rng, self.mean.shape, self.mean.dtype))

    def sample_with(self, noise: jax.Array) -> jax.Array:
        return self.mean + self.std * noise

    def kl(self) -> jax.Array:
        """KL(q || N(0, I)) summed over all non-batch dims, [B]."""
        axes = tuple(range(1, self.mean.ndim))
        return 0.5 * jnp.sum(self.mean ** 2 + jnp.exp(self.logvar) - 1.0 - self.logvar, axis=axes)


def _conv(features: int, kernel: int, name: str | None, dtype: Dtype, stride: int = 1, padding: Any = "SAME"):
    return conv(features, kernel, stride=stride, padding=padding, kernel_init=nn.initializers.lecun_normal(),
                dtype=dtype, name=name)


def _group_norm(name: str, dtype: Dtype, groups: int):
    # Exact two-pass variance, as torch's GroupNorm: the fast E[x^2]-E[x]^2 form drifts on large means.
    return nn.GroupNorm(num_groups=groups, epsilon=GN_EPS, dtype=dtype, use_fast_variance=False,
                        scale_init=_norm_scale, bias_init=_norm_bias, name=name)


class ResnetBlock(nn.Module):
    """GN -> swish -> conv3 -> GN -> swish -> conv3, with a 1x1 `nin_shortcut` when the width changes."""
    out_channels: int
    dtype: Dtype = jnp.float32
    norm_groups: int = GN_GROUPS

    @nn.compact
    def __call__(self, x):
        h = nn.swish(_group_norm("norm1", self.dtype, self.norm_groups)(x))
        h = _conv(self.out_channels, 3, "conv1", self.dtype)(h)
        h = nn.swish(_group_norm("norm2", self.dtype, self.norm_groups)(h))
        h = _conv(self.out_channels, 3, "conv2", self.dtype)(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, "nin_shortcut", self.dtype)(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all H*W positions (1x1 q/k/v/proj, scale C^-1/2)."""
    dtype: Dtype = jnp.float32
    norm_groups: int = GN_GROUPS

    @nn.compact
    def __call__(self, x):
        b, height, width, c = x.shape
        h = _group_norm("norm", self.dtype, self.norm_groups)(x).reshape(b, height * width, c)

        def proj(name, axes):
            return dense(c, axes, kernel_init=nn.initializers.lecun_normal(), dtype=self.dtype, name=name)

        q = proj("q", ("embed", "heads"))(h)
        k = proj("k", ("embed", "heads"))(h)
        v = proj("v", ("embed", "heads"))(h)
        scores = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) * (c ** -0.5)
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = proj("proj_out", ("heads", "embed"))(jnp.einsum("bqk,bkc->bqc", weights, v))
        return x + out.reshape(b, height, width, c)


class Downsample(nn.Module):
    """Pad right and bottom by one, then a 3x3 stride-2 conv with no padding (the LDM asymmetric form)."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(x.shape[-1], 3, "conv", self.dtype, stride=2, padding="VALID")(x)


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(x.shape[-1], 3, "conv", self.dtype)(x)


class Encoder(nn.Module):
    ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    z_channels: int
    double_z: bool = True
    attn_resolutions: Sequence[int] = ()
    resolution: int = 256
    dtype: Dtype = jnp.float32
    norm_groups: int = GN_GROUPS

    @nn.compact
    def __call__(self, x):
        block = functools.partial(ResnetBlock, dtype=self.dtype, norm_groups=self.norm_groups)
        attn = functools.partial(AttnBlock, dtype=self.dtype, norm_groups=self.norm_groups)
        h = _conv(self.ch, 3, "conv_in", self.dtype)(x)
        res = self.resolution
        for level, mult in enumerate(self.ch_mult):
            for j in range(self.num_res_blocks):
                h = block(self.ch * mult, name=f"down_{level}_block_{j}")(h)
                if res in self.attn_resolutions:
                    h = attn(name=f"down_{level}_attn_{j}")(h)
            if level != len(self.ch_mult) - 1:
                h = Downsample(self.dtype, name=f"down_{level}_downsample")(h)
                res //= 2
        h = block(h.shape[-1], name="mid_block_1")(h)
        h = attn(name="mid_attn_1")(h)
        h = block(h.shape[-1], name="mid_block_2")(h)
        h = nn.swish(_group_norm("norm_out", self.dtype, self.norm_groups)(h))
        out = 2 * self.z_channels if self.double_z else self.z_channels
        return _conv(out, 3, "conv_out", self.dtype)(h)


class Decoder(nn.Module):
    ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    out_channels: int
    attn_resolutions: Sequence[int] = ()
    resolution: int = 256
    dtype: Dtype = jnp.float32
    norm_groups: int = GN_GROUPS

    @nn.compact
    def __call__(self, z):
        block = functools.partial(ResnetBlock, dtype=self.dtype, norm_groups=self.norm_groups)
        attn = functools.partial(AttnBlock, dtype=self.dtype, norm_groups=self.norm_groups)
        h = _conv(self.ch * self.ch_mult[-1], 3, "conv_in", self.dtype)(z)
        h = block(h.shape[-1], name="mid_block_1")(h)
        h = attn(name="mid_attn_1")(h)
        h = block(h.shape[-1], name="mid_block_2")(h)
        res = self.resolution // 2 ** (len(self.ch_mult) - 1)
        for level in reversed(range(len(self.ch_mult))):
            for j in range(self.num_res_blocks + 1):
                h = block(self.ch * self.ch_mult[level], name=f"up_{level}_block_{j}")(h)
                if res in self.attn_resolutions:
                    h = attn(name=f"up_{level}_attn_{j}")(h)
            if level != 0:
                h = Upsample(self.dtype, name=f"up_{level}_upsample")(h)
                res *= 2
        h = nn.swish(_group_norm("norm_out", self.dtype, self.norm_groups)(h))
        return _conv(self.out_channels, 3, "conv_out", self.dtype)(h)


class AutoencoderKL(nn.Module):
    in_channels: int
    out_channels: int
    ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    z_channels: int
    embed_dim: int
    scale_factor: float
    double_z: bool = True
    attn_resolutions: Sequence[int] = ()
    resolution: int = 256
    # (threshold, bound): if max|z| > threshold over the batch, clip z to [-bound, bound] before decoding.
    latent_clip: tuple[float, float] | None = None
    dtype: Dtype = jnp.float32
    # torch's GroupNorm(32) in every released size; a narrow preset needs fewer groups, since one channel per
    # group (32 channels) is instance norm, which erases each channel's level (an object's colour).
    norm_groups: int = GN_GROUPS

    def setup(self):
        common = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                      attn_resolutions=tuple(self.attn_resolutions), resolution=self.resolution, dtype=self.dtype,
                      norm_groups=self.norm_groups)
        self.encoder = Encoder(z_channels=self.z_channels, double_z=self.double_z, **common)
        self.decoder = Decoder(out_channels=self.out_channels, **common)
        self.quant_conv = _conv(2 * self.embed_dim, 1, None, self.dtype)
        self.post_quant_conv = _conv(self.z_channels, 1, None, self.dtype)

    def _fold(self, x, channels: int, what: str):
        """[B, H, W, C] or [B, F, H, W, C] -> ([N, H, W, C], unfold)."""
        if x.ndim not in (4, 5):
            raise ValueError(f"{what}: expected [B, H, W, C] or [B, F, H, W, C], got shape {tuple(x.shape)}")
        if x.shape[-1] != channels:
            raise ValueError(f"{what}: expected {channels} channels (last axis), got {x.shape[-1]} "
                             f"in shape {tuple(x.shape)}")
        if x.ndim == 4:
            return x, lambda y: y
        b, f = x.shape[:2]
        return x.reshape((b * f,) + x.shape[2:]), lambda y: y.reshape((b, f) + y.shape[1:])

    def encode_moments(self, x) -> jax.Array:
        """quant_conv(encoder(x)): [..., 2 * embed_dim] = (mean, unclamped logvar)."""
        x, unfold = self._fold(jnp.asarray(x), self.in_channels, "autoencoder input")
        return unfold(self.quant_conv(self.encoder(x)).astype(jnp.float32))

    def encode(self, x) -> DiagonalGaussian:
        mean, logvar = jnp.split(self.encode_moments(x), 2, axis=-1)
        return DiagonalGaussian(mean, jnp.clip(logvar, *LOGVAR_RANGE))

    def decode(self, z) -> jax.Array:
        z, unfold = self._fold(jnp.asarray(z), self.embed_dim, "autoencoder latent")
        return unfold(self.decoder(self.post_quant_conv(z)).astype(jnp.float32))

    def to_latent(self, x, rng: jax.Array | None = None) -> jax.Array:
        posterior = self.encode(x)
        z = posterior.mean if rng is None else posterior.sample(rng)
        return self.scale_factor * z

    def from_latent(self, z) -> jax.Array:
        z = jnp.asarray(z)
        if self.latent_clip is not None:
            threshold, bound = self.latent_clip
            z = jnp.where(jnp.max(jnp.abs(z)) > threshold, jnp.clip(z, -bound, bound), z)
        return self.decode(z * (1.0 / self.scale_factor))

    def encode_wave(self, wave, target_length: int, sample_rate: int | None = None) -> DiagonalGaussian:
        """AudioLDM's waveform entry point: `wav_to_fbank` -> [B, T, 64, 1] -> encode."""
        if self.in_channels != 1:
            raise ValueError(f"encode_wave needs the one-channel mel VAE, this autoencoder has "
                             f"{self.in_channels} input channels")
        return self.encode(mel.wav_to_fbank(wave, target_length, sample_rate)[..., None])

    def __call__(self, x, rng: jax.Array | None = None):
        """Reconstruction (for init and training): x -> posterior -> sample (or mean) -> decode."""
        posterior = self.encode(x)
        z = posterior.mean if rng is None else posterior.sample(rng)
        return self.decode(z), posterior


def kwargs_from_official(ddconfig: dict, embed_dim: int, audio: bool) -> dict:
    """Our constructor kwargs from the official `ddconfig` / `embed_dim` arguments."""
    if ddconfig.get("downsample_time", False):
        raise ValueError("ddconfig.downsample_time=True is not supported; the released audio VAE uses False")
    return dict(
        in_channels=ddconfig["in_channels"], out_channels=ddconfig["out_ch"], ch=ddconfig["ch"],
        ch_mult=tuple(ddconfig["ch_mult"]), num_res_blocks=ddconfig["num_res_blocks"],
        z_channels=ddconfig["z_channels"], embed_dim=embed_dim, double_z=ddconfig.get("double_z", True),
        attn_resolutions=tuple(ddconfig.get("attn_resolutions", ())), resolution=ddconfig.get("resolution", 256),
        scale_factor=AUDIO_SCALE if audio else IMAGE_SCALE, latent_clip=AUDIO_LATENT_CLIP if audio else None)


_IMAGE = dict(in_channels=3, out_channels=3, z_channels=4, embed_dim=4, scale_factor=IMAGE_SCALE)
_AUDIO = dict(in_channels=1, out_channels=1, z_channels=8, embed_dim=8, scale_factor=AUDIO_SCALE,
              latent_clip=AUDIO_LATENT_CLIP)

CONFIGS = {
    # SD kl-f8 (configs/model/sd.yaml): 83,653,863 parameters.
    "full": dict(_IMAGE, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2),
    "tiny": dict(_IMAGE, ch=32, ch_mult=(1, 2), num_res_blocks=1),
    # AudioLDM mel VAE (configs/model/audioldm.yaml): 55,376,873 parameters.
    "audio_full": dict(_AUDIO, ch=128, ch_mult=(1, 2, 4), num_res_blocks=2),
    "audio_tiny": dict(_AUDIO, ch=32, ch_mult=(1, 2), num_res_blocks=1),
}


def build(variant: str | dict, **overrides) -> AutoencoderKL:
    if isinstance(variant, str):
        if variant not in CONFIGS:
            raise ValueError(f"unknown autoencoder variant {variant!r}; expected one of {sorted(CONFIGS)}")
        variant = CONFIGS[variant]
    return AutoencoderKL(**{**variant, **overrides})
