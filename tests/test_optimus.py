"""Optimus: golden parity, full-size counts and shardings, KV-cache decoding, sampling filters, text cleanup."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codi_jax.convert import coverage, golden, registry
from codi_jax.data import tokenizers
from codi_jax.models import optimus
from codi_jax.parallel.partitioning import tree_shardings

BERT_FULL, GPT2_FULL = 109_489_920, 132_109_824


def _abstract(model):
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    return jax.eval_shape(model.init, jax.random.key(0), ids, ids)


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def tiny():
    """The tiny model with random weights drawn from shapes alone (no compile for init)."""
    model = optimus.build("tiny")
    rng = np.random.default_rng(0)

    def fill(path, x):
        name = jax.tree_util.keystr(path[-1:])
        if "scale" in name:
            return jnp.asarray(1 + rng.normal(0, 0.1, x.shape), jnp.float32)
        return jnp.asarray(rng.normal(0, 0.3 if "embedding" in name else 0.15, x.shape), jnp.float32)

    params = jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(_abstract(model))["params"])
    return model, params


def test_golden_optimus(goldens_dir):
    rows = golden.check(goldens_dir / "optimus")
    names = {r[1] for r in rows}
    assert {"enc_sequence_output", "enc_pooled", "enc_linear", "enc_mu", "enc_logvar", "enc_z_codi",
            "dec_latent", "dec_logits", "dec_present_0", "dec_present_1"} <= names
    failed = [r for r in rows if not r[4]]
    assert not failed, failed


def test_full_size_counts_and_fsdp_sharding():
    abstract = _abstract(optimus.build("full"))
    params = nn.meta.unbox(abstract)["params"]
    assert _count(params["encoder"]) == BERT_FULL
    assert _count(params["decoder"]) == GPT2_FULL  # lm_head is wte: counted once
    mesh = jax.make_mesh((1, 8, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    shardings = jax.tree.leaves(tree_shardings(abstract, mesh),
                                is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
    flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(abstract))[0]
    replicated = [jax.tree_util.keystr(p) for (p, x), s in zip(flat, shardings)
                  if x.size * 4 > 1 << 20 and all(a is None for a in s.spec)]
    assert not replicated, replicated


def test_converter_covers_every_official_key(goldens_dir):
    manifest = json.loads((goldens_dir / "manifest_full.json").read_text())
    entries = {k: v for group in manifest["groups"].values() for k, v in group.items()}
    components = {n: c for n, c in registry.all_components().items()
                  if c.manifest_prefix and c.convert and c.full_abstract}
    owned = coverage.assign_keys(entries, components)
    report = coverage.component_report(components["optimus"], owned["optimus"], entries)
    assert report["ours"] == BERT_FULL + GPT2_FULL
    assert not report["unused"] and not report["missing"] and not report["wrong_shape"]


def test_cache_matches_teacher_forcing(tiny):
    model, params = tiny
    v = {"params": params}
    rng = np.random.default_rng(1)
    ids = jnp.asarray(rng.integers(0, 118, (2, 9)), jnp.int32)
    latent = jnp.asarray(rng.normal(size=(2, 16)), jnp.float32)
    full, presents = model.apply(v, ids, latent, method=model.decoder_logits)
    cache = model.apply(v, latent, 10, method=model.decoder_cache)
    pieces = []
    for start, stop in ((0, 1), (1, 4), (4, 5), (5, 9)):  # single tokens and chunks
        logits, cache = model.apply(v, ids[:, start:stop], latent, cache, start, method=model.decoder_step)
        pieces.append(logits)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=2e-5)
    for (k, val), (k_ref, v_ref) in zip(cache, presents):
        np.testing.assert_allclose(k, k_ref, atol=1e-5)
        np.testing.assert_allclose(val, v_ref, atol=1e-5)


def test_greedy_is_stepwise_argmax_and_length_limit(tiny):
    model, params = tiny
    z = jnp.asarray(np.random.default_rng(2).normal(size=(3, 16)) * 4, jnp.float32)
    tokens, lengths = optimus.generate(model, params, z, jax.random.key(0), max_length=12, greedy=True)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    assert tokens.shape == (3, 12) and (tokens[:, 0] == model.decoder.bos_id).all()
    logits, _ = model.apply({"params": params}, tokens[:, :-1], z / optimus.TEXT_SCALE,
                            method=model.decoder_logits)
    argmax = np.asarray(jnp.argmax(logits, axis=-1))
    eos = model.decoder.eos_id
    for row, n, am in zip(tokens, lengths, argmax):
        assert row[n - 1] == eos and (row[n:] == eos).all()
        # Every generated token is the argmax given its prefix, except a forced final <EOS>.
        stop = n - 1 if n == 12 and am[10] != eos else n
        np.testing.assert_array_equal(row[1:stop], am[:stop - 1])

    # Stop at <EOS>: declare the token row 0 produced at step 3 to be <EOS>.
    new_eos = int(tokens[0, 3])
    t2, l2 = optimus.generate(model, params, z, jax.random.key(0), max_length=12, greedy=True, eos_id=new_eos)
    t2, l2 = np.asarray(t2), np.asarray(l2)
    first = int(np.argmax(tokens[0, 1:] == new_eos)) + 1
    assert l2[0] == first + 1 and (t2[0, first:] == new_eos).all()
    np.testing.assert_array_equal(t2[0, :first], tokens[0, :first])

    # top_k=1 sampling is greedy whatever the key.
    t3, _ = optimus.generate(model, params, z, jax.random.key(7), max_length=12, top_k=1)
    np.testing.assert_array_equal(t3, tokens)


def test_filter_logits():
    logits = jnp.log(jnp.asarray([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3]]))
    k2 = np.asarray(optimus.filter_logits(logits, top_k=2))
    assert np.isinf(k2[0, 1]) and np.isinf(k2[1, 0]) and np.isfinite(k2[0, [0, 2]]).all()
    p = np.asarray(optimus.filter_logits(logits, top_p=0.6))
    # Running sums of the sorted probabilities: keep up to and including the first one above 0.6.
    assert np.isfinite(p[0, [0, 2]]).all() and np.isinf(p[0, 1])
    assert np.isfinite(p[1, [1, 2]]).all() and np.isinf(p[1, 0])
    np.testing.assert_array_equal(optimus.filter_logits(logits), logits)


def test_text_cleanup():
    assert optimus.clean_text("a a dog dog runs fast") == "a dog runs fast"
    assert optimus.remove_repeated_phrases("a cat on a mat a cat on a mat.") == "a cat on a mat."
    assert optimus.remove_repeated_phrases("the dog. the dog.") == "the dog."
    assert optimus.remove_repeated_phrases("(hello) (hello) world") == "(hello) world"
    assert optimus.remove_repeated_phrases("one two one two three") == "one two three"
    assert optimus.remove_repeated_phrases("") == ""


def test_dense_init_std():
    """dense_init_std sets every dense kernel's init (the CPU preset's 0.15; the original's 0.02 by default)."""
    enc, dec = dict(optimus.CONFIGS["tiny"]["encoder"]), dict(optimus.CONFIGS["tiny"]["decoder"])
    for std in (0.02, 0.15):
        model = optimus.build({"encoder": {**enc, "dense_init_std": std}, "decoder": {**dec, "dense_init_std": std}})
        params = jax.jit(model.init)(jax.random.key(0), jnp.ones((2, 8), jnp.int32), jnp.ones((2, 8), jnp.int32))
        kernels = [np.ravel(v) for p, v in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(params))
                   if "kernel" in jax.tree_util.keystr(p)]
        assert len(kernels) > 20
        np.testing.assert_allclose(np.std(np.concatenate(kernels)), std, rtol=0.05)


def test_tokenizer_helpers():
    class FakeTokenizer:
        def encode(self, texts, max_length):
            self.seen = texts
            return [[2] + [5] * len(t.split()) + [3] + [0] * (4 - len(t.split())) for t in texts]

        def decode(self, ids):
            return " ".join(f"w{i}" for i in ids if i not in (118, 119))

    tok = FakeTokenizer()
    ids = optimus.encoder_ids(tok, ["A Red Cube", "Hi"], max_length=16)
    assert tok.seen == ["a red cube", "hi"] and ids.shape == (2, 6)
    texts = optimus.decode_text(tok, [[118, 7, 7, 8, 119, 119]], [5])
    assert texts == ["w7 w8"]


def test_decode_text_keeps_every_word():
    # Our tokenizers drop <BOS>/<EOS> when decoding, so the original's first/last-word drop (its markers)
    # must not eat the caption's own first and last words (the motion word ends most captions).
    gpt2 = tokenizers.shapes_tones_tokenizer("gpt2")
    caption = "one red triangle that slides left"
    ids = gpt2.encode([caption], 16)[0]
    length = int(np.argmax(ids == gpt2.eos_id)) + 1
    assert optimus.decode_text(gpt2, [ids], [length]) == [caption]


def test_bad_input(tiny):
    model, params = tiny
    v = {"params": params}
    with pytest.raises(ValueError, match="longer than the maximum of 32"):
        model.apply(v, jnp.ones((1, 33), jnp.int32), method=model.encode)
    with pytest.raises(ValueError, match="longer than the maximum of 31"):
        model.apply(v, jnp.ones((1, 32), jnp.int32), jnp.zeros((1, 16)), method=model.decoder_logits)
    with pytest.raises(ValueError, match=r"latent: expected \[B, 16\]"):
        model.apply(v, jnp.ones((1, 3), jnp.int32), jnp.zeros((1, 8)), method=model.decoder_logits)
    with pytest.raises(ValueError, match="integer token ids"):
        model.apply(v, jnp.ones((1, 3)), method=model.encode)
    with pytest.raises(ValueError, match="max_length 40"):
        optimus.generate(model, params, jnp.zeros((1, 16)), jax.random.key(0), max_length=40)
    with pytest.raises(ValueError, match="unknown optimus variant"):
        optimus.build("xl")
