"""The one way mmkit reads model weights and loads them into a module.

Every loader in the package (FLAVA, CLIP, SigLIP and the DALL-E tokenizer; mmkit exports and
transformers directories; a classifier's encoders; a FLAVA encoder started from a CLIP tower) reads
its files with :func:`read_weights` and loads them with :func:`load_strict`, so each says the same
thing the same way: one report type (:class:`LoadReport`) and one error type
(:class:`CheckpointMismatchError`) listing what is missing, unexpected or mis-shaped. What differs per
model is only the key and config maps, kept beside each model (``mmkit/models/*_hf.py``,
``mmkit/tokenizers/dalle_keys.py``).

Nothing read here runs code: safetensors files are plain tensors, and torch files are read with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from mmkit.utils.bounded import parse_json, read_text_file, regular_file
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.paths import check_name

__all__ = [
    "CheckpointMismatchError",
    "LoadReport",
    "UnreadableWeights",
    "format_keys",
    "load_strict",
    "read_weight_file",
    "read_weight_shapes",
    "read_weights",
    "torch_load_failure",
    "weight_files",
]

#: Suffixes of a lone weights file: safetensors, or a torch state dict read with ``weights_only=True``.
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


class CheckpointMismatchError(InputError):
    """A checkpoint's tensors do not fit the model: keys missing, unexpected or of another shape."""


def format_keys(title: str, keys: Iterable[str], limit: int = 20) -> str:
    """An indented, sorted list of keys under a title (at most ``limit`` shown), for error messages."""
    keys = sorted(keys)
    shown = "\n    ".join(keys[:limit])
    more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"  {title} ({len(keys)}):\n    {shown}{more}"


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------
def read_weight_file(path: str | Path) -> dict[str, Tensor]:
    """The tensors of one weights file: ``.safetensors``, or ``.pt`` / ``.pth`` / ``.bin`` read with
    ``torch.load(weights_only=True)`` (no code runs; a pickle asking for anything else is refused)."""
    path = Path(path)
    if not path.exists():
        raise MissingError(f"weights file {path} does not exist")
    regular_file(path, "weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors' SafetensorError: a header that lies about the data
            raise UnreadableWeights(path, f"not a readable safetensors file ({_first_line(e)})") from None
    if path.suffix in TORCH_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UnreadableWeights(path, torch_load_failure(e)) from None
        if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
            raise InputError(f"{path} does not hold a state dict (a mapping of names to tensors)")
        return dict(state)
    raise InputError(f"{path}: unknown weights format {path.suffix!r}; expected .safetensors, .pt, .pth or .bin")


def weight_files(path: str | Path) -> list[Path]:
    """The weights files of a lone file or a checkpoint directory, the one place their layout is known.

    In a directory looks for, in order: ``model.safetensors``, a sharded ``model.safetensors.index.json``
    (every shard it names must exist), ``pytorch_model.bin``.

    Raises:
        MissingError: naming the directory and the files it looked for, or a missing shard.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MissingError(f"checkpoint {path} does not exist")
    st, index, bin_ = path / "model.safetensors", path / "model.safetensors.index.json", path / "pytorch_model.bin"
    if st.exists():
        return [st]
    if index.exists():
        data = parse_json(read_text_file(index, "weights index"), str(index))
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise InputError(f"{index} is not a safetensors index: it needs a weight_map of tensor names to files")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            check_name(shard, f"{index} names the shard file")  # a file beside the index, never elsewhere
            if not (path / shard).exists():
                raise MissingError(f"{index} names shard {shard!r}, which is missing from {path}")
        return [path / shard for shard in shards]
    if bin_.exists():
        return [bin_]
    raise MissingError(
        f"no weights in {path}: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a weights file (:func:`read_weight_file`) or a checkpoint directory (:func:`weight_files`)."""
    out: dict[str, Tensor] = {}
    for file in weight_files(path):
        out.update(read_weight_file(file))
    return out


def read_weight_shapes(path: str | Path) -> dict[str, torch.Size]:
    """The name and shape of every tensor of a weights file or checkpoint directory, read without the tensors
    where the format allows: a safetensors file's header (every shard's, for a sharded index); a torch file
    (``.pt`` / ``.pth`` / ``.bin``) has no header and is read whole with ``weights_only=True`` (bounded by
    the file's size). What a loader compares with the model its config describes before building it."""
    from safetensors import safe_open

    out: dict[str, torch.Size] = {}
    for file in weight_files(path):
        if file.suffix != ".safetensors":
            out.update({k: v.shape for k, v in read_weight_file(file).items()})
            continue
        try:
            with safe_open(str(regular_file(file, "weights file")), framework="pt") as f:
                out.update({k: torch.Size(f.get_slice(k).get_shape()) for k in f.keys()})
        except InputError:
            raise
        except Exception as e:  # safetensors' SafetensorError: a header that lies about the data
            raise UnreadableWeights(file, f"not a readable safetensors file ({_first_line(e)})") from None
    return out


class UnreadableWeights(InputError):
    """A weights file that cannot be read, or cannot be trusted: the message names the file and why, and
    never advises loading it another way."""

    def __init__(self, path: str | Path, why: str) -> None:
        super().__init__(
            f"{path} cannot be trusted or read: {why}; it was not loaded (use a checkpoint written "
            "by mmkit, transformers or torch.save of a state dict)"
        )
        self.path = str(path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def torch_load_failure(e: BaseException) -> str:
    """One line for a failed ``torch.load(weights_only=True)``: what the file asked for that was refused (a
    pickle naming a global such as ``posix.system``), or why it could not be read (a truncated archive).
    Torch's own message surrounds that line with advice to load the file with ``weights_only`` off, the one
    thing not to do with a file that asks for code: that advice is left out."""
    import pickle

    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    advice = ("weights_only", "Check the documentation", "add_safe_globals", "safe_globals")
    plain = [p for p in paragraphs if not any(a in p for a in advice)]
    reason = plain[0] if plain else (paragraphs[0].split(". ")[0] if paragraphs else type(e).__name__)
    reason = re.split(r"\. (?:Please use|This is an internal|If you)", reason)[0].rstrip(".")
    if isinstance(e, pickle.UnpicklingError):
        return f"it holds a pickle that asks for more than tensors, refused before running anything ({reason})"
    return f"{type(e).__name__}: {reason}"


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What a strict load took from a checkpoint.

    Attributes:
        source: the checkpoint (a path, with its format in brackets where it says something).
        target: what was loaded (``"FLAVAModel"``, ``"FLAVA image encoder"``, ...).
        kind: the checkpoint's format or family (``"mmkit"``, ``"transformers"``, ``"clip"``, ...).
        loaded: the module's tensors filled from the checkpoint.
        new: the module's tensors left at their initialisation (only those the loader allows).
        unused: the checkpoint's tensors the module has no place for (heads, a codebook, a pooler).
        notes: anything else done on the way (a resampled position table, a changed attention mask).
    """

    source: str
    target: str = "model"
    kind: str = ""
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        kind = f" ({self.kind})" if self.kind else ""
        counts = f"{len(self.loaded)} tensors loaded, {len(self.new)} new, {len(self.unused)} of the checkpoint unused"
        lines = [f"{self.target} from {self.source}{kind}: {counts}"]
        lines += [f"  new: {name}" for name in self.new]
        groups: dict[str, int] = {}
        for name in self.unused:
            groups[name.split(".")[0]] = groups.get(name.split(".")[0], 0) + 1
        lines += [f"  unused: {group}.* ({n} tensors)" for group, n in sorted(groups.items())]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def load_strict(
    module: nn.Module,
    state: Mapping[str, Tensor],
    source: str,
    *,
    target: str = "model",
    kind: str = "",
    may_be_new: Callable[[str], bool] | Collection[str] = (),
    may_be_unused: bool = False,
    hint: str = "",
) -> LoadReport:
    """Load ``state`` into ``module`` after checking that it fits; nothing is copied when it does not
    (nor into a module on the meta device, which has no storage yet: the check alone is done).

    Every tensor of ``module`` must be in ``state`` with its shape, except those ``may_be_new`` allows
    (left as initialised, listed in ``report.new``); every tensor of ``state`` must belong to
    ``module`` unless ``may_be_unused`` (then listed in ``report.unused``).

    Args:
        module: the model or sub-module to fill (its own state-dict names).
        state: tensors in the module's names (convert foreign names with a key map first).
        source: the checkpoint, for the report and errors.
        target: what ``module`` is, for the report and errors. kind: the checkpoint's format, for the report.
        may_be_new: names (or a predicate on names) of the module's tensors the checkpoint may lack.
        may_be_unused: whether checkpoint tensors the module does not have are allowed.
        hint: the fix, appended to the error (e.g. which config to build the model from).

    Returns:
        A :class:`LoadReport`.

    Raises:
        CheckpointMismatchError: listing every missing, unexpected and mis-shaped tensor.
    """
    allowed_new = may_be_new if callable(may_be_new) else set(may_be_new).__contains__
    own = module.state_dict()
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    absent = sorted(set(own) - set(state))
    missing = [k for k in absent if not allowed_new(k)]
    unexpected = sorted(set(state) - set(own))
    problems = [format_keys("shape mismatch", wrong)] if wrong else []
    problems += [format_keys("missing from the checkpoint", missing)] if missing else []
    if unexpected and not may_be_unused:
        problems.append(format_keys("in the checkpoint, not in the model", unexpected))
    if problems:
        fix = f"\n  {hint}" if hint else ""
        raise CheckpointMismatchError(f"checkpoint {source} does not fit the {target}:\n" + "\n".join(problems) + fix)
    loaded = sorted(k for k in state if k in own)
    report = LoadReport(source, target, kind, loaded, absent, unexpected)
    if any(own[k].is_meta for k in loaded):  # built on the meta device: checked, nothing to copy into yet
        report.notes.append("checked only: the module is on the meta device (load again once materialised)")
        return report
    module.load_state_dict({k: state[k] for k in loaded}, strict=False)  # strict by the checks above
    return report
