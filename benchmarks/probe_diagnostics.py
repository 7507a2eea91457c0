"""Why does a checkpoint do well or badly on the HMDB-format probe? Side by side with random init.

For a run folder (or any checkpoint `eval/eval_hmdb.py` accepts) and the same architecture at random
initialisation, on an HMDB-format folder (default: the run's synthetic hmdb51/):
  1. the linear probe (the protocol's LinearSVC, all splits) on several pooled features: mean token (the
     protocol's), max token, the retrieval embedding; raw and standardised, over a few C values;
  2. zero-shot action classification of the same clips, when the folder is how2-synth's (the corpus's
     ground_truth.jsonl names each clip's object): captions "the <colour> <shape> <verb>" for every class,
     the clip's own object in all of them, so only the action words differ.
  3. with --corpus_clips SPLIT ...: the same zero-shot action test on clips of the run's own corpus splits
     (train, youcook2, msrvtt, hmdb51): one window at the start of each step with a single object, once as
     decoded and once with every frame replaced by the middle one. Equal accuracy moving and static means
     the "action" the model knows comes from the still picture (the task's scene, where the object sits),
     not from motion.
  4. with --supervised_steps N: the architecture's capacity for the task, trained from its random init with the
     labels of split 1's training videos (a linear head on the probe feature, cross-entropy, AdamW, one random
     window per sample), top-1 on split 1's test videos with the window logits summed.
Windows are decoded once (probe protocol, --fps/--num_frames/--num_windows) and reused for everything.

  python benchmarks/probe_diagnostics.py --run runs/how2_pretrain
  python benchmarks/probe_diagnostics.py --run runs/how2_pretrain --large_set /tmp/hmdb_large
  python benchmarks/probe_diagnostics.py --run runs/how2_pretrain --large_set /tmp/hmdb_large --supervised_steps 300
  python benchmarks/probe_diagnostics.py --run runs/how2_pretrain --corpus_clips train youcook2 msrvtt hmdb51
The second renders the "large" size preset's HMDB-format set (11 classes x 60 clips, 176 test clips per
split instead of 30) once into the folder, for estimates with less noise.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mmpt_lite.config import resolve_path
from mmpt_lite.data.video import read_clip
from mmpt_lite.evaluation.checkpoints import load_model
from mmpt_lite.evaluation.features import (
    ProbeProtocol,
    VideoRequest,
    WindowFeatures,
    decode_probe_windows,
    eval_transform,
    probe_feature,
)
from mmpt_lite.evaluation.linear_probe import probe_all_splits, read_hmdb_splits
from mmpt_lite.models.preprocess import VideoInput
from mmpt_lite.synth.plan import plan_corpus
from mmpt_lite.synth.render import render_video
from mmpt_lite.synth.text import DESCRIBE


def pooled_features(model, windows: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    """windows uint8 [V, W, T, S, S, 3] -> {name: float [V, W, D]} for each pooling."""
    parts: dict[str, list[np.ndarray]] = {"mean token": [], "max token": [], "embedding": []}
    with torch.no_grad():
        for first in range(0, len(windows), batch):
            chunk = torch.from_numpy(windows[first:first + batch])
            num_videos, num_windows = chunk.shape[:2]
            out = model(video=VideoInput(model, torch.device("cpu"))(chunk.flatten(0, 1)))
            tokens = out["video_tokens"] if "video_tokens" in out else out["mixed_5c"][:, None]
            for name, value in (("mean token", tokens.mean(1)), ("max token", tokens.amax(1)),
                                ("embedding", out["video_embedding"])):
                parts[name].append(value.reshape(num_videos, num_windows, -1).float().numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def zero_shot_top1(model, video: torch.Tensor, looks: list[dict], classes: list[str], labels) -> float:
    """Top-1 of video embeddings [N, D] over captions "the <colour> <shape> <verb>", one per class, each
    naming clip i's own object ``looks[i]``, so only the action words differ; ``labels[i]`` indexes ``classes``."""
    hits = 0
    with torch.no_grad():
        for i, look in enumerate(looks):
            texts = [f"the {look['colour']} {look['shape']} {DESCRIBE[c][0]}" for c in classes]
            text = model(text=model.tokenizer(texts))["text_embedding"]
            hits += int((text @ video[i]).argmax()) == int(labels[i])
    return hits / len(looks)


def zero_shot_actions(model, features: np.ndarray, splits, truth: dict[str, dict]) -> float:
    """Zero-shot action top-1 of the HMDB-format clips (features [V, W, D] embeddings, window-averaged)."""
    looks = [truth[name]["steps"][0]["objects"][0] for name in splits.videos]
    return zero_shot_top1(model, torch.from_numpy(features.mean(axis=1)), looks, list(splits.classes), splits.labels)


def corpus_step_clips(data_root: Path, split: str, protocol: ProbeProtocol, limit: int = 150):
    """Windows [N, T, S, S, 3] from the start of single-object steps (>= 3 s) of a corpus split, and the
    (look, action) of each. Training and YouCook2-format videos give every step; one-shot clips one each."""
    clips, doers = [], []
    for line in (data_root / "ground_truth.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["split"] != split:
            continue
        for step in record["steps"]:
            objects = step["objects"]
            if len(objects) != 1 or objects[0]["action"] not in DESCRIBE or step["end"] - step["start"] < 3.0:
                continue
            clips.append(read_clip(str(data_root / record["path"]), step["start"] + 0.1,
                                   num_frames=protocol.num_frames, fps=protocol.fps,
                                   transform=eval_transform(protocol.video_size)))
            doers.append(objects[0])
            if len(clips) == limit:
                return np.stack(clips), doers
    if not clips:
        raise SystemExit(f"--corpus_clips: no single-object steps of >= 3 s in split {split!r}")
    return np.stack(clips), doers


def zero_shot_on_clips(model, clips: np.ndarray, doers: list[dict]) -> float:
    """Zero-shot action top-1 over all 11 actions of single windows (clips uint8 [N, T, S, S, 3])."""
    classes = list(DESCRIBE)
    with torch.no_grad():
        video = model(video=VideoInput(model, torch.device("cpu"))(torch.from_numpy(clips)))["video_embedding"]
    return zero_shot_top1(model, video, doers, classes, [classes.index(d["action"]) for d in doers])


def supervised_check(model, windows: np.ndarray, splits, *, steps: int, lr: float, batch: int = 32,
                     seed: int = 0) -> tuple[float, list[float]]:
    """Train ``model``'s video tower + a linear head on split 1's training windows with the class labels.

    windows uint8 [V, W, T, S, S, 3]. Returns (split-1 test top-1, the training loss every 50 steps).
    """
    cpu = torch.device("cpu")
    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    labels = torch.from_numpy(splits.labels)
    train, test = splits.train[1], splits.test[1]
    with torch.no_grad():  # the probe feature's width: 1024 for S3D, the token width for a ViT
        width = probe_feature(model(video=VideoInput(model, cpu)(torch.from_numpy(windows[:1, 0])))).shape[-1]
    head = torch.nn.Linear(width, len(splits.classes))
    params = list(model.video_tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        videos = generator.choice(train, batch)
        picks = generator.integers(0, windows.shape[1], batch)
        video = VideoInput(model, cpu)(torch.from_numpy(windows[videos, picks]))
        for group in optimizer.param_groups:  # linear warmup over the first 10% of the steps
            group["lr"] = lr * min(1.0, (step + 1) / max(1, steps // 10))
        loss = torch.nn.functional.cross_entropy(head(probe_feature(model(video=video))), labels[videos])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            losses.append(loss.item())
    model.eval()
    hits = 0
    with torch.no_grad():
        for i in test:
            video = VideoInput(model, cpu)(torch.from_numpy(windows[i]))
            hits += int(head(probe_feature(model(video=video))).sum(0).argmax()) == int(labels[i])
    return hits / len(test), losses


def render_large_hmdb(out: Path, seed: int) -> Path:
    """Render the large preset's hmdb51/ split (and its ground truth) into ``out``; returns out/hmdb51."""
    from concurrent.futures import ProcessPoolExecutor

    if (out / "ground_truth.jsonl").is_file():
        return out / "hmdb51"
    plan = plan_corpus(seed, "large")
    specs = [spec for spec in plan.specs if spec.rel_path.startswith("hmdb51/")]
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(render_video, specs, [str(out)] * len(specs)))
    for rel, text in plan.files.items():
        if rel.startswith("hmdb51/"):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(text)
    records = [r for r in plan.truth if r["split"] == "hmdb51"]
    (out / "ground_truth.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return out / "hmdb51"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder or checkpoint")
    parser.add_argument("--hmdb_root", default="", help="HMDB-format folder (default: the run's synthetic hmdb51/)")
    parser.add_argument("--ground_truth", default="", help="how2-synth ground_truth.jsonl for the zero-shot part")
    parser.add_argument("--large_set", default="", help="render the large preset's HMDB set here and use it")
    parser.add_argument("--fps", type=float, default=2.5)
    parser.add_argument("--num_frames", type=int, default=8)
    parser.add_argument("--num_windows", type=int, default=4)
    parser.add_argument("--video_size", type=int, default=64)
    parser.add_argument("--svm_c", type=float, nargs="+", default=[1.0, 100.0])
    parser.add_argument("--corpus_clips", nargs="*", default=[],
                        help="zero-shot actions on step clips of these corpus splits, moving and static")
    parser.add_argument("--supervised_steps", type=int, default=0,
                        help="also train the architecture from random init with labels for this many steps")
    parser.add_argument("--supervised_lr", type=float, default=1e-3)
    args = parser.parse_args()

    trained = load_model(args.run)
    models = {"checkpoint": trained, "random init": load_model(args.run, random_init=True)}
    data_root = resolve_path(trained.config.data.root) if trained.config is not None else Path(".")
    root = Path(args.hmdb_root) if args.hmdb_root else data_root / "hmdb51"
    if args.large_set:
        seed = trained.config.data.synthetic.seed if trained.config is not None else 0
        root = render_large_hmdb(Path(args.large_set), seed)
    truth_path = Path(args.ground_truth) if args.ground_truth else root.parent / "ground_truth.jsonl"
    splits = read_hmdb_splits(root / "testTrainMulti_7030_splits")
    protocol = ProbeProtocol(args.num_windows, args.num_frames, args.video_size, args.fps)
    started = time.perf_counter()
    windows = np.stack([decode_probe_windows(VideoRequest(v, str(root / v)), protocol) for v in splits.videos])
    print(f"{len(splits.videos)} videos, {len(splits.classes)} classes (chance {100 / len(splits.classes):.2f}%), "
          f"windows {tuple(windows.shape)} decoded in {time.perf_counter() - started:.0f} s")
    truth = {}
    if truth_path.is_file():
        for line in truth_path.read_text().splitlines():
            record = json.loads(line)
            if record["path"].startswith(root.name + "/"):
                truth[record["path"].split("/", 1)[1]] = record
    readable = np.ones(len(splits.videos), bool)
    for name, loaded in models.items():
        model = loaded.model.eval()
        features = pooled_features(model, windows)
        for pooling, values in features.items():
            flat = values.reshape(-1, values.shape[-1])
            # Scale-free: random-init S3D features are ~1e-10 (eval-mode BatchNorm at its initial statistics),
            # so an absolute epsilon would leave them degenerate. Constant dimensions stay at 0.
            std = flat.astype(np.float64).std(0)
            scaled = ((values - flat.mean(0)) / np.where(std > 0, std, 1.0)).astype(np.float32)
            cells = []
            for c in args.svm_c:
                for label, feats in (("raw", values), ("std", scaled)):
                    top1 = probe_all_splits(WindowFeatures(feats, readable, {}), splits, c=c)["top1_mean"]
                    cells.append(f"{label} C={c:g} {100 * top1:5.2f}")
            print(f"{name:12s} {pooling:10s} probe top-1: " + " | ".join(cells), flush=True)
        if truth and len(truth) == len(splits.videos) and all(c in DESCRIBE for c in splits.classes):
            accuracy = zero_shot_actions(model, features["embedding"], splits, truth)
            print(f"{name:12s} zero-shot action top-1 (own object named in every caption): {100 * accuracy:.2f}")
    for split in args.corpus_clips:
        clips, doers = corpus_step_clips(data_root, split, protocol)
        static = np.repeat(clips[:, protocol.num_frames // 2:protocol.num_frames // 2 + 1], protocol.num_frames, 1)
        counts = np.bincount([list(DESCRIBE).index(d["action"]) for d in doers], minlength=len(DESCRIBE))
        print(f"corpus split {split}: {len(doers)} step clips, majority action {100 * counts.max() / len(doers):.1f}%")
        for name, loaded in models.items():
            model = loaded.model.eval()
            print(f"  {name:12s} zero-shot action top-1: moving {100 * zero_shot_on_clips(model, clips, doers):5.2f} | "
                  f"static (middle frame) {100 * zero_shot_on_clips(model, static, doers):5.2f}", flush=True)
    if args.supervised_steps:
        model = load_model(args.run, random_init=True).model
        top1, losses = supervised_check(model, windows, splits, steps=args.supervised_steps, lr=args.supervised_lr)
        print(f"supervised from random init, {args.supervised_steps} steps at lr {args.supervised_lr:g}: split-1 "
              f"test top-1 {100 * top1:.2f} (training loss every 50 steps: {', '.join(f'{v:.2f}' for v in losses)})")


if __name__ == "__main__":
    main()
