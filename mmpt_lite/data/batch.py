"""How a training batch is formed: the dataset's samples (aligner, crop, negatives) -> :func:`collate`
-> :class:`ClipBatch`, which the tasks (``mmpt_lite.train.tasks``), the trainer and mining read."""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tokens = dict[str, torch.Tensor]


@dataclass
class ClipBatch:
    """B clips and their captions.

    video: uint8 [B, T, S, S, 3], frames as decoded (``models.preprocess`` makes the model input on the device)
    video_index: int64 [B], each clip's video in the corpus
    text: {name: int64 [B, K, L]}, K tokenized candidate captions per clip; None for video-only tasks
    negative_text: {name: int64 [B, M, L]}, M hard-negative captions per clip; None without negatives
    negative_mask: bool [B, M], False where a negative row is padding; None without negatives
    label: int64 [B], each clip's class (classification sets); None otherwise
    """

    video: torch.Tensor
    video_index: torch.Tensor
    text: Tokens | None = None
    negative_text: Tokens | None = None
    negative_mask: torch.Tensor | None = None
    label: torch.Tensor | None = None

    def _apply(self, fn) -> ClipBatch:
        def tokens(t: Tokens | None) -> Tokens | None:
            return None if t is None else {k: fn(v) for k, v in t.items()}
        return ClipBatch(fn(self.video), fn(self.video_index), tokens(self.text), tokens(self.negative_text),
                         None if self.negative_mask is None else fn(self.negative_mask),
                         None if self.label is None else fn(self.label))

    def to(self, device: torch.device, non_blocking: bool = True) -> ClipBatch:
        return self._apply(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> ClipBatch:  # DataLoader(pin_memory=True) calls it
        return self._apply(lambda t: t.pin_memory())

    def text_tower_input(self) -> Tokens:
        """All captions for one text-tower pass, {name: [B·K + B·M, L]}: row i·K + k is candidate k of
        clip i, then row B·K + i·M + m is negative m of clip i."""
        text = {k: v.flatten(0, 1) for k, v in self.text.items()}
        if self.negative_text is None:
            return text
        return {k: torch.cat((v, self.negative_text[k].flatten(0, 1))) for k, v in text.items()}


def collate(samples: list[dict]) -> ClipBatch:
    """Stack samples ({"video", "video_index"}, optionally "text", "negative_text", "negative_mask", "label";
    the shapes above without B)."""
    stack = torch.stack
    first = samples[0]
    batch = ClipBatch(stack([s["video"] for s in samples]), stack([s["video_index"] for s in samples]))
    if first.get("text") is not None:
        batch.text = {k: stack([s["text"][k] for s in samples]) for k in first["text"]}
    if "negative_text" in first:
        batch.negative_text = {k: torch.stack([s["negative_text"][k] for s in samples]) for k in first["negative_text"]}
        batch.negative_mask = torch.stack([s["negative_mask"] for s in samples])
    if first.get("label") is not None:
        batch.label = stack([s["label"] for s in samples])
    return batch
