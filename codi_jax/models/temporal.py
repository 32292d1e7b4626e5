"""CoDi's pseudo-temporal module (`SpatioTemporalAttention` of the released video UNet).

Applied after every ResBlock of the video UNet (and of its environment encoder). On a
video x [B, F, H, W, C] it runs, each step residual:
  1. temporal attention over frames, per pixel: the tokens [B*H*W, F, C] get learned frame
     position embeddings and the hard-wired frame-rate embedding (index 3, i.e. "4 fps"),
     are normalised over the *frame* axis (the released code's quirk; it makes the
     frame-rate embedding a per-channel constant that cancels, and with it every
     frame-constant part of the input, the single context token's included), and attend
     with 8 heads of width C / video_dim_scale_factor plus a continuous relative-position bias.
     `norm="channels"` normalises each frame's token over channels instead (a stated departure,
     see NORMS) so the attention's queries and keys see the condition;
  2. a GEGLU feed-forward whose second half of channels is shifted one frame forward
     (token shift), normalised over channels;
  3. a latent shift: conv3x3(SiLU(GN(x))) per frame, its channels cut into 8 chunks,
     chunk i moved i frames forward with zero fill.
The residual of step 1 is the input *without* the embeddings. An image x [N, H, W, C]
passes through unchanged, so one set of weights serves image and video generation.
The frame norms use (x - mean) * rsqrt(max(var, 1e-5)): a floor on the variance, not an added eps.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from codi_jax.models.attention import dot_product_attention
from codi_jax.models.layers import GroupNorm32, conv, dense

MAX_FRAMES = 30  # rows of the position / frame-rate tables
FRAME_RATE_INDEX = 3  # the released model always looks up frame rate 4
TEMPORAL_HEADS = 8
LATENT_SHIFT_CHUNKS = 8
VAR_FLOOR = 1e-5
# The temporal attention's input norm: over the frame axis (released) or over channels. With the frame norm the
# condition, which reaches every frame as the same vector (cross-attention to one context token), cancels before
# the only layer that knows absolute frame positions, so a condition-dependent timing (Shapes & Tones' onset,
# carried by audio) must be learned through later nonlinearities; the channel norm hands it to the attention.
NORMS = {"frames": 1, "channels": -1}

Dtype = jnp.dtype


def _floored_norm(x, axis: int):
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=axis, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=axis, keepdims=True)
    return (xf - mean) * jax.lax.rsqrt(jnp.maximum(var, VAR_FLOOR))


def _shift_frames(x, shift: int):
    """Move x [B, F, ...] `shift` frames forward along axis 1, zeros entering at frame 0."""
    frames = x.shape[1]
    if shift == 0:
        return x
    if shift >= frames:
        return jnp.zeros_like(x)
    pad = [(0, 0)] * x.ndim
    pad[1] = (shift, 0)
    return jnp.pad(x[:, :frames - shift], pad)


def _torch_chunks(size: int, chunks: int) -> list[tuple[int, int]]:
    """[start, stop) bounds of torch.chunk: equal pieces of ceil(size / chunks), the last one shorter."""
    step = -(-size // chunks)
    return [(s, min(s + step, size)) for s in range(0, size, step)]


class RelativePositionBias(nn.Module):
    """MLP over sign(d) * log(|d| + 1), d = i_query - j_key: Linear(1, C/2), SiLU, Linear(C/2, C/2), SiLU,
    Linear(C/2, heads) -> [heads, F, F]."""
    hidden: int
    heads: int

    @nn.compact
    def __call__(self, frames: int):
        pos = jnp.arange(frames, dtype=jnp.float32)
        d = pos[:, None] - pos[None, :]
        h = (jnp.sign(d) * jnp.log1p(jnp.abs(d)))[..., None]
        h = nn.silu(dense(self.hidden, ("embed", "mlp"), name="dense_0")(h))
        h = nn.silu(dense(self.hidden, ("mlp", "embed"), name="dense_1")(h))
        h = dense(self.heads, ("embed", "heads"), name="dense_2")(h)
        return jnp.transpose(h, (2, 0, 1))


class TemporalAttention(nn.Module):
    """Attention over the frame axis of tokens [N, F, C] with a [heads, F, F] logit bias."""
    channels: int
    heads: int
    head_dim: int
    attn_impl: str = "xla"
    norm: str = "frames"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, bias):
        frames = x.shape[1]
        table = lambda name: self.param(name, nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ("pos", "embed")), (MAX_FRAMES, self.channels))
        pos, frame_rate = table("pos_embeds"), table("frame_rate_embeds")
        h = x.astype(jnp.float32) + pos[:frames] + frame_rate[FRAME_RATE_INDEX]
        gain = self.param("norm_scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                          (self.channels,))
        h = (_floored_norm(h, axis=NORMS[self.norm]) * gain).astype(self.dtype)
        inner = self.heads * self.head_dim
        q = dense(inner, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="to_q")(h)
        kv = dense(2 * inner, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="to_kv")(h)
        split = lambda t: t.reshape(t.shape[:2] + (self.heads, self.head_dim))
        out = dot_product_attention(split(q), split(kv[..., :inner]), split(kv[..., inner:]), bias[None],
                                    impl=self.attn_impl)
        out = out.reshape(out.shape[:2] + (inner,))
        out = dense(self.channels, ("heads", "embed"), use_bias=False, zero_init=True, dtype=self.dtype,
                    name="to_out")(out)
        return x.astype(self.dtype) + out


class TemporalFeedForward(nn.Module):
    """x [B, F, H, W, C] -> GEGLU(C -> int(8C/3)) -> token shift -> channel norm -> Linear back to C."""
    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        inner = int(self.channels * 4 * 2 / 3)
        h = dense(2 * inner, ("embed", "mlp"), use_bias=False, dtype=self.dtype, name="proj_in")(x)
        h = h.astype(jnp.float32)
        h = h[..., :inner] * jax.nn.gelu(h[..., inner:], approximate=False)
        keep = -(-inner // 2)
        h = jnp.concatenate([h[..., :keep], _shift_frames(h[..., keep:], 1)], axis=-1)
        gain = self.param("norm_scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                          (inner,))
        h = (_floored_norm(h, axis=-1) * gain).astype(self.dtype)
        return dense(self.channels, ("mlp", "embed"), use_bias=False, dtype=self.dtype, name="proj_out")(h)


class LatentShift(nn.Module):
    """x [B, F, H, W, C] -> conv3x3(SiLU(GN(x))) per frame, 8 channel chunks, chunk i shifted i frames."""
    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, f = x.shape[:2]
        h = x.reshape((b * f,) + x.shape[2:])
        h = nn.silu(GroupNorm32(1e-5, self.dtype, name="norm")(h))
        h = conv(self.channels, 3, zero_init=True, dtype=self.dtype, name="conv")(h)
        h = h.reshape(x.shape)
        pieces = [_shift_frames(h[..., lo:hi], i)
                  for i, (lo, hi) in enumerate(_torch_chunks(self.channels, LATENT_SHIFT_CHUNKS))]
        return jnp.concatenate(pieces, axis=-1)


class SpatioTemporalAttention(nn.Module):
    """Identity on x [N, H, W, C]; temporal attention, temporal FF and latent shift on x [B, F, H, W, C]."""
    channels: int
    video_dim_scale_factor: int = 4
    attn_impl: str = "xla"
    norm: str = "frames"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.norm not in NORMS:
            raise ValueError(f"unknown temporal norm {self.norm!r}; expected one of {sorted(NORMS)}")
        if x.ndim == 4:
            if self.is_initializing():
                # Parameters are created on a one-frame video so that an image-initialised
                # UNet has the same tree as a video-initialised one.
                self._video(x[:, None])
            return x
        if x.ndim != 5:
            raise ValueError(f"SpatioTemporalAttention expects [N, H, W, C] or [B, F, H, W, C], got rank {x.ndim}")
        return self._video(x)

    def _video(self, x):
        b, f, height, width, c = x.shape
        if c != self.channels:
            raise ValueError(f"SpatioTemporalAttention expects {self.channels} channels, got {c}")
        if f > MAX_FRAMES:
            raise ValueError(f"video has {f} frames; the temporal position table holds at most {MAX_FRAMES}")
        head_dim = c // self.video_dim_scale_factor
        bias = RelativePositionBias(c // 2, TEMPORAL_HEADS, name="rel_pos")(f)
        tokens = jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(b * height * width, f, c)
        tokens = TemporalAttention(c, TEMPORAL_HEADS, head_dim, self.attn_impl, self.norm, self.dtype,
                                   name="attn")(tokens, bias)
        x = jnp.transpose(tokens.reshape(b, height, width, f, c), (0, 3, 1, 2, 4))
        x = x + TemporalFeedForward(c, self.dtype, name="ff")(x)
        return x + LatentShift(c, self.dtype, name="shift")(x)
