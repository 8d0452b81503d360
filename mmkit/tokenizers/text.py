"""BERT-style WordPiece text tokenization on Hugging Face ``tokenizers`` (Rust, batched).

:class:`TextTokenizer` loads a bert-base-uncased-format ``vocab.txt`` or a ``tokenizer.json``
and encodes batches to ``[CLS] tokens [SEP]`` id lists (truncated to ``max_length``), with
the word index of every token for whole-word masking. :func:`train_wordpiece` builds a
vocabulary from the user's own text files, for a user without a model hub:

    python -m mmkit.tokenizers.train --files corpus/*.txt --vocab-size 8000 --out my_vocab/
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass
class Encoding:
    """One encoded text: ``input_ids`` and ``word_ids`` ``(L,)`` int64 (special tokens get word id 0)."""

    input_ids: Tensor
    word_ids: Tensor


def _bert_pipeline(tokenizer, lowercase: bool):
    from tokenizers import normalizers, pre_tokenizers, processors

    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None, clean_text=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    from tokenizers import decoders

    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


class TextTokenizer:
    """WordPiece tokenizer with BERT's special tokens.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` whose vocabulary has ``[PAD] [UNK] [CLS] [SEP] [MASK]``.
        max_length: truncate encodings to this many tokens (``[CLS]``/``[SEP]`` included).

    Build with :meth:`from_vocab` (a ``vocab.txt``), :meth:`from_file` (a ``tokenizer.json``) or
    :meth:`from_pretrained` (a directory holding either).
    """

    def __init__(self, tokenizer, max_length: int = 77) -> None:
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"the vocabulary lacks the special tokens {missing}; BERT-format vocabularies have them")
        if max_length < 2:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_vocab(cls, vocab_file: str | Path, lowercase: bool = True, max_length: int = 77) -> TextTokenizer:
        """From a bert-base-uncased-format ``vocab.txt`` (one token per line, ``##`` continuation pieces)."""
        from tokenizers import Tokenizer, models

        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise FileNotFoundError(f"vocabulary file {vocab_file} does not exist")
        tokens = vocab_file.read_text(encoding="utf-8").splitlines()
        vocab = {tok: i for i, tok in enumerate(tokens) if tok}
        model = models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100)
        return cls(_bert_pipeline(Tokenizer(model), lowercase), max_length)

    @classmethod
    def from_file(cls, tokenizer_json: str | Path, max_length: int = 77) -> TextTokenizer:
        """From a ``tokenizers`` ``tokenizer.json`` (e.g. the one transformers saves for BERT)."""
        from tokenizers import Tokenizer

        path = Path(tokenizer_json)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        return cls(Tokenizer.from_file(str(path)), max_length)

    @classmethod
    def from_pretrained(cls, path: str | Path, max_length: int = 77) -> TextTokenizer:
        """From a directory with ``tokenizer.json`` or ``vocab.txt``, or from either file."""
        path = Path(path)
        if path.is_dir():
            if (path / "tokenizer.json").exists():
                return cls.from_file(path / "tokenizer.json", max_length)
            if (path / "vocab.txt").exists():
                return cls.from_vocab(path / "vocab.txt", max_length=max_length)
            raise FileNotFoundError(f"{path} holds neither tokenizer.json nor vocab.txt")
        if path.suffix == ".json":
            return cls.from_file(path, max_length)
        return cls.from_vocab(path, max_length=max_length)

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` and ``vocab.txt`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / "tokenizer.json"))
        vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        (directory / "vocab.txt").write_text("".join(f"{tok}\n" for tok, _ in vocab), encoding="utf-8")
        return directory

    # -- ids ----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def token_id(self, token: str) -> int:
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise KeyError(f"{token!r} is not in the vocabulary")
        return i

    @property
    def pad_token_id(self) -> int:
        return self.token_id("[PAD]")

    @property
    def mask_token_id(self) -> int:
        return self.token_id("[MASK]")

    @property
    def special_token_ids(self) -> list[int]:
        return [self.token_id(t) for t in SPECIAL_TOKENS]

    # -- encoding -----------------------------------------------------------------------------
    def encode_batch(self, texts: Sequence[str]) -> list[Encoding]:
        """Encode texts (in Rust, in parallel) to ``[CLS] ... [SEP]``, truncated to ``max_length``."""
        out = []
        for enc in self.tokenizer.encode_batch(list(texts)):
            words = [0 if w is None else w + 1 for w in enc.word_ids]
            out.append(Encoding(torch.tensor(enc.ids, dtype=torch.long), torch.tensor(words, dtype=torch.long)))
        return out

    def encode(self, text: str) -> Encoding:
        return self.encode_batch([text])[0]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


def train_wordpiece(
    files: Sequence[str | Path],
    vocab_size: int = 8000,
    min_frequency: int = 2,
    lowercase: bool = True,
    max_length: int = 77,
) -> TextTokenizer:
    """Learn a WordPiece vocabulary (BERT special tokens first, so ``[PAD]`` is 0) from text files.

    Args:
        files: UTF-8 text files, one document or sentence per line.
        vocab_size: target vocabulary size. min_frequency: drop rarer pieces.
        lowercase: BERT-uncased normalisation.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    paths = [str(Path(f)) for f in files]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"training files do not exist: {missing[:5]}")
    if not paths:
        raise ValueError("train_wordpiece needs at least one text file")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tok.train(paths, trainer)
    return TextTokenizer(_bert_pipeline(tok, lowercase), max_length)
