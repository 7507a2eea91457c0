#!/usr/bin/env python
"""Every GPU path in one call (under 10 minutes): one JSON and one markdown table in docs/.

    python benchmarks/gpu_check.py            # on a machine with a CUDA GPU

Checks, in this order, each with its own time limit inside ``--budget_s`` (a check that no longer fits is
reported as skipped, never left half-run):

  ddp_nccl   the launcher's local_big job (torchrun over the visible GPUs, nccl) on the tiny config, bf16;
             with one GPU, also one DDP step in a one-rank nccl group (two ranks cannot share a GPU)
  bf16       the same tiny run in one process at bf16 and at fp32: finite, close loss curves
  attention  flash-attn vs SDPA (``model.video.attention``) on ViT-B blocks under bf16 autocast: outputs and
             time; 'not installed' without the flash-attn package
  compile    ``train.compile`` on vs off on the tiny run: loss curves and step time
  dali       ``data.loader: dali`` (GPU 'mixed' decoding) vs the CPU loader on the tiny run; 'not available'
             without nvidia.dali or without that config switch
  deepspeed  ``train.strategy: deepspeed`` (ZeRO-2 where the config has a stage key) on the visible GPUs;
             'not available' without deepspeed or without that switch
  videomae   bench_videomae_gpu.py's throughput table (shortened: ``--videomae_args``), synthetic then loader input
  umt        bench_umt_vs_mae.py on the GPU: UMT stage 1 against VideoMAE at ViT-B/16, 8×224², bf16 (student
             tokens per step, clips/s, ratio)

Writes ``docs/gpu_check_<device>_<date>.json`` and ``.md``. Exit status 1 when a check failed, else 0.
Without a CUDA GPU it says so and exits 0: nothing here means anything on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TINY = "projects/debug_tiny.yaml"
STATUSES = ("ok", "failed", "not installed", "not available", "skipped")


# --------------------------------------------------------------------------- optional features
def config_choices(section: str, key: str) -> tuple:
    """The Literal choices of ``section.key`` in RunConfig (() when the key does not exist in this checkout)."""
    from mmpt_lite.config import RunConfig

    cls = typing.get_type_hints(RunConfig).get(section)
    if cls is None or not dataclasses.is_dataclass(cls):
        return ()
    return typing.get_args(typing.get_type_hints(cls).get(key, type(None)))


def dotted_keys_named(name: str) -> list[str]:
    """Every dotted key of RunConfig whose last part is ``name`` (e.g. a ZeRO stage key)."""
    from mmpt_lite.config import RunConfig

    found, todo = [], [("", RunConfig)]
    while todo:
        prefix, cls = todo.pop()
        for key, tp in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(tp):
                todo.append((f"{prefix}{key}.", tp))
            elif key == name:
                found.append(f"{prefix}{key}")
    return sorted(found)


def feature_gap(module: str, section: str, key: str, choice: str) -> str | None:
    """Why an optional path cannot run here (package missing / config switch missing), or None if it can."""
    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        return f"{module} is not importable"
    if choice not in config_choices(section, key):
        return f"this checkout has no `{section}.{key}: {choice}` switch"
    return None


# --------------------------------------------------------------------------- running things
class Check:
    """Shared state: the work folder (tiny corpus, run folders), the deadline and the cached tiny runs."""

    def __init__(self, work: Path, deadline: float):
        self.work, self.deadline = work, deadline
        self.data_root = work / "how2-synth-tiny"
        self.runs: dict[str, dict] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def tiny_run(self, name: str, jobtype: str, overrides: list[str], limit: float) -> dict:
        """``locallaunch.py projects/debug_tiny.yaml`` with ``overrides`` -> {returncode, losses, step_s, tail}."""
        if name in self.runs:
            return self.runs[name]
        out = self.work / name
        cmd = [sys.executable, "locallaunch.py", TINY, "--jobtype", jobtype]
        for o in [f"data.root={self.data_root}", f"train.output_dir={out}", "train.log_every=1", *overrides]:
            cmd += ["--set", o]
        began = time.monotonic()
        try:
            r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(1.0, min(limit, self.left())))
            code, text = r.returncode, r.stdout + r.stderr
        except subprocess.TimeoutExpired as exc:
            code, text = "timeout", f"{exc.stdout or ''}{exc.stderr or ''}"
            text = text.decode(errors="replace") if isinstance(text, bytes) else text
        rows = []
        if (out / "metrics.jsonl").is_file():
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rows = [row for row in rows if row.get("kind") == "train"]
        times = [row["time"] for row in rows]
        gaps = sorted(b - a for a, b in zip(times[2:], times[3:], strict=False))  # from step 3 on: compiled
        self.runs[name] = {
            "command": shlex.join(cmd[1:]), "returncode": code, "wall_s": round(time.monotonic() - began, 1),
            "losses": [row["loss"] for row in rows], "step_s": gaps[len(gaps) // 2] if gaps else None,
            "videos_per_s": rows[-1].get("videos_per_s") if rows else None,
            "tail": " | ".join(text.strip().splitlines()[-3:])[-600:]}
        return self.runs[name]


def run_ok(run: dict, steps: int) -> str | None:
    """None if a tiny run finished with ``steps`` finite losses, else the reason."""
    if run["returncode"] != 0:
        return f"exit {run['returncode']}: {run['tail']}"
    losses = run["losses"]
    if len(losses) != steps or not all(map(math.isfinite, losses)):
        return f"expected {steps} finite losses, got {losses}"
    return None


def max_rel_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(y), 1e-6) for x, y in zip(a, b, strict=True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the checks
STEPS = 8
BF16 = ["train.precision=bf16", f"train.max_steps={STEPS}", f"train.ckpt_every={STEPS}"]


def check_ddp_nccl(ctx: Check) -> dict:
    gpus = torch.cuda.device_count()
    run = ctx.tiny_run("ddp_bf16", "local_big", BF16, limit=180)
    problem = run_ok(run, STEPS)
    result = {"gpus": gpus, "run": run}
    if gpus == 1:  # torchrun starts one rank: no collective ran, so exercise nccl + DDP in a one-rank group
        result["one_rank_nccl"] = one_rank_nccl_ddp_step()
        problem = problem or (None if result["one_rank_nccl"] == "ok" else result["one_rank_nccl"])
    if problem:
        return {"status": "failed", "detail": problem, **result}
    how = (f"{gpus} ranks, nccl" if gpus > 1 else "1 rank (one GPU); plus one DDP step in a one-rank nccl group")
    return {"status": "ok", "detail": f"local_big: {how}, {STEPS} bf16 steps, final loss {run['losses'][-1]:.4f}",
            **result}


def one_rank_nccl_ddp_step() -> str:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    try:
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
        model = DistributedDataParallel(torch.nn.Linear(64, 64).cuda(), device_ids=[0])
        model(torch.randn(8, 64, device="cuda")).square().mean().backward()
        flag = torch.ones(1, device="cuda")
        dist.all_reduce(flag)
        torch.cuda.synchronize()
        return "ok" if flag.item() == 1.0 and model.module.weight.grad is not None else "nccl all_reduce gave a wrong value"
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def check_bf16(ctx: Check) -> dict:
    bf16 = ctx.tiny_run("single_bf16", "local_single", BF16, limit=120)
    fp32 = ctx.tiny_run("single_fp32", "local_single", [*BF16, "train.precision=fp32"], limit=120)
    problem = run_ok(bf16, STEPS) or run_ok(fp32, STEPS)
    if problem:
        return {"status": "failed", "detail": problem, "bf16": bf16, "fp32": fp32}
    diff = max_rel_diff(bf16["losses"], fp32["losses"])
    status = "ok" if diff < 0.05 else "failed"
    return {"status": status, "detail": f"bf16 vs fp32 loss curves over {STEPS} steps: max relative difference "
            f"{diff:.2e} (limit 5e-2)", "max_rel_diff": diff, "bf16": bf16, "fp32": fp32}


def check_attention(ctx: Check) -> dict:
    from mmpt_lite.models import vit

    if vit.flash_attn_func is None:
        return {"status": "not installed", "detail": "flash-attn is not installed (README: GPU extras)"}
    calls = []
    real = vit.flash_attn_func
    vit.flash_attn_func = lambda q, k, v: calls.append(q.dtype) or real(q, k, v)
    try:
        torch.manual_seed(0)
        model = vit.VideoViT(width=768, depth=2, num_heads=12).cuda()  # ViT-B blocks, 1568 tokens at 16x224²
        x = torch.randn(8, 3, 16, 224, 224, device="cuda")
        outputs, times = {}, {}
        for kernel in ("sdpa", "flash_attn"):
            for block in model.blocks:
                block.attn.kernel = kernel
            with torch.autocast("cuda", dtype=torch.bfloat16):
                outputs[kernel] = model(x)["video_tokens"].float()
                outputs[kernel].sum().backward()
                torch.cuda.synchronize()
                began = time.perf_counter()
                for _ in range(5):
                    model(x)["video_tokens"].float().sum().backward()
                torch.cuda.synchronize()
            times[kernel] = (time.perf_counter() - began) / 5
            model.zero_grad(set_to_none=True)
    finally:
        vit.flash_attn_func = real
    ref, out = outputs["sdpa"].detach(), outputs["flash_attn"].detach()
    rel = float((out - ref).norm() / ref.norm())
    reached = bool(calls) and all(dtype == torch.bfloat16 for dtype in calls)
    status = "ok" if rel < 1e-2 and reached else "failed"
    return {"status": status, "detail": f"ViT-B x2 blocks, 8x1568 tokens, bf16: relative difference {rel:.2e} "
            f"(limit 1e-2); fwd+bwd {1e3 * times['flash_attn']:.1f} ms flash-attn vs {1e3 * times['sdpa']:.1f} ms "
            f"SDPA; flash kernel reached in bf16: {reached}", "rel_diff": rel, "ms": {k: 1e3 * v for k, v in times.items()},
            "flash_calls": len(calls)}


def check_compile(ctx: Check) -> dict:
    eager = ctx.tiny_run("single_bf16", "local_single", BF16, limit=120)
    compiled = ctx.tiny_run("single_bf16_compiled", "local_single", [*BF16, "train.compile=true"], limit=240)
    problem = run_ok(eager, STEPS) or run_ok(compiled, STEPS)
    if problem:
        return {"status": "failed", "detail": problem, "eager": eager, "compiled": compiled}
    diff = max_rel_diff(compiled["losses"], eager["losses"])
    status = "ok" if diff < 0.05 else "failed"  # bf16: inductor's fusions round differently from eager
    return {"status": status, "detail": f"tiny run (launch-bound; videomae rows show compile at scale): median step "
            f"{1e3 * compiled['step_s']:.1f} ms compiled vs {1e3 * eager['step_s']:.1f} ms eager; loss curves within "
            f"{diff:.2e} (limit 5e-2)", "max_rel_diff": diff, "eager": eager, "compiled": compiled}


def check_dali(ctx: Check) -> dict:
    gap = feature_gap("nvidia.dali", "data", "loader", "dali")
    if gap:
        return {"status": "not available", "detail": gap}
    cpu = ctx.tiny_run("single_bf16", "local_single", BF16, limit=120)
    dali = ctx.tiny_run("single_bf16_dali", "local_single", [*BF16, "data.loader=dali"], limit=180)
    problem = run_ok(cpu, STEPS) or run_ok(dali, STEPS)
    if problem:
        return {"status": "failed", "detail": problem, "cpu": cpu, "dali": dali}
    return {"status": "ok", "detail": f"data.loader dali vs CPU: {dali['videos_per_s']:.1f} vs {cpu['videos_per_s']:.1f} "
            f"videos/s; first loss {dali['losses'][0]:.4f} vs {cpu['losses'][0]:.4f} (decoders differ: not bitwise)",
            "cpu": cpu, "dali": dali}


def check_deepspeed(ctx: Check) -> dict:
    gap = feature_gap("deepspeed", "train", "strategy", "deepspeed")
    if gap:
        return {"status": "not available", "detail": gap}
    stage_keys = dotted_keys_named("zero_stage")
    overrides = [*BF16, "train.strategy=deepspeed", *(f"{key}=2" for key in stage_keys[:1])]
    run = ctx.tiny_run("deepspeed", "local_big", overrides, limit=240)
    problem = run_ok(run, STEPS)
    stage = f"{stage_keys[0]}=2" if stage_keys else "the strategy's default ZeRO stage (no zero_stage key found)"
    if problem:
        return {"status": "failed", "detail": f"{stage}: {problem}", "run": run}
    return {"status": "ok", "detail": f"local_big, {stage}: {STEPS} bf16 steps, final loss {run['losses'][-1]:.4f}",
            "run": run}


def check_videomae(ctx: Check, extra: str) -> dict:
    rows, failures, outputs = [], [], []
    for source in ("synthetic", "loader"):
        if ctx.left() < 60:
            failures.append(f"{source}: skipped (time budget)")
            continue
        out = ctx.work / f"videomae_{source}.json"
        cmd = [sys.executable, "benchmarks/bench_videomae_gpu.py", "--inputs", source, "--json", str(out),
               *shlex.split(extra)]
        try:
            r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=ctx.left() - 10)
            outputs.append((r.stdout + r.stderr)[-2000:])
        except subprocess.TimeoutExpired:
            failures.append(f"{source}: timed out")
            continue
        if out.is_file():
            found = json.loads(out.read_text())
            rows += found["rows"]
            failures += found["failures"]
            header = found["header"]
        else:
            failures.append(f"{source}: exit {r.returncode}: {' | '.join(r.stdout.strip().splitlines()[-2:])}")
    if not rows:
        return {"status": "failed", "detail": "; ".join(failures) or "no rows", "output": outputs}
    status = "failed" if any("skipped" not in f for f in failures) else "ok"
    return {"status": status, "detail": f"{len(rows)} rows{'; ' + '; '.join(failures) if failures else ''}",
            "header": header, "rows": rows}


def check_umt(ctx: Check) -> dict:
    cmd = [sys.executable, "benchmarks/bench_umt_vs_mae.py", "--device", "cuda", "--preset", "vit_b", "--size", "224",
           "--frames", "8", "--batch", "32", "--align-layers", "6", "--steps", "10"]
    try:
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(1.0, ctx.left() - 10))
    except subprocess.TimeoutExpired:
        return {"status": "failed", "detail": "timed out"}
    table = [line for line in r.stdout.splitlines() if line.startswith("|")]
    if r.returncode != 0 or len(table) != 4:
        return {"status": "failed", "detail": f"exit {r.returncode}: {(r.stdout + r.stderr).strip()[-600:]}"}
    ratio = table[-1].rstrip(" |").rsplit("|", 1)[-1].strip()
    return {"status": "ok", "detail": f"UMT / VideoMAE clips/s at ViT-B/16 8×224²: {ratio}",
            "table": [r.stdout.splitlines()[0], *table]}


# --------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    lines = [f"# GPU check: {report['device']} ({report['date']})", "",
             f"{report['gpus']} GPU(s) visible | torch {report['torch']} | CUDA {report['cuda']} | "
             f"`python benchmarks/gpu_check.py` took {report['wall_s']:.0f} s", "",
             "| check | status | result | s |", "|---|---|---|---:|"]
    for name, entry in report["checks"].items():
        detail = str(entry["detail"]).replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {entry['status']} | {detail} | {entry.get('seconds', 0):.0f} |")
    videomae = report["checks"].get("videomae", {})
    if videomae.get("rows"):
        lines += ["", "## VideoMAE pretraining throughput (bench_videomae_gpu.py)", "", videomae["header"], "",
                  "| input | compile | batch | videos/s | MFU | peak memory GiB | loss |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in videomae["rows"]:
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
            lines.append(f"| {r['input']} | {r['compile']} | {r['batch']} | {r['videos_per_s']:.1f} | {mfu} | "
                         f"{r['peak_memory_gib']:.2f} | {r['loss']:.4f} |")
    umt = report["checks"].get("umt", {})
    if umt.get("table"):
        lines += ["", "## UMT stage 1 against VideoMAE (bench_umt_vs_mae.py)", "", *umt["table"]]
    return "\n".join(lines) + "\n"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "gpu"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out_dir", default=str(REPO / "docs"), help="where the JSON and markdown go (docs/)")
    p.add_argument("--budget_s", type=float, default=540.0, help="wall-clock budget of all checks together")
    p.add_argument("--checks", default=",".join(CHECKS), help=f"comma list of: {', '.join(CHECKS)}")
    p.add_argument("--videomae_args", default="--warmup 3 --steps 10",
                   help="extra arguments of bench_videomae_gpu.py (its GPU defaults otherwise: vit_b, 16x224², batch 256)")
    p.add_argument("--work_dir", default="", help="keep the runs here (default: a temporary folder, removed)")
    return p.parse_args(argv)


CHECKS = {"ddp_nccl": check_ddp_nccl, "bf16": check_bf16, "attention": check_attention, "compile": check_compile,
          "dali": check_dali, "deepspeed": check_deepspeed, "videomae": None, "umt": check_umt}
MIN_SECONDS = {"ddp_nccl": 60, "bf16": 60, "attention": 20, "compile": 90, "dali": 60, "deepspeed": 90, "videomae": 90,
               "umt": 60}


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU present (torch.cuda.is_available() is False); nothing to check, exiting 0")
        return 0
    began = time.monotonic()
    device = torch.cuda.get_device_name(0)
    today = datetime.date.today().isoformat()
    report = {"device": device, "gpus": torch.cuda.device_count(), "date": today, "torch": torch.__version__,
              "cuda": torch.version.cuda, "checks": {}}
    names = [n.strip() for n in args.checks.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"error: --checks: unknown {', '.join(unknown)} (valid: {', '.join(CHECKS)})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        ctx = Check(work, began + args.budget_s)
        for name in names:
            start = time.monotonic()
            if ctx.left() < MIN_SECONDS[name]:
                entry = {"status": "skipped", "detail": f"time budget ({ctx.left():.0f} s left of {args.budget_s:.0f})"}
            else:
                print(f"gpu_check: {name} ...", flush=True)
                try:
                    entry = check_videomae(ctx, args.videomae_args) if name == "videomae" else CHECKS[name](ctx)
                except Exception as exc:  # noqa: BLE001 - one failing check must not lose the others
                    entry = {"status": "failed", "detail": f"{type(exc).__name__}: {exc}"[:600]}
            entry["seconds"] = round(time.monotonic() - start, 1)
            report["checks"][name] = entry
            print(f"gpu_check: {name}: {entry['status']}: {entry['detail']}", flush=True)
    report["wall_s"] = time.monotonic() - began
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"gpu_check_{slug(device)}_{today}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"gpu_check: wrote {stem}.json and {stem}.md")
    return 1 if any(entry["status"] == "failed" for entry in report["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
