"""The command line behind eval/eval_msrvtt.py, eval/eval_youcook.py, eval/eval_hmdb.py and eval/eval_classify.py.

Flags follow MIL-NCE's (``--pretrain_cnn_path``, ``--eval_video_root``, ``--num_windows_test``, …).
Protocol values come from, in order: the flag, ``--config``'s ``eval`` section, the mmpt_lite
checkpoint's saved config, the published MIL-NCE protocol (the protocol dataclasses' defaults).
Without ``--eval_video_root`` the embedded synthetic eval sets under ``data.root`` are used.
Bad flags, paths or checkpoints end the program with status 2 and one line on stderr.
The task-specific parts (reader, protocol, flags, metrics, report hooks) are the evaluator classes of
:data:`EVALUATORS`; nothing here depends on the task's name.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mmpt_lite.checkpoint import CheckpointFormatError
from mmpt_lite.config import ConfigError, RunConfig, load_config
from mmpt_lite.evaluation import report
from mmpt_lite.evaluation.cache import DEFAULT_CACHE_DIR, FeatureCache
from mmpt_lite.evaluation.checkpoints import (
    MMPT_MAE_FORMAT,
    LoadedModel,
    load_model,
    random_init_model,
)
from mmpt_lite.evaluation.classify import ClassifyEval
from mmpt_lite.evaluation.linear_probe import HmdbProbe
from mmpt_lite.evaluation.paragraph import YoucookParagraph
from mmpt_lite.evaluation.runtime import DECODERS, EvalRuntime, Evaluator
from mmpt_lite.evaluation.zeroshot import MsrvttRetrieval, YoucookRetrieval

EVALUATORS: dict[str, type[Evaluator]] = {"msrvtt": MsrvttRetrieval, "youcook": YoucookRetrieval, "hmdb": HmdbProbe,
                                          "classify": ClassifyEval, "youcook_paragraph": YoucookParagraph}


class UsageError(Exception):
    """A bad flag or path: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the whole usage block; one line is enough
        raise UsageError(message)


def build_parser(task: str) -> argparse.ArgumentParser:
    evaluator = EVALUATORS[task]
    parser = _Parser(prog=f"eval_{task}.py", description=evaluator.title)
    parser.add_argument("--pretrain_cnn_path", help="checkpoint: mmpt_lite run/step folder or model.safetensors, "
                        "s3d_howto100m.pth, or a MIL-NCE training checkpoint")
    parser.add_argument("--config", help="mmpt_lite run config: protocol defaults, synthetic data root, and the "
                        "architecture for --random_init without a checkpoint")
    parser.add_argument("--eval_video_root", help="dataset folder (default: the synthetic set under data.root)")
    parser.add_argument("--eval_csv", help=f"list file (default: <root>/{evaluator.default_list}"
                        + ("/, the folder of official split files" if evaluator.list_is_folder else "") + ")")
    parser.add_argument("--dict_path", help="word dictionary .npy of an S3D checkpoint (s3d_dict.npy)")
    parser.add_argument("--word2vec", help="word2vec file: the vocabulary of the text tower")
    parser.add_argument("--max_words", type=int, help="words per caption (default: the checkpoint's)")
    parser.add_argument("--batch_size", type=int, help="videos per forward pass")
    parser.add_argument("--num_thread_reader", type=int, default=1, help="decode worker processes")
    parser.add_argument("--decoder", choices=DECODERS, help="video decoder backend (default: the run config's "
                        "data.decoder, else pyav)")
    parser.add_argument("--num_windows_test", type=int, help="windows per video (averaged / each an SVM sample)")
    parser.add_argument("--num_frames", type=int, help="frames per window")
    parser.add_argument("--fps", type=float, help=evaluator.fps_help)
    parser.add_argument("--video_size", type=int, help="side of the centre square crop after resizing")
    evaluator.add_arguments(parser)
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

    evaluator: Evaluator
    models: dict[str, LoadedModel]
    runtime: EvalRuntime
    protocol_source: str


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


def _protocol(evaluator: type[Evaluator], args, run_cfg: RunConfig | None):
    """(protocol, batch_size, where the defaults came from)."""
    eval_cfg = run_cfg.eval if run_cfg is not None else None
    try:  # the evaluator's own flags and checks (windowed protocols: runtime.PROTOCOL_FLAGS)
        protocol, source = evaluator.protocol_from_args(args, run_cfg)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    batch_size = eval_cfg.batch_size if eval_cfg is not None else EvalRuntime.batch_size
    batch_size = args.batch_size if args.batch_size is not None else batch_size
    if batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {batch_size}")
    if args.num_thread_reader < 0:
        raise UsageError(f"--num_thread_reader must be >= 0, got {args.num_thread_reader}")
    return protocol, batch_size, source


def make_plan(task: str, args) -> Plan:
    evaluator = EVALUATORS[task]
    models, cfg = _load_models(args)
    if evaluator.needs_text and any(m.kind == MMPT_MAE_FORMAT for m in models.values()):
        raise UsageError(f"{args.pretrain_cnn_path}: a masked-pretraining checkpoint has a video encoder and no "
                         "trained text tower: zero-shot retrieval needs a video-text run (eval_hmdb.py probes it)")
    run_cfg = cfg or next((m.config for m in models.values() if m.config is not None), None)
    protocol, batch_size, source = _protocol(evaluator, args, run_cfg)
    if args.eval_video_root:
        video_root = Path(args.eval_video_root).expanduser()
        if not video_root.is_dir():
            raise UsageError(f"--eval_video_root: {video_root} is not a folder")
    else:
        video_root = evaluator.default_video_root(run_cfg, protocol)
        if not video_root.is_dir():
            raise UsageError(f"no --eval_video_root and no synthetic eval set at {video_root} (the pretraining run "
                             "generates it: python locallaunch.py projects/how2_pretrain.yaml)")
    list_path = Path(args.eval_csv).expanduser() if args.eval_csv else evaluator.default_list_path(video_root, protocol)
    if not (list_path.is_dir() if evaluator.list_is_folder else list_path.is_file()):
        raise UsageError(f"--eval_csv: {list_path} not found")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device available")
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    runtime = EvalRuntime(device, batch_size, args.num_thread_reader,
                          FeatureCache(None if args.no_cache else (args.cache_dir or DEFAULT_CACHE_DIR)),
                          progress=not args.quiet,
                          decoder=args.decoder or (run_cfg.data.decoder if run_cfg is not None else "pyav"))
    return Plan(evaluator(protocol, video_root, list_path, **evaluator.options(args)), models, runtime, source)


def _model_record(loaded: LoadedModel) -> dict:
    model = loaded.model
    # a classifier (or any video-only model) has no text tower
    tokenizer = getattr(getattr(model, "text_tower", None), "word_tokenizer", None)
    return {"kind": loaded.kind, "sha256": loaded.checkpoint_id, "description": loaded.description,
            "normalisation": {"mean": list(model.video_mean), "std": list(model.video_std)},
            "max_words": getattr(tokenizer, "max_words", None)}


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
    evaluator, runtime = plan.evaluator, plan.runtime
    records, rows, curves = {}, {}, {}
    for name, loaded in plan.models.items():
        started = time.perf_counter()
        record, rows[name], model_curves = evaluator.evaluate(loaded.model.to(runtime.device), runtime,
                                                              checkpoint_id=loaded.checkpoint_id)
        records[name] = {"checkpoint": _model_record(loaded), **record,
                         "seconds": round(time.perf_counter() - started, 2)}
        curves.update({name + suffix: curve for suffix, curve in model_curves.items()})
    print(report.format_table(evaluator.heading(records), rows, evaluator.columns()))
    problems = _problems_text(records, evaluator.consequence)
    if problems:
        print(problems)
    duplicates = next((r["duplicates"] for r in records.values() if r.get("duplicates")), [])   # same list for all
    if duplicates:
        print(f"{len(duplicates)} repeated list entr{'y' if len(duplicates) == 1 else 'ies'} left out:")
        print("\n".join(f"  {message}" for message in duplicates))
    for name, record in records.items():
        unconverged = [str(k) for k, r in record.get("splits", {}).items() if not r["converged"]]
        if unconverged:
            print(f"note: LinearSVC hit max_iter before converging ({name}: split {', '.join(unconverged)})")
    result = {"task": evaluator.name, "eval_video_root": str(evaluator.video_root),
              "eval_list": str(evaluator.list_path),
              "protocol": {**asdict(evaluator.protocol), "defaults_from": plan.protocol_source,
                           "batch_size": runtime.batch_size, "num_thread_reader": runtime.num_workers,
                           "device": str(runtime.device), "crop": evaluator.crop_description,
                           "scaling": "uint8/255, then the model's mean/std"},
              "models": records}
    plot_path = args.plot or (str(Path(args.output).with_suffix(".png")) if args.output else None)
    if args.output:
        report.write_json(args.output, result)
        print(f"wrote {args.output}")
    if plot_path:
        report.plot_curves(plot_path, curves, title=evaluator.title.split(" (")[0], ylabel=evaluator.ylabel)
        print(f"wrote {plot_path}")
        for path in evaluator.write_figures(plot_path, records):
            print(f"wrote {path}")
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
