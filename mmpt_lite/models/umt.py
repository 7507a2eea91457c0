"""UMT (Unmasked Teacher) stage 1: a frozen image teacher guides a tubelet-1 video ViT on the tokens it attends to.

Facts reproduced (UMT, Li et al. 2023, stage 1; docs/formats-and-protocols §9):

* The teacher is an image model run on every frame. Its targets are the outputs of its last K (6) blocks,
  each passed through its own final LayerNorm and projection (CLIP: ``post_layernorm`` then
  ``visual_projection``), L2-normalised: ``[B·T, K, N, D_t]`` over the N patch tokens (CLS dropped).
* Token selection: the last block's CLS→patch attention, averaged over heads, per frame ``[B·T, N]``; each
  frame keeps ``keep_ratio·N`` tokens (20%: 40 of 196 at 224/16) sampled without replacement with probability
  ∝ attention (:func:`select_tokens`, Gumbel top-k = successive sampling). Per frame, not tubes.
* The student is a :class:`VideoViT` with tubelet 1 that sees only the kept tokens. The outputs of its last K
  blocks (UMT aligns the student's last K layers with the teacher's last K, layer i with layer i) go through
  its final ``norm``, then one ``Linear(width, D_t)`` + LayerNorm decoder per layer and are L2-normalised; the loss is
  ``mean(2 − 2·cos)`` over layers and kept tokens.

The teacher lives outside the trained model (the task holds it): checkpoints hold only the student,
``encoder.*`` (VideoViT names, as a masked run's, so ``model.video.init_from`` reads it) and ``decoders.*``.
Teacher kinds: ``clip`` (a local ``transformers`` CLIP vision folder) or ``mmpt_vit`` (an mmpt_lite run whose
encoder is a VideoViT: run per frame with its tubelet kernel summed over time; it has no CLS token, so its
selection attention is the mean query's attention over the patch keys and its projection is the identity).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmpt_lite.config import ConfigError, resolve_path
from mmpt_lite.models.build import VIDEO_PRESETS
from mmpt_lite.models.preprocess import TowerNormalised
from mmpt_lite.models.vit import VideoViT, init_weights

# OpenAI CLIP's pixel normalisation (used when a CLIP folder has no preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEACHER_KINDS = ("clip", "mmpt_vit")


# --------------------------------------------------------------------------- selection, targets, loss
def select_tokens(attention: torch.Tensor, keep: int, generator: torch.Generator) -> torch.Tensor:
    """Per row of ``attention`` [R, N] (non-negative weights), ``keep`` distinct token ids sampled without
    replacement with probability ∝ weight -> int64 [R, keep], ascending.

    Gumbel top-k: the top ``keep`` of log(w) + Gumbel noise are distributed as successive draws without
    replacement (Plackett-Luce), one batched op with no host sync. A zero weight gets key −inf and is never
    chosen while enough tokens have positive weight. Drawn on the generator's device.
    """
    r, n = attention.shape
    if not 0 < keep <= n:
        raise ValueError(f"keep {keep} of {n} tokens per frame")
    uniform = torch.rand(r, n, generator=generator, device=generator.device).clamp_(min=1e-20)
    keys = attention.float().to(uniform.device).log() - (-uniform.log()).log()
    return keys.topk(keep, dim=1).indices.sort(dim=1).values


def frame_index_to_clip(index: torch.Tensor, frames: int, tokens_per_frame: int) -> torch.Tensor:
    """Per-frame token ids [B·T, k] -> the clip's t-major token ids [B, T·k] (frame by frame, as the student
    orders them)."""
    bt, k = index.shape
    offset = torch.arange(frames, device=index.device)[None, :, None] * tokens_per_frame
    return (index.view(bt // frames, frames, k) + offset).flatten(1)


def gather_frame_targets(targets: torch.Tensor, index: torch.Tensor, frames: int) -> torch.Tensor:
    """Teacher targets [B·T, K, N, D] at the kept ids [B·T, k] -> [B, K, T·k, D] (the student's token order)."""
    bt, layers, _, dim = targets.shape
    kept = targets.gather(2, index[:, None, :, None].expand(-1, layers, -1, dim))  # [B·T, K, k, D]
    return kept.view(bt // frames, frames, layers, -1, dim).transpose(1, 2).flatten(2, 3)


def cosine_distill_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean(2 − 2·cos(student, target)) over every leading position; ``target`` is already L2-normalised,
    ``student`` is normalised here. [..., D] x [..., D] -> scalar (float32)."""
    return (2.0 - 2.0 * (F.normalize(student.float(), dim=-1) * target.float()).sum(dim=-1)).mean()


# --------------------------------------------------------------------------- teachers
class ImageTeacher(nn.Module):
    """A frozen image model run per frame. ``forward(frames)`` with teacher-normalised frames
    [B·T, 3, H, W] -> (targets [B·T, K, N, D_t] L2-normalised, attention [B·T, N]). Eval mode, no gradients,
    bf16 autocast on a GPU. Attributes: ``mean``/``std`` (its pixel normalisation), ``patch_size``,
    ``out_dim`` (D_t), ``depth`` (blocks), ``num_layers`` (K)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int
    out_dim: int
    depth: int

    def __init__(self, num_layers: int):
        super().__init__()
        self.num_layers = num_layers

    def freeze(self) -> ImageTeacher:
        if not 1 <= self.num_layers <= self.depth:
            raise ConfigError(f"umt.align_layers: {self.num_layers} must be in [1, {self.depth}] (the teacher's "
                              "block count)")
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> ImageTeacher:
        return super().train(False)  # always eval: no dropout, fixed statistics

    def targets_and_attention(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bf16 = torch.autocast("cuda", dtype=torch.bfloat16) if frames.is_cuda else contextlib.nullcontext()
        with bf16:
            targets, attention = self.targets_and_attention(frames)
        return F.normalize(targets.float(), dim=-1), attention.float()


class ClipTeacher(ImageTeacher):
    """A ``transformers`` ``CLIPVisionModelWithProjection`` (loaded with eager attention: attention weights are
    only returned by the eager path). Targets: hidden states of the last K blocks (patch tokens) through
    ``post_layernorm`` and ``visual_projection``; attention: last block, CLS row, patch columns, head mean."""

    def __init__(self, model: nn.Module, num_layers: int, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__(num_layers)
        self.model = model
        cfg = model.config
        self.mean, self.std = tuple(mean), tuple(std)
        self.patch_size, self.image_size = cfg.patch_size, cfg.image_size
        self.out_dim, self.depth = cfg.projection_dim, cfg.num_hidden_layers
        self.freeze()

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """CLIP's head on any tokens: post_layernorm then visual_projection, [..., width] -> [..., D_t]."""
        return self.model.visual_projection(self.model.vision_model.post_layernorm(hidden))

    def targets_and_attention(self, frames):
        out = self.model(pixel_values=frames, output_hidden_states=True, output_attentions=True,
                         interpolate_pos_encoding=frames.shape[-1] != self.image_size)
        hidden = torch.stack(out.hidden_states[-self.num_layers:], dim=1)[:, :, 1:]  # [B·T, K, N, width], no CLS
        return self.project(hidden), out.attentions[-1][:, :, 0, 1:].mean(dim=1)


class VitTeacher(ImageTeacher):
    """An mmpt_lite :class:`VideoViT` (tubelet 1) run per frame. Targets: last K block outputs through its
    final ``norm`` (no projection: D_t = width). No CLS token: the selection attention is the last block's
    attention of the mean query (over the frame's tokens) to every patch key, head-averaged."""

    def __init__(self, vit: VideoViT, num_layers: int):
        super().__init__(num_layers)
        if vit.tubelet_size != 1:
            raise ValueError("VitTeacher runs per frame: build the ViT with tubelet_size 1")
        self.vit = vit
        self.mean, self.std = vit.mean, vit.std
        self.patch_size, self.out_dim, self.depth = vit.patch_size, vit.width, len(vit.blocks)
        self.freeze()

    def targets_and_attention(self, frames):
        x = self.vit.embed(frames[:, :, None])  # [B·T, N, width]: each frame a 1-frame clip
        outputs = []
        for i, block in enumerate(self.vit.blocks):
            if i == len(self.vit.blocks) - 1:
                attention = mean_query_attention(block.attn, block.norm1(x))
            x = block(x)
            if i >= len(self.vit.blocks) - self.num_layers:
                outputs.append(x)
        return self.vit.norm(torch.stack(outputs, dim=1)), attention


def mean_query_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Head-averaged softmax attention of the mean query to every key, [B, N] (a class-token-free stand-in for
    CLS→patch attention), with the block's own q/k projections (:class:`mmpt_lite.models.vit.Attention`)."""
    b, n, dim = x.shape
    heads = attn.num_heads
    bias = torch.cat((attn.q_bias, torch.zeros_like(attn.v_bias), attn.v_bias))
    q, k, _ = F.linear(x, attn.qkv.weight, bias).reshape(b, n, 3, heads, dim // heads).unbind(dim=2)
    logits = torch.einsum("bhd,bnhd->bhn", q.mean(dim=1), k) / math.sqrt(dim // heads)
    return logits.softmax(dim=-1).mean(dim=1)


def load_clip_teacher(path: Path, num_layers: int) -> ClipTeacher:
    """A local CLIP folder (``save_pretrained`` of a CLIP vision model with projection, or of a full CLIPModel);
    its ``preprocessor_config.json`` image_mean/image_std when present, else OpenAI's."""
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(str(path), attn_implementation="eager")
    mean, std = CLIP_MEAN, CLIP_STD
    preprocessor = path / "preprocessor_config.json"
    if preprocessor.is_file():
        spec = json.loads(preprocessor.read_text())
        mean, std = spec.get("image_mean", mean), spec.get("image_std", std)
    return ClipTeacher(model, num_layers, mean, std)


def load_vit_teacher(path: Path, num_layers: int) -> VitTeacher:
    """The encoder of an mmpt_lite run (masked ``encoder.*`` or contrastive ``video_tower.*``), rebuilt from the
    run's ``model.video.preset`` with tubelet 1; a tubelet-T patch kernel is summed over time (the same response
    to a frame as the T-frame kernel gives to that frame repeated)."""
    from mmpt_lite.checkpoint import resolve_run_checkpoint
    from mmpt_lite.config import load_config
    from mmpt_lite.models.init_from import encoder_state, read_state_dict

    step = resolve_run_checkpoint(path)
    preset = load_config(step / "config.yaml").model.video.preset
    spec = dict(VIDEO_PRESETS[preset])
    if spec.pop("arch") != "vit":
        raise ConfigError(f"umt.teacher: {path} holds a {preset} tower; teacher_kind mmpt_vit needs a ViT preset")
    vit = VideoViT(**{**spec, "tubelet_size": 1})
    encoder, _, _ = encoder_state(read_state_dict(step)[0])
    encoder["patch_embed.proj.weight"] = encoder["patch_embed.proj.weight"].sum(dim=2, keepdim=True)
    vit.load_state_dict(encoder, strict=False)  # fc_norm-free encoder: every tensor present, checked below
    missing = set(vit.state_dict()) - set(encoder)
    if missing:
        raise ValueError(f"umt.teacher: {step} lacks encoder tensors {sorted(missing)[:5]}")
    return VitTeacher(vit, num_layers)


def load_teacher(kind: str, path: str, num_layers: int) -> ImageTeacher:
    """``umt.teacher_kind`` / ``umt.teacher`` / ``umt.align_layers`` -> a frozen :class:`ImageTeacher` (CPU)."""
    if not path:
        raise ConfigError("umt.teacher: empty; name a local CLIP folder (teacher_kind clip) or an mmpt_lite run "
                          "(teacher_kind mmpt_vit)")
    folder = resolve_path(path)
    if not folder.exists():
        raise FileNotFoundError(f"umt.teacher: {folder} does not exist (nothing is downloaded)")
    if kind == "clip":
        return load_clip_teacher(folder, num_layers)
    if kind == "mmpt_vit":
        return load_vit_teacher(folder, num_layers)
    raise ConfigError(f"umt.teacher_kind: {kind!r} is not one of {', '.join(TEACHER_KINDS)}")


# --------------------------------------------------------------------------- student
class UmtDecoder(nn.Module):
    """One aligned layer's head: Linear(width, D_t) then LayerNorm(D_t) (UMT's linear decoder)."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.head = nn.Linear(width, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.head(x))


class UmtStudent(TowerNormalised, nn.Module):
    """``encoder`` (VideoViT, tubelet 1) + one :class:`UmtDecoder` per aligned layer (``decoders.i`` for the
    student's i-th of its last K blocks, matched with the teacher's i-th of its last K).

    ``forward(video [B, 3, T, H, W] ImageNet-normalised, keep_index [B, M], targets [B, K, M, D_t] or None)``
    -> {"features": [B, K, M, D_t] L2-normalised, "loss": scalar when targets are given}.
    """

    normalising_tower = "encoder"  # video_mean / video_std: the encoder's

    def __init__(self, encoder: VideoViT, teacher_dim: int, num_layers: int):
        super().__init__()
        if encoder.tubelet_size != 1:
            raise ValueError("the UMT student embeds each frame on its own: tubelet_size 1")
        if not 1 <= num_layers <= len(encoder.blocks):
            raise ConfigError(f"umt.align_layers: {num_layers} must be in [1, {len(encoder.blocks)}] (the student's "
                              "block count)")
        self.encoder = encoder
        self.decoders = nn.ModuleList(UmtDecoder(encoder.width, teacher_dim) for _ in range(num_layers))
        self.decoders.apply(init_weights)

    def features(self, video: torch.Tensor, keep_index: torch.Tensor) -> torch.Tensor:
        """[B, K, M, D_t], not yet normalised (the compute FLOPs are counted on)."""
        blocks = self.encoder.forward_last_blocks(video, keep_index, len(self.decoders))
        # Each aligned output through the encoder's final norm first (UMT's encoder does the same); it also keeps
        # every student parameter on the loss's path, which DDP (no find_unused_parameters) requires.
        norm = self.encoder.norm
        return torch.stack([decoder(norm(x)) for decoder, x in zip(self.decoders, blocks, strict=True)], dim=1)

    def forward(self, video: torch.Tensor, keep_index: torch.Tensor,
                targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        features = self.features(video, keep_index)
        out = {"features": F.normalize(features.float(), dim=-1)}
        if targets is not None:
            out["loss"] = cosine_distill_loss(features, targets)
        return out


def build_umt_student(preset: str, teacher_dim: int, num_layers: int, attention: str = "sdpa") -> UmtStudent:
    """The student of a ViT preset (``model.video.preset``) with tubelet 1."""
    spec = dict(VIDEO_PRESETS.get(preset, {"arch": None}))
    if spec.pop("arch") != "vit":
        vit_presets = [name for name, s in VIDEO_PRESETS.items() if s["arch"] == "vit"]
        raise ConfigError(f"model.video.preset: UMT needs a ViT preset, got {preset!r} (valid: {', '.join(vit_presets)})")
    return UmtStudent(VideoViT(**{**spec, "tubelet_size": 1}, attention=attention), teacher_dim, num_layers)

