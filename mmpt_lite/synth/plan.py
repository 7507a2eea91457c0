"""What the how2-synth corpus contains: the size presets, tasks, held-out combinations and, for every
split, the videos (as render specs), annotation files and ground truth, all without rendering.

Every video is planned from its own ``numpy.random.Generator`` seeded with (seed, stream, index),
so a plan depends on nothing but (seed, size). Content changes must bump GENERATOR_VERSION. The render
setting (short side, fps) changes only the files' pixel size and frame rate, never the plan: every video
is planned in 320x240 scene units and continuous time, then rescaled (``render.rescaled``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import numbers

import numpy as np

from mmpt_lite.synth import text
from mmpt_lite.synth.render import (
    ACTIONS,
    COLOURS,
    SHAPES,
    STATIC,
    TEXTURES,
    Actor,
    Look,
    Shot,
    VideoSpec,
    can_perform,
    plan_motion,
    rescaled,
)
from mmpt_lite.synth.text import pick

GENERATOR_VERSION = 2
WIDTH, HEIGHT = 320, 240


@dataclasses.dataclass(frozen=True)
class SizePreset:
    """How much of each split to generate; durations in whole seconds, (low, high) inclusive."""

    train_videos: int
    train_seconds: tuple[int, int]
    train_fps: tuple[int, ...]           # each video picks one (also used by YouCook2)
    eval_fps: tuple[int, ...]            # MSR-VTT, fine-grained, HMDB, Kinetics clips
    msrvtt_clips: int
    youcook_videos: int
    youcook_seconds: tuple[int, int]
    finegrained_pairs: int
    hmdb_classes: int
    hmdb_per_class: int
    kinetics_classes: int
    kinetics_per_class: tuple[int, int]  # (train, val)
    ssv2_classes: int
    ssv2_per_class: tuple[int, int]      # (train, validation)


SIZES: dict[str, SizePreset] = {
    # Tests: ~6.7k frames, 39 files; a few seconds on 2 cores.
    "tiny": SizePreset(train_videos=6, train_seconds=(30, 30), train_fps=(15,), eval_fps=(15, 20),
                       msrvtt_clips=6, youcook_videos=2, youcook_seconds=(30, 30), finegrained_pairs=2,
                       hmdb_classes=3, hmdb_per_class=3, kinetics_classes=3, kinetics_per_class=(1, 1),
                       ssv2_classes=3, ssv2_per_class=(1, 1)),
    # The main job's corpus: 600 training videos. Fewer let the CPU-sized model memorise videos instead of
    # learning colour/shape/action words: at 80 videos held-out retrieval stalled while the training loss fell;
    # at 200 it peaked after 200 steps (MedR 13.5) and declined; at 600 it keeps improving (docs/data.md).
    "default": SizePreset(train_videos=600, train_seconds=(30, 34), train_fps=(15,), eval_fps=(15, 20, 25, 30),
                          msrvtt_clips=64, youcook_videos=12, youcook_seconds=(30, 45), finegrained_pairs=24,
                          hmdb_classes=10, hmdb_per_class=10, kinetics_classes=11, kinetics_per_class=(3, 1),
                          ssv2_classes=11, ssv2_per_class=(3, 1)),
    # Real runs: ~2M frames, 4.9k videos (MSR-VTT at its 1k-A size); use many workers.
    "large": SizePreset(train_videos=1000, train_seconds=(30, 90), train_fps=(15, 20, 24, 25, 30),
                        eval_fps=(15, 20, 25, 30), msrvtt_clips=1000, youcook_videos=100, youcook_seconds=(45, 120),
                        finegrained_pairs=250, hmdb_classes=11, hmdb_per_class=60, kinetics_classes=11,
                        kinetics_per_class=(60, 15), ssv2_classes=11, ssv2_per_class=(60, 15)),
}

# A task is a scene theme (background hue) with a typical order of actions, like a recipe.
TASKS = (
    (101, "magic show", 0.75, ("appear", "rotate_clockwise", "grow", "disappear", "appear", "bounce")),
    (102, "shape parade", 0.08, ("move_right", "move_right", "bounce", "move_left", "rotate_anticlockwise")),
    (103, "balloon party", 0.55, ("appear", "grow", "move_up", "move_up", "shrink", "disappear")),
    (104, "tidy up", 0.3, ("move_down", "move_left", "shrink", "move_down", "disappear")),
    (105, "spinning tops", 0.0, ("appear", "rotate_clockwise", "rotate_anticlockwise", "move_right")),
    (106, "bouncy castle", 0.45, ("bounce", "move_right", "bounce", "grow", "bounce", "move_left")),
    (107, "rocket launch", 0.65, ("grow", "move_up", "rotate_anticlockwise", "move_up", "shrink")),
    (108, "garden growing", 0.22, ("appear", "grow", "grow", "move_down", "rotate_clockwise")),
)
# Class order for the classification sets: direction pairs first, so small presets keep them.
CLASS_ORDER = ("move_left", "move_right", "rotate_clockwise", "rotate_anticlockwise", "grow", "shrink",
               "move_up", "move_down", "bounce", "appear", "disappear")
DIRECTION_PAIRS = (("move_left", "move_right"), ("move_up", "move_down"),
                   ("rotate_clockwise", "rotate_anticlockwise"), ("grow", "shrink"))
SSV2_TEMPLATES = {
    "move_left": "Moving [something] from right to left", "move_right": "Moving [something] from left to right",
    "move_up": "Moving [something] up", "move_down": "Moving [something] down",
    "grow": "Making [something] bigger", "shrink": "Making [something] smaller",
    "rotate_clockwise": "Turning [something] clockwise", "rotate_anticlockwise": "Turning [something] anticlockwise",
    "appear": "Showing [something] appearing", "disappear": "Making [something] disappear",
    "bounce": "Bouncing [something] up and down",
}
SSV2_FPS, SSV2_WIDTHS = 12, (320, 426)
_HORIZONTAL, _VERTICAL = ("move_left", "move_right"), ("move_up", "move_down", "bounce")
# Independent random streams: (seed, stream, index) seeds one Generator per video or per table.
_STREAMS = {"heldout": 1, "train": 2, "youcook2": 3, "msrvtt": 4, "finegrained": 5, "hmdb51": 6,
            "hmdb51_splits": 7, "kinetics": 8, "ssv2": 9, "train_hue": 77}
# Where a training video's background hue comes from: its task (the scene predicts the recipe's actions,
# as on HowTo100M) or an independent draw per video (no scene cue: only motion tells the actions apart).
TRAIN_HUES = ("task", "random")
# The corpus's sets, by top folder ("train": train.csv, videos/, captions/). A corpus may hold a subset.
SETS = ("train", "youcook2", "msrvtt", "finegrained", "hmdb51", "kinetics", "ssv2")


def set_of_split(split: str) -> str:
    """The set of a ground-truth split or a counts key: kinetics_val -> kinetics, youcook2_segments -> youcook2."""
    return split.split("_")[0]


def set_of_path(rel_path: str) -> str | None:
    """The set a corpus file belongs to; None for corpus-wide files (ground_truth.jsonl)."""
    top = rel_path.split("/")[0]
    if top in ("train.csv", "videos", "captions"):
        return "train"
    return top if top in SETS else None


@dataclasses.dataclass(frozen=True)
class Step:
    """Objects doing actions during [start, end) s (`doers`: (look, action) pairs), plus static distractors."""

    start: float
    end: float
    doers: tuple[tuple[Look, str], ...]
    statics: tuple[Look, ...] = ()


@dataclasses.dataclass(frozen=True)
class Heldout:
    """Combinations that never occur in training videos."""

    shape_action: tuple[tuple[str, str], ...]
    colour_shape: tuple[tuple[str, str], ...]

    def tags(self, look: Look, action: str) -> list[str]:
        found = [f"shape_action:{look.shape}/{action}"] if (look.shape, action) in self.shape_action else []
        if (look.colour, look.shape) in self.colour_shape:
            found.append(f"colour_shape:{look.colour}/{look.shape}")
        return found

    def step_tags(self, step: Step) -> set[str]:
        """Held-out combinations performed in a step (static distractors do not count)."""
        return {tag for look, action in step.doers for tag in self.tags(look, action)}


def choose_heldout(seed: int) -> Heldout:
    """Three (shape, action) and three (colour, shape) pairs, over six different shapes."""
    rng = _rng(seed, "heldout", 0)
    shapes = [str(s) for s in rng.permutation(SHAPES)]
    actions = [str(a) for a in rng.permutation(ACTIONS)]
    colours = [str(c) for c in rng.permutation(list(COLOURS))]
    return Heldout(shape_action=tuple(sorted(zip(shapes[:3], actions[:3], strict=True))),
                   colour_shape=tuple(sorted(zip(colours[:3], shapes[3:6], strict=True))))


def _rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream], index])


def _youtube_id(seed: int, stream: str, index: int) -> str:
    """An 11-character YouTube-like id hashed from (seed, stream, index): unique without shared state."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    value = int.from_bytes(hashlib.sha256(f"how2-synth/{seed}/{stream}/{index}".encode()).digest()[:16], "big")
    chars = []
    for _ in range(11):
        value, digit = divmod(value, len(alphabet))
        chars.append(alphabet[digit])
    return "".join(chars)


def _allowed(look: Look, action: str, banned: Heldout | None) -> bool:
    """Visible on this object and, when `banned` is given (training), not a held-out combination."""
    return can_perform(look.shape, look.texture, action) and (banned is None or not banned.tags(look, action))


def _random_look(rng: np.random.Generator, banned: Heldout | None, actions: tuple[str, ...] = ()) -> Look:
    """A random look able to perform every one of `actions` and not using a combination in `banned`."""
    while True:
        look = Look(pick(rng, SHAPES), pick(rng, list(COLOURS)), pick(rng, TEXTURES))
        if (banned is None or (look.colour, look.shape) not in banned.colour_shape) and all(
                _allowed(look, action, banned) for action in actions):
            return look


def _eval_doer(rng: np.random.Generator, heldout: Heldout, unseen: bool) -> tuple[Look, str]:
    """(look, action) for an evaluation clip: one held-out combination if `unseen`, else all seen."""
    if not unseen:
        look = _random_look(rng, heldout)
        return look, pick(rng, [a for a in ACTIONS if _allowed(look, a, heldout)])
    kind, pair = pick(rng, [("shape_action", p) for p in heldout.shape_action]
                       + [("colour_shape", p) for p in heldout.colour_shape])
    if kind == "shape_action":
        shape, action = pair
        return Look(shape, pick(rng, list(COLOURS)),
                    pick(rng, [t for t in TEXTURES if can_perform(shape, t, action)])), action
    look = Look(pair[1], pair[0], pick(rng, TEXTURES))
    return look, pick(rng, [a for a in ACTIONS if can_perform(look.shape, look.texture, a)])


def _compatible(first: str, second: str) -> bool:
    """Two simultaneous actions fit the two-region layout unless one is horizontal and the other vertical."""
    pair = (first, second)
    return not (any(a in _HORIZONTAL for a in pair) and any(a in _VERTICAL for a in pair))


def _stage(rng: np.random.Generator, step: Step, width: int) -> tuple[Actor, ...]:
    """Place a step's objects. One fills the frame; two get top/bottom bands when one moves sideways,
    left/right halves otherwise, so their motions never cross."""
    objects = list(step.doers) + [(look, STATIC) for look in step.statics]
    if len(objects) == 1:
        regions = [(0.0, 0.0, float(width), float(HEIGHT))]
        radius = HEIGHT * rng.uniform(0.15, 0.25)
    else:
        if any(action in _HORIZONTAL for _, action in objects):
            regions = [(0.0, 0.0, width, HEIGHT / 2), (0.0, HEIGHT / 2, width, HEIGHT)]
        else:
            regions = [(0.0, 0.0, width / 2, HEIGHT), (width / 2, 0.0, width, HEIGHT)]
        regions = [regions[i] for i in rng.permutation(2)]
        radius = HEIGHT * rng.uniform(0.15, 0.18)
    return tuple(Actor(look, radius, plan_motion(action, region, radius, step.end - step.start, rng))
                 for (look, action), region in zip(objects, regions, strict=True))


def _spec(rng: np.random.Generator, rel_path: str, fps: int, num_frames: int, hue: float,
          shots: list[Shot], width: int = WIDTH) -> VideoSpec:
    return VideoSpec(rel_path, width, HEIGHT, fps, num_frames, int(rng.integers(1 << 31)),
                     (hue + rng.uniform(-0.04, 0.04)) % 1.0, tuple(shots))


def _plan_task_video(rng: np.random.Generator, task: tuple, duration: int, heldout: Heldout,
                     evaluation: bool) -> tuple[list[Step], list[Shot]]:
    """Steps of 3-9 s that follow the task's recipe 75% of the time, with idle moments around them.

    A video has 2-4 "ingredient" objects reused across its steps (20% of steps have a second doer,
    30% a static distractor). Training videos avoid held-out combinations; evaluation videos seek
    them: a held-out colour/shape ingredient in a third of the videos, a held-out shape/action in
    ~20% of the steps where an ingredient allows one (about a third of the segments end up unseen).
    """
    banned = None if evaluation else heldout
    ingredients: list[Look] = []
    wanted = int(rng.integers(2, 5))
    while len(ingredients) < wanted:
        look = _random_look(rng, banned)
        if all(look[:2] != other[:2] for other in ingredients):
            ingredients.append(look)
    if evaluation and rng.random() < 0.33:
        colour, shape = pick(rng, heldout.colour_shape)
        ingredients[0] = Look(shape, colour, pick(rng, TEXTURES))
    unseen = [(look, a) for look in ingredients for a in ACTIONS
              if (look.shape, a) in heldout.shape_action and can_perform(look.shape, look.texture, a)]
    steps: list[Step] = []
    shots: list[Shot] = []

    def idle(start: float, end: float) -> None:
        """A pause between steps: an ingredient waits on screen (70%), or only the background shows."""
        waiting = ((pick(rng, ingredients), STATIC),) if rng.random() < 0.7 else ()
        shots.append(Shot(start, end, _stage(rng, Step(start, end, waiting), WIDTH) if waiting else ()))

    t = round(rng.uniform(1.0, 3.0), 2)
    idle(0.0, t)
    for k in range(100):  # bounded: a step is skipped when no ingredient can perform the action
        length = round(rng.uniform(3.0, 9.0), 2)
        if t + length > duration - 1.0:
            break
        action = task[3][k % len(task[3])] if rng.random() < 0.75 else pick(rng, ACTIONS)
        options = [(look, action) for look in ingredients if _allowed(look, action, banned)]
        if evaluation and unseen and rng.random() < 0.2:
            options = unseen
        if not options:
            continue
        doers, statics = [pick(rng, options)], ()
        others = [look for look in ingredients if look != doers[0][0]]
        if others and rng.random() < 0.2:
            second = pick(rng, others)
            actions = [a for a in ACTIONS if _allowed(second, a, banned) and _compatible(doers[0][1], a)]
            doers.append((second, pick(rng, actions)))
        elif others and rng.random() < 0.3:
            statics = (pick(rng, others),)
        step = Step(t, round(t + length, 2), tuple(doers), statics)
        steps.append(step)
        shots.append(Shot(step.start, step.end, _stage(rng, step, WIDTH)))
        t = step.end
        if rng.random() < 0.4:
            gap_end = round(min(t + rng.uniform(0.5, 2.0), duration - 1.0), 2)
            idle(t, gap_end)
            t = gap_end
    idle(t, float(duration))
    return steps, shots


def _csv(columns: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


class CorpusPlan:
    """Everything to write: video specs (rendered by workers), text files by path, ground truth, counts."""

    def __init__(self, seed: int, size: str, preset: SizePreset, train_hue: str = "task", short_side: int = 0,
                 fps: int = 0) -> None:
        self.seed, self.size, self.preset, self.heldout, self.train_hue = seed, size, preset, choose_heldout(seed), train_hue
        self.short_side, self.fps = short_side, fps  # render setting (0: as planned)
        self.specs: list[VideoSpec] = []
        self.files: dict[str, str] = {}
        self.truth: list[dict] = []
        self.counts: dict[str, int] = {}
        self.heldout_counts: dict[str, int] = {}

    def add_video(self, split: str, video_id: str, spec: VideoSpec, steps: list[Step], **extra) -> None:
        """Register a video to render (at the plan's render setting) and its ground-truth record (extra keys
        go into the record)."""
        spec = rescaled(spec, self.short_side, self.fps)
        tags = sorted(set().union(*(self.heldout.step_tags(step) for step in steps)))
        self.specs.append(spec)
        self.truth.append({
            "split": split, "video_id": video_id, "path": spec.rel_path, "fps": spec.fps,
            "num_frames": spec.num_frames, "width": spec.width, "height": spec.height, "heldout": tags,
            "steps": [{"start": s.start, "end": s.end,
                       "objects": [dict(look._asdict(), action=a) for look, a in s.doers]
                       + [dict(look._asdict(), action=STATIC) for look in s.statics]} for s in steps],
            **extra})
        self.heldout_counts[split] = self.heldout_counts.get(split, 0) + bool(tags)

    def add_clip(self, rng: np.random.Generator, split: str, video_id: str, rel_path: str, look: Look,
                 action: str, seconds: float, fps: int, width: int = WIDTH, **extra) -> None:
        """A one-shot clip of one object doing `action` for its whole length (30%: plus a static distractor)."""
        distractor = _random_look(rng, None)
        statics = (distractor,) if rng.random() < 0.3 and distractor[:2] != look[:2] else ()
        step = Step(0.0, seconds, ((look, action),), statics)
        shots = [Shot(0.0, seconds, _stage(rng, step, width))]
        spec = _spec(rng, rel_path, fps, round(seconds * fps), rng.uniform(0, 1), shots, width)
        self.add_video(split, video_id, spec, [step], **extra)


def _plan_train(plan: CorpusPlan) -> None:
    preset, rows = plan.preset, []
    for i in range(preset.train_videos):
        rng, video_id = _rng(plan.seed, "train", i), _youtube_id(plan.seed, "train", i)
        task = pick(rng, TASKS)
        duration = int(rng.integers(preset.train_seconds[0], preset.train_seconds[1] + 1))
        fps = int(pick(rng, preset.train_fps))
        steps, shots = _plan_task_video(rng, task, duration, plan.heldout, evaluation=False)
        # Drawn from its own stream, so "random" changes nothing but the hue.
        hue = task[2] if plan.train_hue == "task" else float(_rng(plan.seed, "train_hue", i).uniform())
        spec = _spec(rng, f"videos/{video_id}.mp4", fps, duration * fps, hue, shots)
        lines = text.narrate(rng, task[1], steps, duration)
        plan.files[f"captions/{video_id}.csv"] = _csv(["start", "end", "text"],
                                                      [[f"{s:.2f}", f"{e:.2f}", words] for s, e, words in lines])
        plan.add_video("train", video_id, spec, steps, task=task[0])
        rows.append([spec.rel_path])
    plan.files["train.csv"] = _csv(["video_path"], rows)
    plan.counts["train"] = len(rows)


def _plan_youcook(plan: CorpusPlan) -> None:
    preset, rows, unseen_segments = plan.preset, [], 0
    for i in range(preset.youcook_videos):
        rng, video_id = _rng(plan.seed, "youcook2", i), _youtube_id(plan.seed, "youcook2", i)
        task = TASKS[i % len(TASKS)]
        duration = int(rng.integers(preset.youcook_seconds[0], preset.youcook_seconds[1] + 1))
        fps = int(pick(rng, preset.train_fps))
        steps, shots = _plan_task_video(rng, task, duration, plan.heldout, evaluation=True)
        spec = _spec(rng, f"youcook2/validation/{task[0]}/{video_id}.mp4", fps, duration * fps, task[2], shots)
        plan.add_video("youcook2", video_id, spec, steps, task=task[0])
        for step in steps:  # segment bounds rounded to whole seconds, as in YouCook2's annotations
            sentence = " and ".join(text.instruct(look, action, text.draw_wording(rng, 0.3))
                                    for look, action in step.doers)
            start = int(round(step.start))
            rows.append([max(start + 1, int(round(step.end))), start, task[0], sentence, video_id])
            unseen_segments += bool(plan.heldout.step_tags(step))
    plan.files["youcook2/validation_youcook.csv"] = _csv(["end", "start", "task", "text", "video_id"], rows)
    plan.counts["youcook2_videos"], plan.counts["youcook2_segments"] = preset.youcook_videos, len(rows)
    plan.heldout_counts["youcook2_segments"] = unseen_segments


def _plan_msrvtt(plan: CorpusPlan) -> None:
    """MSR-VTT 1k-A style clips (one caption each); every third clip uses a held-out combination."""
    rows = []
    for i in range(plan.preset.msrvtt_clips):
        rng, number = _rng(plan.seed, "msrvtt", i), 7010 + i
        look, action = _eval_doer(rng, plan.heldout, unseen=i % 3 == 2)
        seconds = int(rng.integers(6, 11))
        plan.add_clip(rng, "msrvtt", f"video{number}", f"msrvtt/video{number}.mp4", look, action, seconds,
                      int(pick(rng, plan.preset.eval_fps)))
        sentence = text.describe(look, action, text.draw_wording(rng))
        rows.append([f"ret{i}", f"msr{number}", f"video{number}", sentence])
    plan.files["msrvtt/msrvtt_test.csv"] = _csv(["key", "vid_key", "video_id", "sentence"], rows)
    plan.counts["msrvtt"] = len(rows)


def _plan_finegrained(plan: CorpusPlan) -> None:
    """Pairs of clips with the same scene, object and wording that differ only in direction or only in colour.

    Pair j is a colour pair when j % 3 == 2, else a direction pair from DIRECTION_PAIRS; every
    fourth pair uses a held-out (colour, shape). The second clip of a pair replays the first one's
    plan with the motion reversed or the colour swapped.
    """
    rows = []
    for j in range(plan.preset.finegrained_pairs):
        rng = _rng(plan.seed, "finegrained", j)
        unseen, colour_pair = j % 4 == 3, j % 3 == 2
        actions = (pick(rng, ACTIONS),) * 2 if colour_pair else DIRECTION_PAIRS[j % len(DIRECTION_PAIRS)]
        if unseen:
            colour, shape = pick(rng, plan.heldout.colour_shape)
            textures = [t for t in TEXTURES if all(can_perform(shape, t, a) for a in actions)]
            look = Look(shape, colour, pick(rng, textures))
        else:
            look = _random_look(rng, plan.heldout, actions)
        other_colour = pick(rng, [c for c in COLOURS if c != look.colour])
        looks = (look, look._replace(colour=other_colour)) if colour_pair else (look, look)
        seconds, fps = int(rng.integers(6, 9)), int(pick(rng, plan.preset.eval_fps))
        first = Step(0.0, float(seconds), ((looks[0], actions[0]),))
        actors = _stage(rng, first, WIDTH)
        twin = (dataclasses.replace(actors[0], look=looks[1]) if colour_pair
                else dataclasses.replace(actors[0], motion=actors[0].motion.reversed()))
        scene_seed, hue, wording = int(rng.integers(1 << 31)), rng.uniform(0, 1), text.draw_wording(rng)
        for k in ((0, 1) if rng.random() < 0.5 else (1, 0)):
            number = 9010 + len(rows)
            shot = Shot(0.0, float(seconds), (actors[0] if k == 0 else twin,))
            spec = VideoSpec(f"finegrained/video{number}.mp4", WIDTH, HEIGHT, fps, seconds * fps, scene_seed, hue,
                             (shot,))
            step = Step(0.0, float(seconds), ((looks[k], actions[k]),))
            plan.add_video("finegrained", f"video{number}", spec, [step], pair=j,
                           pair_kind="colour" if colour_pair else "direction")
            sentence = text.describe(looks[k], actions[k], wording)
            rows.append([f"ret{len(rows)}", f"msr{number}", f"video{number}", sentence])
    plan.files["finegrained/msrvtt_test.csv"] = _csv(["key", "vid_key", "video_id", "sentence"], rows)
    plan.counts["finegrained"] = len(rows)


def _hmdb_split_codes(rng: np.random.Generator, count: int, split: int) -> np.ndarray:
    """Codes (1 train, 2 test, 0 unused) for one class: ~70/30 over the used videos, 10% unused.

    The three splits rotate one shuffled order by a test-set length each, so their test sets differ.
    """
    order = rng.permutation(count)
    unused, test = count // 10, round(0.3 * (count - count // 10))
    rolled = np.roll(order, -(split - 1) * test)
    codes = np.ones(count, np.int64)
    codes[rolled[:test]] = 2
    codes[rolled[test:test + unused]] = 0
    return codes


def _plan_hmdb(plan: CorpusPlan) -> None:
    preset = plan.preset
    for c, action in enumerate(CLASS_ORDER[:preset.hmdb_classes]):
        names = []
        for i in range(preset.hmdb_per_class):
            rng, name = _rng(plan.seed, "hmdb51", c * preset.hmdb_per_class + i), f"{action}_{i:03d}.avi"
            plan.add_clip(rng, "hmdb51", name[:-4], f"hmdb51/{action}/{name}", _random_look(rng, None, (action,)),
                          action, int(rng.integers(3, 6)), int(pick(rng, preset.eval_fps)), label=action)
            names.append(name)
        for split in (1, 2, 3):
            codes = _hmdb_split_codes(_rng(plan.seed, "hmdb51_splits", c), len(names), split)
            plan.files[f"hmdb51/testTrainMulti_7030_splits/{action}_test_split{split}.txt"] = "".join(
                f"{name} {code}\n" for name, code in zip(names, codes, strict=True))
    plan.counts["hmdb51"] = preset.hmdb_classes * preset.hmdb_per_class


def _plan_kinetics(plan: CorpusPlan) -> None:
    """Kinetics-style lists: 'videos/<split>/<class>/<id>_<start>_<end>.mp4 <label>', relative to kinetics/."""
    classes = CLASS_ORDER[:plan.preset.kinetics_classes]
    plan.files["kinetics/classes.txt"] = "".join(f"{name}\n" for name in classes)
    index = 0
    for split, per_class in zip(("train", "val"), plan.preset.kinetics_per_class, strict=True):
        lines = []
        for label, action in enumerate(classes):
            for _ in range(per_class):
                rng, video_id = _rng(plan.seed, "kinetics", index), _youtube_id(plan.seed, "kinetics", index)
                index += 1
                start, seconds = int(rng.integers(0, 300)), int(rng.integers(4, 8))
                rel = f"videos/{split}/{action}/{video_id}_{start:06d}_{start + seconds:06d}.mp4"
                look = _random_look(rng, None, (action,))
                plan.add_clip(rng, f"kinetics_{split}", video_id, f"kinetics/{rel}", look, action, seconds,
                              int(pick(rng, plan.preset.eval_fps)), label=label)
                lines.append(f"{rel} {label}\n")
        plan.files[f"kinetics/{split}.txt"] = "".join(lines)
        plan.counts[f"kinetics_{split}"] = len(lines)


def _plan_ssv2(plan: CorpusPlan) -> None:
    """SSv2 style: VP9 webm, 240 px high, 2-4 s at 12 fps; labels.json keys are templates without brackets."""
    classes = CLASS_ORDER[:plan.preset.ssv2_classes]
    labels = {SSV2_TEMPLATES[a].replace("[", "").replace("]", ""): str(k) for k, a in enumerate(classes)}
    plan.files["ssv2/labels.json"] = json.dumps(labels, indent=1) + "\n"
    index = 0
    for split, per_class in zip(("train", "validation"), plan.preset.ssv2_per_class, strict=True):
        entries = []
        for action in classes:
            for _ in range(per_class):
                rng = _rng(plan.seed, "ssv2", index)
                index += 1
                look, num_frames = _random_look(rng, None, (action,)), int(rng.integers(24, 49))
                plan.add_clip(rng, f"ssv2_{split}", str(index), f"ssv2/videos/{index}.webm", look, action,
                              num_frames / SSV2_FPS, SSV2_FPS, width=int(pick(rng, SSV2_WIDTHS)))
                thing, template = text.noun(look, text.draw_wording(rng, 0.3)), SSV2_TEMPLATES[action]
                entries.append({"id": str(index), "label": template.replace("[something]", thing).lower(),
                                "template": template, "placeholders": [thing]})
        plan.files[f"ssv2/{split}.json"] = json.dumps(entries, indent=1) + "\n"
        plan.counts[f"ssv2_{split}"] = len(entries)


def _non_negative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def plan_corpus(seed: int, size: str, train_hue: str = "task", train_videos: int = 0, short_side: int = 0,
                fps: int = 0) -> CorpusPlan:
    """The whole corpus as specs and file contents, without rendering anything (cheap).

    `train_hue`: "task" (training videos take their task's hue) or "random" (one independent hue per video).
    `train_videos`: how many training videos (0: the size preset's). Video i is the same whatever the
    count, and the evaluation sets do not depend on it, so a larger corpus extends a smaller one.
    `short_side` / `fps`: render every video with this short side (even) and frame rate (0: the formats'
    native 240 px and 12-30 fps); the scene, its timing and all text files but ground_truth.jsonl (which
    records each file's size and rate) stay the same.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    if train_hue not in TRAIN_HUES:
        raise ValueError(f"unknown train_hue {train_hue!r}; choose one of {list(TRAIN_HUES)}")
    seed, train_videos = _non_negative_int("seed", seed), _non_negative_int("train_videos", train_videos)
    short_side, fps = _non_negative_int("short_side", short_side), _non_negative_int("fps", fps)
    if short_side % 2:
        raise ValueError(f"short_side must be even (yuv420p), got {short_side}")
    preset = dataclasses.replace(SIZES[size], train_videos=train_videos) if train_videos else SIZES[size]
    plan = CorpusPlan(seed, size, preset, train_hue, short_side, fps)
    for planner in (_plan_train, _plan_youcook, _plan_msrvtt, _plan_finegrained, _plan_hmdb, _plan_kinetics,
                    _plan_ssv2):
        planner(plan)
    plan.files["ground_truth.jsonl"] = "".join(json.dumps(record, sort_keys=True) + "\n" for record in plan.truth)
    return plan
