"""Tokenizers for the three text models, with one interface: `encode(texts, max_length) -> int32 [B, L]`,
`decode(ids) -> list[str]`, `vocab_size`, and the special ids as attributes.

Conventions (the released models'):
  clip  CLIP BPE: <|startoftext|> text <|endoftext|>, padded with <|endoftext|>; EOS is the largest id,
        so the pooled token is the argmax id (or the first EOS position). Lower-cased. `bos_id`, `eos_id`, `pad_id`.
  bert  Optimus' BERT (WordPiece): [CLS] text [SEP], padded with [PAD] = 0 (attention mask = id > 0).
        CoDi lower-cases the text first although bert-base-cased is cased. `cls_id`, `sep_id`, `pad_id`, `unk_id`.
  gpt2  Optimus' GPT-2 (byte BPE) + <PAD>, <BOS>, <EOS> appended after the 50257 BPE ids (vocab 50260):
        <BOS> text <EOS>, padded with <PAD>. `bos_id`, `eos_id`, `pad_id`.

`shapes_tones_tokenizer(kind)` builds a word-level tokenizer over the Shapes & Tones caption vocabulary with
the same conventions (no files, no download); `load_tokenizer(kind, path)` wraps the real tokenizer from a
local directory (vocab.json + merges.txt for clip / gpt2, vocab.txt for bert) or a hub name.
Text that does not fit in `max_length` raises ValueError unless `truncate=True` (CLIP-style: keep the
end token).
"""
from __future__ import annotations

import abc
import re
from typing import Sequence

import numpy as np

from codi_jax.data import shapes_tones

KINDS = ("clip", "bert", "gpt2")
CLIP_MAX_LENGTH = 77
BERT_MAX_LENGTH = 512
GPT2_MAX_LENGTH = 1024
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")
    return kind


def _as_list(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"texts must be strings, got {type(text).__name__}")
    return texts


class Tokenizer(abc.ABC):
    """Adds the kind's special tokens around `_ids(text)`, pads and checks lengths; subclasses tokenize."""

    kind: str
    vocab_size: int
    pad_id: int
    bos_id: int | None = None
    eos_id: int | None = None
    cls_id: int | None = None
    sep_id: int | None = None
    unk_id: int | None = None

    @abc.abstractmethod
    def _ids(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens."""

    @abc.abstractmethod
    def _tokens_to_text(self, ids: list[int]) -> str:
        """Text of non-special token ids."""

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(i for i in (self.pad_id, self.bos_id, self.eos_id, self.cls_id, self.sep_id)
                         if i is not None)

    def _wrap(self) -> tuple[list[int], list[int]]:
        if self.kind == "bert":
            return [self.cls_id], [self.sep_id]
        return [self.bos_id], [self.eos_id]

    def encode(self, texts: str | Sequence[str], max_length: int, truncate: bool = False) -> np.ndarray:
        """int32 [B, max_length]: special tokens around each text, padded with `pad_id`."""
        texts = _as_list(texts)
        out = np.full((len(texts), max_length), self.pad_id, np.int32)
        for row, text in enumerate(texts):
            body = self._ids(text.lower() if self.kind in ("clip", "bert") else text)
            head, tail = self._wrap()
            if len(head) + len(body) + len(tail) > max_length:
                if not truncate:
                    raise ValueError(f"text too long for the {self.kind} tokenizer: "
                                     f"{len(head) + len(body) + len(tail)} tokens, expected at most "
                                     f"{max_length} ({text[:60]!r}...)")
                body = body[:max(0, max_length - len(head) - len(tail))]
            ids = head + body + tail
            out[row, :len(ids)] = ids
        return out

    def decode(self, ids) -> list[str] | str:
        """Token ids [B, L] (or [L]) -> texts, without special or padding tokens; stops at the end token."""
        ids = np.asarray(ids)
        if ids.ndim not in (1, 2):
            raise ValueError(f"ids: expected [L] or [B, L], got shape {ids.shape}")
        end = self.sep_id if self.kind == "bert" else self.eos_id
        rows = []
        for row in np.atleast_2d(ids):
            kept = []
            for token in row.tolist():
                if token == end:
                    break
                if token not in self.special_ids:
                    kept.append(int(token))
            rows.append(self._tokens_to_text(kept))
        return rows[0] if ids.ndim == 1 else rows


def caption_vocabulary() -> list[str]:
    """Every word and punctuation mark any Shapes & Tones caption can contain, sorted."""
    words = set()
    for template in shapes_tones.TEMPLATES:
        for color in shapes_tones.COLORS:
            for shape in shapes_tones.SHAPES:
                for motion in shapes_tones.MOTIONS:
                    words.update(_WORD.findall(template.format(color=color, shape=shape, motion=motion)))
    return sorted(words)


class WordTokenizer(Tokenizer):
    """Word-level tokenizer over the Shapes & Tones vocabulary, laid out like the real model's ids:

    clip: <unk>=0, words, <|startoftext|>, <|endoftext|> (largest id; also the padding);
    bert: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4, words;
    gpt2: <unk>=0, words, then <PAD>, <BOS>, <EOS> appended as Optimus appends them to GPT-2.
    """

    def __init__(self, kind: str):
        self.kind = _check_kind(kind)
        words = caption_vocabulary()
        if kind == "bert":
            self.tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
            self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = range(5)
        elif kind == "clip":
            self.tokens = ["<unk>"] + words + ["<|startoftext|>", "<|endoftext|>"]
            self.unk_id, self.bos_id, self.eos_id = 0, len(self.tokens) - 2, len(self.tokens) - 1
            self.pad_id = self.eos_id
        else:
            self.tokens = ["<unk>"] + words + ["<PAD>", "<BOS>", "<EOS>"]
            self.unk_id = 0
            self.pad_id, self.bos_id, self.eos_id = range(len(self.tokens) - 3, len(self.tokens))
        self.vocab_size = len(self.tokens)
        self._index = {token: i for i, token in enumerate(self.tokens)}

    def _ids(self, text: str) -> list[int]:
        return [self._index.get(word, self.unk_id) for word in _WORD.findall(text.lower())]

    def _tokens_to_text(self, ids: list[int]) -> str:
        text = ""
        for token in (self.tokens[i] for i in ids):
            glue = "" if not text or not token[0].isalnum() else " "
            text += glue + token
        return text


class HFTokenizer(Tokenizer):
    """A transformers tokenizer with the kind's special-token conventions enforced."""

    def __init__(self, kind: str, tokenizer):
        self.kind = _check_kind(kind)
        self.hf = tokenizer
        if kind == "gpt2":
            missing = {name: token for name, token in (("pad_token", "<PAD>"), ("bos_token", "<BOS>"),
                                                       ("eos_token", "<EOS>"))
                       if token not in tokenizer.get_vocab()}
            if missing:
                tokenizer.add_special_tokens(missing)
            vocab = tokenizer.get_vocab()
            self.pad_id, self.bos_id, self.eos_id = vocab["<PAD>"], vocab["<BOS>"], vocab["<EOS>"]
        elif kind == "clip":
            self.bos_id, self.eos_id, self.pad_id = (tokenizer.bos_token_id, tokenizer.eos_token_id,
                                                     tokenizer.pad_token_id)
        else:
            self.cls_id, self.sep_id, self.pad_id, self.unk_id = (tokenizer.cls_token_id, tokenizer.sep_token_id,
                                                                  tokenizer.pad_token_id, tokenizer.unk_token_id)
            if self.pad_id != 0:
                raise ValueError(f"bert tokenizer pads with id {self.pad_id}; Optimus expects [PAD] = 0")
        self.vocab_size = len(tokenizer)

    def _ids(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def _tokens_to_text(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True).strip()


def shapes_tones_tokenizer(kind: str) -> WordTokenizer:
    """The small local tokenizer of `kind` (clip / bert / gpt2) for Shapes & Tones captions."""
    return WordTokenizer(kind)


def load_tokenizer(kind: str, path: str) -> HFTokenizer:
    """The real tokenizer of `kind` from a local directory (or a hub name, where a network exists).

    clip: CLIPTokenizer (vocab.json, merges.txt), e.g. openai/clip-vit-large-patch14's files;
    bert: BertTokenizer (vocab.txt) of bert-base-cased; gpt2: GPT2Tokenizer (vocab.json, merges.txt),
    to which <PAD>, <BOS>, <EOS> are added when absent.
    """
    _check_kind(kind)
    import transformers

    classes = {"clip": transformers.CLIPTokenizer, "bert": transformers.BertTokenizer,
               "gpt2": transformers.GPT2Tokenizer}
    try:
        tokenizer = classes[kind].from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"cannot load the {kind} tokenizer from {path!s}: {error}") from error
    return HFTokenizer(kind, tokenizer)


def build_tokenizer(kind: str, path: str = "") -> Tokenizer:
    """`load_tokenizer(kind, path)` when a path is given, else the Shapes & Tones tokenizer."""
    return load_tokenizer(kind, path) if path else shapes_tones_tokenizer(kind)
