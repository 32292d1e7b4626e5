"""Tokenizers: the small Shapes & Tones ones and real ones loaded from local files, same conventions."""
import json

import numpy as np
import pytest

from codi_jax.data import shapes_tones as st
from codi_jax.data import tokenizers


def test_clip_convention_bos_eos_pad_and_argmax_pooling():
    tok = tokenizers.shapes_tones_tokenizer("clip")
    ids = tok.encode(["A red circle moving left", "the square is blue and it goes up"], 77)
    assert ids.shape == (2, 77) and ids.dtype == np.int32
    assert tok.eos_id == tok.vocab_size - 1 == tok.pad_id and tok.bos_id == tok.vocab_size - 2
    assert ids[0, 0] == tok.bos_id and ids[0, 6] == tok.eos_id and np.all(ids[0, 6:] == tok.eos_id)
    # EOS pooling: the first argmax is the EOS position.
    assert np.argmax(ids[0]) == 6 and np.argmax(ids[1]) == 9
    assert tok.decode(ids) == ["a red circle moving left", "the square is blue and it goes up"]


def test_bert_convention_cls_sep_pad_zero():
    tok = tokenizers.shapes_tones_tokenizer("bert")
    ids = tok.encode("a circle, colored red, heading left", 16)
    # [CLS] a circle , colored red , heading left [SEP]
    assert tok.pad_id == 0 and ids[0, 0] == tok.cls_id and ids[0, 9] == tok.sep_id
    assert np.all(ids[0, 10:] == 0) and np.all(ids[0, :10] > 0)
    assert tok.decode(ids[0]) == "a circle, colored red, heading left"


def test_gpt2_convention_optimus_specials_at_the_end():
    tok = tokenizers.shapes_tones_tokenizer("gpt2")
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (tok.vocab_size - 3, tok.vocab_size - 2, tok.vocab_size - 1)
    ids = tok.encode("one green triangle that slides down", 10)[0]
    assert ids[0] == tok.bos_id and ids[7] == tok.eos_id and np.all(ids[8:] == tok.pad_id)
    assert tok.decode(ids) == "one green triangle that slides down"


def test_every_caption_round_trips_without_unknown_words():
    for kind in tokenizers.KINDS:
        tok = tokenizers.shapes_tones_tokenizer(kind)
        for template in range(len(st.TEMPLATES)):
            for color in st.COLORS:
                text = st.caption(color, "square", "right", template)
                ids = tok.encode(text, 20)
                assert tok.unk_id not in ids[0].tolist()
                assert tok.decode(ids)[0] == text


def test_too_long_text_raises_or_truncates():
    tok = tokenizers.shapes_tones_tokenizer("clip")
    with pytest.raises(ValueError, match="text too long for the clip tokenizer: 7 tokens, expected at most 5"):
        tok.encode("a red circle moving left", 5)
    ids = tok.encode("a red circle moving left", 5, truncate=True)[0]
    assert ids.tolist()[0] == tok.bos_id and ids.tolist()[-1] == tok.eos_id
    with pytest.raises(ValueError, match="unknown tokenizer kind 't5'"):
        tokenizers.shapes_tones_tokenizer("t5")


def _write_bpe_files(folder, end_of_word_suffix, specials):
    """vocab.json + merges.txt of a tiny BPE trained on the captions (CLIP style with '</w>', or GPT-2
    byte-level)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    captions = [st.caption(c, s, m, t) for c in st.COLORS for s in st.SHAPES for m in st.MOTIONS
                for t in range(len(st.TEMPLATES))]
    if end_of_word_suffix:
        tok = Tokenizer(models.BPE(end_of_word_suffix=end_of_word_suffix))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(vocab_size=150, end_of_word_suffix=end_of_word_suffix)
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(captions, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = dict(model["vocab"])
    for token in specials:
        vocab[token] = len(vocab)
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab


def test_load_real_clip_tokenizer_from_local_files(tmp_path):
    vocab = _write_bpe_files(tmp_path / "clip", "</w>", ["<|startoftext|>", "<|endoftext|>"])
    tok = tokenizers.load_tokenizer("clip", str(tmp_path / "clip"))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (vocab["<|startoftext|>"], vocab["<|endoftext|>"],
                                                    vocab["<|endoftext|>"])
    ids = tok.encode(["A Red Circle moving left"], 12)
    assert ids.shape == (1, 12) and ids[0, 0] == tok.bos_id and tok.eos_id in ids[0]
    assert tok.decode(ids) == ["a red circle moving left"]


def test_load_real_bert_tokenizer_from_local_files(tmp_path):
    words = sorted({w for c in st.COLORS for w in st.caption(c, "circle", "up", 2).replace(",", " , ").split()})
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words))
    tok = tokenizers.load_tokenizer("bert", str(tmp_path / "bert"))
    ids = tok.encode("A circle, colored RED, heading up", 12)[0]
    assert tok.pad_id == 0 and ids[0] == tok.cls_id and ids[9] == tok.sep_id and np.all(ids[10:] == 0)
    assert tok.unk_id not in ids.tolist()  # lower-cased before the (cased) vocabulary, as CoDi does
    assert tok.decode(ids) == "a circle, colored red, heading up"


def test_load_real_gpt2_tokenizer_adds_optimus_specials(tmp_path):
    vocab = _write_bpe_files(tmp_path / "gpt2", None, ["<|endoftext|>"])
    tok = tokenizers.load_tokenizer("gpt2", str(tmp_path / "gpt2"))
    base = len(vocab)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (base, base + 1, base + 2) and tok.vocab_size == base + 3
    ids = tok.encode("a red circle moving left", 24)[0]
    assert ids[0] == tok.bos_id and tok.eos_id in ids and ids[-1] == tok.pad_id
    assert tok.decode(ids) == "a red circle moving left"


def test_load_from_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot load the bert tokenizer from"):
        tokenizers.load_tokenizer("bert", str(tmp_path / "nothing"))
