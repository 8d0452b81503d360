import json

import pytest

from mmkit.data import shapes_dataset
from mmkit.data.sources import decode_text
from mmkit.data.tasks import (
    COLOR_NAMES,
    ClassificationDataset,
    LabeledText,
    ShapesTask,
    collate_classification,
    parse_first_group,
)


def test_parse_first_group():
    assert parse_first_group("two small red circles to the left of a big blue square") == {
        "count": "2",
        "size": "small",
        "color": "red",
        "shape": "circle",
    }
    with pytest.raises(ValueError, match="not a shapes caption"):
        parse_first_group("a cat on a mat")


def test_shapes_tasks_label_what_the_caption_says(tmp_path):
    paths = shapes_dataset(tmp_path, num_train=40, num_val=10, num_images=4, num_text=4, per_shard=40)
    color = ShapesTask(paths.train_pairs, "color")
    for i in range(10):
        rec = color[i]
        assert COLOR_NAMES[rec.label] == rec.text.split()[2]
    ent = ShapesTask(paths.train_pairs, "entailment")
    labels = [ent[i].label for i in range(40)]
    assert 10 < sum(labels) < 30  # about half true
    for i in range(40):
        true_caption = decode_text(color.pairs[i])
        assert (ent[i].text == true_caption) == bool(ent[i].label)
    with pytest.raises(ValueError, match="task must be one of"):
        ShapesTask(paths.train_pairs, "size")


def test_labeled_text_pairs_and_collate(tmp_path, tokenizer):
    path = tmp_path / "t.jsonl"
    rows = [{"a": "two red circles", "b": "a blue square", "y": "yes"}, {"a": "a green star", "b": "x", "y": "no"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    src = LabeledText(path, text_column="a", text_pair_column="b", label_column="y", labels=["no", "yes"])
    ds = ClassificationDataset(src, "text", tokenizer=tokenizer)
    batch = collate_classification([ds[0], ds[1]], tokenizer.pad_token_id)
    assert batch["labels"].tolist() == [1, 0] == src.labels  # labels read without decoding records
    assert batch["token_type_ids"][0].max() == 1 and batch["input_ids"].shape == batch["attention_mask"].shape
    with pytest.raises(KeyError, match="has no column 'label'"):
        LabeledText(path, text_column="a")
