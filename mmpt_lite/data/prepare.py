"""Make a run's inputs exist, once, before any rank trains: corpus, shards, word vectors.

For the embedded synthetic corpus everything is built on first use (data generation, sharding,
word2vec on the corpus's own captions). For a real corpus nothing heavy is built implicitly:
missing shards raise an error that says which command builds them.

The returned config has every derived path filled in (``data.shard_root``, ``model.text.path``), and
that resolved config is what the run saves, so evaluation can rebuild the exact model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmpt_lite.config import RunConfig, resolve_path
from mmpt_lite.data.words import split_words, train_word2vec

log = logging.getLogger("mmpt_lite")


@dataclass
class PreparedData:
    cfg: RunConfig
    name: str
    root: Path
    shard_root: Path
    video_store: object
    caption_store: object
    msrvtt_csv: Path | None
    msrvtt_root: Path | None

    @property
    def num_videos(self) -> int:
        return len(self.video_store.video_ids)


def storage_short_side(video_size: int) -> int:
    """Frames are stored with the short side equal to the crop, so a training crop (random along the
    long side) sees objects at the same scale as evaluation's centre square crop resized to the same
    size; a larger store would train at a zoom evaluation never shows and crop objects away."""
    return video_size


def ensure_corpus(cfg: RunConfig, root: Path, build: bool) -> None:
    """Generate a missing synthetic corpus (when ``build``), or add its lexicon file; a real corpus must exist."""
    if (root / cfg.data.train_csv).is_file():
        if cfg.data.synthetic.enabled and build:
            from mmpt_lite.synth.corpus import check_corpus, corpus_settings
            check_corpus(root, **corpus_settings(cfg.data.synthetic))  # made otherwise: refused; adds the lexicon
        return
    if not cfg.data.synthetic.enabled:
        raise FileNotFoundError(f"data.root: {root / cfg.data.train_csv} not found (a HowTo100M-format video list "
                                f"with column video_path); or set data.synthetic.enabled=true for the demo corpus")
    if not build:
        raise FileNotFoundError(f"data.root: {root} is not ready (the main rank should have generated it)")
    from mmpt_lite.synth.corpus import corpus_settings, generate_corpus
    synthetic = cfg.data.synthetic
    log.info("generating the synthetic corpus how2-synth (seed %d, size %s, train_hue %s, train_videos %s) in %s",
             synthetic.seed, synthetic.size, synthetic.train_hue, synthetic.train_videos or "preset", root)
    generate_corpus(root, workers=os.cpu_count() or 1, **corpus_settings(synthetic))


def ensure_shards(cfg: RunConfig, csv_path: Path, video_root: Path, shard_root: Path, *, fps: float, build: bool,
                  caption_root: Path | None = None, short_side: int = 0) -> Path:
    """Frame shards of the videos listed in ``csv_path`` at ``fps``, short side ``short_side`` (0 =
    :func:`storage_short_side`); built here for the synthetic corpus, otherwise a FileNotFoundError gives the
    command that builds them."""
    if (shard_root / "manifest.json").is_file():
        return shard_root
    short_side = short_side or storage_short_side(cfg.data.video_size)
    if not (cfg.data.synthetic.enabled and build):
        command = (f"python scripts/shard_howto.py --csv {csv_path} --video_root {video_root} "
                   + (f"--caption_root {caption_root} " if caption_root else "")
                   + f"--out {shard_root} --fps {fps:g} --short_side {short_side} --decoder {cfg.data.decoder}")
        raise FileNotFoundError(f"data.shard_root: no shards at {shard_root}; build them with: {command}")
    from mmpt_lite.data.shard_build import build_video_shards
    log.info("sharding %s -> %s (frames at %g fps, short side %d)", video_root, shard_root, fps, short_side)
    summary = build_video_shards(csv_path=csv_path, video_root=video_root, caption_root=caption_root,
                                 out_dir=shard_root, fps=fps, short_side=short_side, workers=os.cpu_count() or 1,
                                 videos_per_shard=16, progress=True, decoder=cfg.data.decoder)
    log.info("shards: %s", summary)
    return shard_root


def shard_folder(cfg: RunConfig, root: Path) -> Path:
    """``data.shard_root``, or by default a folder beside the corpus named by frame rate and stored size."""
    return (resolve_path(cfg.data.shard_root) if cfg.data.shard_root
            else root / f"shards_fps{cfg.data.fps:g}_s{storage_short_side(cfg.data.video_size)}")


def ensure_corpus_shards(cfg: RunConfig, root: Path, build: bool) -> Path:
    """The corpus (:func:`ensure_corpus`) and its frame shards (:func:`shard_folder`); returns the shard folder."""
    shard_root = shard_folder(cfg, root)
    ensure_corpus(cfg, root, build)
    video_root = resolve_path(cfg.data.video_root) if cfg.data.video_root else root
    caption_root = root / cfg.data.caption_root if not os.path.isabs(cfg.data.caption_root) else Path(
        cfg.data.caption_root)
    return ensure_shards(cfg, root / cfg.data.train_csv, video_root, shard_root, fps=cfg.data.fps, build=build,
                         caption_root=caption_root)


def _ensure_word_vectors(cfg: RunConfig, shard_root: Path, caption_store, build: bool) -> RunConfig:
    """For the word2vec tower with no ``model.text.path``: a vocabulary from the corpus captions, with
    word2vec vectors fitted on them (a word2vec text file) or none (a word list ``.npy``: random init)."""
    text = cfg.model.text
    if text.kind != "word2vec" or text.path:
        return cfg
    if not text.train_word2vec:
        raise FileNotFoundError("model.text.path: a word2vec file or dictionary is required when "
                                "model.text.train_word2vec is false")
    name = f"word2vec_{text.word_dim}d.txt" if text.word_init == "word2vec" else "vocabulary.npy"
    path = shard_root / name
    if not path.is_file():
        if not build:
            raise FileNotFoundError(f"model.text.path: {path} is not ready (the main rank builds it)")
        sentences = [t for vid in caption_store.video_ids for t in caption_store.get(vid)[2]]
        if text.word_init == "word2vec":
            log.info("training word2vec (%d-d) on %d corpus captions -> %s", text.word_dim, len(sentences), path)
            train_word2vec(sentences, path, dim=text.word_dim, seed=cfg.train.seed, epochs=20)
        else:
            words = sorted({w for t in sentences for w in split_words(t)})
            log.info("corpus vocabulary: %d words from %d captions -> %s", len(words), len(sentences), path)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
            np.save(tmp, np.array(words))
            os.replace(tmp, path)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, text=dataclasses.replace(text, path=str(path))))


def prepare_data(cfg: RunConfig, *, build: bool = True) -> PreparedData:
    """Ensure the corpus, shards and word vectors exist (building what is missing when ``build``)."""
    from mmpt_lite.data.shards import ShardedCaptionStore, ShardedVideoStore

    root = resolve_path(cfg.data.root)
    shard_root = ensure_corpus_shards(cfg, root, build)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, shard_root=str(shard_root)))
    video_store, caption_store = ShardedVideoStore(shard_root), ShardedCaptionStore(shard_root)
    cfg = _ensure_word_vectors(cfg, shard_root, caption_store, build)

    msrvtt_root = resolve_path(cfg.eval.msrvtt_root) if cfg.eval.msrvtt_root else root / "msrvtt"
    msrvtt_csv = msrvtt_root / "msrvtt_test.csv"
    if not msrvtt_csv.is_file():
        log.warning("no MSR-VTT-format eval set at %s: in-training retrieval checks are off", msrvtt_csv)
        msrvtt_csv = msrvtt_root = None
    name = "how2-synth" if cfg.data.synthetic.enabled else root.name
    return PreparedData(cfg=cfg, name=name, root=root, shard_root=shard_root, video_store=video_store,
                        caption_store=caption_store, msrvtt_csv=msrvtt_csv, msrvtt_root=msrvtt_root)
