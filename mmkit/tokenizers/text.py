"""BERT-style WordPiece text tokenization on Hugging Face ``tokenizers`` (Rust, batched).

:class:`TextTokenizer` loads a bert-base-uncased-format ``vocab.txt`` or a ``tokenizer.json``
and encodes batches to ``[CLS] tokens [SEP]`` id lists (truncated to ``max_length``), with
the word index of every token for whole-word masking. :func:`train_wordpiece` builds a
vocabulary from the user's own text files, for a user without a model hub:

    python -m mmkit.tokenizers.train --files corpus/*.txt --vocab-size 8000 --out my_vocab/
"""

from __future__ import annotations

import heapq
import itertools
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mmkit.utils.errors import DataKeyError, InputError, MissingError

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
            raise InputError(f"the vocabulary lacks the special tokens {missing}; BERT-format vocabularies have them")
        if max_length < 2:
            raise InputError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
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
            raise MissingError(f"vocabulary file {vocab_file} does not exist")
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
            raise MissingError(f"tokenizer file {path} does not exist")
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
            raise MissingError(f"{path} holds neither tokenizer.json nor vocab.txt")
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
            raise DataKeyError(f"{token!r} is not in the vocabulary")
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


def learn_wordpiece_vocab(
    word_counts: Mapping[str, int],
    vocab_size: int,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    prefix: str = "##",
) -> list[str]:
    """A WordPiece vocabulary learned by pair merges, deterministically.

    The procedure of ``tokenizers``' ``WordPieceTrainer``: every word starts as its characters (all but
    the first carrying ``prefix``); the most frequent adjacent pair is merged (``a`` + ``##b`` ->
    ``ab``, ``##a`` + ``##b`` -> ``##ab``) until ``vocab_size`` tokens or no pair occurs
    ``min_frequency`` times. Unlike that trainer, ties are broken by the pair's text, so the same
    input always gives the same vocabulary (``tokenizers`` breaks them by ids assigned in hash-map
    order, which changes from process to process: huggingface/tokenizers#1794).

    Args:
        word_counts: ``{word: count}`` after normalisation and pre-tokenisation.
        vocab_size: target size (the special tokens and every character are kept even beyond it).
        min_frequency: a merge needs at least this many occurrences.
        special_tokens: first in the vocabulary, in this order.

    Returns:
        The tokens in id order: special tokens, characters (most frequent first), then merges in order.
    """
    vocab: list[str] = []
    known: set[str] = set()

    def add(token: str) -> None:
        if token not in known:
            known.add(token)
            vocab.append(token)

    for token in special_tokens:
        add(token)
    words: list[list[str]] = []
    counts: list[int] = []
    symbol_freq: Counter[str] = Counter()
    for word, count in sorted(word_counts.items()):
        if not word:
            continue
        symbols = [word[0], *(prefix + ch for ch in word[1:])]
        words.append(symbols)
        counts.append(count)
        for sym in symbols:
            symbol_freq[sym] += count
    for sym in sorted(symbol_freq, key=lambda t: (-symbol_freq[t], t)):
        add(sym)

    pair_count: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, symbols in enumerate(words):
        for pair in itertools.pairwise(symbols):
            pair_count[pair] += counts[i]
            where[pair].add(i)
    heap = [(-c, a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, a, b = heapq.heappop(heap)
        if -neg != pair_count.get((a, b), 0):
            continue  # stale: the pair's count changed after this entry was pushed
        if -neg < min_frequency:
            break
        merged_token = a + b.removeprefix(prefix)
        add(merged_token)
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop((a, b), ())):
            old, c = words[i], counts[i]
            new: list[str] = []
            j = 0
            while j < len(old):
                if j + 1 < len(old) and old[j] == a and old[j + 1] == b:
                    new.append(merged_token)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            old_pairs, new_pairs = list(itertools.pairwise(old)), list(itertools.pairwise(new))
            for pair in old_pairs:
                pair_count[pair] -= c
            for pair in new_pairs:
                pair_count[pair] += c
            for pair in set(old_pairs) - set(new_pairs):
                where[pair].discard(i)
            for pair in new_pairs:
                where[pair].add(i)
            touched.update(old_pairs, new_pairs)
            words[i] = new
        pair_count.pop((a, b), None)
        for pair in sorted(touched - {(a, b)}):
            if pair_count[pair] > 0:
                heapq.heappush(heap, (-pair_count[pair], *pair))
    return vocab


def train_wordpiece(
    files: Sequence[str | Path],
    vocab_size: int = 8000,
    min_frequency: int = 2,
    lowercase: bool = True,
    max_length: int = 77,
) -> TextTokenizer:
    """Learn a WordPiece vocabulary (BERT special tokens first, so ``[PAD]`` is 0) from text files.

    The same files always give the same vocabulary (see :func:`learn_wordpiece_vocab`); text is
    normalised and split into words by ``tokenizers``' BERT normaliser and pre-tokenizer.

    Args:
        files: UTF-8 text files, one document or sentence per line.
        vocab_size: target vocabulary size. min_frequency: drop rarer pieces.
        lowercase: BERT-uncased normalisation.
        max_length: truncation length of the returned tokenizer.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    paths = [str(Path(f)) for f in files]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise MissingError(f"training files do not exist: {missing[:5]}")
    if not paths:
        raise InputError("train_wordpiece needs at least one text file")
    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None, clean_text=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    word_counts: Counter[str] = Counter()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                word_counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    vocab = learn_wordpiece_vocab(word_counts, vocab_size, min_frequency)
    model = models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", continuing_subword_prefix="##")
    tokenizer = Tokenizer(model)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # never split, dropped by decode(skip_special_tokens)
    return TextTokenizer(_bert_pipeline(tokenizer, lowercase), max_length)


def _local_copies(files: Sequence[str | Path], folder: Path, storage_options: dict | None) -> list[str | Path]:
    """``files`` with each one behind a URL copied into ``folder`` (the trainer reads local files only)."""
    out: list[str | Path] = []
    for i, f in enumerate(files):
        if "://" not in str(f) or str(f).startswith("file://"):
            out.append(str(f).removeprefix("file://"))
            continue
        import fsspec

        folder.mkdir(parents=True, exist_ok=True)
        dst = folder / f"{i:04d}-{str(f).rstrip('/').rsplit('/', 1)[-1]}"
        with fsspec.open(str(f), "rb", **(storage_options or {})) as src, open(dst, "wb") as sink:
            shutil.copyfileobj(src, sink)
        out.append(dst)
    return out


def tokenizer_for_run(
    tokenizer: str | Path | None,
    text_files: Sequence[str | Path],
    vocab_size: int,
    max_length: int,
    run_dir: str | Path,
    *,
    is_main: bool = True,
    barrier: Callable[[], None] | None = None,
    storage_options: dict | None = None,
) -> TextTokenizer:
    """A training run's text tokenizer: the given one, or a WordPiece vocabulary trained on the run's
    text files once (by the main process, into ``<run_dir>/tokenizer``) and read back by every process.

    Args:
        tokenizer: a ``vocab.txt`` / ``tokenizer.json`` / directory, or ``None`` to train one.
        text_files: what to train on when ``tokenizer`` is ``None``.
        vocab_size: target vocabulary size of a trained tokenizer. max_length: truncation length.
        run_dir: the run directory. is_main / barrier: the process's role and a barrier over all
            processes (a resumed run finds the saved vocabulary and does not train again).
        storage_options: ``fsspec`` options for text files behind URLs (``s3://``, ``http(s)://``, ...),
            which are copied into ``<run_dir>/tokenizer/corpus/`` once to train on.
    """
    if tokenizer:
        return TextTokenizer.from_pretrained(tokenizer, max_length=max_length)
    out = Path(run_dir) / "tokenizer"
    if is_main and not (out / "tokenizer.json").exists():
        if not text_files:
            raise InputError("no tokenizer given and no text files to train one on: set data.tokenizer")
        local = _local_copies(text_files, out / "corpus", storage_options)
        train_wordpiece(local, vocab_size, min_frequency=1, max_length=max_length).save(out)
    if barrier is not None:
        barrier()
    return TextTokenizer.from_pretrained(out, max_length=max_length)
