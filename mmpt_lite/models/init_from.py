"""``model.video.init_from``: initialise a ViT video tower from another run's or another library's encoder.

Accepted sources (``path``):

* an mmpt_lite run folder, its ``checkpoints/`` folder or one step folder (as
  :func:`mmpt_lite.checkpoint.resolve_run_checkpoint` reads them) -- of a masked-pretraining or UMT run
  (``encoder.*`` keys) or of a contrastive run (``video_tower.*`` keys);
* a state-dict file (``.safetensors``, or ``.bin``/``.pt``/``.pth`` read with ``weights_only=True``,
  optionally wrapped as ``{"model": ...}``, ``{"state_dict": ...}`` or ``{"module": ...}``) in the
  ``transformers`` VideoMAE layout (converted by :mod:`mmpt_lite.models.convert_hf`), in VideoMAE's
  original layout (``encoder.*`` = mmpt_lite names) or bare VideoViT names.

Only the encoder is taken (decoder tensors are counted as ignored). A tubelet-1 patch kernel (a UMT student's)
is inflated over time into a tower of tubelet T (repeated, divided by T). Stored position tables are
dropped: VideoViT recomputes its fixed sinusoid table for the actual token count, so a checkpoint
trained at another frame count or resolution loads unchanged. Shape mismatches are errors; the
report lists missing and unexpected keys.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

from mmpt_lite.checkpoint import CheckpointFormatError, load_checkpoint, resolve_run_checkpoint
from mmpt_lite.config import resolve_path
from mmpt_lite.models.convert_hf import convert_hf_videomae, is_hf_videomae
from mmpt_lite.models.vit import VideoViT

_POSITION_TABLES = ("pos_embed", "position_embeddings")


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, description of the source) of a run folder, checkpoint folder or state-dict file."""
    path = resolve_path(str(path))
    if path.is_dir():
        try:
            step = resolve_run_checkpoint(path)
        except CheckpointFormatError as exc:
            raise ValueError(f"model.video.init_from: {exc}") from None
        return load_checkpoint(step, with_train_state=False)["model"], f"mmpt_lite checkpoint {step}"
    if not path.is_file():
        raise FileNotFoundError(f"model.video.init_from: {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path)), f"safetensors file {path}"
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"model.video.init_from: {path} is not a state dict of tensors")
    return state, f"state-dict file {path}"


def encoder_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """(VideoViT-named encoder tensors, source layout, keys left out) of a state dict in any accepted layout."""
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DDP-wrapped saves
    if is_hf_videomae(state):
        state, unused = convert_hf_videomae(state)
        layout = "transformers VideoMAE"
    else:
        unused, layout = [], "VideoMAE / mmpt_lite"
    for prefix in ("encoder.", "video_tower."):
        if any(k.startswith(prefix) for k in state):
            encoder = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            unused += [k for k in state if not k.startswith(prefix)]
            break
    else:
        encoder = dict(state)
    for key in [k for k in encoder if k.split(".")[-1] in _POSITION_TABLES]:
        unused.append(key)
        del encoder[key]
    return encoder, layout, unused


def conv_tower_state(tower: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str,
                                                                                      list[str]]:
    """(tower-named tensors, source layout, keys left out) for a convolutional tower (S3D, X3D): an mmpt_lite
    run's ``video_tower.*`` keys, or the tower's own top-level names (the official ``s3d_howto100m.pth``,
    whose ``text_module.*`` is left out)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("video_tower.") for k in state):
        tensors = {k.removeprefix("video_tower."): v for k, v in state.items() if k.startswith("video_tower.")}
        return tensors, "mmpt_lite", [k for k in state if not k.startswith("video_tower.")]
    own = tower.state_dict()
    return ({k: v for k, v in state.items() if k in own}, f"{type(tower).__name__} top-level",
            [k for k in state if k not in own])


def inflate_patch_embed(encoder: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> int:
    """A tubelet-1 patch kernel [W, 3, 1, p, p] (a UMT student's) into a tower of tubelet T > 1: repeated over
    time and divided by T, so a static clip embeds as the frame did (I3D-style inflation). Edits ``encoder`` in
    place; returns T, or 0 when nothing was inflated."""
    key = "patch_embed.proj.weight"
    source, target = encoder.get(key), own.get(key)
    if source is None or target is None or source.shape[2] != 1 or target.shape[2] == 1:
        return 0
    if source.shape[:2] + source.shape[3:] != target.shape[:2] + target.shape[3:]:
        return 0  # another mismatch: reported as one below
    frames = target.shape[2]
    encoder[key] = source.repeat(1, 1, frames, 1, 1) / frames
    return frames


def init_video_tower(model: torch.nn.Module, path: str | Path, *, strict: bool = False) -> str:
    """Load the encoder found at ``path`` into ``model.video_tower``; returns a one-line report.

    ``strict``: raise ValueError when the encoder leaves tower weights unset (else they are only reported).
    A classification head inside the tower (X3D's ``head.projection``) whose class count differs from the
    checkpoint's is left at its initialisation and reported; any other shape mismatch is an error.
    """
    tower = model.video_tower
    state, source = read_state_dict(path)
    if isinstance(tower, VideoViT):
        encoder, layout, left_out = encoder_state(state)
    else:
        encoder, layout, left_out = conv_tower_state(tower, state)
    own = tower.state_dict()
    reset = [k for k, v in encoder.items() if k.startswith("head.projection.") and k in own and v.shape != own[k].shape]
    for key in reset:
        left_out.append(key)
        del encoder[key]
    inflated = inflate_patch_embed(encoder, own) if isinstance(tower, VideoViT) else 0
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in encoder.items()
                  if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f"model.video.init_from: {source} does not fit model.video.preset "
                         f"(checkpoint vs tower shapes): {'; '.join(mismatched[:5])}"
                         + (f"; and {len(mismatched) - 5} more" if len(mismatched) > 5 else ""))
    result = tower.load_state_dict(encoder, strict=False)
    if strict and result.missing_keys:
        raise ValueError(f"{source} does not fill the video tower: missing {', '.join(result.missing_keys[:5])}")
    loaded = len(encoder) - len(result.unexpected_keys)
    ignored = Counter(k.split(".")[0] for k in left_out)  # e.g. decoder x 42, text_tower x 6
    return (f"loaded {loaded} tensors into video_tower from {source} ({layout} layout); "
            f"missing keys: {', '.join(result.missing_keys) or 'none'}; "
            f"unexpected keys: {', '.join(result.unexpected_keys) or 'none'}; "
            f"ignored (not encoder): {', '.join(f'{k} x {n}' for k, n in ignored.items()) or 'none'}"
            + (f"; re-initialised (class count differs): {', '.join(reset)}" if reset else "")
            + (f"; patch embedding inflated from 1 to {inflated} frames (kernel / {inflated})" if inflated else "")
            + ("; position table: recomputed for the tower's token count" if isinstance(tower, VideoViT) else ""))
