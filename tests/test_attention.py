"""The shared attention function: xla reference against a naive softmax, kernel selection and fallbacks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codi_jax.models import attention
from codi_jax.models.attention import dot_product_attention, resolve_impl


def _naive(q, k, v, bias):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1]) + np.asarray(bias, np.float64)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", w, v)


def _qkvb(lq=5, lk=7, heads=3, d=8, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (2, lq, heads, d), dtype)
    k = jax.random.normal(keys[1], (2, lk, heads, d), dtype)
    v = jax.random.normal(keys[2], (2, lk, heads, d), dtype)
    bias = jax.random.normal(keys[3], (1, heads, lq, lk))
    return q, k, v, bias


def test_xla_matches_naive_softmax():
    q, k, v, bias = _qkvb()
    np.testing.assert_allclose(dot_product_attention(q, k, v, bias), _naive(q, k, v, bias), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dot_product_attention(q, k, v), _naive(q, k, v, 0.0), rtol=1e-5, atol=1e-5)


def test_single_key_gives_value():
    # One key: the softmax is exactly 1, whatever q is (CoDi's one-token cross-attention).
    q, k, v, _ = _qkvb(lk=1)
    out = dot_product_attention(q, k, v)
    np.testing.assert_allclose(out, jnp.broadcast_to(v, out.shape), rtol=1e-6)


@pytest.mark.parametrize("impl", ["cudnn", "pallas", "splash"])
def test_kernels_fall_back_to_xla_on_cpu(impl):
    q, k, v, bias = _qkvb(lq=256, lk=256, d=64, dtype=jnp.bfloat16)
    assert resolve_impl(impl, q, k, bias) == "xla"
    out = jax.jit(lambda *a: dot_product_attention(*a, impl=impl))(q, k, v, bias)
    ref = attention.xla_attention(q, k, v, bias)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(ref, np.float32))


def test_kernel_selection_rules(monkeypatch):
    long_bf16 = _qkvb(lq=256, lk=256, d=64, dtype=jnp.bfloat16)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve_impl("cudnn", *long_bf16[:2]) == "cudnn"
    assert resolve_impl("cudnn", *_qkvb(lq=256, lk=256, d=64)[:2]) == "xla"  # fp32
    assert resolve_impl("cudnn", *_qkvb(lq=8, lk=8, d=64, dtype=jnp.bfloat16)[:2]) == "xla"  # short
    assert resolve_impl("cudnn", *_qkvb(lq=256, lk=256, d=160, dtype=jnp.bfloat16)[:2]) == "xla"  # head dim
    assert resolve_impl("pallas", *long_bf16[:2]) == "xla"  # TPU kernel on a GPU backend
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    q, k, _, bias = long_bf16
    assert resolve_impl("pallas", q, k, bias) == "pallas"
    assert resolve_impl("splash", q, k, None) == "splash"
    assert resolve_impl("splash", q, k, bias) == "xla"  # splash has no additive bias
    assert resolve_impl("pallas", *_qkvb(lq=200, lk=200, d=64, dtype=jnp.bfloat16)[:2]) == "xla"  # not tiled by 128


def test_bad_inputs():
    q, k, v, bias = _qkvb()
    with pytest.raises(ValueError, match="unknown attention impl 'flash'"):
        dot_product_attention(q, k, v, impl="flash")
    with pytest.raises(ValueError, match="rank 4"):
        dot_product_attention(q[0], k, v)
    with pytest.raises(ValueError, match="shapes disagree"):
        dot_product_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="does not broadcast"):
        dot_product_attention(q, k, v, bias[..., :3])
