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
(seed, size, render setting) gives the same bytes on the same ffmpeg build, whatever the number of workers
or the sets chosen. Render setting: `short_side` / `fps` draw every video directly at that size and rate
(0: the formats' native 240 px, 12-30 fps); `sets` renders a subset of the sets (the plan is always whole).
Atomicity: the corpus is built in ``<out>.tmp-<pid>`` and renamed into place with ``manifest.json``
(sha256 of every file) inside, so a folder with a manifest is complete. ``actions.tsv``, the captions'
action lexicon, is outside the manifest: it depends on the code only, so a corpus made without it gets it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from mmpt_lite.fileio import atomic_write_text
from mmpt_lite.lifetime import pid_alive
from mmpt_lite.synth.plan import (
    GENERATOR_VERSION,
    SETS,
    SIZES,
    TRAIN_HUES,
    CorpusPlan,
    plan_corpus,
    set_of_path,
    set_of_split,
)
from mmpt_lite.synth.render import VideoSpec, ffmpeg_binary, render_video
from mmpt_lite.synth.text import DESCRIBE, INSTRUCT

__all__ = ["GENERATOR_VERSION", "LEXICON_FILE", "SETS", "SIZES", "TRAIN_HUES", "check_corpus", "corpus_settings",
           "generate_corpus", "plan_corpus", "write_lexicon"]

LEXICON_FILE = "actions.tsv"
log = logging.getLogger("mmpt_lite")


def write_lexicon(root: str | Path) -> Path:
    """Write ``<root>/actions.tsv`` unless present: per action, its description then instruction
    phrasings (``text.DESCRIBE`` / ``INSTRUCT``), one line ``action<TAB>phrase | phrase ...``."""
    path = Path(root) / LEXICON_FILE
    if not path.is_file():
        lines = [f"{action}\t{' | '.join([*DESCRIBE[action], *INSTRUCT[action]])}\n" for action in DESCRIBE]
        atomic_write_text(path, "# how2-synth actions: description and instruction phrasings\n" + "".join(lines))
    return path


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class _Progress:
    """Logs 'rendered n/N videos, rate, ETA' at most every `every` s (0: never), readable in a log file.

    The ETA extrapolates the share of pixels x frames done, not of videos: the longest render first.
    """

    def __init__(self, specs: list[VideoSpec], every: float) -> None:
        self.total, self.every, self.count = len(specs), every, 0
        self.work_total = max(sum(_work(spec) for spec in specs), 1)
        self.work = 0
        self.began = self.last = time.monotonic()

    def done(self, spec: VideoSpec) -> None:
        self.count, self.work = self.count + 1, self.work + _work(spec)
        now = time.monotonic()
        if self.every and now - self.last >= self.every and self.count < self.total:
            self.last, elapsed, share = now, now - self.began, self.work / self.work_total
            log.info("how2-synth: rendered %d/%d videos (%.0f%% of frames), %.1f videos/s, %s elapsed, ETA %s",
                     self.count, self.total, 100 * share, self.count / elapsed, _clock(elapsed),
                     _clock(elapsed * (1 - share) / share))

    def finish(self) -> None:
        elapsed = time.monotonic() - self.began
        log.info("how2-synth: rendered %d videos in %s (%.1f videos/s)", self.count, _clock(elapsed),
                 self.count / max(elapsed, 1e-9))


def _work(spec: VideoSpec) -> int:
    return spec.num_frames * spec.width * spec.height


def _render_all(specs: list[VideoSpec], root: Path, workers: int, progress_every: float = 10.0,
                encoder: str = "ffmpeg") -> list[tuple[str, str, int]]:
    """Render every spec under `root` (longest first, for load balance); returns (rel_path, sha256, bytes)."""
    ordered = sorted(specs, key=lambda spec: -spec.num_frames * spec.width)
    progress = _Progress(ordered, progress_every)
    results = []
    if workers <= 1:
        for spec in ordered:
            results.append(render_video(spec, str(root), encoder))
            progress.done(spec)
        progress.finish()
        return results
    # spawn, not fork: the caller may hold threads (torch, pytest) that a forked child would inherit.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(render_video, spec, str(root), encoder): spec for spec in ordered}
        for future in as_completed(futures):
            results.append(future.result())
            progress.done(futures[future])
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    progress.finish()
    return results


def _ffmpeg_version(encoder: str) -> str:
    """The encoder build (the manifest's "ffmpeg"): the CLI's version line, or PyAV's and its libavcodec's."""
    if encoder == "pyav":
        import av
        return f"PyAV {av.__version__} libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}"
    first = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, text=True).stdout.splitlines()
    return first[0].split(" Copyright")[0] if first else "unknown"


def _remove_stale_builds(out: Path) -> None:
    """Delete `<out>.tmp-<pid>` folders left by interrupted runs whose process is gone."""
    for folder in out.parent.glob(f"{out.name}.tmp-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _train_hue(manifest: dict) -> str:
    return manifest.get("train_hue", "task")  # corpora made before the option have task hues


def _render(manifest: dict) -> tuple[int, int]:
    render = manifest.get("render", {})  # corpora made before the option (or with 0/0) are native
    return render.get("short_side", 0), render.get("fps", 0)


def _sets(manifest: dict) -> tuple[str, ...]:
    return tuple(manifest.get("sets", SETS))


def chosen_sets(sets: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """`sets` ("all" or names from SETS) as a tuple in SETS order; ValueError for an unknown or no name."""
    names = [sets] if isinstance(sets, str) else list(sets)
    if names == ["all"]:
        return SETS
    unknown = [name for name in names if name not in SETS]
    if unknown or not names:
        raise ValueError(f"sets: {unknown or names} is not 'all' or a non-empty list of {list(SETS)}")
    return tuple(name for name in SETS if name in names)


def _settings(seed, size, version, train_hue, train_videos, render, sets) -> str:
    short_side, fps = (value or "native" for value in render)
    return (f"seed={seed} size={size} version={version} short_side={short_side} fps={fps} "
            f"sets={'all' if sets == SETS else ','.join(sets)} train_hue={train_hue} train_videos={train_videos}")


def _identity(plan: CorpusPlan, sets: tuple[str, ...]) -> tuple:
    """What a corpus is made with: seed, size, generator version, train_hue, training videos (None
    without the train set), render setting (short side, fps) and sets, as recorded in its manifest."""
    return (plan.seed, plan.size, GENERATOR_VERSION, plan.train_hue,
            plan.counts["train"] if "train" in sets else None, (plan.short_side, plan.fps), sets)


def _existing_corpus(out: Path, wanted: tuple) -> dict | None:
    """The manifest of a complete corpus at `out` made as `wanted` (:func:`_identity`) says; None when
    `out` is absent or empty."""
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
            manifest.get("counts", {}).get("train"), _render(manifest), _sets(manifest))
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
            "short_side": _render(manifest)[0], "fps": _render(manifest)[1], "sets": list(_sets(manifest)),
            "counts": manifest["counts"],
            "heldout": manifest["heldout"], "files": len(manifest["files"]),
            "bytes": sum(info["bytes"] for info in manifest["files"].values()),
            "seconds": round(seconds, 2), "reused": reused}


def check_corpus(out_dir: str | Path, seed: int = 0, size: str = "default", train_hue: str = "task",
                 train_videos: int = 0, short_side: int = 0, fps: int = 0,
                 sets: str | list[str] | tuple[str, ...] = "all") -> None:
    """For a corpus folder that is already there: raise FileExistsError (naming both settings) when its
    manifest says it was made with other settings than these, and add its lexicon file. A folder
    without a manifest (a corpus made by hand) only gets the lexicon. Cheap: nothing is planned."""
    out = Path(out_dir).absolute()
    if (out / "manifest.json").is_file():
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
        sets = chosen_sets(sets)
        train = (train_videos or SIZES[size].train_videos) if "train" in sets else None
        _existing_corpus(out, (seed, size, GENERATOR_VERSION, train_hue, train, (short_side, fps), sets))
    write_lexicon(out)


def corpus_settings(synthetic) -> dict:
    """generate_corpus / check_corpus keywords from a run config's ``data.synthetic`` section."""
    return {"seed": synthetic.seed, "size": synthetic.size, "train_hue": synthetic.train_hue,
            "train_videos": synthetic.train_videos, "short_side": synthetic.render.short_side,
            "fps": synthetic.render.fps, "sets": synthetic.sets}


def _select(plan: CorpusPlan, sets: tuple[str, ...]) -> tuple[list[VideoSpec], dict[str, str], dict, dict]:
    """The plan's videos, text files, counts and held-out clip counts of the chosen sets (all: the plan's own);
    ground_truth.jsonl keeps the records of the chosen sets' videos."""
    if sets == SETS:
        return plan.specs, plan.files, plan.counts, plan.heldout_counts
    specs = [spec for spec in plan.specs if set_of_path(spec.rel_path) in sets]
    files = {rel: text for rel, text in plan.files.items() if set_of_path(rel) in sets}
    files["ground_truth.jsonl"] = "".join(json.dumps(record, sort_keys=True) + "\n" for record in plan.truth
                                          if set_of_split(record["split"]) in sets)
    counts = {key: n for key, n in plan.counts.items() if set_of_split(key) in sets}
    heldout = {key: n for key, n in plan.heldout_counts.items() if set_of_split(key) in sets}
    return specs, files, counts, heldout


def generate_corpus(out_dir: str | Path, seed: int = 0, size: str = "default", workers: int = 2,
                    train_hue: str = "task", train_videos: int = 0, short_side: int = 0, fps: int = 0,
                    sets: str | list[str] | tuple[str, ...] = "all", progress_every: float = 10.0) -> dict:
    """Generate how2-synth into `out_dir` (or reuse a complete one made with the same settings).

    `workers` render processes run in parallel (<= 1: render in this process). `train_hue`,
    `train_videos`, `short_side` and `fps`: see :func:`plan_corpus`. `sets`: "all" or a list of names
    from SETS to render (the others are planned, so the chosen ones are the same files as in a full
    corpus, but not written). Progress lines go to the ``mmpt_lite`` logger every `progress_every` s.
    Returns a summary: out_dir, seed, size, generator_version, train_hue, short_side, fps, sets, counts,
    heldout, files, bytes, seconds, reused. Raises ValueError for a bad setting, FileExistsError when
    `out_dir` holds something else (another corpus: the message names both settings), RuntimeError
    when ffmpeg is missing or fails.
    """
    began = time.monotonic()
    out = Path(out_dir).absolute()
    # Validates the settings; cheap (~0.1 s for default).
    plan = plan_corpus(seed, size, train_hue, train_videos, short_side, fps)
    seed, sets = plan.seed, chosen_sets(sets)
    manifest = _existing_corpus(out, _identity(plan, sets))
    if manifest is not None:
        write_lexicon(out)
        return _summary(out, manifest, time.monotonic() - began, reused=True)
    # Native files keep the ffmpeg CLI (the same bytes as ever); small ones are encoded in-process, where
    # starting one ffmpeg per video would cost more than drawing and encoding it.
    encoder = "ffmpeg" if (plan.short_side, plan.fps) == (0, 0) else "pyav"
    ffmpeg_version = _ffmpeg_version(encoder)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(out)
    build = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    specs, texts, counts, heldout_counts = _select(plan, sets)
    log.info("how2-synth: rendering %d videos (%s) with %d workers", len(specs),
             _settings(seed, size, GENERATOR_VERSION, train_hue, counts.get("train"), (plan.short_side, plan.fps),
                       sets), workers)
    try:
        files = {rel: (digest, size_bytes)
                 for rel, digest, size_bytes in _render_all(specs, build, workers, progress_every, encoder)}
        for rel, content in texts.items():
            data = content.encode()
            (build / rel).parent.mkdir(parents=True, exist_ok=True)
            (build / rel).write_bytes(data)
            files[rel] = (hashlib.sha256(data).hexdigest(), len(data))
        manifest = {
            "name": "how2-synth", "generator_version": GENERATOR_VERSION, "seed": seed, "size": size,
            "train_hue": train_hue,
            "preset": dataclasses.asdict(plan.preset), "ffmpeg": ffmpeg_version, "counts": counts,
            "heldout": {"shape_action": [list(p) for p in plan.heldout.shape_action],
                        "colour_shape": [list(p) for p in plan.heldout.colour_shape]},
            "heldout_clips": heldout_counts,
            "files": {rel: {"sha256": digest, "bytes": n} for rel, (digest, n) in sorted(files.items())},
        }
        # Recorded only when not the default, so a default corpus's manifest is the same as before the options.
        if plan.short_side or plan.fps:
            manifest["render"] = {"short_side": plan.short_side, "fps": plan.fps}
        if sets != SETS:
            manifest["sets"] = list(sets)
        (build / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        write_lexicon(build)
        try:
            os.rename(build, out)  # atomic; replaces `out` only if it is an empty folder
        except OSError:
            if _existing_corpus(out, _identity(plan, sets)) is None:  # a concurrent run did not finish it either
                raise
            write_lexicon(out)
            shutil.rmtree(build)
            return _summary(out, manifest, time.monotonic() - began, reused=True)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return _summary(out, manifest, time.monotonic() - began, reused=False)
