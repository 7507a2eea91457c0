"""How a training batch is formed: a dataset's samples -> :func:`collate` -> :class:`ClipBatch`.

The dataset's ``__getitem__`` does the sampling (aligner, crop, hard negatives); collate only stacks.
The tasks (``mmpt_lite.train.tasks``), the trainer and retrieval mining read the same ClipBatch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Tokens = dict[str, torch.Tensor]


@dataclass
class ClipBatch:
    """B clips and their captions (B = samples, or 2 × samples when each sample carries reversed twins).

    video: uint8 [B, T, S, S, 3], frames as decoded (``models.preprocess`` makes the model input on the device)
    video_index: int64 [B], each clip's video in the corpus
    text: {name: int64 [B, K, L]}, K tokenized candidate captions per clip; None for video-only tasks
    negative_text: {name: int64 [B, M, L]}, M hard-negative captions per clip; None without negatives
    negative_mask: bool [B, M], False where a negative row is padding; None without negatives
    """

    video: torch.Tensor
    video_index: torch.Tensor
    text: Tokens | None = None
    negative_text: Tokens | None = None
    negative_mask: torch.Tensor | None = None

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ClipBatch:
        def tokens(t: Tokens | None) -> Tokens | None:
            return None if t is None else {k: fn(v) for k, v in t.items()}
        return ClipBatch(video=fn(self.video), video_index=fn(self.video_index), text=tokens(self.text),
                         negative_text=tokens(self.negative_text),
                         negative_mask=None if self.negative_mask is None else fn(self.negative_mask))

    def to(self, device: torch.device, non_blocking: bool = True) -> ClipBatch:
        return self._apply(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> ClipBatch:
        """Called by ``DataLoader(pin_memory=True)`` in the loader's pinning thread."""
        return self._apply(lambda t: t.pin_memory())

    def text_tower_input(self) -> Tokens:
        """Every caption for one text-tower pass: {name: [B·K + B·M, L]}. Row i·K + k is candidate k of
        clip i; the negatives follow, row B·K + i·M + m being negative m of clip i."""
        text = {k: v.flatten(0, 1) for k, v in self.text.items()}
        if self.negative_text is None:
            return text
        return {k: torch.cat((v, self.negative_text[k].flatten(0, 1))) for k, v in text.items()}


def collate(samples: list[dict]) -> ClipBatch:
    """Stack dataset samples ({"video", "video_index"} and optionally "text", "negative_text",
    "negative_mask", per sample without the B axis) into a :class:`ClipBatch`.

    Samples carrying twins (a leading 2 on every field) give B = 2 × samples, twins adjacent.
    """
    twins = samples[0]["video_index"].ndim == 1

    def stack(values: list[torch.Tensor]) -> torch.Tensor:
        out = torch.stack(values)
        return out.flatten(0, 1) if twins else out

    first = samples[0]
    batch = ClipBatch(video=stack([s["video"] for s in samples]),
                      video_index=stack([s["video_index"] for s in samples]))
    if first.get("text") is not None:
        batch.text = {k: stack([s["text"][k] for s in samples]) for k in first["text"]}
    if "negative_text" in first:  # [B, M, L] and [B, M]
        batch.negative_text = {k: torch.stack([s["negative_text"][k] for s in samples]) for k in first["negative_text"]}
        batch.negative_mask = torch.stack([s["negative_mask"] for s in samples])
    return batch
