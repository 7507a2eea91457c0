"""``mmpt-lite``: one command with a sub-command per tool.

    mmpt-lite train projects/how2_pretrain.yaml --jobtype local_small     (= python locallaunch.py ...)
    mmpt-lite eval msrvtt --pretrain_cnn_path runs/how2_pretrain           (= python eval/eval_msrvtt.py ...)
    mmpt-lite shard --csv train.csv --video_root videos/ --out shards/     (= python scripts/shard_howto.py ...)
    mmpt-lite synth --out data/how2-synth                                  (= python scripts/make_synthetic.py ...)
    mmpt-lite flops projects/videomae_pretrain.yaml                        (= python scripts/count_flops.py ...)
    mmpt-lite index VIDEO_DIR --checkpoint RUN --out INDEX                 text search over your own videos
    mmpt-lite search INDEX "a person slicing onions" -k 10 [--html hits.html]
    mmpt-lite serve INDEX [--port 8000]

Each sub-command's module is imported only when it runs, so ``mmpt-lite --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys

# sub-command -> (module, function, one-line help); eval's first argument picks the evaluator.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("mmpt_lite.launch", "main", "launch a run config (locallaunch.py): --jobtype local_single|local_small|"
              "local_big|slurm"),
    "eval": ("mmpt_lite.evaluation.cli", "main", "evaluate a checkpoint: eval msrvtt|youcook|youcook_paragraph|hmdb|"
             "classify [flags]"),
    "shard": ("mmpt_lite.commands.shard", "main", "pack videos and caption CSVs into memory-mapped shards"),
    "synth": ("mmpt_lite.commands.synth", "main", "generate the embedded synthetic corpus"),
    "flops": ("mmpt_lite.commands.flops", "main", "parameters and multiply-adds of a config's model"),
    "index": ("mmpt_lite.search.cli", "index_main", "embed a folder of videos into a searchable index"),
    "search": ("mmpt_lite.search.cli", "search_main", "query an index with text (table or --html page)"),
    "serve": ("mmpt_lite.search.cli", "serve_main", "a local web app for searching an index"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: mmpt-lite COMMAND [ARGS...]   (mmpt-lite COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, _, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mmpt-lite: unknown command {name!r} (valid: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    entry = getattr(importlib.import_module(module), function)
    if name == "eval":
        from mmpt_lite.evaluation.cli import EVALUATORS

        if not rest or rest[0] not in EVALUATORS:
            got = repr(rest[0]) if rest else "nothing"
            print(f"mmpt-lite eval: the first argument names the evaluator, got {got} (valid: "
                  f"{', '.join(EVALUATORS)})", file=sys.stderr)
            return 2
        return entry(rest[0], rest[1:])
    sys.argv[0] = f"mmpt-lite {name}"  # argparse's prog in usage and error lines
    return entry(rest)
