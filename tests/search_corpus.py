"""A checkpoint that can tell videos apart by a caption, trained in seconds, for the search tests.

The tiny how2-synth run the other tests use does not retrieve its own captions (after 300 steps on 200
videos its MSR-VTT-format R@1 was 0 of 6, i.e. chance): shapes, hues and motions are too much for a few
seconds of training. Solid colours are not: a HowTo100M-format corpus of coloured clips captioned "a <colour>
screen with a white box", 100 MIL-NCE steps of the debug_tiny recipe, and every colour's caption ranks its
own colour first among six unseen colour videos. The run is trained once per test session (both search test
modules share it through the session's base temp folder).
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from conftest import launch_tiny, make_video

COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
STEPS = 100


def caption(colour: str) -> str:
    return f"a {colour} screen"


def _write_corpus(root: Path) -> None:
    from mmpt_lite.data.shard_build import build_video_shards

    (root / "captions").mkdir(parents=True, exist_ok=True)
    rows = ["video_path"]
    for colour in COLOURS:
        for copy in range(2):
            name = f"{colour}{copy}"
            make_video(root / "videos" / f"{name}.mp4", colour, seconds=8, fps=5, size="40x32")
            rows.append(f"videos/{name}.mp4")
            lines = ["start,end,text"] + [f"{s},{s + 2},a {colour} screen with a white box" for s in range(0, 8, 2)]
            (root / "captions" / f"{name}.csv").write_text("\n".join(lines) + "\n")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    build_video_shards(root / "train.csv", root, root / "shards_fps2.5_s32", caption_root=root / "captions",
                       fps=2.5, short_side=32, progress=False)


def colour_run(tmp_path_factory) -> Path:
    """The trained run folder (built on first use in this session)."""
    base = tmp_path_factory.getbasetemp() / "search_colour_run"
    base.mkdir(exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run = base / "run"
        if not (base / "done").exists():
            _write_corpus(base / "corpus")
            result = launch_tiny([f"data.root={base / 'corpus'}", "data.synthetic.enabled=false",
                                  "data.action_negatives.count=0", f"train.output_dir={run}",
                                  f"train.max_steps={STEPS}", "eval.num_frames=4", "eval.video_size=32"])
            assert result.returncode == 0, result.stderr[-3000:]
            (base / "done").write_text("ok\n")
    return run


def colour_folder(root: Path, colours=COLOURS) -> Path:
    """One unseen video per colour (other size and rate than training, 3-5 s), some nested, one with an
    upper-case extension; returns ``root``."""
    for colour in colours:
        i = COLOURS.index(colour)
        make_video(root / relative_name(colour), colour, seconds=3 + i % 3, fps=10, size="64x48")
    return root


def relative_name(colour: str) -> str:
    i = COLOURS.index(colour)
    folder = "nested/deeper/" if i % 3 == 1 else ""
    return f"{folder}{colour}.MP4" if i == 2 else f"{folder}{colour}.mp4"
