"""The run configuration's sections: one ``@dataclass(kw_only=True)`` per section, defaults, and the checks
between sections (``RunConfig.__post_init__``). Loading, ``--set`` and stage configs: ``config.loading``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and dotted key."""


class ConfigConflict(ConfigError):
    """Settings valid one by one that do not go together; a later ``--set`` may settle it."""


# Range rules of _check_ranges: a test on the value and how the message says it. NaN fails every test.
_RANGES = {
    ">0": (lambda v: v > 0, "must be > 0"),
    ">=0": (lambda v: v >= 0, "must be >= 0"),
    ">=1": (lambda v: v >= 1, "must be at least 1"),
    "(0,1]": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "(0,1)": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "[0,1)": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "[0,1]": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "[0,100]": (lambda v: 0 <= v <= 100, "must be in [0, 100]"),
    "port": (lambda v: 1 <= v <= 65535, "must be a TCP port in [1, 65535]"),
}


def _check_ranges(section: str, obj: Any, **rules: str) -> None:
    """Raise ConfigError ``<section>.<field>: <value> must be ...`` for the first field outside its rule."""
    for name, rule in rules.items():
        ok, says = _RANGES[rule]
        value = getattr(obj, name)
        if not ok(value):
            raise ConfigError(f"{section}.{name}: {value!r} {says}")


# Names the config checks at load, owned by the modules that implement them (tests/test_reliability_integrity.py
# compares them with models.build.VIDEO_PRESETS, models.classifier.CLASSIFIER_PRESETS and train.tasks.TASKS).
VIDEO_PRESET_NAMES = ("s3d", "s3d_nos2d", "vit_tiny", "vit_tiny_p8", "vit_s", "vit_b", "vit_l", "vit_h", "vit_g")
CLASSIFIER_PRESET_NAMES = ("x3d_s",)  # classification-only towers (train.task classify)
TASK_NAMES = ("milnce", "mae", "umt", "classify")


# --------------------------------------------------------------------------- sections
SYNTHETIC_SETS = ("train", "youcook2", "msrvtt", "finegrained", "hmdb51", "kinetics", "ssv2")  # synth.plan.SETS


@dataclass(kw_only=True)
class SyntheticRenderConfig:
    """How the synthetic videos are drawn: each scene is planned in 320x240 units and continuous time, then
    drawn directly at this short side and frame rate (docs/data.md)."""

    short_side: int = 0  # px, even (yuv420p); 0 = native 240
    fps: int = 0  # frames per second; 0 = native (12-30 depending on the set)

    def __post_init__(self) -> None:
        if self.short_side < 0 or self.short_side % 2:
            raise ConfigError(f"data.synthetic.render.short_side: {self.short_side} must be 0 (native) or a "
                              "positive even number of pixels (yuv420p)")
        if self.fps < 0:
            raise ConfigError(f"data.synthetic.render.fps: {self.fps} must be 0 (native) or a positive rate")


@dataclass(kw_only=True)
class SyntheticConfig:
    """The embedded how2-synth corpus, generated when ``data.root`` does not exist yet."""

    enabled: bool = True
    seed: int = 0  # >= 0 (numpy seeds)
    size: Literal["tiny", "default", "large"] = "default"
    # Training videos' background hue: "task" (the scene predicts the recipe, as on HowTo100M) or "random"
    # (one per video: no scene cue, so only motion tells the actions apart). Use another data.root for each.
    train_hue: Literal["task", "random"] = "random"
    # Training videos to generate; 0 = the size preset's. Video i and the evaluation sets do not depend on
    # it, so more videos extend the same corpus (less memorisation over a long run; docs/data.md).
    train_videos: int = 0
    # Size and rate the videos are drawn at (same scene, fewer pixels); 0/0 = the formats' native 240 px, 12-30 fps.
    render: SyntheticRenderConfig = field(default_factory=SyntheticRenderConfig)
    # "all", or a list of the sets to render (the rest is planned, not written): the MIL-NCE pipeline reads
    # train, msrvtt, youcook2 and hmdb51; masked pretraining with mae.dataset ssv2/kinetics reads that set.
    sets: list[str] | str = "all"

    def __post_init__(self) -> None:
        _check_ranges("data.synthetic", self, seed=">=0")
        if self.train_videos < 0:
            raise ConfigError(f"data.synthetic.train_videos: {self.train_videos} must be >= 0 (0: the size preset's)")
        names = [self.sets] if isinstance(self.sets, str) else self.sets
        if names != ["all"] and (not names or any(name not in SYNTHETIC_SETS for name in names)):
            raise ConfigError(f"data.synthetic.sets: {self.sets!r} must be 'all' or a non-empty list of "
                              f"{', '.join(SYNTHETIC_SETS)}")


@dataclass(kw_only=True)
class ActionNegativesConfig:
    """Hard-negative captions per clip: its candidates with the action phrase swapped for another
    (verb-focused negatives, ``mmpt_lite.data.action_negatives``), so motion, not only the objects,
    must match. MIL-NCE loss only."""

    count: int = 0  # negatives per clip; 0 = off
    # File of lines 'action<TAB>phrase | phrase ...'; relative to data.root (the synthetic corpus writes its own).
    lexicon: str = "actions.tsv"
    # Where the negative actions come from: "video" = actions named elsewhere in the clip's own narration
    # (they fit its scene, so only the motion tells them apart); "all" = any action of the lexicon.
    pool: Literal["video", "all"] = "video"

    def __post_init__(self) -> None:
        _check_ranges("data.action_negatives", self, count=">=0")


@dataclass(kw_only=True)
class DataConfig:
    """HowTo100M-format training corpus and the clip sampling of the MIL-NCE aligner."""

    root: str = "data/how2-synth"  # relative paths resolve against the repository root
    train_csv: str = "train.csv"  # column video_path, relative to video_root
    video_root: str = ""  # "" = the folder holding train_csv
    caption_root: str = "captions"  # <caption_root>/<video_id>.csv with start,end,text
    shard_root: str = ""  # packed shards (scripts/shard_howto.py); "" = decode raw files
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    num_frames: int = 16
    fps: float = 5.0
    video_size: int = 112  # square crop side; frames are stored with this short side (eval's scale)
    num_candidates: int = 4  # K captions per clip (MIL-NCE)
    min_time: float = 5.0  # clip span is widened to at least this many seconds
    # MIL-NCE flips, but the synthetic captions name left/right and (anti)clockwise: a flip contradicts them.
    random_flip: bool = False
    max_words: int = 20
    batch_size: int = 16  # clips per rank per step
    # Clips of one video side by side in a batch, each anchored in a different part of its captions: they
    # share the scene and objects, so telling them apart takes the actions (1 = MIL-NCE, one per video).
    clips_per_video: int = 1
    # How a video's clips are anchored: "spread" = clip j in the j-th of clips_per_video equal runs of its captions;
    # "consecutive" = clips_per_video consecutive captions from a random start, clips in time order (NORTON's
    # paragraphs). A video's clips then share one seed (and one crop) so they can agree on the start.
    clip_order: Literal["spread", "consecutive"] = "spread"
    action_negatives: ActionNegativesConfig = field(default_factory=ActionNegativesConfig)
    num_workers: int = 2
    # Video decoder (mmpt_lite.data.decoders) for shard building and evaluation; they select the same frames.
    decoder: Literal["pyav", "ffmpeg", "decord", "torchcodec", "dali"] = "pyav"
    # Who decodes the training shards' JPEG frames: the DataLoader workers ("pytorch") or NVIDIA DALI ("dali":
    # nvJPEG on a GPU, its CPU decoder otherwise; the gpu extra). Same batches either way (mmpt_lite.data.dali).
    loader: Literal["pytorch", "dali"] = "pytorch"

    def __post_init__(self) -> None:
        _check_ranges("data", self, num_frames=">=1", fps=">0", video_size=">=1", num_candidates=">=1",
                      min_time=">=0", max_words=">=1", batch_size=">=1", clips_per_video=">=1", num_workers=">=0")


@dataclass(kw_only=True)
class VideoTowerConfig:
    preset: str = "vit_tiny"  # see mmpt_lite.models.build for the valid names
    init_from: str = ""  # checkpoint whose video encoder initialises this tower
    freeze: bool = False
    # ViT towers: "mean" projects the mean token (VideoMAE's pooled feature); "max" projects every token
    # and keeps each dimension's maximum, so an object covering a few tokens is not averaged away.
    pool: Literal["mean", "max"] = "mean"
    # ViT attention kernel: "sdpa" (torch's, any device) or "flash_attn" (the flash-attn package: CUDA, bf16
    # autocast; built from source, README "GPU extras"). Same parameters either way, so checkpoints load in both.
    attention: Literal["sdpa", "flash_attn"] = "sdpa"

    def __post_init__(self) -> None:
        names = VIDEO_PRESET_NAMES + CLASSIFIER_PRESET_NAMES
        if self.preset not in names:
            raise ConfigError(f"model.video.preset: {self.preset!r} is not one of {', '.join(names)}")


@dataclass(kw_only=True)
class TextTowerConfig:
    kind: Literal["word2vec", "transformer"] = "word2vec"
    path: str = ""  # word2vec file / dictionary, or a local transformers folder ("" = bundled MiniLM)
    vocab_size: int = 66250
    word_dim: int = 300
    hidden_dim: int = 2048
    train_word2vec: bool = True  # no text.path: build the vocabulary from the corpus captions (the demo)
    # ...and initialise it randomly or with word2vec fitted on those captions. Random by default: templated
    # captions give every colour word the same contexts, so word2vec maps them to nearly the same vector.
    word_init: Literal["word2vec", "random"] = "random"
    train_embeddings: bool = False  # word vectors frozen as in MIL-NCE; the small demo corpus needs them trained
    freeze: bool = False

    def __post_init__(self) -> None:
        _check_ranges("model.text", self, vocab_size=">=1", word_dim=">=1", hidden_dim=">=1")


@dataclass(kw_only=True)
class ModelConfig:
    video: VideoTowerConfig = field(default_factory=VideoTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    embed_dim: int = 512

    def __post_init__(self) -> None:
        _check_ranges("model", self, embed_dim=">=1")


@dataclass(kw_only=True)
class NortonConfig:
    """``loss.name: norton`` (mmpt_lite/losses/norton.py); defaults = the published settings on VideoCLIP."""

    beta: float = 0.3  # share of the clip targets given to the Sinkhorn plan (faulty negatives); 0 = InfoNCE
    clip_epsilon: float = 1.0  # Sinkhorn entropy of the clip-caption plan (on the logits)
    paragraph_epsilon: float = 0.1  # Sinkhorn entropy of the video-paragraph plans (on cosine similarities)
    iterations: int = 50  # Sinkhorn iterations, both plans
    paragraph_weight: float = 0.1  # weight of the video-paragraph loss; 0 = clip loss only
    bucket_percentile: float = 30.0  # the prompt bucket's value: this percentile of the aligned similarities
    paragraph_temperature: float = 0.07
    # Clip-caption similarity inside the paragraph loss: "tokens" = NORTON's token-level log-sum-exp pooling
    # (frame tokens of the ViT tower x caption words, soft max with alpha below); "clips" = cosine of the pooled
    # embeddings (the only choice for S3D, which has no frame tokens).
    paragraph_similarity: Literal["tokens", "clips"] = "tokens"
    token_alpha: float = 0.1  # the log-sum-exp's temperature (-> max as it shrinks)

    def __post_init__(self) -> None:
        _check_ranges("loss.norton", self, beta="[0,1]", clip_epsilon=">0", paragraph_epsilon=">0", iterations=">=1",
                      paragraph_weight=">=0", bucket_percentile="[0,100]", paragraph_temperature=">0",
                      token_alpha=">0")


@dataclass(kw_only=True)
class LossConfig:
    name: Literal["milnce", "infonce", "norton"] = "milnce"
    temperature: float = 0.07  # infonce and norton (clip loss); MIL-NCE uses raw dot products
    learn_temperature: bool = False
    norton: NortonConfig = field(default_factory=NortonConfig)  # loss.name norton only

    def __post_init__(self) -> None:
        _check_ranges("loss", self, temperature=">0")


@dataclass(kw_only=True)
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0  # never on biases, norms (BatchNorm, LayerNorm) or other 1-D parameters
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd (SlowFast's default)
    # Layer-wise lr decay (BEiT / VideoMAE fine-tuning): a ViT's layer l of L+1 trains at lr · decay^(L+1-l),
    # the head at lr. 1 = off; needs a model with a layer order (the classify task's ViT classifiers).
    layer_decay: float = 1.0
    warmup_steps: int = 0
    min_lr: float = 0.0
    grad_clip: float = 0.0  # 0 = no clipping
    accum_steps: int = 1

    def __post_init__(self) -> None:
        _check_ranges("optim", self, lr=">0", weight_decay=">=0", momentum="[0,1)", layer_decay="(0,1]",
                      warmup_steps=">=0", min_lr=">=0", grad_clip=">=0", accum_steps=">=1")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas: {self.betas} must be two values in [0, 1)")
        if self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr: {self.min_lr} must not exceed optim.lr ({self.lr})")


@dataclass(kw_only=True)
class MaeConfig:
    """Masked video pretraining (VideoMAE v1 tube masking; v2 dual masking as an option)."""

    mask_ratio: float = 0.9
    masking: Literal["tube", "dual"] = "tube"
    decoder_mask_ratio: float = 0.5  # dual masking: fraction of tokens the decoder drops (running cell)
    decoder_depth: int = 4
    decoder_width: int = 0  # 0 = the preset's decoder width
    decoder_heads: int = 0  # 0 = the preset's decoder heads
    norm_pix_loss: bool = True
    sampling_stride: int = 4  # frames between samples: 4 Kinetics, 2 SSv2
    dataset: Literal["shards", "ssv2", "kinetics"] = "shards"  # video-only source for masked pretraining

    def __post_init__(self) -> None:
        _check_ranges("mae", self, mask_ratio="(0,1)", decoder_mask_ratio="[0,1)", decoder_depth=">=1",
                      decoder_width=">=0", decoder_heads=">=0", sampling_stride=">=1")


@dataclass(kw_only=True)
class UmtConfig:
    """UMT stage 1 (``train.task: umt``): a frozen image teacher's per-frame features and attention train a
    tubelet-1 student on the tokens the teacher attends to (models/umt.py). The video-only source and clip
    stride are ``mae.dataset`` / ``mae.sampling_stride``, shared with masked pretraining (same sets, same
    sampling)."""

    teacher: str = ""  # local folder: a CLIP save_pretrained folder (clip) or an mmpt_lite run (mmpt_vit)
    teacher_kind: Literal["clip", "mmpt_vit"] = "clip"
    keep_ratio: float = 0.2  # tokens kept per frame (UMT: 0.2 = 40 of 196 at 224/16, mask ratio 0.8)
    align_layers: int = 6  # the student's last K blocks aligned with the teacher's last K

    def __post_init__(self) -> None:
        _check_ranges("umt", self, keep_ratio="(0,1]", align_layers=">=1")


@dataclass(kw_only=True)
class ClassifyConfig:
    """Classification fine-tuning (``train.task: classify``): the model is ``model.video.preset`` with a class
    head, started from ``model.video.init_from`` (random init when empty); clips are ``data.num_frames`` frames
    cropped to ``data.video_size``. Defaults: VideoMAE's Kinetics fine-tuning recipe."""

    dataset: Literal["kinetics", "ssv2"] = "kinetics"  # the set's format: 'path label' lists, or SSv2's JSON
    root: str = ""  # the set's folder (lists, videos); "" = <data.root>/<dataset>, the synthetic corpus's set
    # Training clips: "dense" = data.num_frames frames sampling_stride apart from a random start (Kinetics);
    # "segments" = TSN, the video cut into data.num_frames segments, one random frame of each (SSv2); auto =
    # segments for ssv2, dense for kinetics.
    sampling: Literal["auto", "dense", "segments"] = "auto"
    sampling_stride: int = 4  # dense sampling, in frames at the set's native rate (ViT 4, X3D 6)
    # Spatial: VideoMAE's multi-scale crop resized to data.video_size, or SlowFast's short-side jitter (short
    # side resized to a random value in jitter_scales, then a random data.video_size crop).
    spatial: Literal["multiscale", "short_side_jitter"] = "multiscale"
    jitter_scales: list[int] = field(default_factory=lambda: [256, 320])
    flip: bool = True  # random horizontal flip; must be off for SSv2, whose labels name directions
    drop_path: float = 0.1  # ViT stochastic depth at the last block
    dropout: float = 0.0  # before the class head (X3D: 0.5)
    label_smoothing: float = 0.1
    mixup: float = 0.8  # Beta(alpha, alpha) of mixup; 0 = off
    cutmix: float = 1.0  # Beta(alpha, alpha) of cutmix (one box per clip, the same in every frame); 0 = off
    mixup_prob: float = 1.0  # probability that a batch is mixed at all
    mixup_switch_prob: float = 0.5  # with both on: probability of cutmix rather than mixup
    # Multi-view testing on the set's validation list: clips (dense) or temporal views (segments) x crops of
    # test_size (0 = data.video_size), softmax averaged per video. VideoMAE Kinetics 5 x 3, SSv2 2 x 3; X3D 10 x 3.
    test_clips: int = 0  # 0 = the dataset's published count: Kinetics 5, SSv2 2
    test_crops: int = 3
    test_size: int = 0

    def __post_init__(self) -> None:
        _check_ranges("classify", self, drop_path="[0,1)", dropout="[0,1)", label_smoothing="[0,1)", mixup=">=0",
                      cutmix=">=0", mixup_prob="[0,1]", mixup_switch_prob="[0,1]", test_clips=">=0",
                      sampling_stride=">=1", test_crops=">=1", test_size=">=0")
        scales = self.jitter_scales
        if len(scales) != 2 or not 0 < scales[0] <= scales[1]:
            raise ConfigError(f"classify.jitter_scales: {scales} must be [min, max] short sides, 0 < min <= max")
        if self.dataset == "ssv2" and self.flip:
            raise ConfigConflict("classify.flip: SSv2 labels name directions (left to right, clockwise), which a "
                                 "flip reverses; set classify.flip=false")

    @property
    def resolved_test_clips(self) -> int:
        return self.test_clips or (2 if self.dataset == "ssv2" else 5)

    @property
    def resolved_sampling(self) -> str:
        if self.sampling != "auto":
            return self.sampling
        return "segments" if self.dataset == "ssv2" else "dense"


@dataclass(kw_only=True)
class RetriConfig:
    """VideoCLIP's retrieval-augmented batches: mine near-neighbour videos with faiss each epoch."""

    enabled: bool = False
    start_epoch: int = 1
    every_epochs: int = 1
    index: Literal["flat", "ivfflat"] = "ivfflat"
    nlist: int = 512
    nprobe: int = 1
    metric: Literal["ip", "l2"] = "ip"
    clips_per_video: int = 4  # clips averaged into each video's embedding
    neighbours_factor: int = 2  # each seed video's 2 x batch nearest neighbours form its candidate pool

    def __post_init__(self) -> None:
        _check_ranges("retri", self, start_epoch=">=0", every_epochs=">=1", nlist=">=1", nprobe=">=1",
                      clips_per_video=">=1", neighbours_factor=">=1")


@dataclass(kw_only=True)
class TrainConfig:
    task: str = "milnce"  # a name in mmpt_lite.train.tasks.TASKS (TASK_NAMES above)
    output_dir: str = "runs/how2_pretrain"
    max_steps: int = 100
    epochs: int = 0  # >0: derive max_steps from the epoch size
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 50
    keep_last: int = 3
    resume: str = "auto"  # auto | none | path to a checkpoint folder
    max_nonfinite: int = 5  # stop after this many non-finite losses in a row
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 where native: GPU, AVX512-BF16/AMX CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    peak_tflops: float = 0.0  # for MFU; 0 = look the GPU name up (bf16 dense peak)
    # torch.compile (inductor) the model the trainer steps; checkpoints still hold the plain model's keys.
    compile: bool = False
    strategy: Literal["ddp", "deepspeed"] = "ddp"  # deepspeed: ZeRO (pip install 'mmpt_lite[dist]')
    zero_stage: int = 2  # deepspeed's ZeRO stage: 1 partitions optimizer state, 2 also the gradients

    def __post_init__(self) -> None:
        if self.task not in TASK_NAMES:
            raise ConfigError(f"train.task: {self.task!r} is not one of {', '.join(map(repr, TASK_NAMES))}")
        _check_ranges("train", self, max_steps=">=0", epochs=">=0", seed=">=0", log_every=">=1", ckpt_every=">=0",
                      keep_last=">=0", max_nonfinite=">=1", peak_tflops=">=0")
        if self.max_steps == 0 and self.epochs == 0:
            raise ConfigError("train.max_steps: 0 with train.epochs 0 trains nothing; set one of them > 0")
        if self.zero_stage not in (1, 2):
            raise ConfigError(f"train.zero_stage: {self.zero_stage} must be 1 or 2 (ZeRO stage of train.strategy "
                              "deepspeed; stage 3 would shard the weights checkpoints and evaluation read whole)")


@dataclass(kw_only=True)
class EvalConfig:
    enabled: bool = True  # zero-shot retrieval at the start (random init), every_steps, and the end
    every_steps: int = 0  # 0 = only at the end
    msrvtt_root: str = ""  # "" = the synthetic set under data.root
    num_windows_test: int = 4
    num_frames: int = 16
    fps: float = 5.0
    video_size: int = 112
    batch_size: int = 16
    hmdb_fps: float = 0.0  # HMDB probe decoding rate; 0 = native (the published protocol)

    def __post_init__(self) -> None:
        _check_ranges("eval", self, every_steps=">=0", num_windows_test=">=1", num_frames=">=1", fps=">0",
                      video_size=">=1", batch_size=">=1", hmdb_fps=">=0")


@dataclass(kw_only=True)
class LaunchConfig:
    """How locallaunch.py starts ranks; all but the nproc_local_* keys are the slurm job's (docs/cluster.md)."""

    nproc_local_small: int = 2
    nproc_local_big: int = 8
    nodes: int = 1
    gpus_per_node: int = 8  # 0 = a CPU-only allocation (no --gpus-per-node line)
    nproc_per_node: int = 0  # ranks torchrun starts per node; 0 = auto: gpus_per_node, 1 on CPU-only nodes
    cpus_per_task: int = 10  # each node's one task (torchrun + its ranks); OMP threads per rank = this // ranks
    mem: str = "0"  # slurm --mem; "0" = all of the node's memory
    time: str = "72:00:00"
    partition: str = ""  # "" = the cluster's default partition
    account: str = ""
    job_name: str = "mmpt_lite"
    master_port: int = 0  # the rendezvous port on the first node; 0 = 20000 + job id % 20000 (no clash on shared nodes)
    script_dir: str = "runs/slurm"  # sbatch scripts and job logs (<job_name>-<job id>.out)
    # USR1 to the batch script this many seconds before the time limit: the ranks checkpoint, stop, and the
    # job requeues itself to resume (0 = no warning signal). Also torchrun's wait for its ranks after SIGTERM.
    signal_seconds: int = 120
    requeue: bool = True  # a job whose ranks stopped on a signal (preempted.json) is requeued and resumes

    @property
    def ranks_per_node(self) -> int:
        return self.nproc_per_node or self.gpus_per_node or 1

    def __post_init__(self) -> None:
        _check_ranges("launch", self, nproc_local_small=">=1", nproc_local_big=">=1")
        for key in ("nodes", "cpus_per_task"):
            if getattr(self, key) < 1:
                raise ConfigError(f"launch.{key}: {getattr(self, key)} must be at least 1")
        for key in ("gpus_per_node", "nproc_per_node", "signal_seconds"):
            if getattr(self, key) < 0:
                raise ConfigError(f"launch.{key}: {getattr(self, key)} must be 0 or more")
        if not 0 <= self.master_port < 65536:
            raise ConfigError(f"launch.master_port: {self.master_port} must be 0 (from the job id) or a TCP port")
        if self.gpus_per_node and self.nproc_per_node > self.gpus_per_node:
            raise ConfigConflict(f"launch.nproc_per_node: {self.nproc_per_node} ranks per node would share "
                                 f"launch.gpus_per_node={self.gpus_per_node} GPUs; use at most one rank per GPU")
        if self.ranks_per_node > self.cpus_per_task:
            raise ConfigConflict(f"launch.cpus_per_task: {self.cpus_per_task} CPUs cannot hold "
                                 f"{self.ranks_per_node} ranks per node (launch.nproc_per_node, auto = "
                                 "launch.gpus_per_node); give each rank at least one CPU")


# A stage's overrides: dotted keys of this file's sections (``train.max_steps: 300``; nested mappings are read
# the same way), checked against RunConfig like ``--set`` and stored flat.
StageOverrides = dict[str, Any]
# Stage name -> the train.task it runs ("report" trains nothing: it evaluates the last training stage).
STAGE_TASKS = {"masked": "mae", "contrastive": "milnce"}
STAGE_NAMES = (*STAGE_TASKS, "report")


@dataclass(kw_only=True)
class StagesConfig:
    """The recipe as a sequence of runs (``mmpt_lite.pipeline``). ``order: []`` = one plain run of this config.

    Each stage runs this config plus its overrides (plus the command line's ``--set``, which apply to every
    stage) in ``<train.output_dir>/<stage>/``. ``contrastive`` after ``masked`` starts its video tower from
    the masked stage's encoder (``model.video.init_from``); ``report`` evaluates the last training stage.
    """

    order: list[Literal["masked", "contrastive", "report"]] = field(default_factory=list)
    masked: StageOverrides = field(default_factory=dict)
    contrastive: StageOverrides = field(default_factory=dict)
    report: StageOverrides = field(default_factory=dict)

    def __post_init__(self) -> None:
        order = self.order
        if len(set(order)) != len(order):
            raise ConfigError(f"stages.order: {order}: each stage may appear once")
        if "report" in order and (order[-1] != "report" or not set(order) & set(STAGE_TASKS)):
            raise ConfigError(f"stages.order: {order}: report comes last, after a training stage")


@dataclass(kw_only=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mae: MaeConfig = field(default_factory=MaeConfig)
    umt: UmtConfig = field(default_factory=UmtConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    retri: RetriConfig = field(default_factory=RetriConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)

    def __post_init__(self) -> None:
        clips, batch = self.data.clips_per_video, self.data.batch_size
        if clips < 1 or batch % clips:
            raise ConfigError(f"data.clips_per_video: {clips} must be at least 1 and divide data.batch_size ({batch})")
        negatives = self.data.action_negatives.count
        if negatives and self.loss.name != "milnce":
            raise ConfigConflict(f"data.action_negatives.count: hard-negative captions need loss.name milnce, "
                                 f"not {self.loss.name!r}")
        norton = self.loss.norton
        if self.loss.name == "norton" and norton.paragraph_weight > 0 and clips < 2:
            raise ConfigConflict(f"data.clips_per_video: {clips}; NORTON's video-paragraph loss "
                                 f"(loss.norton.paragraph_weight {norton.paragraph_weight}) needs at least 2 clips "
                                 "per video (8 in the paper), or set loss.norton.paragraph_weight=0")
        if self.model.video.attention == "flash_attn" and self.train.precision == "fp32":
            raise ConfigConflict("model.video.attention: flash_attn has no float32 kernel; use train.precision bf16 "
                                 "(or auto on a GPU), or sdpa")
        synthetic, video_set = self.data.synthetic, self.mae.dataset
        if (synthetic.enabled and self.train.task in ("mae", "umt") and video_set != "shards" and synthetic.sets != "all"
                and video_set not in synthetic.sets):
            objective = "masked" if self.train.task == "mae" else "UMT"
            raise ConfigConflict(f"data.synthetic.sets: {objective} pretraining on mae.dataset={video_set} reads the "
                                 f"synthetic corpus's {video_set} set; add it to {synthetic.sets}")
        if (synthetic.enabled and self.train.task == "classify" and not self.classify.root
                and synthetic.sets != "all" and self.classify.dataset not in synthetic.sets):
            raise ConfigConflict(f"data.synthetic.sets: fine-tuning on classify.dataset={self.classify.dataset} reads "
                                 f"the synthetic corpus's {self.classify.dataset} set; add it to {synthetic.sets}")
        if self.model.video.preset in CLASSIFIER_PRESET_NAMES and self.train.task != "classify":
            raise ConfigConflict(f"model.video.preset: {self.model.video.preset!r} is a classifier (train.task classify), "
                                 f"not a tower for train.task {self.train.task!r}")
        if self.data.loader == "dali" and self.train.task != "milnce":
            raise ConfigConflict(f"data.loader: 'dali' reads MIL-NCE clips (train.task milnce), not train.task "
                                 f"{self.train.task!r}; use data.loader=pytorch")
