"""Property-based malformed annotation files: whatever JSON lines a Hateful Memes or SNLI-VE file holds, the
reader either reads rows that point inside the dataset root or ends in one named ``InputError``: never
another exception, never a row naming a file outside the root (``tests/test_hostile_inputs.py`` holds the
hand-written cases)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is a dev dependency")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mmkit.eval.benchmarks.vl_tasks import read_hateful_memes, read_snli_ve  # noqa: E402
from mmkit.utils.errors import InputError  # noqa: E402

#: JSON values of every kind a field might hold, nested a little
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["../../etc/passwd", "/etc/passwd", "img/1.png", "a/../../x.png", "1", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
PATHS = st.sampled_from(["../../etc/passwd", "/etc/passwd", "img/1.png", "a/../../x.png", "..", "", "."]) | st.text(
    max_size=8
)
#: records of the right shape but hostile values (paths out of the root, labels out of range)
SHAPED = st.one_of(
    st.fixed_dictionaries(
        {"id": VALUES, "img": PATHS, "text": st.text(max_size=8), "label": st.sampled_from([0, 1, 2, -1, True])}
    ),
    st.fixed_dictionaries(
        {
            "Flickr30K_ID": PATHS | st.integers(),
            "sentence2": st.text(max_size=8),
            "gold_label": st.sampled_from(["entailment", "neutral", "contradiction", "-", ""]),
        }
    ),
).map(json.dumps)
#: one line: a record of the right shape, a JSON object mixing the real field names with others, or
#: something that is not an object
LINES = st.one_of(
    SHAPED,
    st.dictionaries(
        st.sampled_from(["id", "img", "text", "label", "Flickr30K_ID", "sentence2", "gold_label", "pairID", "x"]),
        VALUES,
        max_size=6,
    ).map(json.dumps),
    VALUES.map(json.dumps),
    st.text(max_size=20),
)


def _inside(root: Path, image: object) -> bool:
    return image is None or Path(str(image)).resolve().is_relative_to(root.resolve())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINES, min_size=1, max_size=6))
def test_malformed_hateful_memes_and_snli_ve_files_are_read_safely_or_named(lines, tmp_path):
    text = "\n".join(lines) + "\n"
    (tmp_path / "train.jsonl").write_text(text)
    (tmp_path / "snli_ve_train.jsonl").write_text(text)
    (tmp_path / "images").mkdir(exist_ok=True)
    for read in (lambda: read_hateful_memes(tmp_path, "train"), lambda: read_snli_ve(tmp_path, "train")):
        try:
            rows = read()
        except InputError as e:
            assert "\n" not in str(e) and str(tmp_path) in str(e)  # one line, naming the file
            continue
        assert len(rows) and all(_inside(tmp_path, image) for image in rows.image_paths), rows.image_paths
