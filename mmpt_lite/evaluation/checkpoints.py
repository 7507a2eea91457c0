"""Which checkpoint is this, and the model it holds.

Three formats are accepted, told apart by their structure rather than their file name:

* ``mmpt_lite``: a run, ``checkpoints/`` or step folder, or its ``model.safetensors``, read by
  :mod:`mmpt_lite.checkpoint`. The architecture comes from ``config.yaml``.
* ``s3d_official``: ``s3d_howto100m.pth``, a plain S3D state dict (space-to-depth stem, text module
  included) that needs the word dictionary ``s3d_dict.npy``.
* ``milnce_repo``: a MIL-NCE training-repo file ``{epoch, state_dict ("module." names), optimizer,
  scheduler}``; same network without space-to-depth, same dictionary.

Anything else raises :class:`~mmpt_lite.checkpoint.CheckpointFormatError` saying what was found.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from mmpt_lite.checkpoint import FORMAT as MMPT_FORMAT
from mmpt_lite.checkpoint import CheckpointFormatError, resolve_run_checkpoint
from mmpt_lite.config import ModelConfig, RunConfig, TextTowerConfig, VideoTowerConfig, load_config, resolve_path
from mmpt_lite.evaluation.cache import cache_key
from mmpt_lite.fileio import file_sha256
from mmpt_lite.models.build import VideoTextModel, build_model
from mmpt_lite.models.s3d import uses_space_to_depth
from mmpt_lite.models.text import load_word2vec, load_word_dictionary

MMPT_MAE_FORMAT = "mmpt_lite_mae"  # a masked-pretraining run (train.task: mae): a video encoder only
MMPT_CLASSIFY_FORMAT = "mmpt_lite_classify"  # a fine-tuning run (train.task: classify): a VideoClassifier
S3D_OFFICIAL = "s3d_official"
MILNCE_REPO = "milnce_repo"
# Entries every S3D checkpoint carries (official names): the stem conv, the video head, the text branch.
S3D_SIGNATURE = ("conv1.conv1.weight", "fc.weight", "text_module.word_embd.weight")


@dataclass
class CheckpointSource:
    """A detected checkpoint.

    Attributes:
        kind: ``mmpt_lite`` | ``s3d_official`` | ``milnce_repo``.
        weights: the file holding the weights (its sha256 identifies the checkpoint in caches).
        folder: the mmpt_lite step folder (None for S3D files).
        state_dict: the S3D weights already read while detecting (None for mmpt_lite).
    """

    kind: str
    weights: Path
    folder: Path | None = None
    state_dict: dict[str, torch.Tensor] | None = None

    def sha256(self) -> str:
        return file_sha256(self.weights)


def _s3d_kind(obj: object, path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """Classify a torch-loaded object as an official or MIL-NCE-repo S3D checkpoint."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        kind, state = MILNCE_REPO, obj["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind, state = S3D_OFFICIAL, obj
    else:
        keys = list(obj)[:6] if isinstance(obj, dict) else []
        raise CheckpointFormatError(f"{path}: unknown checkpoint format ({type(obj).__name__} with keys {keys}); "
                                    "expected an mmpt_lite checkpoint folder, s3d_howto100m.pth or a MIL-NCE "
                                    "training checkpoint")
    missing = [k for k in S3D_SIGNATURE if k not in state]
    if missing:
        raise CheckpointFormatError(f"{path}: unknown checkpoint format: a state dict without the S3D entries "
                                    f"{missing} (first keys: {list(state)[:6]})")
    return kind, state


def detect_checkpoint(path: str | Path) -> CheckpointSource:
    """Identify the checkpoint at ``path``; raise CheckpointFormatError (or FileNotFoundError) otherwise."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir() or path.name == "model.safetensors":
        folder = resolve_run_checkpoint(path)
        return CheckpointSource(MMPT_FORMAT, folder / "model.safetensors", folder=folder)
    if path.suffix == ".safetensors":
        raise CheckpointFormatError(f"{path}: a safetensors file outside an mmpt_lite checkpoint folder "
                                    "(config.yaml and meta.json are needed beside it)")
    try:
        # weights_only: a checkpoint from elsewhere must not be able to run code when opened. The
        # MIL-NCE repo's optimizer/scheduler states are plain containers, which this allows.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike for foreign files
        raise CheckpointFormatError(f"{path}: unknown checkpoint format (not a torch file that loads with "
                                    f"weights_only=True: {str(exc).splitlines()[0][:200]})") from None
    kind, state = _s3d_kind(obj, path)
    return CheckpointSource(kind, path, state_dict=state)


# --------------------------------------------------------------------------- building the model
# Text rows the word tokenizer uses by default per format: the official model was exported with 16,
# the MIL-NCE training repo trains (and evaluates) with 20.
DEFAULT_MAX_WORDS = {S3D_OFFICIAL: 16, MILNCE_REPO: 20}
RANDOM_INIT = "random_init"


@dataclass
class LoadedModel:
    """A model ready for evaluation and what identifies it.

    Attributes:
        model: the VideoTextModel, or the VideoClassifier of a classification run (on the CPU, eval mode).
        kind: the checkpoint format, or ``random_init`` (same architecture, weights not loaded).
        checkpoint_id: sha256 of the weights file; for random init a hash of the architecture and seed.
        config: the mmpt_lite run config (None for S3D files).
        description: a one-line summary for reports.
    """

    model: VideoTextModel
    kind: str
    checkpoint_id: str
    config: RunConfig | None
    description: str


def _initial_model(model_cfg: ModelConfig, seed: int, what: str, config: RunConfig | None = None,
                   **build_args) -> LoadedModel:
    """``model_cfg`` built after ``torch.manual_seed(seed)``, at its initial weights."""
    torch.manual_seed(seed)
    return LoadedModel(build_model(model_cfg, **build_args).eval(), RANDOM_INIT,
                       f"{RANDOM_INIT}-{cache_key({'model': dataclasses.asdict(model_cfg), 'seed': seed})}", config,
                       f"{what} at random init (seed {seed})")


def random_init_model(cfg: RunConfig, *, seed: int | None = None, max_words: int | None = None) -> LoadedModel:
    """The architecture of a run config at its initial weights (the untrained baseline).

    ``seed`` defaults to ``train.seed``: the trainer seeds the same way, so this is the run's step-0 model.
    """
    seed = cfg.train.seed if seed is None else seed
    return _initial_model(cfg.model, seed, f"{cfg.model.video.preset} / {cfg.model.text.kind}", cfg,
                          max_words=max_words or cfg.data.max_words)


def _load_mmpt(source: CheckpointSource, word2vec: str | None, max_words: int | None,
               random_init: bool, seed: int | None) -> LoadedModel:
    cfg = load_config(source.folder / "config.yaml")
    # Evaluation runs fp32 on any device: SDPA (the same attention, same parameters) whatever the run trained with.
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, video=dataclasses.replace(cfg.model.video, attention="sdpa")))
    if cfg.train.task == "mae":
        return _load_mae_encoder(source, cfg, max_words, random_init, seed)
    if cfg.train.task == "classify":
        return _load_classifier(source, cfg, random_init, seed)
    if word2vec:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, text=dataclasses.replace(cfg.model.text, path=str(word2vec))))
    text = cfg.model.text
    if text.kind == "word2vec" and (not text.path or not resolve_path(text.path).is_file()):
        raise FileNotFoundError(f"{source.folder}: the word2vec text tower needs its vocabulary file "
                                f"({text.path or 'model.text.path is empty'} not found); pass --word2vec PATH")
    baseline = random_init_model(cfg, seed=seed, max_words=max_words)
    if random_init:
        return baseline
    _load_weights(baseline.model, load_file(str(source.weights)), source.weights)
    return dataclasses.replace(baseline, kind=MMPT_FORMAT, checkpoint_id=source.sha256(),
                               description=f"mmpt_lite {cfg.model.video.preset} / {text.kind} from {source.folder}")


def _load_mae_encoder(source: CheckpointSource, cfg: RunConfig, max_words: int | None, random_init: bool,
                      seed: int | None) -> LoadedModel:
    """A masked-pretraining checkpoint: its encoder becomes the video tower (as ``model.video.init_from`` does);
    the text tower keeps its initial weights and has no vocabulary, so only the HMDB probe can use it."""
    baseline = random_init_model(cfg, seed=seed, max_words=max_words)
    if random_init:
        return dataclasses.replace(baseline, description=f"{baseline.description}, video tower only")
    from mmpt_lite.models.init_from import init_video_tower

    try:
        init_video_tower(baseline.model, source.weights, strict=True)
    except ValueError as exc:
        raise CheckpointFormatError(f"{source.weights}: {exc}") from None
    return dataclasses.replace(baseline, kind=MMPT_MAE_FORMAT, checkpoint_id=source.sha256(),
                               description=f"mmpt_lite masked-pretraining encoder {cfg.model.video.preset} from "
                               f"{source.folder} (video tower only)")


def classifier_num_classes(state: dict[str, torch.Tensor], path: Path) -> int:
    """Classes of a classification run's weights: rows of its head (``head.weight``, or X3D's own
    ``video_tower.head.projection.weight``)."""
    for key in ("head.weight", "video_tower.head.projection.weight"):
        if key in state:
            return int(state[key].shape[0])
    raise CheckpointFormatError(f"{path}: a classification run's weights without a class head "
                                f"(no head.weight; first keys: {list(state)[:6]})")


def _load_classifier(source: CheckpointSource, cfg: RunConfig, random_init: bool, seed: int | None) -> LoadedModel:
    """A fine-tuning run: ``build_classifier`` of its preset with as many classes as its head has rows. Dropout and
    stochastic depth are left out: they change nothing in eval mode and hold no weights."""
    from mmpt_lite.models.classifier import build_classifier

    state = load_file(str(source.weights))
    num_classes = classifier_num_classes(state, source.weights)
    preset = cfg.model.video.preset
    seed = cfg.train.seed if seed is None else seed
    torch.manual_seed(seed)
    model = build_classifier(preset, num_classes, attention="sdpa", pool=cfg.model.video.pool).eval()
    what = f"{preset} classifier ({num_classes} classes, {cfg.classify.dataset})"
    if random_init:
        arch = cache_key({"model": dataclasses.asdict(cfg.model), "classes": num_classes, "seed": seed})
        return LoadedModel(model, RANDOM_INIT, f"{RANDOM_INIT}-{arch}", cfg, f"{what} at random init (seed {seed})")
    _load_weights(model, state, source.weights)
    return LoadedModel(model, MMPT_CLASSIFY_FORMAT, source.sha256(), cfg, f"mmpt_lite {what} from {source.folder}")


def _load_s3d(source: CheckpointSource, dict_path: str | None, max_words: int | None, random_init: bool,
              seed: int | None) -> LoadedModel:
    if not dict_path:
        raise ValueError(f"{source.weights}: an S3D checkpoint needs its word dictionary: pass --dict_path "
                         "s3d_dict.npy (or --word2vec with the word2vec file it was trained with)")
    state = source.state_dict
    path = Path(dict_path).expanduser()
    words = load_word_dictionary(path) if path.suffix == ".npy" else load_word2vec(path)[0]
    rows, word_dim = state["text_module.word_embd.weight"].shape
    if len(words) + 1 > rows:
        raise ValueError(f"{path}: {len(words)} words do not fit the checkpoint's {rows}-row word embedding "
                         f"(row 0 is padding: at most {rows - 1} words)")
    # Placeholder words keep the table at the checkpoint's size; "\0" never survives the word split.
    vocab = words + [f"\0unused{i}" for i in range(rows - 1 - len(words))]
    preset = "s3d" if uses_space_to_depth(state) else "s3d_nos2d"
    model_cfg = ModelConfig(video=VideoTowerConfig(preset=preset),
                            text=TextTowerConfig(kind="word2vec", vocab_size=rows, word_dim=word_dim,
                                                 hidden_dim=state["text_module.fc1.weight"].shape[0]),
                            embed_dim=state["fc.weight"].shape[0])
    baseline = _initial_model(model_cfg, 0 if seed is None else seed, preset, vocab=vocab,
                              max_words=max_words or DEFAULT_MAX_WORDS[source.kind])
    if random_init:
        return baseline
    _load_weights(baseline.model, state, source.weights)
    return dataclasses.replace(baseline, kind=source.kind, checkpoint_id=source.sha256(),
                               description=f"{source.kind} {preset} from {source.weights} ({len(words)}-word dictionary)")


def _load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # torch lists every mismatch; the first lines say enough
        lines = str(exc).splitlines()
        raise CheckpointFormatError(f"{path}: weights do not fit the architecture: {' '.join(lines[:3])[:500]}") \
            from None


def load_model(path: str | Path, *, dict_path: str | None = None, word2vec: str | None = None,
               max_words: int | None = None, random_init: bool = False, seed: int | None = None) -> LoadedModel:
    """Detect the checkpoint at ``path`` and build its model with the weights loaded (strictly).

    Args:
        dict_path: word dictionary (.npy) for S3D checkpoints; ``word2vec`` is accepted in its place and,
            for mmpt_lite checkpoints, replaces the vocabulary file recorded in config.yaml.
        max_words: tokenizer row length (default: the run's data.max_words; 16 official S3D; 20 MIL-NCE repo).
        random_init: build the same architecture but keep its initial weights (the untrained baseline);
            ``seed`` defaults to the run's train.seed (0 for S3D files).
    """
    source = detect_checkpoint(path)
    if source.kind == MMPT_FORMAT:
        return _load_mmpt(source, word2vec, max_words, random_init, seed)
    return _load_s3d(source, dict_path or word2vec, max_words, random_init, seed)

