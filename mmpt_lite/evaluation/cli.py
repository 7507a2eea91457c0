"""The command line behind eval/eval_msrvtt.py, eval/eval_youcook.py and eval/eval_hmdb.py.

Flags follow MIL-NCE's (``--pretrain_cnn_path``, ``--eval_video_root``, ``--num_windows_test``, …).
Protocol values come from, in order: the flag, ``--config``'s ``eval`` section, the mmpt_lite
checkpoint's saved config, the published MIL-NCE protocol (4 windows × 16 frames at 5 fps, 224 px).
Without ``--eval_video_root`` the embedded synthetic eval sets under ``data.root`` are used.
Bad flags, paths or checkpoints end the program with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mmpt_lite.config import ConfigError, RunConfig, load_config, resolve_path
from mmpt_lite.evaluation import report
from mmpt_lite.evaluation.cache import DEFAULT_CACHE_DIR, FeatureCache
from mmpt_lite.evaluation.checkpoints import (
    MMPT_MAE_FORMAT,
    CheckpointFormatError,
    LoadedModel,
    load_model,
    random_init_model,
)
from mmpt_lite.evaluation.features import ProbeProtocol, RetrievalProtocol
from mmpt_lite.evaluation.linear_probe import (
    DEFAULT_C,
    HmdbSplits,
    hmdb_features,
    probe_all_splits,
    read_hmdb_splits,
    topk_accuracy_curve,
)
from mmpt_lite.evaluation.metrics import recall_curve
from mmpt_lite.evaluation.zeroshot import DEFAULT_CSV, RetrievalSet, read_retrieval_set, run_retrieval

TITLES = {"msrvtt": "MSR-VTT 1k-A zero-shot text->video retrieval",
          "youcook": "YouCook2 validation zero-shot text->video retrieval",
          "hmdb": "HMDB-51 linear probe (LinearSVC on pooled window features), top-1"}
SYNTHETIC_FOLDER = {"msrvtt": "msrvtt", "youcook": "youcook2", "hmdb": "hmdb51"}
HMDB_SPLIT_FOLDER = "testTrainMulti_7030_splits"
PUBLISHED_PROTOCOL = {"num_windows_test": 4, "num_frames": 16, "fps": 5.0, "video_size": 224, "batch_size": 16}
RETRIEVAL_COLUMNS = ["R@1", "R@5", "R@10", "MedR", "MeanR"]


class UsageError(Exception):
    """A bad flag or path: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the whole usage block; one line is enough
        raise UsageError(message)


def build_parser(task: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=f"eval_{task}.py", description=TITLES[task])
    parser.add_argument("--pretrain_cnn_path", help="checkpoint: mmpt_lite run/step folder or model.safetensors, "
                        "s3d_howto100m.pth, or a MIL-NCE training checkpoint")
    parser.add_argument("--config", help="mmpt_lite run config: protocol defaults, synthetic data root, and the "
                        "architecture for --random_init without a checkpoint")
    parser.add_argument("--eval_video_root", help="dataset folder (default: the synthetic set under data.root)")
    default_list = DEFAULT_CSV.get(task, f"{HMDB_SPLIT_FOLDER}/")
    parser.add_argument("--eval_csv", help=f"list file (default: <root>/{default_list}"
                        + (", the folder of official split files" if task == "hmdb" else "") + ")")
    parser.add_argument("--dict_path", help="word dictionary .npy of an S3D checkpoint (s3d_dict.npy)")
    parser.add_argument("--word2vec", help="word2vec file: the vocabulary of the text tower")
    parser.add_argument("--max_words", type=int, help="words per caption (default: the checkpoint's)")
    parser.add_argument("--batch_size", type=int, help="videos per forward pass")
    parser.add_argument("--num_thread_reader", type=int, default=1, help="decode worker processes")
    parser.add_argument("--num_windows_test", type=int, help="windows per video (averaged / each an SVM sample)")
    parser.add_argument("--num_frames", type=int, help="frames per window")
    if task != "hmdb":
        parser.add_argument("--fps", type=float, help="decoding rate of each window")
    else:  # HMDB windows are contiguous frames of the whole video, by default at its native rate
        parser.add_argument("--fps", type=float, help="resample the video to this rate first (default: the run "
                            "config's eval.hmdb_fps; 0 = native rate, the published protocol)")
    parser.add_argument("--video_size", type=int, help="side of the centre square crop after resizing")
    if task == "hmdb":
        parser.add_argument("--svm_c", type=float, nargs="+", help=f"LinearSVC C (default {DEFAULT_C:g}); "
                            "several values: chosen per split on a held-out 20%% of the training videos")
        parser.add_argument("--splits", type=int, nargs="+", default=[1, 2, 3], help="official splits to run")
    parser.add_argument("--random_init", action="store_true",
                        help="evaluate the same architecture at its initial weights instead")
    parser.add_argument("--compare_random_init", action="store_true",
                        help="also evaluate the architecture at its initial weights, side by side")
    parser.add_argument("--seed", type=int, help="initialisation seed for random init (default: train.seed)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--output", help="JSON result file; the plot goes beside it unless --plot is given")
    parser.add_argument("--plot", help="PNG path for the recall@K (top-K for HMDB) curve")
    parser.add_argument("--cache_dir", help=f"feature cache folder (default {DEFAULT_CACHE_DIR})")
    parser.add_argument("--no_cache", action="store_true", help="neither read nor write cached features")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


@dataclass
class Plan:
    """Everything a run needs, resolved and checked before any video is decoded."""

    task: str
    models: dict[str, LoadedModel]
    protocol: RetrievalProtocol | ProbeProtocol
    protocol_source: str
    video_root: Path
    list_path: Path
    dataset: RetrievalSet | HmdbSplits
    batch_size: int
    device: torch.device
    cache: FeatureCache


def _load_models(args) -> tuple[dict[str, LoadedModel], RunConfig | None]:
    cfg = load_config(args.config) if args.config else None
    common = {"dict_path": args.dict_path, "word2vec": args.word2vec, "max_words": args.max_words, "seed": args.seed}
    models = {}
    if args.pretrain_cnn_path:
        if not args.random_init:
            models["checkpoint"] = load_model(args.pretrain_cnn_path, **common)
        if args.random_init or args.compare_random_init:
            models["random init"] = load_model(args.pretrain_cnn_path, random_init=True, **common)
    elif args.random_init and cfg is not None:
        models["random init"] = random_init_model(cfg, seed=args.seed, max_words=args.max_words)
    else:
        raise UsageError("--pretrain_cnn_path is required (or --config with --random_init)")
    return models, cfg


def _protocol(task: str, args, run_cfg: RunConfig | None) -> tuple[RetrievalProtocol | ProbeProtocol, int, str]:
    """(protocol, batch_size, where the defaults came from)."""
    if run_cfg is not None:
        e = run_cfg.eval
        defaults = {"num_windows_test": e.num_windows_test, "num_frames": e.num_frames, "fps": e.fps,
                    "video_size": e.video_size, "batch_size": e.batch_size}
        if task == "hmdb":
            defaults["fps"] = e.hmdb_fps
        source = "run config eval section"
    else:
        defaults, source = dict(PUBLISHED_PROTOCOL), "published MIL-NCE protocol"
        if task == "hmdb":
            defaults["fps"] = 0.0  # native rate
    value = {k: getattr(args, k, None) if getattr(args, k, None) is not None else v for k, v in defaults.items()}
    for name in ("num_windows_test", "num_frames", "video_size", "batch_size"):
        if value[name] < 1:
            raise UsageError(f"--{name} must be at least 1, got {value[name]}")
    if value["fps"] < 0 or (value["fps"] == 0 and task != "hmdb"):
        raise UsageError(f"--fps must be positive{' (or 0 = native)' if task == 'hmdb' else ''}, got {value['fps']}")
    if args.num_thread_reader < 0:
        raise UsageError(f"--num_thread_reader must be >= 0, got {args.num_thread_reader}")
    if task == "hmdb":
        protocol = ProbeProtocol(value["num_windows_test"], value["num_frames"], value["video_size"], value["fps"])
    else:
        protocol = RetrievalProtocol(value["num_windows_test"], value["num_frames"], value["fps"],
                                     value["video_size"])
    return protocol, value["batch_size"], source


def make_plan(task: str, args) -> Plan:
    models, cfg = _load_models(args)
    if task != "hmdb" and any(m.kind == MMPT_MAE_FORMAT for m in models.values()):
        raise UsageError(f"{args.pretrain_cnn_path}: a masked-pretraining checkpoint has a video encoder and no "
                         "trained text tower: zero-shot retrieval needs a video-text run (eval_hmdb.py probes it)")
    run_cfg = cfg or next((m.config for m in models.values() if m.config is not None), None)
    protocol, batch_size, source = _protocol(task, args, run_cfg)
    if args.eval_video_root:
        video_root = Path(args.eval_video_root).expanduser()
        if not video_root.is_dir():
            raise UsageError(f"--eval_video_root: {video_root} is not a folder")
    else:
        video_root = resolve_path((run_cfg or RunConfig()).data.root) / SYNTHETIC_FOLDER[task]
        if not video_root.is_dir():
            raise UsageError(f"no --eval_video_root and no synthetic eval set at {video_root} (the pretraining run "
                             "generates it: python locallaunch.py projects/how2_pretrain.yaml)")
    default_list = HMDB_SPLIT_FOLDER if task == "hmdb" else DEFAULT_CSV[task]
    list_path = Path(args.eval_csv).expanduser() if args.eval_csv else video_root / default_list
    if not (list_path.is_dir() if task == "hmdb" else list_path.is_file()):
        raise UsageError(f"--eval_csv: {list_path} not found")
    if task == "hmdb":
        dataset = read_hmdb_splits(list_path, tuple(args.splits))
    else:
        dataset = read_retrieval_set(task, list_path, video_root)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device available")
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    cache = FeatureCache(None if args.no_cache else (args.cache_dir or DEFAULT_CACHE_DIR))
    return Plan(task, models, protocol, source, video_root, list_path, dataset, batch_size, device, cache)


def _model_record(loaded: LoadedModel) -> dict:
    model = loaded.model
    tokenizer = getattr(model.text_tower, "word_tokenizer", None)
    return {"kind": loaded.kind, "sha256": loaded.checkpoint_id, "description": loaded.description,
            "normalisation": {"mean": list(model.video_mean), "std": list(model.video_std)},
            "max_words": getattr(tokenizer, "max_words", None)}


def _run_retrieval_task(plan: Plan, args) -> tuple[dict, dict, dict]:
    records, rows, curves = {}, {}, {}
    for name, loaded in plan.models.items():
        started = time.perf_counter()
        model = loaded.model.to(plan.device).eval()
        with torch.no_grad():
            result = run_retrieval(model, plan.dataset, plan.protocol, batch_size=plan.batch_size,
                                   num_workers=args.num_thread_reader, device=plan.device,
                                   progress=not args.quiet, cache=plan.cache, checkpoint_id=loaded.checkpoint_id,
                                   csv_path=plan.list_path)
        ks, recall = recall_curve(result.ranks)
        summary = result.summary()
        records[name] = {"checkpoint": _model_record(loaded), "metrics": result.metrics,
                         **{k: v for k, v in summary.items() if k not in result.metrics},
                         "from_cache": result.from_cache,
                         "seconds": round(time.perf_counter() - started, 2),
                         "recall_at_k": {"k": ks, "recall": recall}}
        rows[name], curves[name] = result.metrics, (ks, recall)
    return records, rows, curves


def _run_hmdb_task(plan: Plan, args) -> tuple[dict, dict, dict]:
    splits = plan.dataset
    records, rows, curves = {}, {}, {}
    for name, loaded in plan.models.items():
        started = time.perf_counter()
        model = loaded.model.to(plan.device).eval()
        with torch.no_grad():
            features, cached = hmdb_features(model, splits, plan.video_root, plan.list_path, plan.protocol,
                                             batch_size=plan.batch_size, num_workers=args.num_thread_reader,
                                             device=plan.device, progress=not args.quiet, cache=plan.cache,
                                             checkpoint_id=loaded.checkpoint_id)
        c_values = args.svm_c or [DEFAULT_C]
        probe = probe_all_splits(features, splits, c=c_values[0], c_grid=c_values if len(c_values) > 1 else None)
        split_records = {}
        for k, r in probe["splits"].items():
            test_labels = splits.labels[splits.test[k]]
            ks, accuracy = topk_accuracy_curve(r["scores"], test_labels)
            curves[f"{name}, split {k}"] = (ks, accuracy)
            split_records[k] = {key: v for key, v in r.items() if key != "scores"}
        rows[name] = {**{f"split{k}": 100 * r["top1"] for k, r in probe["splits"].items()},
                      "mean": 100 * probe["top1_mean"]}
        records[name] = {"checkpoint": _model_record(loaded), "top1_mean": 100 * probe["top1_mean"],
                         "splits": split_records, "num_videos": len(splits.videos),
                         "num_classes": len(splits.classes), "num_unreadable": len(features.errors),
                         "unreadable": features.errors, "from_cache": cached,
                         "seconds": round(time.perf_counter() - started, 2)}
    return records, rows, curves


def _problems_text(records: dict, consequence: str) -> str:
    """Every missing or unreadable video by name, once per distinct list (models usually share it)."""
    groups: dict[tuple, list[str]] = {}
    for name, record in records.items():
        bad = {**{v: "file not found" for v in record.get("missing", [])}, **record["unreadable"]}
        if bad:
            groups.setdefault(tuple(sorted(bad.items())), []).append(name)
    lines = []
    for bad, names in groups.items():
        lines.append(f"{len(bad)} video(s) missing or unreadable, {consequence} ({', '.join(names)}):")
        lines += [f"  {video}: {message}" for video, message in bad]
    return "\n".join(lines)


def run(plan: Plan, args) -> int:
    """Evaluate every model of the plan; print the table, write the JSON and the plot."""
    task = plan.task
    if task == "hmdb":
        records, rows, curves = _run_hmdb_task(plan, args)
        columns = [f"split{k}" for k in args.splits] + ["mean"]
        title = f"{TITLES[task]} (%), {len(args.splits)} split(s)"
    else:
        records, rows, curves = _run_retrieval_task(plan, args)
        columns = RETRIEVAL_COLUMNS
        first = next(iter(records.values()))
        title = f"{TITLES[task]}: {first['num_texts']} captions, chance R@1 = {100 / first['num_videos']:.2f}%"
    print(report.format_table(title, rows, columns))
    problems = _problems_text(records, "left out of SVM training, wrong at test" if task == "hmdb"
                              else "scored as misses")
    if problems:
        print(problems)
    for name, record in records.items():
        unconverged = [str(k) for k, r in record.get("splits", {}).items() if not r["converged"]]
        if unconverged:
            print(f"note: LinearSVC hit max_iter before converging ({name}: split {', '.join(unconverged)})")
    result = {"task": task, "eval_video_root": str(plan.video_root), "eval_list": str(plan.list_path),
              "protocol": {**asdict(plan.protocol), "defaults_from": plan.protocol_source,
                           "batch_size": plan.batch_size, "num_thread_reader": args.num_thread_reader,
                           "device": str(plan.device), "crop": "centre min(w,h) square, resized",
                           "scaling": "uint8/255, then the model's mean/std"},
              "models": records}
    plot_path = args.plot or (str(Path(args.output).with_suffix(".png")) if args.output else None)
    if args.output:
        report.write_json(args.output, result)
        print(f"wrote {args.output}")
    if plot_path:
        report.plot_curves(plot_path, curves, title=TITLES[task].split(" (")[0],
                           ylabel="top-K accuracy" if task == "hmdb" else "recall@K")
        print(f"wrote {plot_path}")
    return 0


def main(task: str, argv: list[str] | None = None) -> int:
    """Entry point of eval/eval_<task>.py; returns the exit status.

    Everything that can be wrong with the flags, paths, lists or checkpoint is found while planning,
    before any video is decoded, and ends with status 2 and one line; failures after that are bugs or
    system problems and keep their traceback.
    """
    try:
        args = build_parser(task).parse_args(argv)
        plan = make_plan(task, args)
    except (UsageError, ConfigError, CheckpointFormatError, FileNotFoundError, ValueError) as exc:
        print(f"eval_{task}.py: error: {exc}", file=sys.stderr)
        return 2
    return run(plan, args)
