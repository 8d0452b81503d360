"""Checkpoints by Hugging Face hub name: ``facebook/flava-full``, ``openai/clip-vit-base-patch16@<revision>``.

:func:`resolve_checkpoint` is the one place a checkpoint argument becomes a local path; every loader
calls it at its entry. An existing local path always wins and is never sent to the hub. Anything else
that looks like a path (starts with ``/``, ``./``, ``../``, ``~`` or has more than one ``/``) is a
"does not exist" error. A valid name (``org/name`` or ``name``, optional ``@revision``) is looked up
in the Hugging Face cache and downloaded into it when missing, through ``huggingface_hub`` (the
optional extra ``mmkit[hub]``, imported only here and only for a name). ``HF_HOME``, ``HF_HUB_CACHE``
and ``HF_HUB_OFFLINE`` are honoured as set when the call is made. Only the files mmkit reads are
fetched (:data:`ALLOW_PATTERNS`; ``pytorch_model.bin`` only when the snapshot has no safetensors); the
files then go through the same strict loaders as local ones (safetensors or ``weights_only=True``).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from mmkit.utils.errors import InputError, MissingError

#: what mmkit reads from a checkpoint directory: config, weights, tokenizer, image normalisation,
#: a dVAE folder's config and an mmkit export's ``tokenizer/`` folder
ALLOW_PATTERNS = (
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "dvae_config.json",
    "tokenizer/*",
)
#: fetched only when the snapshot holds no safetensors
FALLBACK_PATTERNS = ("pytorch_model.bin",)

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_NAME = re.compile(rf"(?:{_PART}/)?{_PART}")
_REVISION = re.compile(r"[A-Za-z0-9._/-]{1,255}")
_TRUE = {"1", "on", "yes", "true"}


def looks_like_path(value: str) -> bool:
    """Whether ``value`` is written as a path rather than a hub name (``/``, ``./``, ``../``, ``~``, or
    more than one ``/`` before any ``@revision``)."""
    return value.startswith(("/", "./", "../", "~", "\\")) or value in (".", "..") or value.split("@")[0].count("/") > 1


def parse_hub_name(value: str) -> tuple[str, str | None]:
    """``(repo_id, revision or None)`` of ``org/name[@revision]`` or ``name[@revision]``.

    Raises:
        InputError: when ``value`` is not such a name.
    """
    repo_id, _, revision = value.partition("@")
    bad = not _NAME.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id
    if bad or ("@" in value and (not _REVISION.fullmatch(revision) or ".." in revision)):
        raise InputError(f"{value!r} is neither an existing path nor a hub name (org/name or name, optional @revision)")
    return repo_id, revision or None


def resolve_checkpoint(path_or_name: str | Path) -> Path:
    """The local path of a checkpoint given as a path or as a Hugging Face hub name.

    Args:
        path_or_name: a file or directory (a :class:`~pathlib.Path` is always taken as one), or a hub name
            ``org/name[@revision]`` (revision: a branch, tag or commit hash; default ``main``).

    Returns:
        The path itself when it exists, else the cached snapshot directory of the name.

    Raises:
        MissingError: a path that does not exist, a name neither cached (offline) nor on the hub, or
            ``huggingface_hub`` not installed. InputError: neither a path nor a valid name.
    """
    path = Path(path_or_name).expanduser()
    if path.exists():
        return path
    text = str(path_or_name)
    if isinstance(path_or_name, Path) or looks_like_path(text):
        raise MissingError(f"checkpoint {text} does not exist")
    repo_id, revision = parse_hub_name(text)
    return Path(_snapshot(repo_id, revision, _cache_dir(), _offline()))


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now (huggingface_hub reads it at import)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def _cache_dir() -> str | None:
    """``HF_HUB_CACHE``, else ``HF_HOME/hub``, as set now; None leaves huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return os.path.expanduser(os.environ.get("HF_HUB_CACHE") or os.environ["HUGGINGFACE_HUB_CACHE"])
    home = os.environ.get("HF_HOME")
    return os.path.join(os.path.expanduser(home), "hub") if home else None


@functools.lru_cache(maxsize=64)
def _snapshot(repo_id: str, revision: str | None, cache_dir: str | None, offline: bool) -> str:
    """The snapshot directory of ``repo_id`` at ``revision``, downloaded when missing (once per process:
    every loader of one run resolves the same name to the same files)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise MissingError(
            f"{repo_id} is not a local path; loading it by hub name needs huggingface_hub: pip install 'mmkit[hub]'"
        ) from None
    name = repo_id + (f"@{revision}" if revision else "")
    kwargs = {"revision": revision, "cache_dir": cache_dir, "local_files_only": offline}
    try:
        folder = snapshot_download(repo_id, allow_patterns=list(ALLOW_PATTERNS), **kwargs)
        if not any(Path(folder).glob("*.safetensors")):
            folder = snapshot_download(repo_id, allow_patterns=list(FALLBACK_PATTERNS), **kwargs)
    except Exception as error:  # every hub failure (not found, offline, network, gated) is one line
        raise MissingError(_failure(name, error, offline)) from error
    return folder


def _failure(name: str, error: Exception, offline: bool) -> str:
    """One line saying why ``name`` could not be resolved."""
    reason = " ".join(str(error).split())[:300] or type(error).__name__
    if offline:
        return f"{name} is not a local path and is not in the Hugging Face cache (HF_HUB_OFFLINE=1): {reason}"
    return f"{name} is not a local path and could not be fetched from the Hugging Face hub: {reason}"
