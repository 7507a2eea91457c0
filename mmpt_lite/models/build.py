"""``build_model``: video presets + text tower -> :class:`VideoTextModel`.

State-dict layout (what ``model.state_dict()`` keys look like):

* S3D presets (``s3d``, ``s3d_nos2d``): the official ``s3d_howto100m.pth`` layout -- the S3D
  layers at the top level (``conv1.*`` ... ``mixed_5c.*``, ``fc.*``) and the text tower as
  ``text_module.*``. With the word2vec text tower, the default sizes and a 66,249-word
  dictionary (66,250 embedding rows) the official file loads with
  ``model.load_state_dict(torch.load(path, weights_only=True), strict=True)`` (evaluation's
  ``load_model`` detects both S3D formats).
* ViT presets: ``video_tower.*`` (VideoMAE encoder names), ``video_proj.*`` (width -> embed_dim),
  ``text_tower.*``.

Either way ``model.video_tower`` and ``model.text_tower`` are the two towers as modules (for
freezing, partial loading, optimiser groups).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmpt_lite.config import ConfigError, ModelConfig, TextTowerConfig, resolve_path
from mmpt_lite.models.preprocess import TowerNormalised
from mmpt_lite.models.s3d import S3D
from mmpt_lite.models.text import (
    TransformerTextTower,
    Word2VecTextTower,
    WordTokenizer,
    load_word2vec,
    load_word_dictionary,
)
from mmpt_lite.models.vit import VideoViT

# Video presets: constructor arguments of the tower class named by "arch".
VIDEO_PRESETS: dict[str, dict] = {
    "s3d": {"arch": "s3d", "space_to_depth": True},  # official s3d_howto100m.pth
    "s3d_nos2d": {"arch": "s3d", "space_to_depth": False},  # MIL-NCE training-repo checkpoints
    "vit_tiny": {"arch": "vit", "width": 192, "depth": 4, "num_heads": 3},  # CPU demo size
    # The same with 8-px patches: at 64 px an object spans ~2x2 tokens instead of one (4x the tokens).
    "vit_tiny_p8": {"arch": "vit", "width": 192, "depth": 4, "num_heads": 3, "patch_size": 8},
    "vit_s": {"arch": "vit", "width": 384, "depth": 12, "num_heads": 6},
    "vit_b": {"arch": "vit", "width": 768, "depth": 12, "num_heads": 12},
    "vit_l": {"arch": "vit", "width": 1024, "depth": 24, "num_heads": 16},
    "vit_h": {"arch": "vit", "width": 1280, "depth": 32, "num_heads": 16},
    "vit_g": {"arch": "vit", "width": 1408, "depth": 40, "num_heads": 16, "mlp_ratio": 48 / 11, "patch_size": 14},
}


def build_video_tower(preset: str, embed_dim: int = 512, attention: str = "sdpa") -> S3D | VideoViT:
    """The video tower of a preset; raises ValueError listing the valid names for an unknown one.

    ``attention`` (``model.video.attention``) is the ViT blocks' attention kernel; S3D has no attention.
    """
    if preset not in VIDEO_PRESETS:
        raise ValueError(f"model.video.preset: unknown preset {preset!r} (valid: {', '.join(VIDEO_PRESETS)})")
    kwargs = dict(VIDEO_PRESETS[preset])
    if kwargs.pop("arch") == "s3d":
        if attention != "sdpa":
            raise ConfigError(f"model.video.attention: {attention!r} applies to ViT presets; {preset} has no attention")
        return S3D(embed_dim=embed_dim, **kwargs)
    return VideoViT(**kwargs, attention=attention)


def build_text_tower(cfg: TextTowerConfig, embed_dim: int, *, vocab: Sequence[str] | None = None,
                     max_words: int = 20) -> Word2VecTextTower | TransformerTextTower:
    """The text tower of ``cfg`` (see :func:`build_model` for how word2vec vocabularies resolve)."""
    if cfg.kind == "transformer":
        return TransformerTextTower(resolve_path(cfg.path) if cfg.path else "", embed_dim)
    file_words, vectors = None, None
    if cfg.path:
        path = resolve_path(cfg.path)
        if path.suffix == ".npy":
            file_words = load_word_dictionary(path)
        else:
            file_words, vectors = load_word2vec(path)
            if vectors.shape[1] != cfg.word_dim:
                raise ValueError(f"model.text.word_dim is {cfg.word_dim} but {path} holds "
                                 f"{vectors.shape[1]}-d word vectors")
    words = list(vocab) if vocab is not None else file_words
    tokenizer = WordTokenizer(words, max_words) if words is not None else None
    num_embeddings = tokenizer.num_embeddings if tokenizer is not None else cfg.vocab_size
    tower = Word2VecTextTower(num_embeddings, cfg.word_dim, cfg.hidden_dim, embed_dim, tokenizer=tokenizer,
                              train_embeddings=cfg.train_embeddings)
    if vectors is not None:
        if vocab is None:
            tower.set_word_vectors(vectors)
        else:  # the file initialises the rows of the vocabulary words it has; the others keep their init
            file_row = {w: i for i, w in enumerate(file_words)}
            table = tower.word_embd.weight.detach()[1:].clone()
            for row, word in enumerate(words):
                if word in file_row:
                    table[row] = vectors[file_row[word]]
            tower.set_word_vectors(table)
    return tower


class VideoTextModel(TowerNormalised, nn.Module):
    """A video tower and a text tower embedding into one ``embed_dim`` space.

    ``forward(video=None, text=None)`` returns a dict of named tensors:

    * with ``video`` (float [B, 3, T, H, W], already normalised by ``video_mean``/``video_std``):
      ``video_embedding`` [B, D], ``pooled`` [B, F] (the backbone feature before the projection),
      plus ``mixed_5c`` [B, 1024] for S3D or ``video_tokens`` [B, N, width] for a ViT;
    * with ``text`` (the dict of ``model.tokenizer(texts)``, rows [N, L] or [B, K, L]):
      ``text_embedding`` [N or B·K, D].
    """

    def __init__(self, video_tower: S3D | VideoViT, text_tower: nn.Module, embed_dim: int, pool: str = "mean"):
        super().__init__()
        if pool not in ("mean", "max"):
            raise ValueError(f"model.video.pool: {pool!r} is not one of mean, max")
        if pool != "mean" and isinstance(video_tower, S3D):
            raise ValueError("model.video.pool: S3D projects its own pooled mixed_5c; only ViT presets take 'max'")
        self.pool = pool
        if isinstance(video_tower, S3D):
            # Official layout: S3D's own layers become this module's children, so the state-dict
            # keys equal the published checkpoint's. The towers stay reachable as plain
            # attributes (object.__setattr__ registers nothing, so no key appears twice).
            for name, child in video_tower.named_children():
                self.add_module(name, child)
            self.text_module = text_tower
            object.__setattr__(self, "video_tower", video_tower)
            object.__setattr__(self, "text_tower", text_tower)
            self.video_proj = None  # S3D's fc already projects 1024 -> embed_dim
        else:
            self.video_tower = video_tower
            self.video_proj = nn.Linear(video_tower.width, embed_dim)
            self.text_tower = text_tower

    def train(self, mode: bool = True) -> VideoTextModel:
        super().train(mode)
        self.video_tower.training = mode  # the S3D alias is not a child, so train() would not reach its flag
        # A frozen tower stays in eval mode: its BatchNorm statistics and dropout must not change either.
        for tower in (self.video_tower, self.text_tower):
            if mode and getattr(tower, "frozen", False):
                tower.train(False)
        return self

    @property
    def tokenizer(self):
        """``tokenizer(texts: list[str]) -> dict[str, Tensor]`` of the text tower."""
        return self.text_tower.tokenize

    def encode_video(self, video: torch.Tensor, frame_tokens: bool = False) -> dict[str, torch.Tensor]:
        out = dict(self.video_tower(video))
        if self.video_proj is None:
            return out
        if frame_tokens:  # [B, T', D]: each temporal slice's tokens averaged, then projected (NORTON's frame tokens)
            t, h, w = self.video_tower.token_grid(video.shape)
            tokens = out["video_tokens"]
            out["frame_embedding"] = self.video_proj(tokens.view(tokens.shape[0], t, h * w, -1).mean(dim=2))
        if self.pool == "max":  # [B, N, width] -> [B, N, D] -> [B, D]
            out["video_embedding"] = self.video_proj(out["video_tokens"]).amax(dim=1)
        else:
            out["video_embedding"] = self.video_proj(out["pooled"])
        return out

    def encode_text(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        # [B, K, L] candidate groups flatten to [B·K, L]: row i·K + k is caption k of video i.
        return self.text_tower({name: ids.reshape(-1, ids.shape[-1]) for name, ids in text.items()})

    def forward(self, video: torch.Tensor | None = None, text: dict[str, torch.Tensor] | None = None,
                tokens: bool = False) -> dict[str, torch.Tensor]:
        """``tokens``: also ``frame_embedding`` [B, T', D] (ViT towers) and ``text_token_embedding`` [N, L, D] with
        ``text_token_mask`` bool [N, L], in the same pass (NORTON's token-level similarity)."""
        out: dict[str, torch.Tensor] = {}
        if video is not None:
            out.update(self.encode_video(video, frame_tokens=tokens))
        if text is not None and tokens:
            flat = {name: ids.reshape(-1, ids.shape[-1]) for name, ids in text.items()}
            out["text_embedding"], out["text_token_embedding"], out["text_token_mask"] = \
                self.text_tower.forward_with_tokens(flat)
        elif text is not None:
            out["text_embedding"] = self.encode_text(text)
        return out


def freeze_backbone(tower: nn.Module) -> None:
    """Stop gradients into ``tower`` except its ``projection`` layer (when it has one); the model keeps a
    frozen tower in eval mode (see ``VideoTextModel.train``)."""
    tower.requires_grad_(False)
    tower.frozen = True
    projection = getattr(tower, "projection", None)
    if projection is not None:
        projection.requires_grad_(True)


def build_model(cfg: ModelConfig, *, vocab: Sequence[str] | None = None, max_words: int = 20) -> VideoTextModel:
    """Build the model of ``cfg``.

    Word2vec text tower (``cfg.text.kind == "word2vec"``): the vocabulary is ``vocab`` if given,
    else the words of ``cfg.text.path`` -- a numpy dictionary (``.npy``, e.g. the official
    ``s3d_dict.npy``) or a word2vec file (``.bin`` binary, anything else text), whose vectors
    then initialise the embedding (the rows of ``vocab`` words it contains, when both are given).
    The table has ``len(vocabulary) + 1`` rows (row 0 = padding), or ``cfg.text.vocab_size`` rows
    and no tokenizer when there is no vocabulary at all (e.g. only to load official weights).
    ``max_words`` is the tokenizer's row length (16 for the official checkpoint, 20 in MIL-NCE
    training). ``cfg.video.freeze`` / ``cfg.text.freeze`` freeze a tower except its projection.
    """
    video_tower = build_video_tower(cfg.video.preset, cfg.embed_dim, cfg.video.attention)
    text_tower = build_text_tower(cfg.text, cfg.embed_dim, vocab=vocab, max_words=max_words)
    model = VideoTextModel(video_tower, text_tower, cfg.embed_dim, pool=cfg.video.pool)
    if cfg.video.freeze:
        freeze_backbone(video_tower)
    if cfg.text.freeze:
        freeze_backbone(text_tower)
    return model.train(model.training)  # puts frozen towers in eval mode
