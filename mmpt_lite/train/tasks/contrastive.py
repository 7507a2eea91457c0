"""Contrastive video-text pretraining (``train.task: milnce``): MIL-NCE, InfoNCE or NORTON (``loss.name``) on
``MilNceClipDataset`` clips, with mined batches (``retri.enabled``) and zero-shot retrieval (``eval.enabled``)."""

from __future__ import annotations

import logging

import torch

from mmpt_lite.config import RunConfig
from mmpt_lite.data.action_negatives import load_lexicon
from mmpt_lite.data.batch import ClipBatch
from mmpt_lite.data.loader import MilNceClipDataset
from mmpt_lite.data.prepare import PreparedData, prepare_data
from mmpt_lite.losses.build import build_loss
from mmpt_lite.models.build import build_model
from mmpt_lite.models.preprocess import VideoInput
from mmpt_lite.train.tasks.base import Components, Task

log = logging.getLogger("mmpt_lite")


class ContrastiveTask(Task):
    """Video-text batches -> the contrastive loss (MIL-NCE or InfoNCE) of ``loss_fn``.

    The candidates [B, K, L] and any hard negatives [B, M, L] go through the text tower in one pass;
    the negatives' embeddings come back as [B, M, D] with ``negative_mask`` [B, M].
    """

    def __init__(self, model: torch.nn.Module, loss_fn: torch.nn.Module, device: torch.device,
                 clips_per_video: int = 1):
        self.loss_fn, self.device = loss_fn.to(device), device
        self.video_input = VideoInput(model, device)
        self.clips_per_video = clips_per_video

    def step(self, module: torch.nn.Module, batch: ClipBatch) -> dict:
        batch = batch.to(self.device)
        video = self.video_input(batch.video)
        b, num_candidates = next(iter(batch.text.values())).shape[:2]  # [B, K, L]
        tokens = getattr(self.loss_fn, "token_similarity", False)  # NORTON's token-level paragraph similarity
        out = module(video=video, text=batch.text_tower_input(), **({"tokens": True} if tokens else {}))
        text_embedding = out["text_embedding"].float()
        extra = {}
        if batch.negative_text is not None:
            extra = {"negative_embedding": text_embedding[b * num_candidates:].view(b, -1, text_embedding.shape[-1]),
                     "negative_mask": batch.negative_mask}
            text_embedding = text_embedding[:b * num_candidates]
        # The loss in fp32 also under bf16 autocast: MIL-NCE's logits (~10-50) would keep 2-3 significant digits.
        with torch.autocast(self.device.type, enabled=False):
            if getattr(self.loss_fn, "grouped", False):  # NORTON: [V, C, D] videos of C consecutive clips
                groups = self.groups(batch, out["video_embedding"].float(), text_embedding, num_candidates)
                if tokens:
                    groups.update(self.token_groups(out, b, num_candidates))
                result = self.loss_fn(**groups)
            else:
                result = self.loss_fn(video_embedding=out["video_embedding"].float(), text_embedding=text_embedding,
                                      num_candidates=num_candidates, **extra)
        return {**result, "batch_size": video.shape[0]}

    def groups(self, batch: ClipBatch, video: torch.Tensor, text: torch.Tensor, num_candidates: int) -> dict:
        """The batch's B = V·C clips as V videos × C clips: video [B, D] -> [V, C, D], text [B·K, D] ->
        [V, C, K, D]. The epoch plan keeps a video's C clips side by side in part (time) order; a batch that
        does not (e.g. a plan that split a video) is an error rather than a silently wrong paragraph."""
        c = self.clips_per_video
        b, d = video.shape
        index = batch.video_index.view(b // c, c)
        if not bool((index == index[:, :1]).all()):
            raise ValueError(f"loss {type(self.loss_fn).__name__}: the batch's clips are not in runs of "
                             f"data.clips_per_video={c} per video: {batch.video_index.tolist()}")
        return {"video_embedding": video.view(b // c, c, d),
                "text_embedding": text.view(b // c, c, num_candidates, text.shape[-1])}

    def token_groups(self, out: dict, b: int, num_candidates: int) -> dict:
        """The model's frame tokens [B, F, D] -> [V, C, F, D] and the candidates' word tokens [B·K, L, D] (hard
        negatives, after them, left out) -> [V, C, K·L, D] with their mask, for a token-level paragraph loss."""
        if "frame_embedding" not in out:
            raise ValueError("loss.norton.paragraph_similarity: 'tokens' needs a ViT video tower (frame tokens); "
                             "S3D has none: use 'clips'")
        c = self.clips_per_video
        frames = out["frame_embedding"].float()
        words = out["text_token_embedding"][:b * num_candidates].float()
        mask = out["text_token_mask"][:b * num_candidates]
        return {"frame_embedding": frames.view(b // c, c, *frames.shape[1:]),
                "word_embedding": words.reshape(b // c, c, num_candidates * words.shape[1], words.shape[-1]),
                "word_mask": mask.reshape(b // c, c, num_candidates * mask.shape[1])}

    def modules(self) -> list[torch.nn.Module]:
        return [self.loss_fn]  # e.g. InfoNCE's learnable temperature

    def state_dict(self) -> dict:
        return self.loss_fn.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loss_fn.load_state_dict(state)


def describe(cfg: RunConfig) -> str:
    return f"video={cfg.model.video.preset} text={cfg.model.text.kind} | loss {cfg.loss.name}"


def prepare(cfg: RunConfig, *, build: bool) -> PreparedData:
    """Corpus, shards and word vectors (``data.prepare.prepare_data``). The action lexicon may be a file of
    the corpus, so it is checked only now: a bad one is a ConfigError naming its key."""
    prepared = prepare_data(cfg, build=build)
    if build and cfg.data.action_negatives.count:
        load_lexicon(prepared.cfg.data)
    return prepared


def make_eval_fn(cfg: RunConfig, prepared: PreparedData, device: torch.device):
    """Zero-shot MSR-VTT-format retrieval on the held-out set (MIL-NCE's --evaluate), or None."""
    if not cfg.eval.enabled or prepared.msrvtt_csv is None:
        return None
    from mmpt_lite.evaluation.runtime import EvalRuntime
    from mmpt_lite.evaluation.zeroshot import MsrvttRetrieval

    evaluator = MsrvttRetrieval.from_run_config(cfg, prepared.msrvtt_root, prepared.msrvtt_csv)
    runtime = EvalRuntime.for_training(cfg, device)
    return lambda model: evaluator.run(model, runtime)


def build(cfg: RunConfig, prepared: PreparedData, device: torch.device) -> Components:
    model = build_model(cfg.model, max_words=cfg.data.max_words)
    if cfg.model.video.init_from:
        from mmpt_lite.models.init_from import init_video_tower
        log.info("model.video.init_from: %s", init_video_tower(model, cfg.model.video.init_from))
    dataset = MilNceClipDataset.from_config(cfg.data, prepared.video_store, prepared.caption_store, model.tokenizer)
    plan_provider = None
    if cfg.retri.enabled:
        from mmpt_lite.retrieval.mining import RetrievalPlanProvider
        plan_provider = RetrievalPlanProvider(cfg, model, dataset, device)
    return Components(model=model, dataset=dataset, task=ContrastiveTask(model, build_loss(cfg.loss), device,
                                                                  clips_per_video=cfg.data.clips_per_video),
                      eval_fn=make_eval_fn(cfg, prepared, device), plan_provider=plan_provider)
