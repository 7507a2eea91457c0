"""VideoMAE-style video ViT encoder (tubelet patches, fixed sinusoid positions, no class token).

Parameter names follow VideoMAE's encoder (``patch_embed.proj``, ``blocks.N.norm1``,
``blocks.N.attn.qkv``/``q_bias``/``v_bias``/``proj``, ``blocks.N.norm2``, ``blocks.N.mlp.fc1``/``fc2``,
``norm`` or ``fc_norm``) so its checkpoints map over key for key.

Facts reproduced (VideoMAE v1/v2): Conv3d tubelet embedding (kernel = stride = 2×16×16 by
default); a fixed 1-D sinusoid table over the flattened (t, h, w) token index, not a parameter
and not in the state dict; pre-LN blocks with LayerNorm eps 1e-6; attention with q and v biases
but no k bias; MLP ratio 4 with GELU; xavier-uniform Linear weights. ``forward_tokens`` takes the
indices of the visible tokens for masked pretraining (the encoder sees only those).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmpt_lite.config import ConfigError

try:  # optional: the flash-attn package (SDPA already dispatches to flash kernels on a GPU)
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None

ATTENTION_KERNELS = ("sdpa", "flash_attn")  # model.video.attention

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sinusoid_table(num_positions: int, dim: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """[num_positions, dim]: sin at even, cos at odd channels, angle = pos / 10000^(2·(j//2)/dim).

    Row p does not depend on the table length, so inputs of any size use the first N rows.
    """
    positions = torch.arange(num_positions, device=device, dtype=torch.float64)[:, None]
    exponents = (2 * (torch.arange(dim, device=device) // 2)).to(torch.float64) / dim
    angles = positions / torch.pow(10000.0, exponents)[None, :]
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.to(dtype)


class PatchEmbed(nn.Module):
    """[B, C, T, H, W] -> tokens [B, (T/tubelet)·(H/patch)·(W/patch), width], t-major order."""

    def __init__(self, width: int, patch_size: int = 16, tubelet_size: int = 2, in_channels: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_channels, width, kernel_size=kernel, stride=kernel)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        _, _, t, h, w = video.shape
        if t % self.tubelet_size or h % self.patch_size or w % self.patch_size:
            raise ValueError(f"video of T×H×W = {t}×{h}×{w} does not tile into {self.tubelet_size}×"
                             f"{self.patch_size}×{self.patch_size} tubelets")
        return self.proj(video).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; the qkv projection has q and v biases but no k bias (VideoMAE).

    ``kernel`` (``model.video.attention``) picks the attention product: ``sdpa``
    (``F.scaled_dot_product_attention``, any device and dtype) or ``flash_attn`` (the flash-attn package's
    kernel: CUDA tensors in bf16/fp16, i.e. under autocast). It is a plain attribute, not state: the
    parameters and state-dict keys are the same for both.
    """

    def __init__(self, dim: int, num_heads: int, kernel: str = "sdpa"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        if kernel not in ATTENTION_KERNELS:
            raise ConfigError(f"model.video.attention: {kernel!r} is not one of {', '.join(ATTENTION_KERNELS)}")
        self.num_heads = num_heads
        self.kernel = kernel
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, dim] -> [B, N, dim]."""
        b, n, dim = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, dim // self.num_heads)
        if self.kernel == "flash_attn":
            q, k, v = qkv.unbind(dim=2)  # flash-attn takes [B, N, heads, head_dim]
            out = flash_attention(q, k, v)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(dim=0)  # SDPA takes [B, heads, N, head_dim]
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        return self.proj(out.reshape(b, n, dim))


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """flash-attn's kernel on q, k, v [B, N, heads, head_dim] -> [B, N, heads, head_dim] (scale 1/sqrt(head_dim)).

    The kernel is chosen by ``model.video.attention``, not by the input's dtype: under autocast the block input
    (a LayerNorm output) is float32 even though the run is bf16. flash-attn's op is on none of autocast's
    lists, so q, k, v are cast to the autocast dtype here. Float32 outside autocast (evaluation and mining run
    fp32) has no flash-attn kernel: SDPA computes the same attention there; training in fp32 with flash_attn
    is refused by the config (``train.precision``).
    """
    if flash_attn_func is None:
        raise ConfigError("model.video.attention: flash_attn needs the flash-attn package (built from source on a "
                          "CUDA machine, see README 'GPU extras'); use sdpa")
    if not q.is_cuda:
        raise ConfigError(f"model.video.attention: flash_attn runs on CUDA tensors only, got {q.device.type}; use sdpa")
    if torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if q.dtype not in (torch.float16, torch.bfloat16):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return flash_attn_func(q, k, v)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth on a residual branch [B, ...]: zero the whole branch of a random ``rate`` of the samples
    and scale the others by 1 / (1 - rate), so the expectation is unchanged; identity in eval mode."""
    if rate == 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); ``drop_path`` is the rate at which
    each residual branch is dropped per sample in training (stochastic depth; no parameters)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, attention: str = "sdpa", drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attention)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))  # int() as VideoMAE: 1408 · 48/11 -> 6144
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class VideoViT(nn.Module):
    """Video ViT encoder: ``[B, 3, T, H, W]`` (ImageNet-normalised) -> tokens [B, N, width].

    ``fc_norm=False`` is the pretraining encoder (final ``norm`` on every token; pooled = token
    mean); ``fc_norm=True`` the fine-tuning variant (no per-token norm; ``fc_norm`` after the
    mean). Input T, H, W may be any multiple of the tubelet/patch size: the position table is
    computed for the actual token count. ``attention`` is the blocks' kernel (:class:`Attention`).
    ``drop_path``: the last block's stochastic-depth rate, rising linearly from 0 at the first (VideoMAE
    fine-tuning; 0 in pretraining).
    """

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, width: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 patch_size: int = 16, tubelet_size: int = 2, in_channels: int = 3, fc_norm: bool = False,
                 attention: str = "sdpa", drop_path: float = 0.0):
        super().__init__()
        self.width = width
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.patch_embed = PatchEmbed(width, patch_size, tubelet_size, in_channels)
        rates = [drop_path * i / (depth - 1) for i in range(depth)] if depth > 1 else [drop_path] * depth
        self.blocks = nn.ModuleList(Block(width, num_heads, mlp_ratio, attention, rate) for rate in rates)
        if fc_norm:
            self.norm = nn.Identity()
            self.fc_norm = nn.LayerNorm(width, eps=1e-6)
        else:
            self.norm = nn.LayerNorm(width, eps=1e-6)
            self.fc_norm = None
        self.apply(init_weights)

    def token_grid(self, video_shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        """(T', H', W') token grid for a video of shape [B, C, T, H, W]."""
        t, h, w = video_shape[-3:]
        return t // self.tubelet_size, h // self.patch_size, w // self.patch_size

    def forward_tokens(self, video: torch.Tensor, keep_index: torch.Tensor | None = None) -> torch.Tensor:
        """Encode ``video`` [B, 3, T, H, W] -> per-token features [B, N, width].

        ``keep_index`` (LongTensor [B, N_keep], indices into the t-major token grid): encode only
        those tokens (each still carries its own position) -> [B, N_keep, width].
        """
        x = self.embed(video, keep_index)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def embed(self, video: torch.Tensor, keep_index: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embedding plus positions, [B, N, width] (or [B, N_keep, width] for ``keep_index``)."""
        x = self.patch_embed(video)
        x = x + sinusoid_table(x.shape[1], self.width, device=x.device, dtype=x.dtype)
        if keep_index is not None:
            x = torch.gather(x, 1, keep_index[:, :, None].expand(-1, -1, self.width))
        return x

    def forward_last_blocks(self, video: torch.Tensor, keep_index: torch.Tensor | None,
                            num_last: int) -> list[torch.Tensor]:
        """The raw outputs (before ``norm``) of the last ``num_last`` blocks, each [B, N(_keep), width], in
        block order: the features a distillation objective (UMT) aligns layer by layer."""
        if not 1 <= num_last <= len(self.blocks):
            raise ValueError(f"{num_last} block outputs asked of a {len(self.blocks)}-block ViT")
        x, outputs = self.embed(video, keep_index), []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= len(self.blocks) - num_last:
                outputs.append(x)
        return outputs

    def forward(self, video: torch.Tensor, keep_index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """-> {"video_tokens": [B, N(_keep), width], "pooled": [B, width] (mean over tokens)}."""
        tokens = self.forward_tokens(video, keep_index)
        pooled = tokens.mean(dim=1)
        if self.fc_norm is not None:
            pooled = self.fc_norm(pooled)
        return {"video_tokens": tokens, "pooled": pooled}


def init_weights(module: nn.Module) -> None:
    # VideoMAE's encoder (and decoder) init: xavier-uniform Linear weights, zero biases, unit LayerNorms;
    # the patch Conv3d keeps PyTorch's default init, as VideoMAE's does.
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

