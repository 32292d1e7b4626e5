"""CLAP audio branch as CoDi uses it: 16 kHz waves -> one L2-normalised token [B, 1, 768].

The path, each step as the released wrapper (`CLAPAudioEmbeddingClassifierFreev2`) runs it:
  1. resample 16 -> 48 kHz with torchaudio's default windowed sinc (Hann window, width 6, rolloff 0.99);
  2. fit to `clip_samples`: equal -> unchanged; shorter -> "repeatpad" (tile int(clip/len) times, then
     right zero-pad); longer -> a random crop (seeded here by an explicit `rng`);
  3. torchlibrosa front end: reflect-centred STFT with a periodic Hann window, POWER spectrum, Slaney
     mel (librosa), 10*log10(clamp(mel, 1e-10)) with ref 1 and no top_db;
  4. bn0: BatchNorm over the mel bins with the checkpoint's running statistics (`batch_stats`);
  5. reshape_wav2img: bicubic (align_corners=True, A = -0.75) resize of time to spec_size*freq_ratio,
     then time cut into freq_ratio chunks stacked along frequency (chunk-major);
  6. HTSAT Swin: patch embed (conv + LN), shifted windows (cyclic shift w/2 on odd blocks, -100 mask),
     relative position bias tables, PatchMerging between stages, final LN, mean over all positions;
  7. audio_projection (Linear -> ReLU -> Linear), then x / max(||x||, 1e-12).
Layouts: waves [B, N]; log-mel [B, T, mel_bins]; spectrogram image [B, H, W, 1] (frequency rows,
time columns); token sequences [B, H*W, C].
HTSAT's AudioSet classifier (`tscam_conv`, `head`) and CLAP's `audio_transform` are in the checkpoint
and the parameter count, so they are held here, but CoDi's embedding never applies them.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.data.mel import hann_window, mel_filterbank
from codi_jax.models.layers import dense, layer_norm, partitioned

INPUT_SAMPLE_RATE = 16000  # the wrapper only accepts 16 kHz
DB_FLOOR = 1e-10
BN_EPS = 1e-5
LN_EPS = 1e-5
_dense = functools.partial(dense, kernel_init=nn.initializers.truncated_normal(0.02))  # this network's kernel init
SHIFT_MASK = -100.0  # Swin's shifted-window mask value (not -inf)
BICUBIC_A = -0.75

CONFIGS: dict[str, dict[str, Any]] = {
    # HTSAT-large + 768-d projection, as in CoDi_encoders.pth: 280,951,959 parameters.
    "full": dict(spec_size=256, patch_size=4, patch_stride=(4, 4), embed_dim=256, depths=(2, 2, 12, 2),
                 num_heads=(4, 8, 16, 32), window_size=8, num_classes=527, sample_rate=48000, n_fft=1024,
                 hop_size=480, mel_bins=64, fmin=50.0, fmax=14000.0, clip_samples=480000, joint_embed_dim=768),
    # The golden fixture's config A.
    "tiny": dict(spec_size=128, patch_size=4, patch_stride=(4, 4), embed_dim=16, depths=(2, 2, 2, 2),
                 num_heads=(2, 2, 4, 8), window_size=8, num_classes=10, sample_rate=48000, n_fft=1024,
                 hop_size=480, mel_bins=32, fmin=50.0, fmax=14000.0, clip_samples=48000, joint_embed_dim=32),
}

_HIGHEST = jax.lax.Precision.HIGHEST



# ---------------------------------------------------------------------------------------------------
# Waveform front end (no parameters).

@functools.lru_cache(maxsize=None)
def _sinc_kernel(orig_freq: int, new_freq: int, width_zeros: int = 6, rolloff: float = 0.99):
    """torchaudio's sinc_interp_hann kernel [new, 2*width + orig] and its half-width, built in float32
    like torchaudio does for a float32 wave (frequencies already divided by their gcd)."""
    f32 = np.float32
    base = min(orig_freq, new_freq) * rolloff
    width = math.ceil(width_zeros * orig_freq / base)
    idx = np.arange(-width, width + orig_freq, dtype=f32)[None] / f32(orig_freq)
    t = (np.arange(0, -new_freq, -1, dtype=f32)[:, None] / f32(new_freq) + idx) * f32(base)
    t = np.clip(t, -width_zeros, width_zeros)
    window = np.cos(t * f32(math.pi) / f32(width_zeros) / f32(2)) ** 2
    t = t * f32(math.pi)
    safe = np.where(t == 0, f32(1), t)
    kernel = np.where(t == 0, f32(1), np.sin(safe) / safe) * (window * f32(base / orig_freq))
    return kernel.astype(np.float32), width


def resample(wave, orig_freq: int, new_freq: int):
    """Band-limited resampling of [B, N] as `torchaudio.functional.resample` (defaults) -> [B, ceil(N*new/orig)]."""
    wave = jnp.asarray(wave, jnp.float32)
    g = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // g, int(new_freq) // g
    if orig == new:
        return wave
    kernel, width = _sinc_kernel(orig, new)
    length = wave.shape[-1]
    padded = jnp.pad(wave, ((0, 0), (width, width + orig)))
    steps = (padded.shape[-1] - kernel.shape[1]) // orig + 1
    index = jnp.arange(steps)[:, None] * orig + jnp.arange(kernel.shape[1])[None, :]
    out = jnp.einsum("btk,nk->btn", padded[:, index], jnp.asarray(kernel), precision=_HIGHEST)
    return out.reshape(wave.shape[0], -1)[:, :math.ceil(new * length / orig)]


def fit_to_clip(wave, clip_samples: int, rng=None):
    """[B, N] -> [B, clip_samples]: unchanged, repeat-padded, or randomly cropped (needs `rng`), per sample."""
    wave = jnp.asarray(wave, jnp.float32)
    n = wave.shape[-1]
    if n == 0:
        raise ValueError("wave: 0 samples; expected a non-empty wave")
    if n == clip_samples:
        return wave
    if n < clip_samples:
        tiled = jnp.tile(wave, (1, clip_samples // n))
        return jnp.pad(tiled, ((0, 0), (0, clip_samples - tiled.shape[-1])))
    if rng is None:
        raise ValueError(f"wave: {n} samples at 48 kHz is longer than clip_samples={clip_samples}, which takes "
                         f"a random crop; pass rng (a jax PRNG key) or at most {clip_samples} samples")
    starts = jax.random.randint(rng, (wave.shape[0],), 0, n - clip_samples + 1)
    return jax.vmap(lambda w, s: jax.lax.dynamic_slice(w, (s,), (clip_samples,)))(wave, starts)


def log_mel_db(waveform, sample_rate: int, n_fft: int, hop_size: int, mel_bins: int, fmin: float, fmax: float):
    """torchlibrosa Spectrogram + LogmelFilterBank: [B, N] -> dB log-mel [B, N // hop + 1, mel_bins]."""
    waveform = jnp.asarray(waveform, jnp.float32)
    pad = n_fft // 2
    if waveform.shape[-1] <= pad:
        raise ValueError(f"waveform: {waveform.shape[-1]} samples is too short for the reflect padding; "
                         f"expected more than {pad}")
    padded = jnp.pad(waveform, ((0, 0), (pad, pad)), mode="reflect")
    frames = (padded.shape[-1] - n_fft) // hop_size + 1
    index = jnp.arange(frames)[:, None] * hop_size + jnp.arange(n_fft)[None, :]
    spectrum = jnp.fft.rfft(padded[:, index] * jnp.asarray(hann_window(n_fft)), n=n_fft, axis=-1)
    power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)
    mel = jnp.einsum("btf,mf->btm", power, jnp.asarray(mel_filterbank(sample_rate, n_fft, mel_bins, fmin, fmax)),
                     precision=_HIGHEST)
    return 10.0 * jnp.log10(jnp.maximum(mel, DB_FLOOR))


@functools.lru_cache(maxsize=None)
def _bicubic_taps(n_in: int, n_out: int):
    """Indices [n_out, 4] and weights [n_out, 4] of torch's bicubic, align_corners=True, border-clamped."""
    f32 = np.float32
    scale = f32((n_in - 1) / (n_out - 1)) if n_out > 1 else f32(0)
    src = scale * np.arange(n_out, dtype=f32)
    base = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    t = np.clip(src - base.astype(f32), 0, 1).astype(f32)
    a = f32(BICUBIC_A)
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1).astype(np.float32)
    index = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, n_in - 1)
    return index, weights


def _bicubic_resize(x, axis: int, size: int):
    index, weights = _bicubic_taps(x.shape[axis], size)
    taps = jnp.take(x, jnp.asarray(index), axis=axis)  # the axis becomes [size, 4]
    taps = jnp.moveaxis(taps, (axis, axis + 1), (-2, -1))
    out = jnp.einsum("...sk,sk->...s", taps, jnp.asarray(weights), precision=_HIGHEST)
    return jnp.moveaxis(out, -1, axis)


def spectrogram_image(logmel, spec_size: int, freq_ratio: int):
    """HTSAT's reshape_wav2img on [B, T, F] -> [B, freq_ratio*F', T'/freq_ratio, 1]."""
    target_t, target_f = spec_size * freq_ratio, spec_size // freq_ratio
    _, t, f = logmel.shape
    if t > target_t or f > target_f:
        raise ValueError(f"log-mel of {t} frames x {f} bins exceeds the Swin input; expected at most "
                         f"{target_t} frames and {target_f} bins")
    if t < target_t:
        logmel = _bicubic_resize(logmel, 1, target_t)
    if f < target_f:
        logmel = _bicubic_resize(logmel, 2, target_f)
    b, t, f = logmel.shape
    x = jnp.swapaxes(logmel, 1, 2).reshape(b, f, freq_ratio, t // freq_ratio)
    return jnp.swapaxes(x, 1, 2).reshape(b, freq_ratio * f, t // freq_ratio)[..., None]


# ---------------------------------------------------------------------------------------------------
# HTSAT Swin transformer.

def _relative_position_index(window: int) -> np.ndarray:
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def _windows(x, window: int):
    """[B, H, W, C] -> [B * nW, window*window, C], windows in row-major order per image."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def _unwindows(x, window: int, h: int, w: int):
    c = x.shape[-1]
    x = x.reshape(-1, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def _shift_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
    """[nW, N, N] additive mask: -100 between tokens from different regions of the rolled image."""
    regions = np.zeros((1, h, w, 1), np.float32)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, (hs, ws) in enumerate((hs, ws) for hs in bands for ws in bands):
        regions[:, hs, ws, :] = i
    ids = np.asarray(_windows(regions, window))[..., 0]
    return np.where(ids[:, None, :] != ids[:, :, None], SHIFT_MASK, 0.0).astype(np.float32)


def effective_window(resolution: Sequence[int], window: int, shift: int) -> tuple[int, int]:
    """Swin's rule: a stage no larger than the window uses one unshifted window of its size."""
    if min(resolution) <= window:
        return min(resolution), 0
    return window, shift


class WindowAttention(nn.Module):
    dim: int
    heads: int
    window: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        n_windows_b, n, c = x.shape
        head_dim = c // self.heads
        table = self.param("relative_position_bias_table", partitioned(nn.initializers.truncated_normal(0.02),
                                                                  ("pos", "heads")),
                           ((2 * self.window - 1) ** 2, self.heads))
        qkv = _dense(3 * c, ("embed", "heads"), dtype=self.dtype, name="qkv")(x)
        qkv = qkv.reshape(n_windows_b, n, 3, self.heads, head_dim)
        q, k, v = qkv[:, :, 0] * head_dim ** -0.5, qkv[:, :, 1], qkv[:, :, 2]
        scores = jnp.einsum("bihd,bjhd->bhij", q, k).astype(jnp.float32)
        bias = table[jnp.asarray(_relative_position_index(self.window))]  # [N, N, heads]
        scores = scores + jnp.transpose(bias, (2, 0, 1))[None]
        if mask is not None:
            n_windows = mask.shape[0]
            scores = scores.reshape(-1, n_windows, self.heads, n, n) + jnp.asarray(mask)[None, :, None]
            scores = scores.reshape(-1, self.heads, n, n)
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhij,bjhd->bihd", weights, v).reshape(n_windows_b, n, c)
        return _dense(c, ("heads", "embed"), dtype=self.dtype, name="proj")(out)


class SwinBlock(nn.Module):
    dim: int
    resolution: tuple[int, int]
    heads: int
    window: int
    shift: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h, w = self.resolution
        window, shift = effective_window(self.resolution, self.window, self.shift)
        b, _, c = x.shape
        y = layer_norm(LN_EPS, dtype=self.dtype, name="norm1")(x).reshape(b, h, w, c)
        if shift:
            y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
        mask = _shift_mask(h, w, window, shift) if shift else None
        y = WindowAttention(self.dim, self.heads, window, self.dtype, name="attn")(_windows(y, window), mask)
        y = _unwindows(y, window, h, w)
        if shift:
            y = jnp.roll(y, (shift, shift), axis=(1, 2))
        x = x + y.reshape(b, h * w, c)
        y = layer_norm(LN_EPS, dtype=self.dtype, name="norm2")(x)
        y = jax.nn.gelu(_dense(int(self.dim * self.mlp_ratio), ("embed", "mlp"), dtype=self.dtype, name="fc1")(y),
                        approximate=False)
        return x + _dense(self.dim, ("mlp", "embed"), dtype=self.dtype, name="fc2")(y)


class PatchMerging(nn.Module):
    """2x2 neighbours in the order (even, even), (odd, even), (even, odd), (odd, odd) rows/cols -> LN(4C) -> 2C."""
    dim: int
    resolution: tuple[int, int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h, w = self.resolution
        b, _, c = x.shape
        x = x.reshape(b, h, w, c)
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        x = layer_norm(LN_EPS, dtype=self.dtype, name="norm")(x.reshape(b, -1, 4 * c))
        return _dense(2 * self.dim, ("mlp", "embed"), use_bias=False, dtype=self.dtype, name="reduction")(x)


class HTSAT(nn.Module):
    """HTSAT's Swin trunk: normalised log-mel [B, T, mel] -> (spectrogram image, embedding [B, C_final])."""
    spec_size: int
    patch_size: int
    patch_stride: tuple[int, int]
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    num_classes: int
    mel_bins: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.mel_bins

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @nn.compact
    def __call__(self, logmel):
        x = nn.BatchNorm(use_running_average=True, axis=-1, epsilon=BN_EPS, name="bn0",
                         scale_init=partitioned(nn.initializers.ones_init(), ("norm",)),
                         bias_init=partitioned(nn.initializers.zeros_init(), ("norm",)))(logmel)
        image = spectrogram_image(x, self.spec_size, self.freq_ratio)
        stride = tuple(self.patch_stride)
        pad = [((self.patch_size - s) // 2,) * 2 for s in stride]
        x = nn.Conv(self.embed_dim, (self.patch_size,) * 2, strides=stride, padding=pad, dtype=self.dtype,
                    name="patch_embed_proj",
                    kernel_init=partitioned(nn.initializers.lecun_normal(),
                                            ("kernel", "kernel", "conv_in", "conv_out")),
                    bias_init=partitioned(nn.initializers.zeros_init(), ("conv_out",)))(image.astype(self.dtype))
        b, gh, gw, _ = x.shape
        x = layer_norm(LN_EPS, dtype=self.dtype, name="patch_embed_norm")(x.reshape(b, gh * gw, self.embed_dim))
        for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
            dim, res = self.embed_dim * 2 ** i, (gh // 2 ** i, gw // 2 ** i)
            for j in range(depth):
                x = SwinBlock(dim, res, heads, self.window_size, 0 if j % 2 == 0 else self.window_size // 2,
                              self.mlp_ratio, self.dtype, name=f"layers_{i}_blocks_{j}")(x)
            if i < len(self.depths) - 1:
                x = PatchMerging(dim, res, self.dtype, name=f"layers_{i}_downsample")(x)
        x = layer_norm(LN_EPS, dtype=self.dtype, name="norm")(x)
        if self.is_initializing():
            # The AudioSet classifier is part of the checkpoint; create its weights, never apply them.
            freq_rows = self.spec_size // 2 ** (len(self.depths) - 1) // stride[0] // self.freq_ratio
            nn.Conv(self.num_classes, (freq_rows, 3), name="tscam_conv",
                    kernel_init=partitioned(nn.initializers.lecun_normal(),
                                            ("kernel", "kernel", "conv_in", "conv_out")),
                    bias_init=partitioned(nn.initializers.zeros_init(), ("conv_out",)))(
                jnp.zeros((1, freq_rows, 3, self.num_features)))
            _dense(self.num_classes, ("embed", "mlp"), name="head")(jnp.zeros((1, self.num_classes)))
        return image, jnp.mean(x, axis=1)


class ProjectionMLP(nn.Module):
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.relu(_dense(self.features, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x))
        return _dense(self.features, ("mlp", "embed"), dtype=self.dtype, name="fc2")(x)


class CLAPAudio(nn.Module):
    """CoDi's CLAP audio encoder: `__call__(wave16k [B, N], sample_rate=16000, rng=None)` -> [B, 1, D]."""
    spec_size: int
    patch_size: int
    patch_stride: tuple[int, int]
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    num_classes: int
    sample_rate: int
    n_fft: int
    hop_size: int
    mel_bins: int
    fmin: float
    fmax: float
    clip_samples: int
    joint_embed_dim: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    def setup(self):
        if self.spec_size < self.mel_bins:
            raise ValueError(f"CLAP: spec_size {self.spec_size} is smaller than mel_bins {self.mel_bins}; "
                             f"expected spec_size >= mel_bins")
        self.audio_branch = HTSAT(self.spec_size, self.patch_size, tuple(self.patch_stride), self.embed_dim,
                                  tuple(self.depths), tuple(self.num_heads), self.window_size, self.num_classes,
                                  self.mel_bins, self.mlp_ratio, self.dtype)
        self.audio_projection = ProjectionMLP(self.joint_embed_dim, self.dtype)
        self.audio_transform = ProjectionMLP(self.joint_embed_dim, self.dtype)

    def __call__(self, wave, sample_rate: int = INPUT_SAMPLE_RATE, rng=None):
        return self.encode_audio(wave, sample_rate, rng)

    def prepare_waveform(self, wave, sample_rate: int = INPUT_SAMPLE_RATE, rng=None):
        """16 kHz waves [B, N] -> 48 kHz clips [B, clip_samples] (resample, then repeat-pad or crop)."""
        if int(sample_rate) != INPUT_SAMPLE_RATE:
            raise ValueError(f"CLAP: sample rate {sample_rate} Hz is not supported; expected {INPUT_SAMPLE_RATE} Hz "
                             f"(CoDi's wrapper resamples 16 kHz to {self.sample_rate} Hz)")
        wave = jnp.asarray(wave, jnp.float32)
        if wave.ndim != 2:
            raise ValueError(f"CLAP: expected waves [B, N], got shape {tuple(wave.shape)}")
        return fit_to_clip(resample(wave, INPUT_SAMPLE_RATE, self.sample_rate), self.clip_samples, rng)

    def waveform_features(self, waveform) -> dict:
        """48 kHz clips [B, clip_samples] -> logmel, spec_image, embedding, projected and embed [B, 1, D]."""
        waveform = jnp.asarray(waveform, jnp.float32)
        if waveform.ndim != 2 or waveform.shape[1] != self.clip_samples:
            raise ValueError(f"CLAP: expected clips [B, {self.clip_samples}] at {self.sample_rate} Hz, "
                             f"got shape {tuple(waveform.shape)}")
        logmel = log_mel_db(waveform, self.sample_rate, self.n_fft, self.hop_size, self.mel_bins, self.fmin,
                            self.fmax)
        image, embedding = self.audio_branch(logmel)
        projected = self.audio_projection(embedding)
        if self.is_initializing():
            self.audio_transform(projected)  # held for checkpoint parity; unused at inference
        p32 = projected.astype(jnp.float32)
        embed = p32 / jnp.maximum(jnp.linalg.norm(p32, axis=-1, keepdims=True), 1e-12)
        return dict(logmel=logmel, spec_image=image, embedding=embedding, projected=projected,
                    embed=embed[:, None].astype(projected.dtype))

    def encode_audio(self, wave, sample_rate: int = INPUT_SAMPLE_RATE, rng=None):
        """16 kHz waves [B, N] -> L2-normalised [B, 1, joint_embed_dim]; `rng` seeds crops of clips over 10 s."""
        return self.waveform_features(self.prepare_waveform(wave, sample_rate, rng))["embed"]


def build(variant: str | dict, **overrides) -> CLAPAudio:
    """CLAPAudio from a preset name ("full", "tiny") or explicit constructor kwargs."""
    if isinstance(variant, str):
        if variant not in CONFIGS:
            raise ValueError(f"unknown CLAP variant {variant!r}; expected one of {sorted(CONFIGS)}")
        kwargs = dict(CONFIGS[variant])
    else:
        kwargs = dict(variant)
    kwargs.update(overrides)
    return CLAPAudio(**kwargs)


def init_inputs(model: CLAPAudio, batch: int = 1):
    """A dummy 16 kHz wave that `model.init` traces: at most one clip after resampling (no crop)."""
    n = model.clip_samples * INPUT_SAMPLE_RATE // model.sample_rate
    return (jnp.zeros((batch, n), jnp.float32),)
