"""Training input through NVIDIA DALI (``data.loader: dali``): the JPEG frame shards decoded by DALI, with nvJPEG
(``device="mixed"``) when training on a GPU and DALI's CPU decoder otherwise.

The split of work keeps the batches identical to the PyTorch loader's (:class:`~mmpt_lite.data.loader.TrainLoader`
over :class:`~mmpt_lite.data.loader.MilNceClipDataset`):

* the DataLoader workers run the dataset's own ``plan_sample`` (clip, frame indices, captions, crop box, flip,
  negatives, all drawn from the slot's seed) and read the planned frames' JPEG files out of the shard, undecoded;
* the epoch plan, the per-slot seeds and the checkpointed position are the TrainLoader's own (this class is one);
* DALI decodes every frame of the batch in one pipeline run, cuts the planned crop and flips it; the frames are
  zero-padded to ``[T, S, S, 3]`` exactly as ``MilNceClipDataset.read_clip`` pads them.

What the trainer receives is the same :class:`~mmpt_lite.data.batch.ClipBatch`: ``video`` uint8
``[B, T, S, S, 3]`` (on the GPU after nvJPEG, so the task's ``batch.to(device)`` leaves it there), the same text,
negatives and video indices. Normalisation stays where it is for both loaders (``models.preprocess.VideoInput`` on
the device), so the batch's dtype and layout do not depend on the loader.

DALI is optional (the ``gpu`` extra); it is imported only when this loader is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from mmpt_lite.config import ConfigError
from mmpt_lite.data.aligners import CropChoice
from mmpt_lite.data.batch import ClipBatch, collate
from mmpt_lite.data.decoders.dali import DALI_REQUIREMENT
from mmpt_lite.data.loader import MilNceClipDataset, TrainLoader


def import_dali():
    """The ``nvidia.dali`` module; a one-line ConfigError naming ``data.loader`` when it is not installed."""
    try:
        import nvidia.dali
    except ImportError:
        raise ConfigError(f"data.loader: 'dali' needs NVIDIA DALI, which is not installed (pip install "
                          f"{DALI_REQUIREMENT}, or this package's gpu extra)") from None
    return nvidia.dali


class EncodedClipDataset(Dataset):
    """A :class:`MilNceClipDataset`'s samples with the clip's JPEG files in place of its pixels.

    ``(sample index, seed)`` -> the dataset's sample dict without "video", plus "jpegs": T' uint8 arrays [bytes]
    (the encoded stored frames in clip order, T' <= T; none for a video without frames) and "crop" (the
    :class:`CropChoice` every frame gets).
    """

    def __init__(self, dataset: MilNceClipDataset):
        kind = getattr(dataset.videos, "storage", {}).get("kind")
        if kind != "jpeg":
            raise ConfigError(f"data.loader: 'dali' decodes JPEG frame shards; these hold {kind} frames "
                              "(rebuild them with the default storage, or use data.loader=pytorch)")
        self.dataset = dataset
        self.clips_per_video = dataset.clips_per_video   # TrainLoader keeps a video's clips in one batch
        self.clip_order = dataset.clip_order  # and, when consecutive, gives them one seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        sample, frames = self.dataset.plan_sample(item)
        # Copied out of the shard's mmap: a worker's sample is pickled to the main process, and DALI keeps
        # its input buffers until the run that reads them is done.
        views = self.dataset.videos.encoded_frames(frames.video_id, frames.indices)
        sample["jpegs"] = [np.array(view, dtype=np.uint8) for view in views]
        sample["crop"] = frames.crop
        return sample


@dataclass
class EncodedClipBatch:
    """A batch before decoding: ``batch`` is the ClipBatch with ``video`` an empty uint8 [B, 0] placeholder;
    ``jpegs[b]`` the encoded frames of clip b (T'_b <= T arrays), ``crops[b]`` its crop and flip."""

    batch: ClipBatch
    jpegs: list[list[np.ndarray]]
    crops: list[CropChoice]


def collate_encoded(samples: list[dict]) -> EncodedClipBatch:
    """Stack everything but the frames (:func:`~mmpt_lite.data.batch.collate`); keep the JPEG files per clip."""
    empty = torch.zeros(0, dtype=torch.uint8)
    batch = collate([{**sample, "video": empty} for sample in samples])
    return EncodedClipBatch(batch, [sample["jpegs"] for sample in samples], [sample["crop"] for sample in samples])


def _build_crop_pipeline(*, max_images: int, num_threads: int, device: torch.device):
    """A DALI pipeline fed per image: "jpegs" (uint8 [bytes]), "anchor" and "shape" (int32 [2], (y, x) and
    (h, w) of the crop in decoded pixels), "flip" (int32 scalar); returns the cropped, flipped uint8 [h, w, 3]."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device.type == "cuda"
    device_id = (device.index if device.index is not None else torch.cuda.current_device()) if gpu else None

    # Synchronous execution: the loader feeds one batch and reads it back before feeding the next, and the
    # DataLoader workers already run ahead of the trainer.
    @pipeline_def(batch_size=max_images, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
    def crop_pipeline():
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
        anchor = fn.external_source(name="anchor", dtype=types.INT32, ndim=1)
        shape = fn.external_source(name="shape", dtype=types.INT32, ndim=1)
        flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
        images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        # Decode whole frames, then slice: identical pixels to cropping the PyTorch loader's decoded frame
        # (a region-of-interest decode may round the block edges differently).
        images = fn.slice(images, anchor, shape, axes=[0, 1], normalized_anchor=False, normalized_shape=False)
        return fn.flip(images, horizontal=flip, vertical=0)

    pipe = crop_pipeline()
    pipe.build()
    return pipe


class DaliClipDecoder:
    """Decodes, crops and flips a batch's JPEG frames in one DALI run.

    ``decode(EncodedClipBatch)`` -> ClipBatch with ``video`` uint8 [B, T, S, S, 3] on ``device`` (the rank's
    GPU: nvJPEG; the CPU: DALI's CPU decoder), zeros where a clip is short of T frames or S pixels.
    """

    def __init__(self, *, num_frames: int, size: int, batch_size: int, device: torch.device, num_threads: int = 1):
        import_dali()
        self.num_frames, self.size, self.batch_size, self.device = num_frames, size, batch_size, device
        self.num_threads = num_threads
        self._pipe = None   # built on first use: after the DataLoader's workers have forked

    def decode(self, encoded: EncodedClipBatch) -> ClipBatch:
        count = len(encoded.jpegs)
        video = torch.zeros((count, self.num_frames, self.size, self.size, 3), dtype=torch.uint8, device=self.device)
        slots = [(b, t) for b, jpegs in enumerate(encoded.jpegs) for t in range(min(len(jpegs), self.num_frames))]
        if slots:
            self._fill(video, encoded, slots)
        return dataclasses.replace(encoded.batch, video=video)

    def _fill(self, video: torch.Tensor, encoded: EncodedClipBatch, slots: list[tuple[int, int]]) -> None:
        if self._pipe is None or len(slots) > self._pipe.max_batch_size:
            self._pipe = _build_crop_pipeline(max_images=max(len(slots), self.batch_size * self.num_frames),
                                              num_threads=self.num_threads, device=self.device)
        crops = [encoded.crops[b] for b, _ in slots]
        self._pipe.feed_input("jpegs", [encoded.jpegs[b][t] for b, t in slots])
        self._pipe.feed_input("anchor", [np.array([c.top, c.left], np.int32) for c in crops])
        self._pipe.feed_input("shape", [np.array([c.height, c.width], np.int32) for c in crops])
        self._pipe.feed_input("flip", [np.array(int(c.flip), np.int32) for c in crops])
        (images,) = self._pipe.run()
        if images.is_dense_tensor():   # every crop the same size (the usual case): one copy for the batch
            dense = self._to_torch(images.as_tensor())
            clips = torch.tensor([b for b, _ in slots], device=self.device)
            frames = torch.tensor([t for _, t in slots], device=self.device)
            video[clips, frames, :dense.shape[1], :dense.shape[2]] = dense
            return
        for k, (b, t) in enumerate(slots):
            image = self._to_torch(images[k])
            video[b, t, :image.shape[0], :image.shape[1]] = image

    def _to_torch(self, tensor) -> torch.Tensor:
        """A DALI TensorCPU / TensorGPU as a torch uint8 tensor on ``self.device`` (copied)."""
        if self.device.type != "cuda":
            return torch.from_numpy(np.array(tensor))
        from nvidia.dali.plugin.pytorch import feed_ndarray

        out = torch.empty(tuple(tensor.shape()), dtype=torch.uint8, device=self.device)
        feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(self.device))
        return out


class DaliTrainLoader(TrainLoader):
    """The TrainLoader (same epoch plans, slot seeds, position and resume) yielding ClipBatches decoded by DALI.

    ``dataset`` is the run's :class:`MilNceClipDataset` over JPEG shards; ``device`` the training device (a GPU
    decodes with nvJPEG). DALI gets as many CPU threads as the loader has workers (at least one): the share of
    the CPU the PyTorch loader's decoding gets. Other options are TrainLoader's.
    """

    def __init__(self, dataset: MilNceClipDataset, *, device: torch.device, **loader_options):
        import_dali()
        loader_options.pop("pin_memory", None)   # frames land on the device straight from DALI
        super().__init__(EncodedClipDataset(dataset), collate_fn=collate_encoded, **loader_options)
        self.decoder = DaliClipDecoder(num_frames=dataset.num_frames, size=dataset.size, batch_size=self.batch_size,
                                       device=device, num_threads=max(1, self.num_workers))

    def __iter__(self):
        for encoded in super().__iter__():
            yield self.decoder.decode(encoded)
