"""The one scaled dot-product attention used by every attention layer in codi_jax.

    dot_product_attention(q, k, v, bias=None, *, impl="xla") -> [B, Lq, H, D]

q [B, Lq, H, D], k and v [B, Lk, H, D], bias broadcastable to [B, H, Lq, Lk] (added to the
logits before the softmax: relative-position biases, causal or padding masks as large
negatives). Logits are scaled by D**-0.5. The softmax always runs in float32.

`impl` picks the kernel and is a config choice, not a code change:
  "xla"     plain jnp: runs everywhere and is the numerical reference.
  "cudnn"   jax.nn.dot_product_attention(implementation="cudnn") (fused flash attention on
            NVIDIA GPUs; fp16/bf16 only, head dim a multiple of 8 and at most 128).
  "pallas"  TPU Pallas flash attention (supports an additive bias).
  "splash"  TPU Pallas splash attention (no additive bias; sequences tiled by 128).
A kernel that cannot serve the call (wrong backend, unsupported dtype / head dim / bias,
sequence too short to pay for the kernel) falls back to "xla". The decision is made at trace
time from static shapes and the default backend, so nothing fails on CPU.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLS = ("xla", "cudnn", "pallas", "splash")

# Below this many keys a fused kernel's launch and tiling overhead outweighs the saved
# memory traffic; the UNet's temporal attention (8 frames) and 1-token cross-attention live here.
MIN_KERNEL_LENGTH = 128
_TPU_BLOCK = 128


def _check(q, k, v, bias):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects q, k, v of rank 4 [B, L, H, D], got ranks {q.ndim}, {k.ndim}, {v.ndim}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention shapes disagree: q {q.shape}, k {k.shape}, v {v.shape}; "
                         "expected q [B, Lq, H, D] and k = v [B, Lk, H, D]")
    if bias is not None:
        target = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        try:
            jnp.broadcast_shapes(bias.shape, target)
        except ValueError:
            raise ValueError(f"attention bias {bias.shape} does not broadcast to [B, H, Lq, Lk] = {target}") from None


def xla_attention(q, k, v, bias=None):
    """Reference attention in plain jnp (float32 logits and softmax)."""
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _cudnn_ok(q, k) -> bool:
    head_dim = q.shape[-1]
    return (jax.default_backend() == "gpu" and q.dtype in (jnp.float16, jnp.bfloat16)
            and head_dim % 8 == 0 and head_dim <= 128 and k.shape[1] >= MIN_KERNEL_LENGTH)


def _tpu_ok(q, k) -> bool:
    return (jax.default_backend() == "tpu" and q.shape[1] % _TPU_BLOCK == 0
            and k.shape[1] % _TPU_BLOCK == 0 and k.shape[1] >= MIN_KERNEL_LENGTH)


def _cudnn(q, k, v, bias):
    if bias is not None:
        bias = jnp.broadcast_to(bias, (q.shape[0], q.shape[2], q.shape[1], k.shape[1])).astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="cudnn")


def _pallas_flash(q, k, v, bias):
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    to_bhld = lambda x: jnp.transpose(x, (0, 2, 1, 3))
    ab = None
    if bias is not None:
        ab = jnp.broadcast_to(bias, (q.shape[0], q.shape[2], q.shape[1], k.shape[1])).astype(jnp.float32)
    out = fa.flash_attention(to_bhld(q), to_bhld(k), to_bhld(v), ab=ab, sm_scale=q.shape[-1] ** -0.5)
    return jnp.transpose(out, (0, 2, 1, 3))


def _splash(q, k, v):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    heads, lq, lk = q.shape[2], q.shape[1], k.shape[1]
    mask = sm.MultiHeadMask([sm.FullMask((lq, lk)) for _ in range(heads)])
    kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1)
    to_bhld = lambda x: jnp.transpose(x, (0, 2, 1, 3))
    q = to_bhld(q) * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    out = jax.vmap(kernel)(q, to_bhld(k), to_bhld(v))
    return jnp.transpose(out, (0, 2, 1, 3))


def resolve_impl(impl: str, q, k, bias=None) -> str:
    """The implementation that `dot_product_attention` will actually run for these (static) shapes."""
    if impl not in IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {IMPLS}")
    if impl == "cudnn" and _cudnn_ok(q, k):
        return "cudnn"
    if impl == "pallas" and _tpu_ok(q, k):
        return "pallas"
    if impl == "splash" and bias is None and _tpu_ok(q, k):
        return "splash"
    return "xla"


def dot_product_attention(q, k, v, bias=None, *, impl: str = "xla"):
    """softmax(q k^T / sqrt(D) + bias) v over [B, L, H, D] tensors; see the module docstring for `impl`."""
    _check(q, k, v, bias)
    chosen = resolve_impl(impl, q, k, bias)
    if chosen == "cudnn":
        return _cudnn(q, k, v, bias)
    if chosen == "pallas":
        return _pallas_flash(q, k, v, bias)
    if chosen == "splash":
        return _splash(q, k, v)
    return xla_attention(q, k, v, bias)
