"""VideoMAE masked video pretraining: masks drawn on the device, the decoder, targets and loss.

Facts reproduced (VideoMAE v1, VideoMAE v2 dual masking):

* Tube masking: one spatial mask shared by every temporal slice; ``int(ratio · H'W')`` tokens per
  slice are hidden (ratio 0.9 at 16×224²: 176 of 196 per slice, 160 of 1,568 visible in all).
* The encoder (a :class:`VideoViT`) sees the visible tokens only. ``encoder_to_decoder`` is a
  bias-free Linear; the decoder input is [visible tokens, one mask token per reconstructed
  position], each plus the decoder's own fixed sinusoid table; pre-LN blocks (depth 4 in the
  training recipes), then LayerNorm and a Linear head to ``3·tubelet·patch²`` (1,536) values on
  the reconstructed positions only.
* Target: per tubelet and per channel, ``(x − mean) / (unbiased std + 1e-6)`` of the [0, 1]
  pixels; the loss is the MSE over tokens hidden from the encoder.
* Dual masking (v2): the decoder reconstructs only a "running cell" subset (a 2×2 cell pattern
  that shifts by one each temporal slice; 50% kept), which may include encoder-visible positions;
  the loss counts only the reconstructed positions hidden from the encoder.

State-dict names follow VideoMAE's pretraining model (``encoder.*`` = VideoViT names,
``encoder_to_decoder``, ``mask_token``, ``decoder.blocks.N.*``, ``decoder.norm``, ``decoder.head``),
so the encoder of a checkpoint is the ``encoder.*`` slice and loads into any VideoViT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmpt_lite.config import MaeConfig
from mmpt_lite.models.build import VIDEO_PRESETS, build_video_tower
from mmpt_lite.models.preprocess import TowerNormalised
from mmpt_lite.models.vit import IMAGENET_MEAN, IMAGENET_STD, Block, VideoViT, init_weights, sinusoid_table

# Decoder (width, heads) by encoder width, from VideoMAE's model definitions (S, B, L, H with v2's 512 -- v1
# used 640 -- and g); other widths get half the encoder width in 64-wide heads.
MAE_DECODER_BY_WIDTH: dict[int, tuple[int, int]] = {
    192: (96, 3), 384: (192, 3), 768: (384, 6), 1024: (512, 8), 1280: (512, 8), 1408: (512, 8),
}


# --------------------------------------------------------------------------- masks
@dataclass(frozen=True)
class MaeMasks:
    """Which tokens (t-major indices into the T'×H'×W' grid) each part of the model handles.

    visible_index: int64 [B, N_vis], ascending -- the encoder's input tokens.
    decode_index: int64 [B, N_dec], ascending -- the positions the decoder reconstructs.
    loss_weight: float [B, N_dec] -- 1 where the loss applies (position hidden from the encoder).
    """

    visible_index: torch.Tensor
    decode_index: torch.Tensor
    loss_weight: torch.Tensor

    def hidden_mask(self, num_tokens: int) -> torch.Tensor:
        """bool [B, N], True = hidden from the encoder (VideoMAE's ``bool_masked_pos``)."""
        hidden = torch.ones(self.visible_index.shape[0], num_tokens, dtype=torch.bool,
                            device=self.visible_index.device)
        return hidden.scatter_(1, self.visible_index, False)


def tube_split(batch: int, grid: tuple[int, int, int], mask_ratio: float, generator: torch.Generator,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Tube masking: (visible, hidden) token indices, int64 [B, T'·k] and [B, T'·(H'W' − k)], ascending.

    Every temporal slice of a sample shares one random spatial mask hiding ``int(mask_ratio·H'W')``
    positions (VideoMAE's count). Drawn on ``device`` from ``generator`` (which must live there).
    """
    t, h, w = grid
    per_slice = h * w
    num_visible = per_slice - int(mask_ratio * per_slice)
    if not 0 < num_visible <= per_slice:
        raise ValueError(f"mae.mask_ratio={mask_ratio} leaves {num_visible} of {per_slice} tokens per slice visible")
    order = torch.rand(batch, per_slice, generator=generator, device=device).argsort(dim=1)
    slice_offset = torch.arange(t, device=device)[None, :, None] * per_slice

    def tokens(spatial: torch.Tensor) -> torch.Tensor:  # [B, k] spatial ids -> [B, T'·k] token ids
        return (slice_offset + spatial.sort(dim=1).values[:, None, :]).flatten(1)

    return tokens(order[:, :num_visible]), tokens(order[:, num_visible:])


def running_cell_keep(batch: int, grid: tuple[int, int, int], decoder_mask_ratio: float,
                      generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """VideoMAE v2's running-cell decoder mask: bool [B, N], True = the decoder reconstructs the token.

    Each 2×2 spatial cell drops ``int(4·ratio)`` of its 4 positions; the pattern is a queue
    (dropped first) read from a pointer that starts at a random place per sample and advances by
    one every temporal slice, so every position is reconstructed in some slices.
    """
    t, h, w = grid
    num_dropped = int(4 * decoder_mask_ratio)
    if not 0 < num_dropped < 4:
        raise ValueError(f"mae.decoder_mask_ratio={decoder_mask_ratio}: a 2×2 running cell drops 1 to 3 positions")
    if h % 2 or w % 2:
        raise ValueError(f"dual masking needs an even token grid (2×2 cells), got {h}×{w}")
    start = torch.randint(4, (batch,), generator=generator, device=device)
    cell = 2 * (torch.arange(h, device=device) % 2)[:, None] + (torch.arange(w, device=device) % 2)[None, :]
    slice_step = torch.arange(t, device=device)[:, None, None] + 1  # the pointer moves before each slice
    phase = (cell[None, None] + slice_step[None] + start[:, None, None, None]) % 4
    return (phase >= num_dropped).flatten(1)


def tube_masks(batch: int, grid: tuple[int, int, int], mask_ratio: float, generator: torch.Generator,
               device: torch.device) -> MaeMasks:
    """VideoMAE v1: the decoder reconstructs every hidden token and the loss covers all of them."""
    visible, hidden = tube_split(batch, grid, mask_ratio, generator, device)
    return MaeMasks(visible, hidden, torch.ones(hidden.shape, device=device))


def dual_masks(batch: int, grid: tuple[int, int, int], mask_ratio: float, decoder_mask_ratio: float,
               generator: torch.Generator, device: torch.device) -> MaeMasks:
    """VideoMAE v2: tube-masked encoder; the decoder reconstructs the running-cell-kept positions."""
    visible, _ = tube_split(batch, grid, mask_ratio, generator, device)
    keep = running_cell_keep(batch, grid, decoder_mask_ratio, generator, device)
    num_tokens = keep.shape[1]
    num_decoded = num_tokens * (4 - int(4 * decoder_mask_ratio)) // 4  # the same for every sample
    # Kept positions first, each group in ascending order: a sort key, no data-dependent shapes (no sync).
    key = (~keep).long() * num_tokens + torch.arange(num_tokens, device=device)
    decode = key.argsort(dim=1)[:, :num_decoded]
    hidden = torch.ones(batch, num_tokens, dtype=torch.bool, device=device).scatter_(1, visible, False)
    return MaeMasks(visible, decode, hidden.gather(1, decode).float())


# --------------------------------------------------------------------------- targets and loss
def tubelet_pixels(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, N, tubelet·patch·patch, C], tokens t-major as the patch embedding orders them."""
    b, c, t, h, w = video.shape
    x = video.reshape(b, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, t', h', w', tubelet, patch, patch, c
    return x.reshape(b, -1, tubelet * patch * patch, c)


def tubelet_targets(pixels01: torch.Tensor, tubelet: int, patch: int, normalize: bool = True) -> torch.Tensor:
    """Reconstruction targets [B, N, tubelet·patch²·C] from [0, 1] video [B, C, T, H, W].

    ``normalize``: per tubelet and channel, (x − mean) / (unbiased std + 1e-6), VideoMAE's
    ``normlize_target``. Values are laid out (tubelet, patch, patch, channel) within a token.
    """
    x = tubelet_pixels(pixels01.float(), tubelet, patch)
    if normalize:
        x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    return x.flatten(2)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over weighted tokens of the per-token MSE. pred/target [B, M, D], weight [B, M] -> scalar."""
    per_token = (pred.float() - target).pow(2).mean(dim=-1)
    return (per_token * weight).sum() / weight.sum().clamp_min(1.0)


# --------------------------------------------------------------------------- model
class MaeDecoder(nn.Module):
    """Pre-LN blocks over all decoder tokens, then norm + head on the last ``num_predicted`` tokens."""

    def __init__(self, width: int, depth: int, num_heads: int, out_dim: int, mlp_ratio: float = 4.0,
                 attention: str = "sdpa"):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, num_heads, mlp_ratio, attention) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, out_dim)
        self.apply(init_weights)  # VideoMAE inits its decoder as its encoder

    def forward(self, x: torch.Tensor, num_predicted: int) -> torch.Tensor:
        """[B, N_vis + N_dec, width] -> [B, num_predicted, out_dim]."""
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, -num_predicted:]))


class VideoMAEPretrainer(TowerNormalised, nn.Module):
    """Masked autoencoder around a :class:`VideoViT` encoder.

    ``forward(video, generator)`` with ``video`` ImageNet-normalised float [B, 3, T, H, W] draws the
    masks on ``video.device`` from ``generator`` (or takes ``masks``) and returns
    ``{"loss": scalar, "pred": [B, N_dec, D], "target": [B, N_dec, D], "mask": bool [B, N] (True =
    hidden from the encoder), "visible_index", "decode_index", "loss_weight"}`` with
    D = 3·tubelet·patch².
    """

    normalising_tower = "encoder"  # video_mean / video_std: the encoder's

    def __init__(self, encoder: VideoViT, *, decoder_width: int, decoder_depth: int, decoder_heads: int,
                 mask_ratio: float = 0.9, masking: str = "tube", decoder_mask_ratio: float = 0.5,
                 norm_pix_loss: bool = True, attention: str = "sdpa"):
        super().__init__()
        if masking not in ("tube", "dual"):
            raise ValueError(f"mae.masking: {masking!r} is not one of 'tube', 'dual'")
        self.encoder = encoder
        self.mask_ratio, self.masking, self.decoder_mask_ratio = mask_ratio, masking, decoder_mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.out_dim = 3 * encoder.tubelet_size * encoder.patch_size ** 2
        # VideoMAE leaves encoder_to_decoder at PyTorch's default init; the mask token is N(0, .02) cut at ±.02.
        self.encoder_to_decoder = nn.Linear(encoder.width, decoder_width, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        self.decoder = MaeDecoder(decoder_width, decoder_depth, decoder_heads, self.out_dim, attention=attention)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1), persistent=False)

    def draw_masks(self, video_shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> MaeMasks:
        """Masks for a batch of ``video_shape`` [B, 3, T, H, W], drawn on the generator's device."""
        grid, device = self.encoder.token_grid(video_shape), generator.device
        if self.masking == "dual":
            return dual_masks(video_shape[0], grid, self.mask_ratio, self.decoder_mask_ratio, generator, device)
        return tube_masks(video_shape[0], grid, self.mask_ratio, generator, device)

    def reconstruct(self, video: torch.Tensor, visible_index: torch.Tensor, decode_index: torch.Tensor) -> torch.Tensor:
        """Predicted targets of the ``decode_index`` tokens, [B, N_dec, D] (the compute FLOPs are counted on)."""
        x = self.encoder_to_decoder(self.encoder.forward_tokens(video, visible_index))
        t, h, w = self.encoder.token_grid(video.shape)
        pos = sinusoid_table(t * h * w, x.shape[-1], device=x.device, dtype=x.dtype)
        x = torch.cat((x + pos[visible_index], self.mask_token.to(x.dtype) + pos[decode_index]), dim=1)
        return self.decoder(x, decode_index.shape[1])

    def forward(self, video: torch.Tensor, generator: torch.Generator | None = None,
                masks: MaeMasks | None = None) -> dict[str, torch.Tensor]:
        if masks is None:
            if generator is None:
                raise ValueError("VideoMAEPretrainer.forward needs a generator (to draw masks) or masks")
            masks = self.draw_masks(video.shape, generator)
        pred = self.reconstruct(video, masks.visible_index, masks.decode_index)
        with torch.no_grad():
            pixels01 = video.float() * self.pixel_std + self.pixel_mean
            targets = tubelet_targets(pixels01, self.encoder.tubelet_size, self.encoder.patch_size,
                                      self.norm_pix_loss)
            target = targets.gather(1, masks.decode_index[:, :, None].expand(-1, -1, targets.shape[-1]))
        return {"loss": masked_mse(pred, target, masks.loss_weight), "pred": pred, "target": target,
                "mask": masks.hidden_mask(targets.shape[1]), "visible_index": masks.visible_index,
                "decode_index": masks.decode_index, "loss_weight": masks.loss_weight}


def build_mae_pretrainer(preset: str, mae: MaeConfig, attention: str = "sdpa") -> VideoMAEPretrainer:
    """The masked-pretraining model of a ViT preset (``model.video.preset``) and the ``mae.*`` section;
    ``attention`` (``model.video.attention``) is the kernel of the encoder's and the decoder's blocks."""
    if VIDEO_PRESETS.get(preset, {}).get("arch") != "vit":
        vit_presets = [name for name, spec in VIDEO_PRESETS.items() if spec["arch"] == "vit"]
        raise ValueError(f"model.video.preset: masked pretraining needs a ViT preset, got {preset!r} "
                         f"(valid: {', '.join(vit_presets)})")
    encoder = build_video_tower(preset, attention=attention)
    width, heads = MAE_DECODER_BY_WIDTH.get(encoder.width, (encoder.width // 2, max(1, encoder.width // 128)))
    return VideoMAEPretrainer(encoder, decoder_width=mae.decoder_width or width,
                              decoder_depth=mae.decoder_depth, decoder_heads=mae.decoder_heads or heads,
                              mask_ratio=mae.mask_ratio, masking=mae.masking,
                              decoder_mask_ratio=mae.decoder_mask_ratio, norm_pix_loss=mae.norm_pix_loss,
                              attention=attention)
