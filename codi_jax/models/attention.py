"""The one scaled dot-product attention used by every attention layer in codi_jax.

    dot_product_attention(q, k, v, bias=None, *, scale=None, impl="xla") -> [B, Lq, H, D]

q [B, Lq, H, D], k and v [B, Lk, H, D], bias broadcastable to [B, H, Lq, Lk] (added to the
logits before the softmax: relative-position biases, causal or padding masks as large
negatives). Logits are scaled by `scale` (default D**-0.5; 1 for a q its layer scaled already,
as CLIP's). The softmax always runs in float32.

`impl` picks the kernel and is a config choice, not a code change:
  "xla"     plain jnp: runs everywhere and is the numerical reference.
  "cudnn"   jax.nn.dot_product_attention(implementation="cudnn") (fused flash attention on
            NVIDIA GPUs; fp16/bf16 only, head dim a multiple of 8 and at most 128).
  "pallas"  TPU Pallas flash attention (supports an additive bias).
  "splash"  TPU Pallas splash attention (no additive bias; sequences tiled by 128).
A kernel that cannot serve the call (wrong backend, unsupported dtype / head dim / bias,
sequence too short to pay for the kernel) falls back to "xla". The decision is made at trace
time from static shapes and the target platform (the devices of the mesh in context, so a step
lowered for a TPU topology on a CPU host takes the TPU kernels; else the default backend), so
nothing fails on CPU.

The TPU kernels are Pallas custom calls, which XLA's partitioner cannot split: under a mesh
they run per shard inside `jax.shard_map`, each device on its own examples (batch over the mesh
axes of the logical "batch" rule) and heads ("act_heads"), so no shard gathers the others' q, k, v.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from codi_jax.parallel.partitioning import context_rules

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


def xla_attention(q, k, v, bias=None, scale=None):
    """Reference attention in plain jnp (float32 logits and softmax)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _platform() -> str:
    device = jax.sharding.get_abstract_mesh().abstract_device
    return device.platform if device is not None else jax.default_backend()


def _cudnn_ok(q, k) -> bool:
    head_dim = q.shape[-1]
    return (_platform() == "gpu" and q.dtype in (jnp.float16, jnp.bfloat16)
            and head_dim % 8 == 0 and head_dim <= 128 and k.shape[1] >= MIN_KERNEL_LENGTH)


def _tpu_ok(q, k) -> bool:
    return (_platform() == "tpu" and q.shape[1] % _TPU_BLOCK == 0
            and k.shape[1] % _TPU_BLOCK == 0 and k.shape[1] >= MIN_KERNEL_LENGTH)


def _cudnn(q, k, v, bias, scale):
    if bias is not None:
        bias = jnp.broadcast_to(bias, (q.shape[0], q.shape[2], q.shape[1], k.shape[1])).astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, implementation="cudnn")


def _pallas_flash(q, k, v, bias, scale):
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    to_bhld = lambda x: jnp.transpose(x, (0, 2, 1, 3))
    ab = None
    if bias is not None:
        ab = jnp.broadcast_to(bias, (q.shape[0], q.shape[2], q.shape[1], k.shape[1])).astype(jnp.float32)
    out = fa.flash_attention(to_bhld(q), to_bhld(k), to_bhld(v), ab=ab, sm_scale=scale)
    return jnp.transpose(out, (0, 2, 1, 3))


def _splash(q, k, v, bias, scale):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    del bias  # resolve_impl picks splash only without one

    heads, lq, lk = q.shape[2], q.shape[1], k.shape[1]
    mask = sm.MultiHeadMask([sm.FullMask((lq, lk)) for _ in range(heads)])
    kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1)
    to_bhld = lambda x: jnp.transpose(x, (0, 2, 1, 3))
    q = to_bhld(q) * jnp.asarray(scale, q.dtype)
    out = jax.vmap(kernel)(q, to_bhld(k), to_bhld(v))
    return jnp.transpose(out, (0, 2, 1, 3))


def _mesh_axes(logical: str, size: int, mesh) -> tuple[str, ...]:
    """The mesh axes the rules in context give `logical`, as many of them (in order) as `size` divides into."""
    rule = dict(context_rules()).get(logical)
    axes = (rule,) if isinstance(rule, str) else tuple(rule or ())
    taken: list[str] = []
    for ax in axes:
        if ax in mesh.shape and size % (math.prod(mesh.shape[a] for a in taken) * mesh.shape[ax]) == 0:
            taken.append(ax)
        else:
            break
    return tuple(taken)


def _per_shard(kernel, q, k, v, bias, scale):
    """kernel(q, k, v, bias, scale) on each device's examples and heads of the mesh in context (directly
    without one). Keys stay whole on every shard; a mesh axis that divides neither the batch nor the heads
    runs the same shard on each of its devices. A bias is split like the scores it is added to."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel(q, k, v, bias, scale)
    batch = _mesh_axes("batch", q.shape[0], mesh) or None
    heads = _mesh_axes("act_heads", q.shape[2], mesh) or None
    qkv_spec = P(batch, None, heads, None)
    args, specs = (q, k, v), (qkv_spec,) * 3
    if bias is not None:
        args += (jnp.broadcast_to(bias, (q.shape[0], q.shape[2], q.shape[1], k.shape[1])),)
        specs += (P(batch, heads),)
    run = lambda q, k, v, *bias: kernel(q, k, v, bias[0] if bias else None, scale)  # noqa: E731
    # check_vma off: the Pallas calls carry no varying-manual-axes typing.
    return jax.shard_map(run, in_specs=specs, out_specs=qkv_spec, check_vma=False)(*args)


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


def dot_product_attention(q, k, v, bias=None, *, scale: float | None = None, impl: str = "xla"):
    """softmax(scale * q k^T + bias) v over [B, L, H, D] tensors (scale default D**-0.5); see the module
    docstring for `impl`."""
    _check(q, k, v, bias)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    chosen = resolve_impl(impl, q, k, bias)
    if chosen == "cudnn":
        return _cudnn(q, k, v, bias, scale)
    if chosen in ("pallas", "splash"):
        return _per_shard(_pallas_flash if chosen == "pallas" else _splash, q, k, v, bias, scale)
    return xla_attention(q, k, v, bias, scale)
