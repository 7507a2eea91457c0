#!/usr/bin/env python
"""Clip loading throughput on one core: per-clip decoding of compressed videos vs. mmpt_lite shards.

Every method produces the same clip: 16 frames at 5 fps (3.2 s) from a random span, short side 256, random
224x224 crop, uint8 [16, 224, 224, 3]. Sources: 320x240 H.264 and 426x240 VP9 files made here with ffmpeg
(testsrc2 + temporal noise, 30 fps, default GOPs). Methods, side by side in this process:

  (a) ffmpeg     one ffmpeg subprocess per clip (MIL-NCE's loader style)
  (b) decord     open the file per clip, read the frames (skipped with a note when decord is missing)
  (c) pyav       open the file per clip, seek to the keyframe, decode forward (mmpt_lite's default backend)
  (d) shards     mmpt_lite JPEG shards built here from the same sources (frames at 5 fps, short side 256)
  (+) shards-raw / shards-h264: the other storage options (full mode), for docs/shards.md

Also: peak RSS per method, RSS after 1 and 10 passes over a fixed clip list for (d) and (b), and bytes per
video-second of each storage. Usage: python benchmarks/bench_loader.py [--quick] [--json out.json]
"""

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mmpt_lite.data.shard_build import build_video_shards
from mmpt_lite.data.shards import ShardedVideoStore
from mmpt_lite.data.video import SpatialTransform, probe_video, read_clip

NUM_FRAMES, FPS, SHORT_SIDE, CROP = 16, 5.0, 256, 224
CLIP_SECONDS = NUM_FRAMES / FPS
TRANSFORM = SpatialTransform(short_side=SHORT_SIDE, crop=CROP, crop_mode="random")


def make_sources(folder: Path, per_codec: int, seconds: int) -> list[Path]:
    """320x240 H.264 mp4 and 426x240 VP9 webm test videos (noise keeps the bit rate realistic)."""
    specs = {"h264": ("320x240", ".mp4", ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23"]),
             "vp9": ("426x240", ".webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
                                          "-crf", "35", "-b:v", "0"])}
    paths = []
    for codec, (size, ext, encoder) in specs.items():
        for i in range(per_codec):
            path = folder / f"{codec}_{i}{ext}"
            source = f"testsrc2=size={size}:rate=30:duration={seconds},hue=h={37 * i},noise=alls=10:allf=t+u"
            subprocess.run(["ffmpeg", "-y", "-v", "error", "-f", "lavfi", "-i", source, *encoder, "-pix_fmt",
                            "yuv420p", str(path)], check=True)
            paths.append(path)
    return paths


def memory_mib() -> dict[str, float]:
    """Current and peak resident memory of this process (MiB), split into anonymous and file-backed pages."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so each method gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def random_spans(paths: list[Path], count: int, seed: int) -> list[tuple[Path, float]]:
    rng = np.random.default_rng(seed)
    durations = {p: probe_video(p).duration for p in paths}
    picks = rng.integers(0, len(paths), count)
    return [(paths[i], float(rng.uniform(0, durations[paths[i]] - CLIP_SECONDS))) for i in picks]


def decode_method(backend: str):
    def load(path: Path, start: float, rng: np.random.Generator) -> np.ndarray:
        return read_clip(path, start, num_frames=NUM_FRAMES, fps=FPS, transform=TRANSFORM, backend=backend, rng=rng)
    return load


def shard_method(store: ShardedVideoStore):
    def load(path: Path, start: float, rng: np.random.Generator) -> np.ndarray:
        frames = store.read_frames(path.stem, int(round(start * FPS)), NUM_FRAMES)
        y, x = rng.integers(0, frames.shape[1] - CROP + 1), rng.integers(0, frames.shape[2] - CROP + 1)
        clip = np.zeros((NUM_FRAMES, CROP, CROP, 3), np.uint8)   # zero-pad like read_clip
        clip[:len(frames)] = frames[:, y:y + CROP, x:x + CROP]
        return clip
    return load


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the ffmpeg subprocesses)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run(load, spans, seed: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to load every span once.

    CPU time is the fairer measure on a shared machine: wall time also counts waiting for other processes.
    """
    rng = np.random.default_rng(seed)
    wall, cpu = time.perf_counter(), cpu_seconds()
    for path, start in spans:
        clip = load(path, start, rng)
        assert clip.shape == (NUM_FRAMES, CROP, CROP, 3), clip.shape
    return time.perf_counter() - wall, cpu_seconds() - cpu


def rss_over_passes(load, spans, passes: int) -> dict[str, tuple[float, float]]:
    """RSS and its anonymous part (MiB) after the first and after the last of ``passes`` passes over the same
    spans (mmap'ed shard pages count as file-backed RSS once touched; a leak would grow the anonymous part)."""
    after = []
    for _ in range(passes):
        run(load, spans, seed=0)
        after.append(memory_mib())
    return {key: (after[0][key], after[-1][key]) for key in ("VmRSS", "RssAnon")}


def storage_row(out: Path, kind: str, video_seconds: float, build_s: float, ms_per_clip: float) -> dict:
    data_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.parent != out)
    return {"storage": kind, "kib_per_video_second": data_bytes / 1024 / video_seconds,
            "build_s_per_video_second": build_s / video_seconds, "ms_per_clip": ms_per_clip}


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    import av
    decord = "decord " + __import__("decord").__version__ if importlib.util.find_spec("decord") else "no decord"
    return (f"{model}; {os.cpu_count()} logical CPUs (pinned to 1); Python {platform.python_version()}; "
            f"PyAV {av.__version__}; {decord}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, finishes in under a minute")
    parser.add_argument("--workdir", help="keep sources and shards here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})   # one core for everything, decoders set to one thread
    per_codec, seconds = (1, 20) if args.quick else (3, 60)
    slow_clips, fast_clips = (6, 100) if args.quick else (30, 1000)
    rss_slow, rss_fast, passes = (2, 50, 10) if args.quick else (10, 300, 10)
    storages = ["jpeg"] if args.quick else ["jpeg", "raw", "h264"]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"machine: {machine()}\nmaking {2 * per_codec} sources of {seconds} s in {work} ...", flush=True)
        paths = make_sources(work, per_codec, seconds)
        (work / "list.csv").write_text("video_path\n" + "".join(f"{p.name}\n" for p in paths))
        video_seconds = sum(probe_video(p).duration for p in paths)
        stores, builds = {}, {}
        for kind in storages:
            begin = cpu_seconds()
            build_video_shards(work / "list.csv", work, work / f"shards_{kind}", storage=kind, fps=FPS,
                               short_side=SHORT_SIDE, progress=False)
            builds[kind] = cpu_seconds() - begin
            stores[kind] = ShardedVideoStore(work / f"shards_{kind}")

        methods = {"(a) ffmpeg": (decode_method("ffmpeg"), slow_clips),
                   "(b) decord": (decode_method("decord"), slow_clips),
                   "(c) pyav": (decode_method("pyav"), slow_clips),
                   "(d) shards-jpeg": (shard_method(stores["jpeg"]), fast_clips)}
        for kind in storages[1:]:
            methods[f"(+) shards-{kind}"] = (shard_method(stores[kind]), fast_clips // (1 if kind == "raw" else 5))
        if not importlib.util.find_spec("decord"):
            print("note: decord is not installed (pip install decord==0.6.0): method (b) skipped")
            del methods["(b) decord"]
        results, rss = {}, {}
        for name, (load, count) in methods.items():
            spans = random_spans(paths, count, args.seed)
            run(load, spans[:2], args.seed)   # warm-up: imports, first mmap faults
            has_peak = reset_peak_rss()
            wall, cpu = run(load, spans, args.seed)
            results[name] = {"clips": count, "clips_per_s": count / cpu, "clips_per_wall_s": count / wall,
                             "peak_rss_mib": memory_mib()["VmHWM"], "peak_is_per_method": has_peak}
            print(f"  {name:18s} {count / cpu:9.1f} clips per CPU-second ({count / wall:.1f} per wall second)",
                  flush=True)
            if name in ("(d) shards-jpeg", "(b) decord"):   # before the raw store maps its large file
                per_pass = rss_fast if name.startswith("(d)") else rss_slow
                rss[name] = rss_over_passes(load, random_spans(paths, per_pass, args.seed + 1), passes)
        rows = [storage_row(work / f"shards_{k}", k, video_seconds, builds[k],
                            1000 / results["(d) shards-jpeg" if k == "jpeg" else f"(+) shards-{k}"]["clips_per_s"])
                for k in storages]

    base = {k: results[k]["clips_per_s"] for k in results}
    ratios = {"(d)/(a)": base["(d) shards-jpeg"] / base["(a) ffmpeg"]}
    if "(b) decord" in base:
        ratios["(d)/(b)"] = base["(d) shards-jpeg"] / base["(b) decord"]
    print(f"\nclip: {NUM_FRAMES} frames at {FPS:g} fps, short side {SHORT_SIDE}, random {CROP} crop; one core, "
          "one decoder thread\n")
    print("| method | clips per CPU-s | CPU ms/clip | clips per wall-s | peak RSS (MiB) |\n|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['clips_per_s']:.1f} | {1000 / r['clips_per_s']:.1f} | {r['clips_per_wall_s']:.1f} | "
              f"{r['peak_rss_mib']:.0f} |")
    print("\n" + ", ".join(f"{k} = {v:.1f}x" for k, v in ratios.items()))
    print(f"\n| memory over {passes} passes (MiB) | RSS after pass 1 | RSS after pass {passes} | change | anonymous "
          f"after pass 1 | anonymous after pass {passes} | change |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, memory in rss.items():
        cells = [f"{a:.1f} | {b:.1f} | {100 * (b - a) / a:+.1f}%" for a, b in memory.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n| storage (short side 256, 5 fps) | KiB per video-second | CPU ms per clip | build CPU-s per video-s |"
          "\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['storage']} | {row['kib_per_video_second']:.0f} | {row['ms_per_clip']:.2f} | "
              f"{row['build_s_per_video_second']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "methods": results, "ratios": ratios,
                                               "rss_passes": rss, "storage": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
