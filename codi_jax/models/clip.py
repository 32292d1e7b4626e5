"""CLIP ViT-L/14 as CoDi modifies it: the text and image prompt encoder, and the video encoder.

CoDi conditions every diffuser on one L2-normalised token [B, 1, 768]:
  text   final-LN state at the first EOS (`argmax(ids)`, EOS being the largest id) -> text_projection;
  image  ViT with pre-LN on the embeddings, `post_layernorm` on the CLS row -> visual_projection;
  video  the same ViT with a `temporal_self_attn` block in every layer, run over the frame axis after
         the spatial attention residual; hidden states are averaged over frames before CLS pooling.
The temporal block keeps the original's quirks: its LayerNorm normalises over the FRAME axis with the
variance floored at 1e-5 (not eps-added), the attention output goes through nan_to_num, and its
feed-forward is GEGLU with a channel LayerNorm of the same floored form. Its position and frame-rate
tables exist in the checkpoint but are never added (CoDi passes no frame rate).

Layouts: ids [B, L]; images [B, S, S, 3]; videos [B, F, S, S, 3] (pixels already normalised, see
`clip_preprocess`); hidden states [B, tokens, C]. Every attention runs through codi_jax.models.attention
(`attn_impl`); q is scaled after its projection, as the original, so the registry's own scale is 1.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from codi_jax.models.attention import dot_product_attention
from codi_jax.models.layers import dense, layer_norm, partitioned

LN_EPS = 1e-5  # the modified HF copy builds every LayerNorm with torch's default, ignoring the config eps
_dense = functools.partial(dense, kernel_init=nn.initializers.lecun_normal())  # this network's kernel init
TEMPORAL_VAR_FLOOR = 1e-5  # fp32 floor of the temporal norms' variance (replaces an added eps)
TEMPORAL_TABLE_LEN = 30  # rows of the unused pos / frame-rate tables
LOGIT_SCALE_INIT = math.log(1 / 0.07)

CONFIGS: dict[str, dict[str, Any]] = {
    # openai/clip-vit-large-patch14 with temporal layers: 737,647,217 parameters.
    "full": dict(vocab_size=49408, max_positions=77, text_width=768, text_layers=12, text_heads=12,
                 text_mlp=3072, image_size=224, patch_size=14, vision_width=1024, vision_layers=24,
                 vision_heads=16, vision_mlp=4096, projection_dim=768),
    # The golden fixture's config A.
    "tiny": dict(vocab_size=64, max_positions=16, text_width=32, text_layers=2, text_heads=4, text_mlp=64,
                 image_size=28, patch_size=7, vision_width=32, vision_layers=2, vision_heads=4, vision_mlp=64,
                 projection_dim=24),
}


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


def l2_normalize(x):
    """x / ||x||, no eps: CoDi divides by the plain norm."""
    return x / jnp.linalg.norm(x.astype(jnp.float32), axis=-1, keepdims=True).astype(x.dtype)


class SelfAttention(nn.Module):
    """CLIP multi-head attention: biased q/k/v/out projections, q scaled after its projection."""
    width: int
    heads: int
    dtype: Any = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, x, bias=None):
        b, length, _ = x.shape
        head_dim = self.width // self.heads
        split = lambda t: t.reshape(b, length, self.heads, head_dim)
        q = split(_dense(self.width, ("embed", "heads"), dtype=self.dtype, name="q_proj")(x) * head_dim ** -0.5)
        k = split(_dense(self.width, ("embed", "heads"), dtype=self.dtype, name="k_proj")(x))
        v = split(_dense(self.width, ("embed", "heads"), dtype=self.dtype, name="v_proj")(x))
        out = dot_product_attention(q, k, v, bias, scale=1.0, impl=self.attn_impl).reshape(b, length, self.width)
        return _dense(self.width, ("heads", "embed"), dtype=self.dtype, name="out_proj")(out)


class MLP(nn.Module):
    width: int
    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = quick_gelu(_dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x))
        return _dense(self.width, ("mlp", "embed"), dtype=self.dtype, name="fc2")(x)


def _floored_norm(x, axis, scale):
    """(x - mean) * max(var, 1e-5)^-1/2 * scale over `axis`, biased variance, in fp32 (the make-a-video norm)."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=axis, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=axis, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(jnp.maximum(var, TEMPORAL_VAR_FLOOR)) * scale).astype(x.dtype)


class TemporalRelPosBias(nn.Module):
    """Continuous position bias: MLP 1 -> C/2 (SiLU) -> C/2 (SiLU) -> heads on sign(i-j)*log(|i-j|+1)."""
    hidden: int
    heads: int

    @nn.compact
    def __call__(self, frames: int):
        pos = jnp.arange(frames, dtype=jnp.float32)
        rel = pos[:, None] - pos[None, :]
        h = (jnp.sign(rel) * jnp.log(jnp.abs(rel) + 1.0))[..., None]
        h = nn.silu(_dense(self.hidden, ("embed", "mlp"), name="net_0")(h))
        h = nn.silu(_dense(self.hidden, ("embed", "mlp"), name="net_1")(h))
        h = _dense(self.heads, ("mlp", "heads"), name="net_2")(h)
        return jnp.transpose(h, (2, 0, 1))  # [heads, F, F]


class TemporalAttention(nn.Module):
    """Frame-axis attention of `temporal_self_attn`: frame-axis norm, bias-free q/kv/out, rel-pos bias."""
    width: int
    heads: int
    dtype: Any = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, x, rel_pos_bias):
        n, frames, _ = x.shape
        head_dim = self.width // self.heads
        inner = head_dim * self.heads
        g = self.param("norm_g", partitioned(nn.initializers.ones_init(), ("norm",)), (self.width,))
        # Held for checkpoint parity only: CoDi never passes the frame rate that would add them.
        self.param("pos_embeds", partitioned(nn.initializers.normal(1.0), ("pos", "embed")),
                   (TEMPORAL_TABLE_LEN, self.width))
        self.param("frame_rate_embeds", partitioned(nn.initializers.normal(1.0), ("pos", "embed")),
                   (TEMPORAL_TABLE_LEN, self.width))
        h = _floored_norm(x, axis=1, scale=g)  # axis 1 is the frame axis: the original's quirk
        q = _dense(inner, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="to_q")(h)
        k, v = jnp.split(_dense(2 * inner, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="to_kv")(h),
                         2, axis=-1)
        split = lambda t: t.reshape(n, frames, self.heads, head_dim)
        q, k, v = split(q * head_dim ** -0.5), split(k), split(v)
        out = dot_product_attention(q, k, v, rel_pos_bias[None], scale=1.0, impl=self.attn_impl).reshape(
            n, frames, inner)
        # to_out starts at zero so that the block is the identity at init (make-a-video's choice).
        out = _dense(self.width, ("heads", "embed"), use_bias=False, dtype=self.dtype, name="to_out",
                     kernel_init=nn.initializers.zeros_init())(out)
        return jnp.nan_to_num(out)


class TemporalFeedForward(nn.Module):
    """1x1 conv C -> 2*inner, GEGLU (exact GELU on the second half), channel norm, 1x1 conv inner -> C."""
    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        inner = int(self.width * 4 * 2 / 3)
        h = _dense(2 * inner, ("embed", "mlp"), use_bias=False, dtype=self.dtype, name="proj_in")(x)
        value, gate = jnp.split(h, 2, axis=-1)
        h = value * jax.nn.gelu(gate, approximate=False)
        g = self.param("norm_g", partitioned(nn.initializers.ones_init(), ("norm",)), (inner,))
        h = _floored_norm(h, axis=-1, scale=g)
        return _dense(self.width, ("mlp", "embed"), use_bias=False, dtype=self.dtype, name="proj_out",
                      kernel_init=nn.initializers.zeros_init())(h)


class SpatioTemporalAttention(nn.Module):
    """`temporal_self_attn` of a video CLIP layer on [N, F, C] (N = batch x tokens): attention, then FF."""
    width: int
    heads: int
    dtype: Any = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, x):
        bias = TemporalRelPosBias(self.width // 2, self.heads, name="temporal_rel_pos_bias")(x.shape[1])
        x = x + TemporalAttention(self.width, self.heads, self.dtype, self.attn_impl, name="temporal_attn")(x, bias)
        return x + TemporalFeedForward(self.width, self.dtype, name="ff")(x)


class EncoderLayer(nn.Module):
    """Pre-LN layer; with `frames` set, `temporal_self_attn` runs between attention and MLP."""
    width: int
    heads: int
    mlp: int
    temporal: bool = False
    dtype: Any = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, x, bias=None, frames: int | None = None):
        x = x + SelfAttention(self.width, self.heads, self.dtype, self.attn_impl, name="self_attn")(
            layer_norm(LN_EPS, dtype=self.dtype, name="layer_norm1")(x), bias)
        if self.temporal:
            temporal = SpatioTemporalAttention(self.width, self.heads, self.dtype, self.attn_impl,
                                               name="temporal_self_attn")
            if frames is not None:
                n, tokens, c = x.shape
                b = n // frames
                t = x.reshape(b, frames, tokens, c).transpose(0, 2, 1, 3).reshape(b * tokens, frames, c)
                x = temporal(t).reshape(b, tokens, frames, c).transpose(0, 2, 1, 3).reshape(n, tokens, c)
            elif self.is_initializing():
                # Create the temporal weights even when the model is initialised on images.
                temporal(jnp.zeros((1, 2, self.width), x.dtype))
        h = layer_norm(LN_EPS, dtype=self.dtype, name="layer_norm2")(x)
        return x + MLP(self.width, self.mlp, self.dtype, name="mlp")(h)


class TextTransformer(nn.Module):
    vocab_size: int
    max_positions: int
    width: int
    layers: int
    heads: int
    mlp: int
    dtype: Any = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, ids):
        """ids [B, L] -> (final-LN hidden states [B, L, C], pooled [B, C] at argmax(ids))."""
        length = ids.shape[1]
        tok = nn.Embed(self.vocab_size, self.width, name="token_embedding",
                       embedding_init=partitioned(nn.initializers.normal(0.02), ("vocab", "embed")))
        pos = self.param("position_embedding", partitioned(nn.initializers.normal(0.01), ("pos", "embed")),
                         (self.max_positions, self.width))
        x = (tok(ids) + pos[:length]).astype(self.dtype)
        causal = jnp.where(jnp.tril(jnp.ones((length, length), bool)), 0.0, -jnp.inf).astype(jnp.float32)
        for i in range(self.layers):
            x = EncoderLayer(self.width, self.heads, self.mlp, dtype=self.dtype, attn_impl=self.attn_impl,
                             name=f"layers_{i}")(x, causal)
        x = layer_norm(LN_EPS, dtype=self.dtype, name="final_layer_norm")(x)
        # EOS is the largest id, so argmax finds the first EOS (padding is EOS too).
        pooled = x[jnp.arange(x.shape[0]), jnp.argmax(ids, axis=-1)]
        return x, pooled


class VisionTransformer(nn.Module):
    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    mlp: int
    temporal: bool = True
    dtype: Any = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, pixels):
        """[B, S, S, 3] images or [B, F, S, S, 3] videos (F > 1) -> (hidden [B, T, C], pooled [B, C]).

        Video hidden states are averaged over frames before the CLS row is taken and post-normalised.
        """
        frames = pixels.shape[1] if pixels.ndim == 5 else None
        if frames is not None:
            pixels = pixels.reshape((-1,) + pixels.shape[2:])
        n = pixels.shape[0]
        patches = nn.Conv(self.width, (self.patch_size,) * 2, strides=(self.patch_size,) * 2, padding="VALID",
                          use_bias=False, dtype=self.dtype, name="patch_embedding",
                          kernel_init=partitioned(nn.initializers.lecun_normal(),
                                            ("kernel", "kernel", "conv_in", "conv_out")))(pixels)
        patches = patches.reshape(n, -1, self.width)
        cls = self.param("class_embedding", partitioned(nn.initializers.normal(self.width ** -0.5), ("embed",)),
                         (self.width,))
        num_positions = (self.image_size // self.patch_size) ** 2 + 1
        pos = self.param("position_embedding", partitioned(nn.initializers.normal(0.02), ("pos", "embed")),
                         (num_positions, self.width))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(patches.dtype), (n, 1, self.width)), patches], axis=1)
        x = layer_norm(LN_EPS, dtype=self.dtype, name="pre_layrnorm")((x + pos).astype(self.dtype))
        for i in range(self.layers):
            x = EncoderLayer(self.width, self.heads, self.mlp, self.temporal, self.dtype, self.attn_impl,
                             name=f"layers_{i}")(x, frames=frames)
        if frames is not None:
            x = jnp.mean(x.reshape((n // frames, frames) + x.shape[1:]), axis=1)
        return x, layer_norm(LN_EPS, dtype=self.dtype, name="post_layernorm")(x[:, 0])


class CLIP(nn.Module):
    """CoDi's CLIP: `encode_text`, `encode_image`, `encode_video` each return [B, 1, projection_dim]."""
    vocab_size: int
    max_positions: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    projection_dim: int
    temporal: bool = True
    dtype: Any = jnp.float32
    attn_impl: str = "xla"

    def setup(self):
        self.text_model = TextTransformer(self.vocab_size, self.max_positions, self.text_width, self.text_layers,
                                          self.text_heads, self.text_mlp, self.dtype, self.attn_impl)
        self.vision_model = VisionTransformer(self.image_size, self.patch_size, self.vision_width,
                                              self.vision_layers, self.vision_heads, self.vision_mlp,
                                              self.temporal, self.dtype, self.attn_impl)
        self.text_projection = _dense(self.projection_dim, ("embed", "mlp"), use_bias=False, dtype=self.dtype)
        self.visual_projection = _dense(self.projection_dim, ("embed", "mlp"), use_bias=False, dtype=self.dtype)
        # Part of the released weights (contrastive temperature); CoDi's encoders never read it.
        self.logit_scale = self.param("logit_scale", partitioned(nn.initializers.constant(LOGIT_SCALE_INIT), ()), ())

    def __call__(self, input_ids, pixels):
        """Both towers at once (what `init` traces): (text embed, image-or-video embed)."""
        return self.encode_text(input_ids), self._encode_pixels(pixels)

    def text_features(self, input_ids):
        """(last_hidden_state [B, L, C], pooled [B, C]) of the text tower."""
        ids = jnp.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids: expected rank 2 [B, L], got shape {tuple(ids.shape)}")
        if ids.shape[1] > self.max_positions:
            raise ValueError(f"input_ids: {ids.shape[1]} tokens is longer than the {self.max_positions} "
                             f"positions CLIP has; expected at most {self.max_positions}")
        return self.text_model(ids)

    def vision_features(self, pixels):
        """(last_hidden_state [B, T, C], pooled [B, C]) of an image [B,S,S,3] or video [B,F,S,S,3] batch.

        A 5-D batch with one frame takes the image path, exactly as CoDi (it only keeps the frame
        axis when there is more than one frame), so the temporal layers never see F = 1.
        """
        pixels = jnp.asarray(pixels)
        if pixels.ndim not in (4, 5):
            raise ValueError(f"pixels: expected [B, S, S, 3] or [B, F, S, S, 3], got shape {tuple(pixels.shape)}")
        expected = (self.image_size, self.image_size, 3)
        if tuple(pixels.shape[-3:]) != expected:
            raise ValueError(f"pixels: expected frames of shape {expected} (preprocess first), "
                             f"got {tuple(pixels.shape[-3:])}")
        if pixels.ndim == 5:
            if pixels.shape[1] < 1:
                raise ValueError("pixels: the video has 0 frames; expected at least 1")
            if pixels.shape[1] == 1:
                pixels = pixels[:, 0]
        return self.vision_model(pixels.astype(self.dtype))

    def encode_text(self, input_ids):
        _, pooled = self.text_features(input_ids)
        return l2_normalize(self.text_projection(pooled))[:, None]

    def _encode_pixels(self, pixels):
        _, pooled = self.vision_features(pixels)
        return l2_normalize(self.visual_projection(pooled))[:, None]

    def encode_image(self, pixels):
        """pixels [B, S, S, 3] (normalised) -> [B, 1, D]."""
        if jnp.ndim(pixels) != 4:
            raise ValueError(f"encode_image: expected [B, S, S, 3], got shape {tuple(jnp.shape(pixels))}")
        return self._encode_pixels(pixels)

    def encode_video(self, pixels):
        """pixels [B, F, S, S, 3] (normalised frames) -> [B, 1, D]."""
        if jnp.ndim(pixels) != 5:
            raise ValueError(f"encode_video: expected [B, F, S, S, 3], got shape {tuple(jnp.shape(pixels))}")
        return self._encode_pixels(pixels)


def build(variant: str | dict, **overrides) -> CLIP:
    """CLIP from a preset name ("full", "tiny") or explicit constructor kwargs."""
    if isinstance(variant, str):
        if variant not in CONFIGS:
            raise ValueError(f"unknown CLIP variant {variant!r}; expected one of {sorted(CONFIGS)}")
        kwargs = dict(CONFIGS[variant])
    else:
        kwargs = dict(variant)
    kwargs.update(overrides)
    return CLIP(**kwargs)


def init_inputs(model: CLIP, batch: int = 1, frames: int = 2):
    """Dummy (ids, video) that `model.init` traces to create every parameter."""
    ids = jnp.zeros((batch, model.max_positions), jnp.int32)
    pixels = jnp.zeros((batch, frames, model.image_size, model.image_size, 3), jnp.float32)
    return ids, pixels
