"""The DALL-E encoder's weights under other names: declarative key maps onto :class:`DalleEncoder`'s.

Two foreign layouts (see ``docs/FLAVA.md``):

* the original DALL-E release: ``blocks.<module>.w`` / ``.b`` with our module names
  (``blocks.group_1.block_1.res_path.conv_1.w``), :data:`ORIGINAL_KEY_MAP`;
* transformers' ``FlavaImageCodebook``: ``blocks.group_1.group.block_1.res_path.path.conv_1.weight``,
  under ``image_codebook.`` inside ``FlavaForPreTraining``, :data:`HF_KEY_MAP`.

Templates as in :mod:`mmkit.utils.keymap`: ``{g}`` a group, ``{b}`` a block, ``{c}`` a conv of the
residual path, ``{p}`` ``weight``/``bias``.

Like every model's key map, it sits beside the module whose names it describes.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from mmkit.utils.keymap import KeyMap, Rule
from mmkit.utils.weights import CheckpointMismatchError, format_keys

#: our module names (weights and biases below each)
_MODULES = ("input", "group_{g}.block_{b}.id_path", "group_{g}.block_{b}.res_path.conv_{c}", "output.conv")

ORIGINAL_KEY_MAP: list[Rule] = [
    (f"{module}.{ours}", (f"blocks.{module}.{theirs}",))
    for module in _MODULES
    for ours, theirs in (("weight", "w"), ("bias", "b"))
]
"""``(our template, original DALL-E template)`` pairs: ``blocks.`` in front, ``.w`` / ``.b`` for weight / bias."""
ORIGINAL_KEYS = KeyMap(ORIGINAL_KEY_MAP)

HF_KEY_MAP: list[Rule] = [
    ("input.{p}", ("blocks.input.{p}",)),
    ("group_{g}.block_{b}.id_path.{p}", ("blocks.group_{g}.group.block_{b}.id_path.{p}",)),
    ("group_{g}.block_{b}.res_path.conv_{c}.{p}", ("blocks.group_{g}.group.block_{b}.res_path.path.conv_{c}.{p}",)),
    ("output.conv.{p}", ("blocks.output.conv.{p}",)),
]
"""``(our template, transformers FlavaImageCodebook template)`` pairs."""
HF_KEYS = KeyMap(HF_KEY_MAP)

#: where ``FlavaForPreTraining`` keeps its codebook
HF_PRETRAINING_PREFIX = "image_codebook."


def _to_ours(keymap: KeyMap, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    converted, unknown, _ = keymap.from_theirs(state_dict)
    # keys no rule knows (already ours, or not a DALL-E encoder's) pass through unchanged, so that
    # loading them into the encoder names them
    return {**converted, **{k: state_dict[k] for k in unknown}}


def dalle_from_hf(hf_state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """transformers ``FlavaImageCodebook`` (or ``image_codebook.*`` of ``FlavaForPreTraining``) -> ours.
    Keys already in our names pass through unchanged."""
    return _to_ours(HF_KEYS, {k.removeprefix(HF_PRETRAINING_PREFIX): v for k, v in hf_state_dict.items()})


def dalle_to_hf(state_dict: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Ours -> transformers ``FlavaImageCodebook`` names (``prefix="image_codebook."`` for pretraining).

    Raises:
        CheckpointMismatchError: listing keys that are not a :class:`DalleEncoder`'s.
    """
    out, unknown = HF_KEYS.to_theirs(state_dict, prefix)
    if unknown:
        raise CheckpointMismatchError(
            "cannot convert DALL-E encoder state dict:\n" + format_keys("keys with no transformers name", unknown)
        )
    return out


def dalle_from_openai(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original DALL-E encoder names (``blocks.group_1.block_1.res_path.conv_1.w``) -> ours."""
    return _to_ours(ORIGINAL_KEYS, state_dict)
