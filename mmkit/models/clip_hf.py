"""CLIP and SigLIP in Hugging Face transformers' layout (``CLIPModel``, ``SiglipModel``): key maps,
config maps, strict conversions both ways, and checkpoint directories.

The key maps are declarative (engine: :class:`mmkit.utils.keymap.KeyMap`); ``{i}`` is a layer index
and ``{p}`` ``weight``/``bias``. Three tensors differ in shape only and are reshaped on the way:
CLIP's ``class_embedding`` ``(D,)`` is mmkit's ``cls_token`` ``(1, 1, D)``, a ``position_embedding``
table ``(N, D)`` is mmkit's ``position_embeddings`` ``(1, N, D)``, and CLIP's scalar ``logit_scale``
is mmkit's ``(1,)`` (FSDP2 cannot shard 0-d parameters). SigLIP's attention-pooling head keeps
:class:`torch.nn.MultiheadAttention`'s fused ``in_proj_weight`` (rows ``[q; k; v]``), which is
exactly mmkit's ``AttentionPool.qkv``. Key and config names come from transformers 4.x-5.x
``modeling_clip.py`` / ``modeling_siglip.py`` (see ``docs/CLIP_SIGLIP.md``).

Functions:
    clip_from_hf / clip_to_hf, siglip_from_hf / siglip_to_hf: state dicts, both directions.
    clip_config_from_hf / clip_config_to_hf, siglip_config_from_hf / siglip_config_to_hf: configs.
    clip_model_from_hf / siglip_model_from_hf: build the model from a transformers directory.
    save_dual_encoder_hf: write a directory transformers' ``from_pretrained`` reads.
    load_dual_encoder: a CLIP or SigLIP model from an mmkit export or a transformers directory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmkit.models.clip import CONFIGS, CLIPConfig, DualEncoderConfig, DualEncoderModel, SigLIPConfig
from mmkit.models.clip import dual_encoder_model as _build
from mmkit.models.fit_check import check_fits, config_fields, hf_label, meta_tensors
from mmkit.utils.config_json import read_config_json
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.hub import resolve_checkpoint
from mmkit.utils.keymap import KeyMap
from mmkit.utils.weights import CheckpointMismatchError, format_keys, load_strict, read_weight_shapes, read_weights

_TOWERS = (("image_encoder", "vision_model"), ("text_encoder", "text_model"))
_LAYER = (
    ("norm1.{p}", ("layer_norm1.{p}",)),
    ("norm2.{p}", ("layer_norm2.{p}",)),
    ("attn.qkv.{p}", ("self_attn.q_proj.{p}", "self_attn.k_proj.{p}", "self_attn.v_proj.{p}")),
    ("attn.out_proj.{p}", ("self_attn.out_proj.{p}",)),
    ("mlp.fc1.{p}", ("mlp.fc1.{p}",)),
    ("mlp.fc2.{p}", ("mlp.fc2.{p}",)),
)


def _layers() -> list[tuple[str, tuple[str, ...]]]:
    return [
        (f"{ours}.encoder.layers.{{i}}.{a}", tuple(f"{hf}.encoder.layers.{{i}}.{x}" for x in b))
        for ours, hf in _TOWERS
        for a, b in _LAYER
    ]


_TEXT_EMBEDDINGS = [
    ("text_encoder.embeddings.word_embeddings.weight", ("text_model.embeddings.token_embedding.weight",)),
    ("text_encoder.embeddings.position_embeddings.weight", ("text_model.embeddings.position_embedding.weight",)),
    ("text_encoder.encoder.norm.{p}", ("text_model.final_layer_norm.{p}",)),
]

CLIP_KEY_MAP: list[tuple[str, tuple[str, ...]]] = [
    *_layers(),
    *_TEXT_EMBEDDINGS,
    ("image_encoder.embeddings.cls_token", ("vision_model.embeddings.class_embedding",)),
    ("image_encoder.embeddings.proj.weight", ("vision_model.embeddings.patch_embedding.weight",)),
    ("image_encoder.embeddings.position_embeddings", ("vision_model.embeddings.position_embedding.weight",)),
    ("image_encoder.encoder.input_norm.{p}", ("vision_model.pre_layrnorm.{p}",)),  # sic: transformers' name
    ("image_encoder.encoder.norm.{p}", ("vision_model.post_layernorm.{p}",)),
    ("image_projection.weight", ("visual_projection.weight",)),
    ("text_projection.weight", ("text_projection.weight",)),
    ("logit_scale", ("logit_scale",)),
]
"""``(mmkit template, transformers template(s))`` pairs for CLIP (``CLIPModel``)."""

SIGLIP_KEY_MAP: list[tuple[str, tuple[str, ...]]] = [
    *_layers(),
    *_TEXT_EMBEDDINGS,
    ("image_encoder.embeddings.proj.{p}", ("vision_model.embeddings.patch_embedding.{p}",)),
    ("image_encoder.embeddings.position_embeddings", ("vision_model.embeddings.position_embedding.weight",)),
    ("image_encoder.encoder.norm.{p}", ("vision_model.post_layernorm.{p}",)),
    ("image_encoder.pooler.probe", ("vision_model.head.probe",)),
    ("image_encoder.pooler.qkv.weight", ("vision_model.head.attention.in_proj_weight",)),
    ("image_encoder.pooler.qkv.bias", ("vision_model.head.attention.in_proj_bias",)),
    ("image_encoder.pooler.out_proj.{p}", ("vision_model.head.attention.out_proj.{p}",)),
    ("image_encoder.pooler.norm.{p}", ("vision_model.head.layernorm.{p}",)),
    ("image_encoder.pooler.mlp.fc1.{p}", ("vision_model.head.mlp.fc1.{p}",)),
    ("image_encoder.pooler.mlp.fc2.{p}", ("vision_model.head.mlp.fc2.{p}",)),
    ("text_projection.{p}", ("text_model.head.{p}",)),
    ("logit_scale", ("logit_scale",)),
    ("logit_bias", ("logit_bias",)),
]
"""``(mmkit template, transformers template(s))`` pairs for SigLIP (``SiglipModel``)."""

KEY_MAPS = {"clip": KeyMap(CLIP_KEY_MAP), "siglip": KeyMap(SIGLIP_KEY_MAP)}

#: derived buffers older transformers checkpoints saved: dropped on import.
IGNORED_HF_KEYS = re.compile(r"^(text_model|vision_model)\.embeddings\.position_ids$")

# ------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------
_ACTIVATIONS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
}
_ACTIVATION_TO_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
_ACTIVATION_TO_HF["silu"] = "silu"

# transformers' defaults, for keys a hand-written config.json leaves out
_HF_DEFAULTS = {
    "clip": (
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
             image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5, attention_dropout=0.0),
        dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
             max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, attention_dropout=0.0,
             eos_token_id=49407),
    ),
    "siglip": (
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
             image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
             attention_dropout=0.0, vision_use_head=True),
        dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
             max_position_embeddings=64, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, attention_dropout=0.0,
             projection_size=None),
    ),
}  # fmt: skip


def _activation(name: str, where: str) -> str:
    if name not in _ACTIVATIONS:
        raise InputError(f"{where}.hidden_act={name!r} is not supported; mmkit knows {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _tower_fields(hf: Mapping[str, Any], where: str) -> dict[str, Any]:
    return dict(
        hidden_size=hf["hidden_size"],
        mlp_dim=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        activation=_activation(hf["hidden_act"], where),
        norm_eps=hf["layer_norm_eps"],
        attention_dropout=float(hf.get("attention_dropout") or 0.0),
    )


def _sub_configs(hf_config: Mapping[str, Any], kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    vision_defaults, text_defaults = _HF_DEFAULTS[kind]
    vision = {**vision_defaults, **{k: v for k, v in (hf_config.get("vision_config") or {}).items() if v is not None}}
    text = {**text_defaults, **(hf_config.get("text_config") or {})}
    for key in ("eos_token_id", "projection_size"):
        if text.get(key) is None:
            text[key] = text_defaults.get(key)
    for sub in (vision, text):
        for key in ("image_size", "patch_size"):
            if isinstance(sub.get(key), list | tuple):
                if len(set(sub[key])) != 1:
                    raise InputError(f"non-square {key}={sub[key]} is not supported")
                sub[key] = sub[key][0]
    return vision, text


def _image_fields(vision: Mapping[str, Any]) -> dict[str, Any]:
    return dict(
        _tower_fields(vision, "vision_config"),
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        num_channels=vision["num_channels"],
    )


def _text_fields(text: Mapping[str, Any]) -> dict[str, Any]:
    return dict(
        _tower_fields(text, "text_config"), vocab_size=text["vocab_size"], max_positions=text["max_position_embeddings"]
    )


def clip_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> CLIPConfig:
    """A transformers ``CLIPConfig`` dict (``config.json``) -> :class:`CLIPConfig`.

    The text ``eos_token_id`` 2 of checkpoints converted before transformers PR #24773 means OpenAI's
    rule (pool at the largest id); mmkit writes that as ``eos_token_id=None``.
    """
    vision, text = _sub_configs(hf_config, "clip")
    eos = text["eos_token_id"]
    cfg = CLIPConfig().replace(
        image=_image_fields(vision),
        text=dict(_text_fields(text), eos_token_id=None if eos == 2 else eos),
        projection_dim=hf_config.get("projection_dim") or 512,
        logit_scale_init=float(hf_config.get("logit_scale_init_value", 2.6592)),
    )
    return cfg.replace(**overrides)


def siglip_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> SigLIPConfig:
    """A transformers ``SiglipConfig`` dict (``config.json``) -> :class:`SigLIPConfig`."""
    vision, text = _sub_configs(hf_config, "siglip")
    if not vision.get("vision_use_head", True):
        raise InputError("vision_config.vision_use_head=False: SiglipModel needs the attention-pooling head")
    cfg = SigLIPConfig().replace(
        image=_image_fields(vision),
        text=_text_fields(text),
        projection_dim=text["projection_size"] or text["hidden_size"],
    )
    return cfg.replace(**overrides)


def _tower_to_hf(cfg: Any) -> dict[str, Any]:
    if cfg.activation not in _ACTIVATION_TO_HF:
        raise InputError(f"activation {cfg.activation!r} has no transformers name")
    return dict(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        hidden_act=_ACTIVATION_TO_HF[cfg.activation],
        layer_norm_eps=cfg.norm_eps,
        attention_dropout=cfg.attention_dropout,
    )


def clip_config_to_hf(cfg: CLIPConfig) -> dict[str, Any]:
    """:class:`CLIPConfig` -> a transformers ``CLIPConfig`` dict."""
    vision = dict(_tower_to_hf(cfg.image), image_size=cfg.image.image_size, patch_size=cfg.image.patch_size,
                  num_channels=cfg.image.num_channels, projection_dim=cfg.projection_dim)  # fmt: skip
    eos = 2 if cfg.text.eos_token_id is None else cfg.text.eos_token_id
    text = dict(_tower_to_hf(cfg.text), vocab_size=cfg.text.vocab_size, projection_dim=cfg.projection_dim,
                max_position_embeddings=cfg.text.max_positions, eos_token_id=eos)  # fmt: skip
    return dict(
        architectures=["CLIPModel"],
        model_type="clip",
        projection_dim=cfg.projection_dim,
        logit_scale_init_value=cfg.logit_scale_init,
        vision_config=vision,
        text_config=text,
    )


def siglip_config_to_hf(cfg: SigLIPConfig) -> dict[str, Any]:
    """:class:`SigLIPConfig` -> a transformers ``SiglipConfig`` dict."""
    vision = dict(_tower_to_hf(cfg.image), image_size=cfg.image.image_size, patch_size=cfg.image.patch_size,
                  num_channels=cfg.image.num_channels, vision_use_head=True)  # fmt: skip
    text = dict(_tower_to_hf(cfg.text), vocab_size=cfg.text.vocab_size,
                max_position_embeddings=cfg.text.max_positions, projection_size=cfg.projection_dim)  # fmt: skip
    return dict(architectures=["SiglipModel"], model_type="siglip", vision_config=vision, text_config=text)


# ------------------------------------------------------------------------------------------
# State dicts
# ------------------------------------------------------------------------------------------
def _expected_shapes(config: DualEncoderConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = _build(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def _map_hf(
    kind: str, hf_state_dict: Mapping[str, Tensor], expected: Mapping[str, torch.Size]
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Their names -> ours, reshaped where only the layout differs (``(D,)`` -> ``(1, 1, D)``);
    ``(state, names no rule matches, missing members of fused q/k/v groups)``. Works on meta tensors."""
    src = {k: v for k, v in hf_state_dict.items() if not IGNORED_HF_KEYS.match(k)}
    state, unknown, incomplete = KEY_MAPS[kind].from_theirs(src)
    for key, value in list(state.items()):
        want = expected.get(key)
        if want is not None and value.shape != want and value.numel() == want.numel():
            state[key] = value.reshape(want)
    return state, unknown, incomplete


def _from_hf(kind: str, hf_state_dict: Mapping[str, Tensor], config: DualEncoderConfig) -> dict[str, Tensor]:
    expected = _expected_shapes(config)
    state, unknown, incomplete = _map_hf(kind, hf_state_dict, expected)
    problems = []
    if unknown:
        problems.append(format_keys(f"tensors no {kind} rule matches", unknown))
    if incomplete:
        problems.append(format_keys("missing parts of fused q/k/v groups", incomplete))
    missing = sorted(set(expected) - set(state))
    if missing:
        problems.append(format_keys("missing tensors (transformers names)", KEY_MAPS[kind].their_names(missing)))
    for key, value in state.items():
        want = expected.get(key)
        if want is not None and value.shape != want:
            problems.append(f"  {key}: checkpoint {tuple(value.shape)} vs config {tuple(want)}")
    if problems:
        raise CheckpointMismatchError(f"the {kind} checkpoint does not fit its config:\n" + "\n".join(problems))
    return state


def _check_fits(path: Path, config: DualEncoderConfig, hf: bool) -> None:
    """Refuse, in one line and before anything is built, a checkpoint whose tensors (file headers; transformers
    names mapped on meta tensors) do not fit the model of ``config`` (:mod:`mmkit.models.fit_check`)."""
    kind, expected, shapes = config.model_type, _expected_shapes(config), read_weight_shapes(path)
    label = str
    if hf:
        state, unknown, _ = _map_hf(kind, meta_tensors(shapes), expected)
        shapes = {**{k: v.shape for k, v in state.items()}, **{k: shapes[k] for k in unknown}}
        top = {"projection_dim": "projection_dim" if kind == "clip" else "text_config.projection_size"}
        label = hf_label({"image": "vision_config", "text": "text_config"}, top)
    fields = config_fields(config, ("image", "text"), label)
    check_fits(expected, shapes, source=str(path), target=f"{kind} model", fields=fields)


def _to_hf(kind: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out, unknown = KEY_MAPS[kind].to_theirs(state_dict)
    if unknown:
        raise CheckpointMismatchError(format_keys(f"mmkit tensors with no {kind} transformers name", unknown))
    for key in ("vision_model.embeddings.class_embedding",):
        if key in out:
            out[key] = out[key].reshape(-1)
    for key in ("vision_model.embeddings.position_embedding.weight", "text_model.embeddings.position_embedding.weight"):
        if key in out and out[key].ndim == 3:
            out[key] = out[key].squeeze(0)
    if kind == "clip":
        out["logit_scale"] = out["logit_scale"].reshape(())
    return out


def clip_from_hf(hf_state_dict: Mapping[str, Tensor], config: CLIPConfig) -> dict[str, Tensor]:
    """transformers ``CLIPModel`` state dict -> mmkit :class:`DualEncoderModel` state dict (strict:
    unknown or missing tensors and wrong shapes raise :class:`CheckpointMismatchError`)."""
    return _from_hf("clip", hf_state_dict, config)


def clip_to_hf(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """mmkit CLIP state dict -> transformers ``CLIPModel`` names and shapes."""
    return _to_hf("clip", state_dict)


def siglip_from_hf(hf_state_dict: Mapping[str, Tensor], config: SigLIPConfig) -> dict[str, Tensor]:
    """transformers ``SiglipModel`` state dict -> mmkit :class:`DualEncoderModel` state dict (strict)."""
    return _from_hf("siglip", hf_state_dict, config)


def siglip_to_hf(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """mmkit SigLIP state dict -> transformers ``SiglipModel`` names and shapes."""
    return _to_hf("siglip", state_dict)


_CONFIG_FROM_HF = {"clip": clip_config_from_hf, "siglip": siglip_config_from_hf}
_CONFIG_TO_HF = {"clip": clip_config_to_hf, "siglip": siglip_config_to_hf}


# ------------------------------------------------------------------------------------------
# Directories
# ------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise MissingError(f"checkpoint directory {path} does not exist (or is not a directory)")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise MissingError(f"{cfg_file} is missing; a checkpoint directory needs its config.json")
    return read_config_json(cfg_file)


def _model_from_hf(kind: str, path: str | Path, overrides: dict[str, Any]) -> DualEncoderModel:
    path = resolve_checkpoint(path)
    hf_config = _read_json(path)
    if hf_config.get("model_type") not in (None, kind):
        raise InputError(f"{path} holds a {hf_config.get('model_type')!r} checkpoint, not {kind!r}")
    config = _CONFIG_FROM_HF[kind](hf_config, **overrides)
    _check_fits(path, config, hf=True)
    state = _from_hf(kind, read_weights(path), config)
    model = _build(config)
    model.load_report = load_strict(model, state, str(path), target=f"{kind} model", kind="transformers")
    return model


def clip_model_from_hf(path: str | Path, **overrides: Any) -> DualEncoderModel:
    """Build CLIP from a transformers ``CLIPModel`` directory (``config.json`` + weights), strictly.

    Args:
        path: the directory, or a hub name (``openai/clip-vit-base-patch16[@revision]``).
        **overrides: :class:`CLIPConfig` fields that do not change shapes
            (e.g. ``attention_backend="math"``, ``image={"patch_dropout": 0.5}``).
    """
    return _model_from_hf("clip", path, overrides)


def siglip_model_from_hf(path: str | Path, **overrides: Any) -> DualEncoderModel:
    """Build SigLIP from a transformers ``SiglipModel`` directory (``config.json`` + weights), strictly."""
    return _model_from_hf("siglip", path, overrides)


def _kind(config: DualEncoderConfig) -> str:
    kind = type(config).model_type
    if kind not in CONFIGS:
        raise InputError(f"{type(config).__name__} is neither a CLIPConfig nor a SigLIPConfig")
    return kind


def save_dual_encoder_hf(model: DualEncoderModel, path: str | Path, config: DualEncoderConfig | None = None) -> Path:
    """Write a CLIP or SigLIP model as a transformers directory (``config.json`` + ``model.safetensors``)
    that ``CLIPModel.from_pretrained`` / ``SiglipModel.from_pretrained`` read.

    Args:
        model: a :class:`DualEncoderModel` built by :func:`clip_model` or :func:`siglip_model`.
        path: output directory (created). config: defaults to ``model.config``.
    """
    from safetensors.torch import save_file

    config = config or getattr(model, "config", None)
    if config is None:
        raise InputError("save_dual_encoder_hf needs the model's config (model.config or config=...)")
    kind = _kind(config)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in _to_hf(kind, model.state_dict()).items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(_CONFIG_TO_HF[kind](config), indent=2))
    return path


def export_config(config: DualEncoderConfig) -> dict[str, Any]:
    """The ``config.json`` of an mmkit CLIP/SigLIP export: ``{"mmkit_model": kind, "config": {...}}``."""
    return {"mmkit_model": _kind(config), "config": config.to_dict()}


def is_dual_encoder_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a CLIP or SigLIP checkpoint (mmkit export or transformers)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        return False
    cfg = read_config_json(path / "config.json")
    return cfg.get("mmkit_model") in CONFIGS or cfg.get("model_type") in CONFIGS


def dual_encoder_config(path: str | Path) -> DualEncoderConfig:
    """The :class:`CLIPConfig` / :class:`SigLIPConfig` of a checkpoint directory (mmkit export or
    transformers, or a hub name), read from its ``config.json`` alone."""
    path = resolve_checkpoint(path)
    cfg = _read_json(path)
    if cfg.get("mmkit_model") in CONFIGS:
        return CONFIGS[cfg["mmkit_model"]].from_dict(cfg["config"])
    if cfg.get("model_type") in CONFIGS:
        return _CONFIG_FROM_HF[cfg["model_type"]](cfg)
    raise InputError(f"{path}/config.json describes neither a CLIP nor a SigLIP model")


def load_dual_encoder(path: str | Path, device: str | torch.device | None = None) -> DualEncoderModel:
    """A CLIP or SigLIP model, strictly loaded and in eval mode, from an mmkit export (``config.json``
    naming ``mmkit_model`` + ``model.safetensors``) or a transformers ``CLIPModel``/``SiglipModel``
    directory. Nothing in the files is executed (safetensors, ``weights_only=True``). The checkpoint's
    tensors are checked against its ``config.json`` before the model is built: every one must be there at
    the config's shape and nothing else (else a one-line :class:`CheckpointMismatchError` naming the tensors
    and the fields that disagree). ``path`` may be a hub name (:func:`~mmkit.utils.hub.resolve_checkpoint`)."""
    path = resolve_checkpoint(path)
    cfg = _read_json(path)
    if cfg.get("mmkit_model") in CONFIGS:
        config = CONFIGS[cfg["mmkit_model"]].from_dict(cfg["config"])
        _check_fits(path, config, hf=False)
        model = _build(config)
        state = read_weights(path)
        model.load_report = load_strict(model, state, str(path), target=f"{config.model_type} model", kind="mmkit")
    elif cfg.get("model_type") in CONFIGS:
        model = _model_from_hf(cfg["model_type"], path, {})
    else:
        raise InputError(f"{path}/config.json describes neither a CLIP nor a SigLIP model")
    return model.to(device or "cpu").eval()
