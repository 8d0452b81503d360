"""A standing corpus of broken and hostile files, each run through the reader or command that meets it in use.

Every case ends in one ``error:`` line or a named skip: no traceback, no hang (the memory and hang cases run
in a subprocess under a timeout and a capped address space), no byte written outside the output root or
through a planted link, no file read outside the dataset root. Add a case here with every fix of this kind.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import torch

from mmkit.utils.errors import InputError, StateError, run_cli, user_error_message
from tests.conftest import run_recipe

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# Helpers: small files, and what a user sees
# ------------------------------------------------------------------------------------------
def png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()


def one_error_line(err: str, *fragments: str) -> str:
    """The single ``error:`` line of a command's stderr, checked to hold ``fragments``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def sparse_member(name: str, data: bytes, realsize: int) -> bytes:
    """A GNU (old format) sparse tar member storing ``data`` and declaring ``realsize`` bytes (the rest holes)."""
    info = tarfile.TarInfo(name)
    info.size, info.type = len(data), tarfile.GNUTYPE_SPARSE
    buf = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    buf[386:398], buf[398:410] = b"%011o\0" % 0, b"%011o\0" % len(data)  # one region: offset 0, len(data) bytes
    buf[482], buf[483:495] = 0, b"%012o" % realsize  # not extended; the expanded size
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf[:512])
    return bytes(buf) + data + b"\0" * (-len(data) % 512)


def plain_member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)


def write_sparse_shard(path: Path, realsize: int = 8 << 30) -> Path:
    """A shard of a few kilobytes: sample ``a`` (an image member declaring ``realsize`` bytes, and a
    caption), then a good sample ``b``."""
    blob = sparse_member("a.png", png(), realsize) + plain_member("a.txt", b"a sparse bomb")
    blob += plain_member("b.png", png()) + plain_member("b.txt", b"a red square") + b"\0" * 1024
    path.write_bytes(blob)
    return path


@pytest.fixture
def tree(tmp_path):
    """A dataset root with a good image, a FIFO and a link to ``/dev/zero`` named like images, and a
    secret image outside the root that no annotation may read."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "ok.png").write_bytes(png())
    os.mkfifo(root / "fifo.png")
    os.symlink("/dev/zero", root / "zero.png")
    (tmp_path / "secret.png").write_bytes(png((0, 0, 0)))
    return root


# ------------------------------------------------------------------------------------------
# Names and locks: nothing written outside out= or through a link
# ------------------------------------------------------------------------------------------
_SUITES = [
    ('{name: "../../proj", kind: finetune, task: "glue:rte", path: p}', "name '../../proj' must be one path component"),
    ('{name: "a/b", kind: zero_shot, layout: wds, path: p}', "name 'a/b' must be one path component"),
    ('{name: "..", kind: zero_shot, layout: wds, path: p}', "must be one path component"),
    ('{name: "", kind: zero_shot, layout: wds, path: p}', "name is empty"),
    ("{name: 5, kind: zero_shot, layout: wds, path: p}", "name must be a string, got int"),
    ("{name: a, kind: zero_shot, layout: [folder, wds], path: p}", "layout a list (['folder', 'wds']) is not one of"),
    ("{name: a, kind: {x: 1}, layout: wds, path: p}", "kind a dict"),
    ("{name: a, kind: finetune, task: [glue:rte], path: p}", "task a list"),
    ("{name: a, kind: zero_shot, layout: wds, path: p, templates: 5}", "templates must be a file name or a list"),
    ("{name: a, kind: zero_shot, layout: wds, path: p, paper: {accuracy: high}}", "paper must be a number or"),
    ("{name: a, kind: zero_shot, layout: wds, path: 5}", "path must be a file or folder name"),
    ("{name: a, kind: retrieval, layout: coco, path: p, annotations: 5}", "annotations must be a string, got 5"),
    ("{name: a, kind: retrieval, layout: coco, path: p, allow_outside_root: maybe}", "allow_outside_root must be true"),
    ("{name: a, kind: zero_shot, layout: wds, path: p, paper: " + "1" * 5000 + "}", "a value that cannot be read"),
]


@pytest.mark.parametrize("entry, fragment", _SUITES, ids=[f"suite{i}" for i in range(len(_SUITES))])
def test_a_suite_value_of_the_wrong_type_is_one_line(entry, fragment, tmp_path, capsys):
    suite, out = tmp_path / "s.yaml", tmp_path / "out"
    suite.write_text(f"tasks:\n  - {entry}\n")
    assert run_recipe("recipes/flava/evaluate.py", f"suite={suite}", f"out={out}") == 2
    one_error_line(capsys.readouterr().err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # nothing written anywhere


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"tasks:\n  - {name: caf\xe9, kind: zero_shot, layout: wds, path: p}\n", "s.yaml:2 is not UTF-8"),
        (b"tasks: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nests too deeply to read"),
        (b"tasks: []\n", "the suite lists no tasks"),
        (b"root: [a]\ntasks: []\n", "root must be a folder name"),
    ],
)
def test_a_broken_suite_file_is_one_line(content, fragment, tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_bytes(content)
    assert run_recipe("recipes/flava/evaluate.py", f"suite={suite}", f"out={tmp_path / 'out'}") == 2
    one_error_line(capsys.readouterr().err, fragment)


@pytest.mark.parametrize("plant", ["symlink", "fifo", "hardlink", "folder"])
def test_a_planted_lock_file_is_refused_and_its_target_untouched(plant, tmp_path, capsys):
    from mmkit.utils.run_lock import LOCK_NAME, RunDirLock

    out, victim = tmp_path / "out", tmp_path / "victim.json"
    out.mkdir()
    victim.write_text('{"another run": "results"}')
    lock = out / LOCK_NAME
    {
        "symlink": lambda: lock.symlink_to(victim),
        "fifo": lambda: os.mkfifo(lock),
        "hardlink": lambda: os.link(victim, lock),
        "folder": lock.mkdir,
    }[plant]()
    with pytest.raises(StateError, match=r"\.mmkit-run\.lock"):
        RunDirLock.acquire(out)
    suite = tmp_path / "s.yaml"
    suite.write_text("tasks: []\n")  # the suite holds its out= before it looks at the tasks
    assert run_recipe("recipes/flava/evaluate.py", f"suite={suite}", f"out={out}") == 2
    one_error_line(capsys.readouterr().err, ".mmkit-run.lock")
    assert victim.read_text() == '{"another run": "results"}'


# ------------------------------------------------------------------------------------------
# Paths from data files stay inside the dataset root; only regular files are read
# ------------------------------------------------------------------------------------------
def test_manifest_paths_stay_inside_the_root_and_special_files_are_named_skips(tree):
    from mmkit.data import Manifest

    rows = ["ok.png", "../secret.png", str(tree.parent / "secret.png"), "fifo.png", "zero.png", "gone.png"]
    manifest = tree / "m.jsonl"
    manifest.write_text("".join(json.dumps({"image": r, "caption": "c"}) + "\n" for r in rows))
    records = [Manifest(manifest)[i] for i in range(len(rows))]
    assert records[0].image == png() and "error" not in records[0].meta
    for r in records[1:3]:
        assert r.image is None and "outside the dataset root" in r.meta["error"], r.meta
    assert "FIFO" in records[3].meta["error"] and "character device" in records[4].meta["error"]
    assert "No such file" in records[5].meta["error"]
    trusted = Manifest(manifest, allow_outside_root=True)
    assert trusted[1].image == png((0, 0, 0)) and trusted[2].image == png((0, 0, 0))


def test_coco_and_karpathy_names_stay_inside_their_folders(tree):
    from mmkit.eval.benchmarks import open_benchmark

    names = ["ok.png", "../secret.png", "/etc/hostname", "fifo.png", "zero.png"]
    images = [{"id": i, "file_name": n} for i, n in enumerate(names)]
    anns = [{"image_id": i, "caption": f"c{i}"} for i in range(len(names))]
    (tree / "captions.json").write_text(json.dumps({"images": images, "annotations": anns}))
    samples = list(open_benchmark("coco", tree, "val", annotations="captions.json", images="."))
    assert samples[0].image == png() and samples[0].error is None
    assert all(s.image is None for s in samples[1:])
    assert "outside the dataset root" in samples[1].error and "outside the dataset root" in samples[2].error
    assert "FIFO" in samples[3].error and "character device" in samples[4].error
    split = [
        {"filename": "secret.png", "filepath": "..", "split": "test", "sentences": [{"raw": "x"}]},
        {"filename": "ok.png", "filepath": ".", "split": "test", "sentences": [{"raw": "y"}]},
    ]
    (tree / "karpathy.json").write_text(json.dumps({"images": split}))
    first, second = open_benchmark("karpathy", tree, "test", annotations="karpathy.json")
    assert first.image is None and "outside the dataset root" in first.error and second.image == png()


def test_finetuning_annotations_stay_inside_the_root(tree):
    from mmkit.eval.benchmarks.vl_tasks import read_hateful_memes, read_snli_ve

    lines = [
        {"id": 1, "img": "ok.png", "text": "t", "label": 1},
        {"id": 2, "img": "../secret.png", "text": "t", "label": 0},
        {"id": 3, "img": "/etc/hostname", "text": "t", "label": 0},
        {"id": 4, "img": "ok.png", "text": 5, "label": 0},
        {"id": 5, "img": "ok.png", "text": "t", "label": "1"},
        {"id": 6, "img": "fifo.png", "text": "t", "label": 1},
    ]
    (tree / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "1" * 5000 + "\n" + "[" * 100_000)
    rows = read_hateful_memes(tree, "train")
    assert len(rows) == 2 and len(rows.skipped) == 6
    shown = " | ".join(rows.skipped)
    assert shown.count("outside the dataset root") == 2 and "text is int, not str" in shown
    assert "label is str, not int" in shown and "not valid JSON" in shown and "nested too deeply" in shown
    with pytest.raises(OSError, match="FIFO"):  # read when the loader reaches it: a named skip there
        rows[1]
    snli = [
        {"Flickr30K_ID": "../../secret", "sentence2": "s", "gold_label": "neutral"},
        {"Flickr30K_ID": {"a": 1}, "sentence2": "s", "gold_label": "neutral"},
        {"Flickr30K_ID": "ok", "sentence2": "s", "gold_label": "neutral"},
    ]
    (tree / "snli_ve_dev.jsonl").write_text("".join(json.dumps(x) + "\n" for x in snli))
    rows = read_snli_ve(tree, "dev", images=tree)
    shown = " | ".join(rows.skipped)
    assert len(rows) == 1 and "outside the dataset root" in shown and "Flickr30K_ID is dict, not str or int" in shown


def test_vqa_fields_of_the_wrong_type_are_named_skips(tmp_path):
    from mmkit.eval.benchmarks.vl_tasks import read_vqav2

    good = {"question_id": 1, "image_id": 1, "question": "what?"}
    questions = [
        good,
        {"question_id": [2], "image_id": 1, "question": "q"},
        {"question_id": 3, "image_id": "abc", "question": "q"},
        {"question_id": 4, "image_id": 1, "question": 7},
    ]
    answers = {"answers": [{"answer": "yes"}] * 10, "multiple_choice_answer": "yes"}
    annotations = [
        {"question_id": 1, **answers},
        {"question_id": 3, **answers},
        {"question_id": 4, "answers": "yes", "multiple_choice_answer": "yes"},
    ]
    for sub in ("train2014", "val2014"):
        (tmp_path / f"v2_OpenEnded_mscoco_{sub}_questions.json").write_text(json.dumps({"questions": questions}))
        (tmp_path / f"v2_mscoco_{sub}_annotations.json").write_text(json.dumps({"annotations": annotations}))
    rows = read_vqav2(tmp_path, "val")
    assert rows.keys == ["q1"] and len(rows.skipped) == 3, rows.skipped
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": {"a": 1}}))
    with pytest.raises(InputError, match="annotations must be a list, got dict"):
        read_vqav2(tmp_path, "val", classes=("yes",))


def test_annotation_json_that_cannot_be_parsed_is_one_error(tmp_path):
    from mmkit.data.sources import read_table
    from mmkit.eval.benchmarks import open_benchmark

    for name, text in (("big.jsonl", '{"a": ' + "9" * 5000 + "}\n"), ("deep.jsonl", "[" * 100_000 + "\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=rf"{name}:1 is not valid JSON"):
            read_table(tmp_path / name)
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    with pytest.raises(InputError, match="list.jsonl:1 is a JSON list, not an object"):
        read_table(tmp_path / "list.jsonl")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2017.json").write_text("[" * 100_000)
    with pytest.raises(InputError, match="captions_val2017.json: not valid JSON"):
        open_benchmark("coco", tmp_path, "val")


# ------------------------------------------------------------------------------------------
# Bounded reads: refused from a header or stat, before any byte of the sample is read
# ------------------------------------------------------------------------------------------
def test_a_sparse_tar_member_is_a_named_skip_in_every_reader(tmp_path):
    from mmkit.data import TarShards
    from mmkit.data.streaming import iter_samples
    from mmkit.eval.benchmarks import open_benchmark

    shard = write_sparse_shard(tmp_path / "s.tar")
    indexed = TarShards([shard])
    assert "over the per-sample limit" in indexed[0].meta["error"] and indexed[1].image == png()
    with open(shard, "rb") as f:
        streamed = [r for _, r in iter_samples(f, "s.tar")]
    assert "sparse member a.png is 8,192.0 MiB" in streamed[0].meta["error"] and streamed[1].image == png()
    wds = tmp_path / "wds"
    (wds / "test").mkdir(parents=True)
    (wds / "test" / "0.tar").write_bytes(
        sparse_member("a.png", png(), 8 << 30)
        + plain_member("a.cls", b"0")
        + plain_member("b.png", png())
        + plain_member("b.cls", b"1")
        + b"\0" * 1024
    )
    a, b = open_benchmark("wds", wds, "test")
    assert a.image is None and "over the per-sample limit" in a.error and b.label == 1


def test_an_idx_header_over_the_pixel_bound_is_refused_before_reading(tmp_path):
    from mmkit.eval.benchmarks import BenchmarkFormatError, open_benchmark

    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + struct.pack(">3I", 2, 15000, 15000))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01" + struct.pack(">I", 2) + b"\0\1")
    with pytest.raises(BenchmarkFormatError, match="15000x15000 .* over the limit of 89,478,485 pixels"):
        open_benchmark("mnist", tmp_path, "test")


def test_parquet_columns_of_the_wrong_type_are_named(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmkit.embed import main as embed
    from mmkit.eval.benchmarks import BenchmarkFormatError, open_benchmark
    from mmkit.eval.benchmarks.glue import read_glue

    pq.write_table(pa.table({"image": [1, 2], "label": ["a", "b"]}), tmp_path / "bad.parquet")
    with pytest.raises(BenchmarkFormatError, match="image column 'image' holds int64, expected binary"):
        open_benchmark("parquet", tmp_path / "bad.parquet", "test", label_column="label")
    pq.write_table(pa.table({"image": [png()], "label": ["a"]}), tmp_path / "label.parquet")
    with pytest.raises(BenchmarkFormatError, match="label column 'label' holds string, expected integer"):
        open_benchmark("parquet", tmp_path / "label.parquet", "test", label_column="label")
    assert embed(["--source", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "e"), "--kind", "image"]) == 2
    one_error_line(capsys.readouterr().err, "image column 'image' holds int64")
    glue = tmp_path / "rte"
    glue.mkdir()
    pq.write_table(
        pa.table({"sentence1": ["a", "b"], "sentence2": [3, None], "label": [0, 1]}),
        glue / "validation-00000-of-00001.parquet",
    )
    with pytest.raises(InputError, match="sentence2 is int, not a string"):  # every row skipped: named
        read_glue("rte", glue, "dev")


# ------------------------------------------------------------------------------------------
# Weight files and configs: one line naming the file, never torch's advice
# ------------------------------------------------------------------------------------------
def test_weight_files_that_lie_or_carry_code_are_one_line(tmp_path, capsys):
    from mmkit.utils.config_json import check_config_json
    from mmkit.utils.weights import read_weight_file, read_weight_shapes, weight_files

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"w": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="evil.pt cannot be trusted or read: it holds a pickle") as e:
        read_weight_file(tmp_path / "evil.pt")
    assert "weights_only" not in str(e.value) and not (tmp_path / "ran").exists()
    header = json.dumps({"w": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 40_000_000_000]}})
    (tmp_path / "lie.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 16)
    for read in (read_weight_file, read_weight_shapes):
        with pytest.raises(InputError, match="lie.safetensors cannot be trusted or read: not a readable safetensors"):
            read(tmp_path / "lie.safetensors")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../lie.safetensors"}}))
    with pytest.raises(InputError, match="names the shard file '../lie.safetensors' must be one path component"):
        weight_files(ckpt)
    (ckpt / "config.json").write_text(json.dumps({"image_config": {"image_size": "224", "hidden_size": 8}}))
    with pytest.raises(InputError, match="image_config.image_size must be a number, got '224'"):
        check_config_json(ckpt)
    assert run_recipe("recipes/flava/evaluate.py", f"checkpoint={ckpt}", "tasks=linear_probe:count") == 2
    one_error_line(capsys.readouterr().err, "config.json is not a model config mmkit can read")


# ------------------------------------------------------------------------------------------
# Errors in DataLoader workers read as in the main process
# ------------------------------------------------------------------------------------------
class _Decoder(torch.nn.Module):
    """Just enough of a model for image_features to start its loader (the error comes first)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


def test_an_error_in_a_loader_worker_is_the_same_one_line(tmp_path, capsys):
    from mmkit.eval.benchmarks import open_benchmark
    from mmkit.eval.features import image_features

    wds = tmp_path / "wds"
    (wds / "test").mkdir(parents=True)
    (wds / "test" / "0.tar").write_bytes(plain_member("a.png", png()) + plain_member("a.cls", b"x" * 30) + b"\0" * 1024)
    messages = []
    for workers in (0, 2):
        with pytest.raises(Exception) as e:
            image_features(
                _Decoder(),
                open_benchmark("wds", wds, "test"),
                lambda im: {"image": torch.zeros(3, 2, 2)},
                transform_id="t",
                num_workers=workers,
                progress=False,
            )
        messages.append(user_error_message(e.value))
    assert messages[0] == messages[1] and "a.cls is not a class number" in messages[0], messages

    def failing():
        return image_features(
            _Decoder(),
            open_benchmark("wds", wds, "test"),
            lambda im: {},
            transform_id="t",
            num_workers=2,
            progress=False,
        )

    assert run_cli(failing) == 2
    one_error_line(capsys.readouterr().err, "a.cls is not a class number")


# ------------------------------------------------------------------------------------------
# The record says what happened
# ------------------------------------------------------------------------------------------
def test_the_stop_message_names_the_checkpoint_or_says_there_is_none():
    from mmkit.train.loop import _last_good

    assert _last_good(None).startswith("No checkpoint has been saved yet")
    assert "runs/x/checkpoints/step_10" in _last_good("runs/x/checkpoints/step_10")


def test_a_skipped_sample_is_named_in_the_log_and_in_results(tmp_path, capsys):
    from tests.conftest import make_mmkit_export

    export = make_mmkit_export(tmp_path / "ckpt", ["a red square", "a blue circle"])
    root = tmp_path / "coco"
    root.mkdir()
    for i in range(30):
        (root / f"{i}.png").write_bytes(png((8 * i, 0, 0)))
    images = [{"id": i, "file_name": f"{i}.png"} for i in range(30)] + [{"id": 30, "file_name": "gone.png"}]
    anns = [{"image_id": i, "caption": "a red square"} for i in range(31)]
    (root / "c.json").write_text(json.dumps({"images": images, "annotations": anns}))
    suite = tmp_path / "s.yaml"
    suite.write_text(
        f"tasks:\n  - {{name: c, kind: retrieval, layout: coco, path: {root}, annotations: c.json, "
        "images: ., split: val}\n"
    )
    args = (
        f"suite={suite}",
        f"out={tmp_path / 'out'}",
        f"checkpoint={export}",
        "max_bad_fraction=0.1",
        "progress=false",
    )
    assert run_recipe("recipes/flava/evaluate.py", *args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())["c"]
    assert results["skipped"] == 1 and "gone.png" in results["skipped_examples"][0]
    assert "c: 1 sample(s) skipped, the first: gone.png" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# Bounded memory and no hang: a subprocess with a capped address space under a timeout
# ------------------------------------------------------------------------------------------
_BOUNDED = textwrap.dedent(
    """
    import os, resource, signal, sys
    from pathlib import Path
    import torch, mmkit.data, mmkit.eval  # the baseline: what every command has mapped before it reads data
    from mmkit.data import Manifest, TarShards, TextLines
    from mmkit.data.streaming import iter_samples, open_shard
    from mmkit.data.tasks import LabeledRows
    from mmkit.eval.benchmarks import open_benchmark
    from mmkit.eval.suite_file import load_suite
    from mmkit.utils.run_lock import RunDirLock

    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))  # 1 GiB above the baseline
    d = Path(sys.argv[1])

    def case(name, run, expect):
        signal.alarm(20)  # a hang names its case
        try:
            out = run()
        except Exception as e:  # the bounded readers refuse with a message
            out = f"{type(e).__name__}: {e}"
        signal.alarm(0)
        assert expect in str(out), (name, str(out)[:300])
        print("ok", name, flush=True)

    signal.signal(signal.SIGALRM, lambda *a: sys.exit(f"hang"))
    with open(d / "sparse.tar", "rb") as f:
        case("streamed sparse member", lambda: next(iter_samples(f, "s"))[1].meta["error"], "over the per-sample limit")
    case("indexed sparse member", lambda: TarShards([d / "sparse.tar"])[0].meta["error"], "over the per-sample limit")
    m = Manifest(d / "m.jsonl")
    case("manifest: /dev/zero", lambda: m[0].meta["error"], "character device")
    case("manifest: FIFO", lambda: m[1].meta["error"], "FIFO")
    case("manifest: an 8 GB sparse file", lambda: m[2].meta["error"], "over the per-sample limit")
    rows = LabeledRows([("k", "t", None, str(d / "fifo.png"), 0)], ("a",), "rows")
    case("labeled rows: FIFO", lambda: rows[0], "FIFO")
    case("shard: FIFO", lambda: TarShards([d / "fifo.tar"]), "FIFO")
    case("streamed shard: FIFO", lambda: open_shard(str(d / "fifo.tar")), "FIFO")
    case("suite file: FIFO", lambda: load_suite(d / "fifo.yaml"), "FIFO")
    case("annotation file: FIFO", lambda: open_benchmark("coco", d, "val", annotations="fifo.json"), "FIFO")
    case("lock file: FIFO", lambda: RunDirLock.acquire(d / "locked"), "not a regular file")
    case("IDX header", lambda: open_benchmark("mnist", d / "mnist", "test"), "over the limit")
    long = TextLines([d / "long.txt"])
    case("a 512 MiB line", lambda: long[0].meta["error"], "over the per-sample limit")
    """
)


def test_hostile_files_take_bounded_memory_and_never_hang(tmp_path):
    d = tmp_path
    write_sparse_shard(d / "sparse.tar")
    os.mkfifo(d / "fifo.png")
    os.mkfifo(d / "fifo.tar")
    os.mkfifo(d / "fifo.yaml")
    os.mkfifo(d / "fifo.json")
    os.symlink("/dev/zero", d / "zero.png")
    with open(d / "big.png", "wb") as f:
        f.truncate(8 << 30)  # a sparse file: 8 GB by stat, nothing on disk
    (d / "m.jsonl").write_text(
        "".join(json.dumps({"image": n, "caption": "c"}) + "\n" for n in ("zero.png", "fifo.png", "big.png"))
    )
    (d / "locked").mkdir()
    os.mkfifo(d / "locked" / ".mmkit-run.lock")
    (d / "mnist").mkdir()
    (d / "mnist" / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + struct.pack(">3I", 2, 15000, 15000))
    (d / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01" + struct.pack(">I", 2) + b"\0\1")
    with open(d / "long.txt", "wb") as f:
        f.write(b"x")
        f.truncate(512 << 20)  # one line of 512 MiB (mostly a hole): found without holding it
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _BOUNDED, str(d)], capture_output=True, text=True, timeout=120, env=env, cwd=REPO
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok ") == 13, done.stdout


@pytest.mark.parametrize("recipe", ["recipes/clip/pretrain.py", "recipes/dalle/train_tokenizer.py"])
def test_the_training_recipes_take_the_sample_limit_and_check_it(recipe, tmp_path, capsys):
    """The pretraining and tokenizer recipes have ``data.max_sample_bytes`` (set before their loaders fork),
    checked like every config value."""
    assert run_recipe(recipe, "data.max_sample_bytes=0", f"run_dir={tmp_path / 'r'}") == 2
    one_error_line(capsys.readouterr().err, "data.max_sample_bytes: must be >= 1, got 0")
    assert not (tmp_path / "r").exists()


def test_the_pretraining_skeleton_sets_the_limit_before_its_loaders(monkeypatch):
    """``PretrainRecipe.setup`` hands ``data.max_sample_bytes`` to the bounded reader before the run starts
    (and so before any loader worker forks)."""
    import mmkit.pretrain.recipe as skeleton
    from mmkit.utils import bounded
    from tests.conftest import load_recipe

    clip = load_recipe("recipes/clip/pretrain.py")
    seen = []

    def stop(*args, **kwargs):
        seen.append(bounded.sample_limit())
        raise KeyboardInterrupt  # nothing after the limit is needed

    monkeypatch.setattr(skeleton, "start_run", stop)
    default = bounded.sample_limit()
    try:
        with pytest.raises(KeyboardInterrupt):
            clip.ClipPretrainRecipe(clip.load_config(None, ["data.max_sample_bytes=1234"])).setup()
    finally:
        bounded.set_sample_limit(default)
    assert seen == [1234]


@pytest.mark.parametrize("loader", ["load_flava", "load", "load_dual_encoder"])
def test_the_library_loaders_check_config_json_themselves(loader, tmp_path):
    """Called directly (not through a recipe), a loader names a config value of the wrong type in one line."""
    import mmkit.models as models

    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "clip", "mmkit_model": "clip", "vision_config": {"hidden_size": "768"}})
    )
    with pytest.raises(InputError) as e:
        getattr(models, loader)(tmp_path)
    assert "\n" not in str(e.value) and "vision_config.hidden_size must be a number, got '768'" in str(e.value)
