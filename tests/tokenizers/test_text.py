import pytest

from mmkit.tokenizers import TextTokenizer, train_wordpiece
from mmkit.tokenizers.train import main as train_main

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "red",
    "circle",
    "##s",
    "big",
    "blue",
    "square",
    "the",
    "of",
    "left",
    "to",
    ",",
    ".",
    "un",
    "##known",
    "c",
    "##af",
    "##e",
]
TEXTS = ["A big red circle.", "two BLUE squares to the left of circles", "unknown, café", ""]


def test_vocab_txt_matches_transformers_bert_tokenizer(tmp_path):
    from transformers import BertTokenizer

    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    ours = TextTokenizer.from_vocab(tmp_path / "vocab.txt", max_length=8)
    ref = BertTokenizer.from_pretrained(tmp_path)  # reads vocab.txt; bert-base-uncased defaults
    for text in TEXTS:
        expected = ref(text, truncation=True, max_length=8)["input_ids"]
        assert ours.encode(text).input_ids.tolist() == expected, text


def test_word_ids_group_word_pieces():
    vocab = {t: i for i, t in enumerate(VOCAB)}
    from tokenizers import Tokenizer, models

    from mmkit.tokenizers.text import _bert_pipeline

    t = TextTokenizer(_bert_pipeline(Tokenizer(models.WordPiece(vocab, unk_token="[UNK]")), True))
    enc = t.encode("red circles")
    assert [VOCAB[i] for i in enc.input_ids] == ["[CLS]", "red", "circle", "##s", "[SEP]"]
    assert enc.word_ids.tolist() == [0, 1, 2, 2, 0]
    assert t.special_token_ids == [0, 1, 2, 3, 4] and t.pad_token_id == 0 and t.mask_token_id == 4


def test_train_cli_round_trip(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(["two small red circles", "a big blue square above three triangles"] * 20))
    assert (
        train_main(
            [
                "--files",
                str(tmp_path / "*.txt"),
                "--out",
                str(tmp_path / "tok"),
                "--vocab-size",
                "120",
                "--min-frequency",
                "1",
            ]
        )
        == 0
    )
    assert "WordPiece vocabulary" in capsys.readouterr().out
    a = TextTokenizer.from_pretrained(tmp_path / "tok")
    b = TextTokenizer.from_vocab(tmp_path / "tok" / "vocab.txt")
    text = "three small blue circles"
    assert a.encode(text).input_ids.tolist() == b.encode(text).input_ids.tolist()
    assert a.decode(a.encode(text).input_ids.tolist()) == text
    assert a.pad_token_id == 0


def test_errors():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextTokenizer.from_vocab("/nonexistent/vocab.txt")
    with pytest.raises(FileNotFoundError, match="training files do not exist"):
        train_wordpiece(["/nonexistent.txt"])
    from tokenizers import Tokenizer, models

    with pytest.raises(ValueError, match=r"lacks the special tokens \['\[MASK\]'\]"):
        TextTokenizer(Tokenizer(models.WordPiece({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}, unk_token="[UNK]")))


def test_wordpiece_merges_by_hand():
    """abab x2, ab x1: (a, ##b) is most frequent (3); then (##a, ##b) and (ab, ##a) tie at 2 and the
    pair that sorts first wins; then (ab, ##ab)."""
    from mmkit.tokenizers.text import SPECIAL_TOKENS, learn_wordpiece_vocab

    vocab = learn_wordpiece_vocab({"abab": 2, "ab": 1}, vocab_size=100, min_frequency=2)
    assert vocab == [*SPECIAL_TOKENS, "##b", "a", "##a", "ab", "##ab", "abab"]
    assert learn_wordpiece_vocab({"abab": 2, "ab": 1}, vocab_size=len(SPECIAL_TOKENS) + 4)[-1] == "ab"


def test_training_is_the_same_in_every_process(tmp_path):
    """tokenizers' own trainer breaks ties in hash-map order, which changes per process
    (huggingface/tokenizers#1794): the same files gave different vocabularies run to run."""
    import subprocess
    import sys

    corpus = tmp_path / "c.txt"
    corpus.write_text(
        "\n".join(
            f"{a} {b} squares {c}"
            for a in ("one", "two", "three")
            for b in ("red", "blue")
            for c in ("left", "right", "above")
        )
        * 3
    )
    code = (
        "import sys; from mmkit.tokenizers import train_wordpiece; "
        "train_wordpiece([sys.argv[1]], 60, min_frequency=1).save(sys.argv[2])"
    )
    outs = []
    for i, seed in enumerate(("1", "2", "3")):
        out = tmp_path / f"tok{i}"
        subprocess.run(
            [sys.executable, "-c", code, str(corpus), str(out)],
            check=True,
            env={**__import__("os").environ, "PYTHONHASHSEED": seed},
        )
        outs.append((out / "tokenizer.json").read_text())
    assert outs[0] == outs[1] == outs[2]
