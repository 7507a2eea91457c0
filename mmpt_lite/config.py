"""Run configuration: typed dataclass sections loaded strictly from YAML.

A run is one YAML file (optionally with a single ``base:`` include) plus ``--set a.b=c``
overrides. Every key is checked against the dataclasses below: an unknown key or a value of
the wrong type raises :class:`ConfigError` whose message names the file and the dotted key.
Entry points turn that error into one line on stderr and exit status 2.

YAML is read with ``yaml.safe_load``: configs never execute code and never name classes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mmpt_lite.fileio import atomic_write_text

# Where the default synthetic corpus lives when a config leaves data.root relative.
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and dotted key."""


class ConfigConflict(ConfigError):
    """Settings valid one by one that do not go together; a later ``--set`` may settle it."""


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
    seed: int = 0
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
    action_negatives: ActionNegativesConfig = field(default_factory=ActionNegativesConfig)
    num_workers: int = 2
    # Video decoder (mmpt_lite.data.decoders) for shard building and evaluation; they select the same frames.
    decoder: Literal["pyav", "ffmpeg", "decord", "torchcodec", "dali"] = "pyav"
    # Who decodes the training shards' JPEG frames: the DataLoader workers ("pytorch") or NVIDIA DALI ("dali":
    # nvJPEG on a GPU, its CPU decoder otherwise; the gpu extra). Same batches either way (mmpt_lite.data.dali).
    loader: Literal["pytorch", "dali"] = "pytorch"


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


@dataclass(kw_only=True)
class ModelConfig:
    video: VideoTowerConfig = field(default_factory=VideoTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    embed_dim: int = 512


@dataclass(kw_only=True)
class LossConfig:
    name: Literal["milnce", "infonce"] = "milnce"
    temperature: float = 0.07  # infonce only; MIL-NCE uses raw dot products
    learn_temperature: bool = False


@dataclass(kw_only=True)
class OptimConfig:
    name: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    min_lr: float = 0.0
    grad_clip: float = 0.0  # 0 = no clipping
    accum_steps: int = 1


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


@dataclass(kw_only=True)
class TrainConfig:
    task: str = "milnce"  # a name in mmpt_lite.train.tasks.TASKS (checked when the run starts)
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


@dataclass(kw_only=True)
class LaunchConfig:
    nproc_local_small: int = 2
    nproc_local_big: int = 8
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int = 10
    mem: str = "0"  # slurm --mem; "0" = all of the node's memory
    time: str = "72:00:00"
    partition: str = ""
    account: str = ""
    job_name: str = "mmpt_lite"
    master_port: int = 29500
    script_dir: str = "runs/slurm"


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
    retri: RetriConfig = field(default_factory=RetriConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)

    def __post_init__(self) -> None:
        clips, batch = self.data.clips_per_video, self.data.batch_size
        if clips < 1 or batch % clips:
            raise ConfigError(f"data.clips_per_video: {clips} must be at least 1 and divide data.batch_size ({batch})")
        if self.data.synthetic.train_videos < 0:
            raise ConfigError(f"data.synthetic.train_videos: {self.data.synthetic.train_videos} must be >= 0 "
                              "(0: the size preset's)")
        negatives = self.data.action_negatives.count
        if negatives < 0:
            raise ConfigError(f"data.action_negatives.count: {negatives} must be >= 0")
        if negatives and self.loss.name != "milnce":
            raise ConfigConflict(f"data.action_negatives.count: hard-negative captions need loss.name milnce, "
                                 f"not {self.loss.name!r}")
        if clips > 1 and self.retri.enabled:
            raise ConfigConflict("data.clips_per_video: retrieval-augmented batches (retri.enabled) plan one clip per "
                                 "video; use 1 with retri")
        if self.model.video.attention == "flash_attn" and self.train.precision == "fp32":
            raise ConfigConflict("model.video.attention: flash_attn has no float32 kernel; use train.precision bf16 "
                                 "(or auto on a GPU), or sdpa")
        synthetic, video_set = self.data.synthetic, self.mae.dataset
        if (synthetic.enabled and self.train.task == "mae" and video_set != "shards" and synthetic.sets != "all"
                and video_set not in synthetic.sets):
            raise ConfigConflict(f"data.synthetic.sets: masked pretraining on mae.dataset={video_set} reads the "
                                 f"synthetic corpus's {video_set} set; add it to {synthetic.sets}")
        if self.data.loader == "dali" and self.train.task != "milnce":
            raise ConfigConflict(f"data.loader: 'dali' reads MIL-NCE clips (train.task milnce), not train.task "
                                 f"{self.train.task!r}; use data.loader=pytorch")


# --------------------------------------------------------------------------- validation
_SCI_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` checked against annotation ``tp``; raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping (section), got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            if arm is type(None) and value is None:
                return None
            try:
                return _coerce(value, arm, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1])
    if tp == StageOverrides:
        return _stage_overrides(value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected bool (true/false), got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected int, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _SCI_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string; it is plainly a float
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected str, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {_type_name(tp)}")  # a bug in this file


def _flatten(value: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, v in value.items():
        dotted = f"{prefix}{key}"
        items += _flatten(v, dotted + ".") if isinstance(v, dict) else [(dotted, v)]
    return items


def _stage_overrides(value: Any, where: str) -> dict[str, Any]:
    """A stage's overrides, flattened to dotted keys and each checked against RunConfig (later keys win)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of dotted keys (train.max_steps: 300), "
                          f"got {type(value).__name__}")
    out: dict[str, Any] = {}
    for key, v in _flatten(value):
        path = f"{where}.{key}"
        parts = str(key).split(".")
        if parts[0] == "stages" or key == "train.output_dir":
            raise ConfigError(f"{path}: a stage cannot set this (its folder is <train.output_dir>/<stage>)")
        tp = _annotation_at(parts)
        if tp is None or not all(parts):
            raise ConfigError(f"{path}: unknown key")
        if dataclasses.is_dataclass(tp):
            raise ConfigError(f"{path}: is a section; give its keys (e.g. {key}.<key>)")
        out[key] = _coerce(v, tp, path)
    return out


def _build(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            raise ConfigError(f"{path}: unknown key (valid keys here: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def config_from_dict(data: dict, source: str = "<dict>") -> RunConfig:
    """Build a RunConfig from a plain mapping; errors read ``source: dotted.key: reason``."""
    try:
        return _build(RunConfig, data, "")
    except ConfigError as exc:
        raise type(exc)(f"{source}: {exc}") from None


# --------------------------------------------------------------------------- files and overrides
def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{line} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | os.PathLike) -> dict:
    """Read a YAML run file and its single optional ``base:`` include into one mapping."""
    path = Path(path)
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a file name, got {type(base).__name__}")
    base_path = (path.parent / base).resolve()
    base_data = _read_yaml(base_path)
    if "base" in base_data:
        raise ConfigError(f"{base_path}: base: a base file may not include another (one level only)")
    try:  # validate the base on its own so its errors name the base file
        config_from_dict(base_data, str(base_path))
    except ConfigError as exc:
        raise ConfigError(str(exc)) from None
    return _merge(base_data, data)


def _annotation_at(parts: list[str]) -> Any:
    """The annotation of a dotted key in RunConfig, or None if the path is not a field."""
    tp: Any = RunConfig
    for part in parts:
        if tp == StageOverrides:  # stages.<stage>.<dotted key of RunConfig>
            tp = RunConfig
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(part)
    return tp


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` strings; the value is parsed as a YAML scalar/list (``3``, ``true``, ``[1,2]``)."""
    data = _merge({}, data)
    conflict = None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. train.max_steps=100")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if _annotation_at(parts) is str:
            value = raw  # verbatim: YAML would read "12:00:00" as an int and "no" as a bool
        else:
            try:
                value = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                value = raw
        if not all(parts):
            raise ConfigError(f"--set {item}: empty component in key {key!r}")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is a value, not a section")
        node[parts[-1]] = value
        # Validate after each override so the message names this --set and the dotted key. A conflict
        # between sections waits for the remaining overrides (`--set loss.name=infonce --set
        # data.action_negatives.count=0` is fine in either order) and, if still there, names the first --set
        # that left it.
        try:
            config_from_dict(data, f"--set {item}")
        except ConfigConflict:
            conflict = conflict or item
        else:
            conflict = None
    if conflict is not None:
        config_from_dict(data, f"--set {conflict}")
    return data


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Read, merge, override and validate a run config. Raises ConfigError on any problem."""
    data = read_config_file(path)
    config_from_dict(data, str(path))  # file errors name the file, before overrides
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data, str(path))


def _set_dotted(data: dict, key: str, value: Any) -> None:
    *sections, last = key.split(".")
    for part in sections:
        data = data.setdefault(part, {})
    data[last] = value


def stage_config(cfg: RunConfig, stage: str, overrides: list[str] | None = None) -> RunConfig:
    """The run config of one training or report stage of ``cfg.stages``: ``cfg`` + the stage's overrides +
    ``overrides`` (the command line's ``--set``, re-applied so they win in every stage), in
    ``<train.output_dir>/<stage>``, with ``stages`` cleared (its saved config.yaml is a plain run). A
    contrastive stage after a masked one in ``stages.order`` starts from the masked stage's encoder."""
    data = dataclasses.asdict(cfg)
    data["stages"] = {}
    where = f"stages.{stage}"
    wanted = STAGE_TASKS.get(stage)
    if wanted is not None:
        data["train"]["task"] = wanted
    for key, value in getattr(cfg.stages, stage).items():
        _set_dotted(data, key, value)
    try:
        data = apply_overrides(data, [o for o in overrides or [] if not o.split("=", 1)[0].strip().startswith("stages.")])
        data["train"]["output_dir"] = str(Path(cfg.train.output_dir) / stage)
        order = cfg.stages.order
        if stage == "contrastive" and "masked" in order and order.index("masked") < order.index(stage):
            data["model"]["video"]["init_from"] = str(Path(cfg.train.output_dir) / "masked")
        out = config_from_dict(data, where)
    except ConfigError as exc:
        raise type(exc)(str(exc).replace("--set", f"{where}: --set", 1)) from None
    if wanted is not None and out.train.task != wanted:
        raise ConfigError(f"{where}.train.task: the {stage} stage runs train.task {wanted!r}, not {out.train.task!r}")
    return out


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write the resolved config atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dump_config(cfg))


def resolve_path(p: str) -> Path:
    """Relative paths in configs resolve against the repository root, so runs work from any cwd."""
    path = Path(os.path.expanduser(p))
    return path if path.is_absolute() else REPO_ROOT / path
