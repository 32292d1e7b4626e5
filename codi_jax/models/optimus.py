"""Optimus text VAE: a BERT encoder to a 768-d latent and a GPT-2 decoder conditioned on it.

Encoder (`BertEncoder`, post-LN BERT, LayerNorm eps 1e-12, exact GELU): ids [B, L] with padding id 0
-> sequence output, pooled = tanh(dense(h[:, 0])), `linear` (no bias) -> (mu, logvar).
CoDi's text latent is mu * 4.3108 (`to_latent`); the text is lower-cased before tokenising
(`encoder_ids`).

Decoder (`GPT2Decoder`, pre-LN GPT-2, LayerNorm eps 1e-5, tanh GELU). The latent z enters twice:
  - memory token: `linear(z)` [B, n_layer * H] cut into n_layer H-wide slices; slice i is the key AND
    the value of one extra position 0 in layer i's attention (it bypasses ln_1 and c_attn), so token
    positions start at 1 and every query attends to it;
  - embedding offset: `linear_emb(z)` is added to every token embedding (wte + wpe).
Causal masking uses the original's score*m - 1e4*(1 - m) form (masked scores are exactly -1e4), and
lm_head is tied to wte.

The decoder always runs on a key/value cache [B, heads, S, head_dim] per layer whose slot 0 is the
memory token: teacher forcing is one call over a fresh cache of S = 1 + L (the filled cache is the
original's `present`), and `generate` fills a cache of S = max_length inside one compiled while-loop.

Generation follows CoDi's `optimus_decode`: per sample start from <BOS>, sample (multinomial,
temperature 1, top_k 0, top_p 1.0 by default; greedy optional) until <EOS>; a sequence reaching
max_length (30, BOS included) has its last token replaced by <EOS>. `decode_text` applies the
original's text cleanup.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codi_jax.models.attention import dot_product_attention
from codi_jax.models import layers

Dtype = Any
TEXT_SCALE = 4.3108
BERT_MASK_VALUE = -10000.0
GPT2_MASK_VALUE = -1e4
MAX_DECODE_LENGTH = 30


def _dense(features: int, axes: tuple[str, str], name: str, dtype: Dtype, use_bias: bool = True,
           std: float = 0.02):
    return layers.dense(features, axes, use_bias=use_bias, kernel_init=nn.initializers.normal(std), dtype=dtype,
                        name=name)


def _layer_norm(eps: float, name: str, dtype: Dtype):
    return layers.layer_norm(eps, exact_variance=True, dtype=dtype, name=name)


def _embed(num: int, features: int, axes: tuple[str, str], name: str, dtype: Dtype):
    return nn.Embed(num, features, dtype=dtype, name=name,
                    embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes))


def _check_ids(ids, max_length: int, what: str) -> jax.Array:
    ids = jnp.asarray(ids)
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"{what}: expected integer token ids [B, L], got {ids.dtype} shape {tuple(ids.shape)}")
    if ids.shape[1] > max_length:
        raise ValueError(f"{what}: {ids.shape[1]} tokens is longer than the maximum of {max_length}")
    return ids


def _split_heads(x, heads: int):
    b, length, width = x.shape
    return x.reshape(b, length, heads, width // heads).transpose(0, 2, 1, 3)


def _merge_heads(x):
    b, heads, length, head_dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, length, heads * head_dim)


# ----------------------------------------------------------------------------------------------------
# BERT encoder


class BertLayer(nn.Module):
    hidden_size: int
    num_heads: int
    intermediate_size: int
    eps: float
    dtype: Dtype = jnp.float32
    dense_init_std: float = 0.02
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, x, mask_bias):
        h = self.hidden_size
        b, length, _ = x.shape
        dense = functools.partial(_dense, dtype=self.dtype, std=self.dense_init_std)
        # The registry's [B, L, heads, head_dim] layout; it scales by head_dim**-0.5 as BERT divides by its sqrt.
        split = lambda t: t.reshape(b, length, self.num_heads, h // self.num_heads)  # noqa: E731
        q, k, v = (split(dense(h, ("embed", "heads"), name)(x)) for name in ("query", "key", "value"))
        context = dot_product_attention(q, k, v, mask_bias, impl=self.attn_impl).reshape(b, length, h)
        x = _layer_norm(self.eps, "attention_norm", self.dtype)(
            dense(h, ("heads", "embed"), "attention_out")(context) + x)
        inner = nn.gelu(dense(self.intermediate_size, ("embed", "mlp"), "intermediate")(x),
                        approximate=False)
        return _layer_norm(self.eps, "output_norm", self.dtype)(
            dense(h, ("mlp", "embed"), "output")(inner) + x)


class BertEncoder(nn.Module):
    vocab_size: int = 28996
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    latent_size: int = 768
    layer_norm_eps: float = 1e-12
    dtype: Dtype = jnp.float32
    # BERT's / GPT-2's initializer_range; their 0.02 suits width 768, a 32-wide network from scratch needs
    # more (at 0.02 the tiny encoder passed on only the caption's first word after 3000 steps).
    dense_init_std: float = 0.02
    attn_impl: str = "xla"  # codi_jax.models.attention; the GPT-2 decoder's cached attention is its own

    @nn.compact
    def __call__(self, ids):
        """ids [B, L] (0 = padding) -> (sequence [B, L, H], pooled [B, H], mu [B, Z], logvar [B, Z])."""
        dense = functools.partial(_dense, dtype=self.dtype, std=self.dense_init_std)
        ids = _check_ids(ids, self.max_position_embeddings, "BERT input")
        h = self.hidden_size
        positions = jnp.arange(ids.shape[1])
        x = (_embed(self.vocab_size, h, ("vocab", "embed"), "word_embeddings", self.dtype)(ids)
             + _embed(self.max_position_embeddings, h, ("pos", "embed"), "position_embeddings", self.dtype)(
                 positions)[None]
             + _embed(self.type_vocab_size, h, ("vocab", "embed"), "token_type_embeddings", self.dtype)(
                 jnp.zeros_like(ids)))
        x = _layer_norm(self.layer_norm_eps, "embeddings_norm", self.dtype)(x)
        # Padding keys get -10000 added to their scores (not -inf), as BERT's extended attention mask.
        mask_bias = jnp.where(ids > 0, 0.0, BERT_MASK_VALUE).astype(jnp.float32)[:, None, None, :]
        for i in range(self.num_layers):
            x = BertLayer(h, self.num_heads, self.intermediate_size, self.layer_norm_eps, self.dtype,
                          self.dense_init_std, self.attn_impl, name=f"layer_{i}")(x, mask_bias)
        pooled = jnp.tanh(dense(h, ("embed", "mlp"), "pooler")(x[:, 0]))
        stats = dense(2 * self.latent_size, ("embed", "mlp"), "linear", use_bias=False)(pooled)
        mu, logvar = jnp.split(stats.astype(jnp.float32), 2, axis=-1)
        return x, pooled, mu, logvar


# ----------------------------------------------------------------------------------------------------
# GPT-2 decoder


class GPT2Block(nn.Module):
    hidden_size: int
    num_heads: int
    eps: float
    dtype: Dtype = jnp.float32
    dense_init_std: float = 0.02

    @nn.compact
    def __call__(self, x, cache, start, valid):
        """x [B, l, H] at cache slots start+1 .. start+l; cache (k, v) [B, heads, S, hd]; valid [l, S]."""
        dense = functools.partial(_dense, dtype=self.dtype, std=self.dense_init_std)
        h = self.hidden_size
        qkv = dense(3 * h, ("embed", "heads"), "c_attn")(_layer_norm(self.eps, "ln_1", self.dtype)(x))
        q, k, v = (_split_heads(t, self.num_heads) for t in jnp.split(qkv, 3, axis=-1))
        k_cache, v_cache = cache
        k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), start + 1, axis=2)
        v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), start + 1, axis=2)
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k_cache.astype(q.dtype)).astype(jnp.float32)
        scores = jnp.where(valid, scores / np.sqrt(h // self.num_heads), GPT2_MASK_VALUE)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        attn = _merge_heads(jnp.einsum("bhqk,bhkd->bhqd", probs, v_cache.astype(self.dtype)))
        x = x + dense(h, ("heads", "embed"), "c_proj")(attn)
        m = _layer_norm(self.eps, "ln_2", self.dtype)(x)
        m = nn.gelu(dense(4 * h, ("embed", "mlp"), "c_fc")(m), approximate=True)
        x = x + dense(h, ("mlp", "embed"), "mlp_c_proj")(m)
        return x, (k_cache, v_cache)


class GPT2Decoder(nn.Module):
    vocab_size: int = 50260
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    n_positions: int = 1024
    latent_size: int = 768
    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    dense_init_std: float = 0.02  # as BertEncoder's

    @property
    def bos_id(self) -> int:
        return self.vocab_size - 2

    @property
    def eos_id(self) -> int:
        return self.vocab_size - 1

    def setup(self):
        h = self.hidden_size
        self.wte = _embed(self.vocab_size, h, ("vocab", "embed"), None, self.dtype)
        self.wpe = _embed(self.n_positions, h, ("pos", "embed"), None, self.dtype)
        self.h = [GPT2Block(h, self.num_heads, self.layer_norm_eps, self.dtype, self.dense_init_std)
                  for _ in range(self.num_layers)]
        self.ln_f = _layer_norm(self.layer_norm_eps, None, self.dtype)
        dense = functools.partial(_dense, dtype=self.dtype, std=self.dense_init_std)
        self.linear = dense(self.num_layers * h, ("embed", "mlp"), None, use_bias=False)
        self.linear_emb = dense(h, ("mlp", "embed"), None, use_bias=False)

    def init_cache(self, latent, length: int):
        """Per-layer (k, v) [B, heads, length, hd]: slot 0 holds the latent's memory token, the rest zeros."""
        if length > self.n_positions:
            raise ValueError(f"GPT-2 cache of {length} slots (memory token + {length - 1} tokens) exceeds "
                             f"the maximum of {self.n_positions}")
        latent = jnp.asarray(latent)
        if latent.ndim != 2 or latent.shape[-1] != self.latent_size:
            raise ValueError(f"GPT-2 latent: expected [B, {self.latent_size}], got shape {tuple(latent.shape)}")
        b, heads, hd = latent.shape[0], self.num_heads, self.hidden_size // self.num_heads
        memory = self.linear(latent).astype(jnp.float32).reshape(b, self.num_layers, heads, 1, hd)
        empty = jnp.zeros((b, heads, length - 1, hd), jnp.float32)
        return [(jnp.concatenate([memory[:, i], empty], axis=2),) * 2 for i in range(self.num_layers)]

    def __call__(self, ids, latent, cache=None, start=0):
        """Next-token logits [B, l, V] for ids [B, l] at token positions start+1 .. start+l, and the cache.

        Without a cache, a fresh one of 1 + l slots is made from the latent (teacher forcing); the
        returned cache is then the original's per-layer `present`.
        """
        ids = _check_ids(ids, self.n_positions - 1, "GPT-2 input")
        if cache is None:
            cache = self.init_cache(latent, 1 + ids.shape[1])
        length = ids.shape[1]
        slots = cache[0][0].shape[2]
        query_pos = start + 1 + jnp.arange(length)
        valid = jnp.arange(slots)[None, :] <= query_pos[:, None]
        x = self.wte(ids) + self.wpe(query_pos)[None] + self.linear_emb(jnp.asarray(latent))[:, None]
        new_cache = []
        for block, layer_cache in zip(self.h, cache):
            x, layer_cache = block(x, layer_cache, start, valid)
            new_cache.append(layer_cache)
        logits = self.wte.attend(self.ln_f(x))
        return logits.astype(jnp.float32), new_cache


# ----------------------------------------------------------------------------------------------------
# Optimus = encoder + decoder


class Optimus(nn.Module):
    encoder: BertEncoder
    decoder: GPT2Decoder
    scale_factor: float = TEXT_SCALE

    def encode(self, ids):
        """(sequence, pooled, mu, logvar) of BERT ids [B, L]."""
        return self.encoder(ids)

    def to_latent(self, ids):
        """CoDi's `optimus_encode`: mu * 4.3108 (the posterior mean, no sampling)."""
        return self.encoder(ids)[2] * self.scale_factor

    def decoder_logits(self, ids, latent):
        """Teacher-forced logits [B, L, V] and per-layer (k, v) presents; `latent` is UNSCALED (z / 4.3108)."""
        return self.decoder(ids, latent)

    def decoder_step(self, ids, latent, cache, start):
        return self.decoder(ids, latent, cache, start)

    def decoder_cache(self, latent, length: int):
        return self.decoder.init_cache(latent, length)

    def __call__(self, enc_ids, dec_ids):
        """Reconstruction pass used for init and training: encoder mean -> teacher-forced decoder logits."""
        _, _, mu, logvar = self.encoder(enc_ids)
        logits, _ = self.decoder(dec_ids, mu)
        return logits, mu, logvar


def filter_logits(logits, top_k: int = 0, top_p: float = 0.0):
    """The original top-k / nucleus filter on [B, V] logits (removed entries -> -inf).

    top_k > 0 keeps logits >= the k-th largest. top_p > 0 removes sorted tokens whose fp32 running
    probability sum exceeds top_p, shifted by one so the first crossing token stays; with top_p = 1.0
    this is not a no-op once the running sum rounds above 1.0, as in the original.
    """
    if top_k > 0:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p > 0.0:
        order = jnp.argsort(-logits, axis=-1, stable=True)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        remove_sorted = jnp.concatenate(
            [jnp.zeros_like(cumulative[..., :1], bool), cumulative[..., :-1] > top_p], axis=-1)
        remove = jnp.zeros_like(remove_sorted).at[
            jnp.arange(logits.shape[0])[:, None], order].set(remove_sorted)
        logits = jnp.where(remove, -jnp.inf, logits)
    return logits


@functools.partial(jax.jit, static_argnames=("model", "max_length", "temperature", "top_k", "top_p", "greedy",
                                             "bos_id", "eos_id"))
def generate(model: Optimus, params, z, rng, *, max_length: int = MAX_DECODE_LENGTH, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, greedy: bool = False, bos_id: int | None = None,
             eos_id: int | None = None):
    """Decode CoDi text latents z [B, Z] (scaled space) into token ids, in one compiled while-loop.

    Returns (tokens [B, max_length] starting with <BOS>, lengths [B] counting <BOS> .. <EOS>);
    positions after <EOS> hold <EOS>. The loop stops early once every row has produced <EOS>.
    """
    dec = model.decoder
    bos = dec.bos_id if bos_id is None else bos_id
    eos = dec.eos_id if eos_id is None else eos_id
    if not 2 <= max_length <= dec.n_positions:
        raise ValueError(f"max_length {max_length} must be in [2, {dec.n_positions}] (GPT-2 positions)")
    latent = jnp.asarray(z, jnp.float32) * (1.0 / model.scale_factor)
    b = latent.shape[0]
    variables = {"params": params}
    cache = model.apply(variables, latent, max_length, method=Optimus.decoder_cache)
    tokens = jnp.full((b, max_length), eos, jnp.int32).at[:, 0].set(bos)
    state = (1, tokens, jnp.zeros((b,), bool), jnp.full((b,), max_length, jnp.int32), cache)

    def cond(state):
        t, _, done, _, _ = state
        return (t < max_length) & ~jnp.all(done)

    def body(state):
        t, tokens, done, lengths, cache = state
        current = jax.lax.dynamic_slice_in_dim(tokens, t - 1, 1, axis=1)
        logits, cache = model.apply(variables, current, latent, cache, t - 1, method=Optimus.decoder_step)
        logits = logits[:, -1]
        if greedy:
            nxt = jnp.argmax(logits, axis=-1)
        else:
            filtered = filter_logits(logits / temperature, top_k, top_p)
            nxt = jax.random.categorical(jax.random.fold_in(rng, t), filtered, axis=-1)
        # Reaching the length limit turns the last token into <EOS>, as the original loop does.
        nxt = jnp.where((t == max_length - 1) | done, eos, nxt).astype(jnp.int32)
        finished = ~done & (nxt == eos)
        lengths = jnp.where(finished, t + 1, lengths)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], t, axis=1)
        return t + 1, tokens, done | finished, lengths, cache

    _, tokens, _, lengths, _ = jax.lax.while_loop(cond, body, state)
    return tokens, lengths


# ----------------------------------------------------------------------------------------------------
# Text helpers (tokenizers are passed in: nothing here downloads)


def encoder_ids(tokenizer, texts: Sequence[str], max_length: int = 512) -> np.ndarray:
    """BERT ids [B, L] for `texts`, lower-cased first as CoDi does (the vocab is cased).

    `tokenizer.encode(texts, max_length)` must return [CLS] ... [SEP] ids padded with 0.
    """
    ids = np.asarray(tokenizer.encode([t.lower() for t in texts], max_length))
    if ids.ndim != 2 or ids.shape[1] > max_length:
        raise ValueError(f"tokenizer returned ids of shape {ids.shape}; expected [B, L] with L <= {max_length}")
    return ids


_OPENING = "([{"
_CLOSING = "?!.,:;}])"
# Joins a split-off bracket or punctuation mark to its word again; it takes part in the repeat search
# like any token, as in the original.
_GLUE = "<puncnext>"


def _split_punctuation(text: str) -> list[str]:
    """Space-separated words with leading brackets and trailing punctuation split off, each split
    mark followed (brackets) or preceded (punctuation) by a glue token."""
    tokens: list[str] = []
    for word in text.split(" "):
        lead = 0
        while lead < len(word) and word[lead] in _OPENING:
            lead += 1
        trail = len(word)
        while trail > lead and word[trail - 1] in _CLOSING:
            trail -= 1
        for mark in word[:lead]:
            tokens += [mark, _GLUE]
        if word[lead:trail]:
            tokens.append(word[lead:trail])
        for mark in word[trail:]:
            tokens += [_GLUE, mark]
    return tokens


def remove_repeated_phrases(text: str) -> str:
    """CoDi's `remove_duplicate_word`: drop immediately repeated phrases of 1, 2, 3, ... tokens.

    Punctuation is split into its own tokens first (so "dog. dog." repeats "dog ."); for each phrase
    length n, the leftmost repeat has its second copy removed and the scan restarts, until n reaches
    the token count.
    """
    if not text:
        return text
    tokens = _split_punctuation(text)
    n = 1
    while n < len(tokens):
        i = 0
        while i + 2 * n <= len(tokens):
            if tokens[i:i + n] == tokens[i + n:i + 2 * n]:
                del tokens[i + n:i + 2 * n]
                i = 0
            else:
                i += 1
        n += 1
    return " ".join(tokens).replace(f" {_GLUE} ", "")


def clean_text(decoded: str, repeated_phrases: bool = True) -> str:
    """CoDi's cleanup of a decoded text: merge adjacent duplicate words, then (optionally)
    `remove_repeated_phrases`. The original also drops the first and last whitespace-separated words: those
    are its <BOS> / <EOS> markers (it decodes with special tokens kept), which our tokenizers' `decode`
    already leaves out, so `decoded` here is the marker-free text."""
    words = decoded.split()
    merged = [w for i, w in enumerate(words) if i == 0 or w != words[i - 1]]
    text = " ".join(merged)
    return remove_repeated_phrases(text) if repeated_phrases else text


def decode_text(tokenizer, tokens, lengths, repeated_phrases: bool = True) -> list[str]:
    """Texts from `generate`'s output; `tokenizer.decode(list_of_ids) -> str` skips the special tokens
    (<BOS>, <EOS>, <PAD>), as codi_jax.data.tokenizers' do."""
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    return [clean_text(tokenizer.decode(row[:n].tolist()), repeated_phrases) for row, n in zip(tokens, lengths)]


# ----------------------------------------------------------------------------------------------------
# Presets

CONFIGS = {
    # bert-base-cased + 768->1536 latent head (109,489,920); GPT-2 small with 50260 tokens and the
    # latent memory / embedding heads (132,109,824, lm_head tied).
    "full": {
        "encoder": dict(vocab_size=28996, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                        max_position_embeddings=512, latent_size=768),
        "decoder": dict(vocab_size=50260, hidden_size=768, num_layers=12, num_heads=12, n_positions=1024,
                        latent_size=768),
    },
    "tiny": {
        "encoder": dict(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                        max_position_embeddings=32, latent_size=16),
        "decoder": dict(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, n_positions=32, latent_size=16),
    },
}


def build(variant: str | dict, dtype: Dtype = jnp.float32, attn_impl: str = "xla") -> Optimus:
    if isinstance(variant, str):
        if variant not in CONFIGS:
            raise ValueError(f"unknown optimus variant {variant!r}; expected one of {sorted(CONFIGS)}")
        variant = CONFIGS[variant]
    extra = {k: v for k, v in variant.items() if k not in ("encoder", "decoder")}
    return Optimus(encoder=BertEncoder(**variant["encoder"], dtype=dtype, attn_impl=attn_impl),
                   decoder=GPT2Decoder(**variant["decoder"], dtype=dtype), **extra)


def kwargs_from_official(encoder_config: dict, encoder_latent: int, decoder_config: dict) -> dict:
    """A `build` dict from the official BERT / GPT-2 config dicts."""
    if encoder_config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"BERT hidden_act {encoder_config['hidden_act']!r} is not supported; expected 'gelu'")
    return {
        "encoder": dict(vocab_size=encoder_config["vocab_size"], hidden_size=encoder_config["hidden_size"],
                        num_layers=encoder_config["num_hidden_layers"],
                        num_heads=encoder_config["num_attention_heads"],
                        intermediate_size=encoder_config["intermediate_size"],
                        max_position_embeddings=encoder_config["max_position_embeddings"],
                        type_vocab_size=encoder_config.get("type_vocab_size", 2), latent_size=encoder_latent,
                        layer_norm_eps=encoder_config.get("layer_norm_eps", 1e-12)),
        "decoder": dict(vocab_size=decoder_config["vocab_size"], hidden_size=decoder_config["n_embd"],
                        num_layers=decoder_config["n_layer"], num_heads=decoder_config["n_head"],
                        n_positions=min(decoder_config["n_positions"], decoder_config.get("n_ctx", 1 << 30)),
                        latent_size=decoder_config["latent_size"],
                        layer_norm_eps=decoder_config.get("layer_norm_epsilon", 1e-5)),
    }
