"""how2-synth: a small synthetic video-text corpus written in the real datasets' file formats.

Coloured, textured shapes perform actions (moves, grows/shrinks, spins, appears/disappears, bounces)
on muted cluttered backgrounds. Training videos are multi-step "how-to" videos with noisy ASR-style
narration (HowTo100M layout); evaluation sets follow MSR-VTT (JSFusion csv), YouCook2 (validation
csv), HMDB-51 (avi + 70/30 split files), Kinetics (path-label lists), Something-Something v2 (VP9 +
json) and a fine-grained MSR-VTT-format set of caption pairs that differ only in direction or colour.
Some (shape, action) and (colour, shape) combinations never occur in training; the evaluation sets
contain both seen and held-out combinations. docs/data.md documents the layout.

Modules: ``plan`` decides what goes where, ``text`` words it,
``render`` draws and encodes it; this one writes the corpus. Determinism: plans are
seeded per video and frames are encoded by single-threaded bitexact ffmpeg, so the same
(seed, size) gives the same bytes on the same ffmpeg build, whatever the number of workers.
Atomicity: the corpus is built in ``<out>.tmp-<pid>`` and renamed into place with ``manifest.json``
(sha256 of every file) inside, so a folder with a manifest is complete. ``actions.tsv``, the captions'
action lexicon, is outside the manifest: it depends on the code only, so a corpus made without it gets it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mmpt_lite.fileio import atomic_write_text
from mmpt_lite.synth.plan import GENERATOR_VERSION, SIZES, TRAIN_HUES, CorpusPlan, plan_corpus
from mmpt_lite.synth.render import VideoSpec, ffmpeg_binary, render_video
from mmpt_lite.synth.text import DESCRIBE, INSTRUCT

__all__ = ["GENERATOR_VERSION", "LEXICON_FILE", "SIZES", "TRAIN_HUES", "generate_corpus", "plan_corpus",
           "write_lexicon"]

LEXICON_FILE = "actions.tsv"


def write_lexicon(root: str | Path) -> Path:
    """Write ``<root>/actions.tsv`` unless present: per action, its description then instruction
    phrasings (``text.DESCRIBE`` / ``INSTRUCT``), one line ``action<TAB>phrase | phrase ...``."""
    path = Path(root) / LEXICON_FILE
    if not path.is_file():
        lines = [f"{action}\t{' | '.join([*DESCRIBE[action], *INSTRUCT[action]])}\n" for action in DESCRIBE]
        atomic_write_text(path, "# how2-synth actions: description and instruction phrasings\n" + "".join(lines))
    return path


def _render_all(specs: list[VideoSpec], root: Path, workers: int) -> list[tuple[str, str, int]]:
    """Render every spec under `root` (longest first, for load balance); returns (rel_path, sha256, bytes)."""
    ordered = sorted(specs, key=lambda spec: -spec.num_frames * spec.width)
    if workers <= 1:
        return [render_video(spec, str(root)) for spec in ordered]
    # spawn, not fork: the caller may hold threads (torch, pytest) that a forked child would inherit.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        results = list(pool.map(render_video, ordered, [str(root)] * len(ordered)))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return results


def _ffmpeg_version() -> str:
    first = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, text=True).stdout.splitlines()
    return first[0].split(" Copyright")[0] if first else "unknown"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_builds(out: Path) -> None:
    """Delete `<out>.tmp-<pid>` folders left by interrupted runs whose process is gone."""
    for folder in out.parent.glob(f"{out.name}.tmp-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _train_hue(manifest: dict) -> str:
    return manifest.get("train_hue", "task")  # corpora made before the option have task hues


def _settings(seed, size, version, train_hue, train_videos) -> str:
    return f"seed={seed} size={size} version={version} train_hue={train_hue} train_videos={train_videos}"


def _existing_corpus(out: Path, plan: CorpusPlan) -> dict | None:
    """The manifest of a complete corpus at `out` made as `plan` says; None when `out` is absent or empty."""
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"{out} exists and is not a complete how2-synth corpus (no manifest.json): "
                                  "remove it or choose another output folder")
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise RuntimeError(f"{manifest_path} is unreadable ({error}): remove {out} and generate again") from None
    made = (manifest.get("seed"), manifest.get("size"), manifest.get("generator_version"), _train_hue(manifest),
            manifest.get("counts", {}).get("train"))
    wanted = (plan.seed, plan.size, GENERATOR_VERSION, plan.train_hue, plan.counts["train"])
    if made != wanted:
        raise FileExistsError(f"{out} holds how2-synth {_settings(*made)}, not {_settings(*wanted)}: "
                              "remove it or choose another folder")
    for rel, info in manifest["files"].items():
        path = out / rel
        if not path.is_file() or path.stat().st_size != info["bytes"]:
            raise RuntimeError(f"{out} is damaged ({rel} missing or resized): remove it and generate again")
    return manifest


def _summary(out: Path, manifest: dict, seconds: float, reused: bool) -> dict:
    return {"out_dir": str(out), "seed": manifest["seed"], "size": manifest["size"],
            "generator_version": manifest["generator_version"], "train_hue": _train_hue(manifest),
            "counts": manifest["counts"],
            "heldout": manifest["heldout"], "files": len(manifest["files"]),
            "bytes": sum(info["bytes"] for info in manifest["files"].values()),
            "seconds": round(seconds, 2), "reused": reused}


def generate_corpus(out_dir: str | Path, seed: int = 0, size: str = "default", workers: int = 2,
                    train_hue: str = "task", train_videos: int = 0) -> dict:
    """Generate how2-synth into `out_dir` (or reuse a complete one made with the same settings).

    `workers` render processes run in parallel (<= 1: render in this process). `train_hue` and
    `train_videos`: see :func:`plan_corpus`. Returns a summary: out_dir, seed, size, generator_version,
    train_hue, counts, heldout, files, bytes, seconds, reused. Raises ValueError for a bad seed, size,
    train_hue or train_videos, FileExistsError when `out_dir` holds something else, RuntimeError when
    ffmpeg is missing or fails.
    """
    began = time.monotonic()
    out = Path(out_dir).absolute()
    plan = plan_corpus(seed, size, train_hue, train_videos)  # validates the settings; cheap (~0.1 s for default)
    seed = plan.seed
    manifest = _existing_corpus(out, plan)
    if manifest is not None:
        write_lexicon(out)
        return _summary(out, manifest, time.monotonic() - began, reused=True)
    ffmpeg_version = _ffmpeg_version()
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(out)
    build = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    try:
        files = {rel: (digest, size_bytes) for rel, digest, size_bytes in _render_all(plan.specs, build, workers)}
        for rel, content in plan.files.items():
            data = content.encode()
            (build / rel).parent.mkdir(parents=True, exist_ok=True)
            (build / rel).write_bytes(data)
            files[rel] = (hashlib.sha256(data).hexdigest(), len(data))
        manifest = {
            "name": "how2-synth", "generator_version": GENERATOR_VERSION, "seed": seed, "size": size,
            "train_hue": train_hue,
            "preset": dataclasses.asdict(plan.preset), "ffmpeg": ffmpeg_version, "counts": plan.counts,
            "heldout": {"shape_action": [list(p) for p in plan.heldout.shape_action],
                        "colour_shape": [list(p) for p in plan.heldout.colour_shape]},
            "heldout_clips": plan.heldout_counts,
            "files": {rel: {"sha256": digest, "bytes": n} for rel, (digest, n) in sorted(files.items())},
        }
        (build / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        write_lexicon(build)
        try:
            os.rename(build, out)  # atomic; replaces `out` only if it is an empty folder
        except OSError:
            if _existing_corpus(out, plan) is None:  # a concurrent run did not finish it either
                raise
            write_lexicon(out)
            shutil.rmtree(build)
            return _summary(out, manifest, time.monotonic() - began, reused=True)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return _summary(out, manifest, time.monotonic() - began, reused=False)
