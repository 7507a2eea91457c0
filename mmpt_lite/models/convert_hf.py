"""Hugging Face ``transformers`` VideoMAE state dicts -> mmpt_lite names.

Accepted: ``VideoMAEModel`` (keys ``embeddings.*``, ``encoder.layer.N.*``, ``layernorm.*``),
``VideoMAEForPreTraining`` (the same under ``videomae.``, plus ``encoder_to_decoder``, ``mask_token``,
``decoder.decoder_layers.N.*``, ``decoder.norm``, ``decoder.head``) and
``VideoMAEForVideoClassification`` (``videomae.*``, ``fc_norm``, ``classifier``).

The result uses :class:`~mmpt_lite.models.mae.VideoMAEPretrainer` names: ``encoder.*`` (VideoViT
names, loadable into any VideoViT after stripping ``encoder.``), ``encoder_to_decoder.weight``,
``mask_token``, ``decoder.*``. Per block, HF's separate query/key/value matrices become one
``attn.qkv`` matrix (rows q, k, v) and the query/value biases ``attn.q_bias``/``attn.v_bias``
(``transformers`` 5 stores them as ``query.bias``/``value.bias``, 4.x as ``q_bias``/``v_bias``).
"""

from __future__ import annotations

import re

import torch

_ENCODER_LAYER = re.compile(r"^(?:videomae\.)?encoder\.layer\.(\d+)\.(.+)$")
_DECODER_LAYER = re.compile(r"^decoder\.decoder_layers\.(\d+)\.(.+)$")
# Renames that keep the tensor as it is: HF name -> mmpt_lite name.
_RENAMES = {
    "embeddings.patch_embeddings.projection": "encoder.patch_embed.proj",
    "layernorm": "encoder.norm",
    "fc_norm": "encoder.fc_norm",
    "encoder_to_decoder": "encoder_to_decoder",
    "mask_token": "mask_token",
    "decoder.norm": "decoder.norm",
    "decoder.head": "decoder.head",
}
_BLOCK_RENAMES = {
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
_ATTN = "attention.attention."


def is_hf_videomae(state_dict: dict[str, torch.Tensor]) -> bool:
    """True when the keys are in the ``transformers`` VideoMAE layout."""
    return any("patch_embeddings.projection" in key for key in state_dict)


def _convert_block(src: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """One HF ``VideoMAELayer``'s tensors (suffix -> tensor) -> VideoViT ``Block`` tensors."""
    try:
        q, k, v = (src.pop(f"{_ATTN}{name}.weight") for name in ("query", "key", "value"))
    except KeyError as exc:
        raise ValueError(f"{where}: no {exc.args[0]} in the HF state dict") from None
    zeros = torch.zeros(q.shape[0], dtype=q.dtype)
    # A key bias adds q·b_k to every logit of a query's row: softmax ignores it, so it is dropped exactly.
    src.pop(f"{_ATTN}key.bias", None)
    out = {
        "attn.qkv.weight": torch.cat((q, k, v)),
        # qv_bias=False models have no biases: zeros reproduce them.
        "attn.q_bias": src.pop(f"{_ATTN}query.bias", src.pop(f"{_ATTN}q_bias", zeros)),
        "attn.v_bias": src.pop(f"{_ATTN}value.bias", src.pop(f"{_ATTN}v_bias", zeros)),
    }
    for hf_name, name in _BLOCK_RENAMES.items():
        for leaf in ("weight", "bias"):
            key = f"{hf_name}.{leaf}"
            if key not in src:
                raise ValueError(f"{where}: no {key} in the HF state dict")
            out[f"{name}.{leaf}"] = src.pop(key)
    if src:
        raise ValueError(f"{where}: unrecognised HF VideoMAE layer tensors {sorted(src)}")
    return out


def convert_hf_videomae(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """HF VideoMAE state dict -> (mmpt_lite state dict in VideoMAEPretrainer names, unused HF keys).

    Unused keys are those with no counterpart: the classifier head and any stored position table
    (mmpt_lite recomputes the fixed sinusoid table for the actual token count).
    """
    out: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    layers: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        if match := _ENCODER_LAYER.match(key):
            layers.setdefault(("encoder", int(match[1])), {})[match[2]] = tensor
            continue
        if match := _DECODER_LAYER.match(key):
            layers.setdefault(("decoder", int(match[1])), {})[match[2]] = tensor
            continue
        bare = key.removeprefix("videomae.")
        stem, _, leaf = bare.rpartition(".")
        if bare in _RENAMES:  # parameters without a leaf name (mask_token)
            out[_RENAMES[bare]] = tensor
        elif stem in _RENAMES:
            out[f"{_RENAMES[stem]}.{leaf}"] = tensor
        else:
            unused.append(key)
    for (part, index), tensors in sorted(layers.items()):
        for name, tensor in _convert_block(dict(tensors), f"{part} layer {index}").items():
            out[f"{part}.blocks.{index}.{name}"] = tensor
    if not any(key.startswith("encoder.blocks.") for key in out):
        raise ValueError("not a transformers VideoMAE state dict: no encoder.layer.N.* tensors")
    return out, unused
