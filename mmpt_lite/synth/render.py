"""Drawing and encoding for the how2-synth corpus (``corpus.py`` describes the corpus itself).

Everything visual lives here: the object vocabulary (shapes, colours, textures), what each action
looks like over time (:func:`plan_motion`), backgrounds with clutter, and the ffmpeg encoders.
A :class:`VideoSpec` fully describes one video; :func:`render_video` turns it into a file. All
randomness comes in through the spec (a scene seed and planned motions), so rendering is a pure
function of the spec and the same spec always gives the same bytes (with the same encoder build).

Coordinates: scene units, x to the right, y down; angles in degrees, positive = clockwise on screen.
A scene unit is a pixel of the planned frame (320x240 for most sets). :func:`rescaled` renders a spec at
another short side and frame rate: every mask is evaluated on the scaled pixel grid and motion is a
function of continuous time, so the scene (positions, sizes, speeds in scene units) stays the same.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import shutil
import subprocess
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "heart")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 175, 60), "blue": (45, 85, 225), "yellow": (240, 215, 35),
    "purple": (150, 60, 195), "orange": (250, 135, 25), "white": (245, 245, 245), "pink": (250, 120, 185),
}
TEXTURES = ("solid", "striped", "dotted", "checkered")
ACTIONS = ("move_left", "move_right", "move_up", "move_down", "grow", "shrink",
           "rotate_clockwise", "rotate_anticlockwise", "appear", "disappear", "bounce")
STATIC = "static"  # an object on screen that does nothing (a distractor)

# A plain disc or ring looks the same at every angle: spinning one is invisible.
_ROTATION_INVARIANT = ("circle", "ring")
_MAX_GROWTH = 1.35  # largest scale reached by "grow" / started from by "shrink"
_MIN_GROWTH = 0.55


class Look(NamedTuple):
    """What an object looks like."""

    shape: str
    colour: str
    texture: str


def can_perform(shape: str, texture: str, action: str) -> bool:
    """Whether the action is visible on this object (a solid circle cannot visibly rotate)."""
    return not (action.startswith("rotate") and shape in _ROTATION_INVARIANT and texture == "solid")


@dataclass(frozen=True)
class Motion:
    """State of one object over a step; progress p = t / duration in [0, 1].

    centre = (x0, y0) + p * (x1 - x0, y1 - y0), minus a bounce of |sin(pi * bounces * p)| * bounce_height
    in y; scale = scale0 + p * (scale1 - scale0); angle = angle0 + spin * t; alpha ramps 0->1
    (fade_in) or 1->0 over [fade_start, fade_start + fade_len] in p when fade_in is not None.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    scale0: float = 1.0
    scale1: float = 1.0
    angle0: float = 0.0
    spin: float = 0.0
    bounce_height: float = 0.0
    bounces: int = 0
    fade_in: bool | None = None
    fade_start: float = 0.0
    fade_len: float = 1.0

    def reversed(self) -> Motion:
        """The opposite motion: endpoints swapped and spin flipped (left <-> right, grow <-> shrink, cw <-> acw)."""
        fade_in = None if self.fade_in is None else not self.fade_in
        return Motion(self.x1, self.y1, self.x0, self.y0, self.scale1, self.scale0, self.angle0, -self.spin,
                      self.bounce_height, self.bounces, fade_in, 1.0 - self.fade_start - self.fade_len,
                      self.fade_len)

    def state(self, t: float, duration: float) -> tuple[float, float, float, float, float]:
        """(cx, cy, scale, angle, alpha) at time t seconds into a step of `duration` seconds."""
        p = min(max(t / duration, 0.0), 1.0)
        cx = self.x0 + (self.x1 - self.x0) * p
        cy = self.y0 + (self.y1 - self.y0) * p - self.bounce_height * abs(math.sin(math.pi * self.bounces * p))
        scale = self.scale0 + (self.scale1 - self.scale0) * p
        alpha = 1.0
        if self.fade_in is not None:
            ramp = min(max((p - self.fade_start) / self.fade_len, 0.0), 1.0)
            alpha = ramp if self.fade_in else 1.0 - ramp
        return cx, cy, scale, self.angle0 + self.spin * t, alpha


@dataclass(frozen=True)
class Actor:
    """One object of base radius `radius` px following `motion`."""

    look: Look
    radius: float
    motion: Motion


@dataclass(frozen=True)
class Shot:
    """A time span [start, end) seconds of a video and the objects drawn in it."""

    start: float
    end: float
    actors: tuple[Actor, ...]


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render one file: size, rate, the scene and its shots (covering the video)."""

    rel_path: str          # relative to the corpus root; the suffix picks the container
    width: int             # of the file, in pixels
    height: int
    fps: int
    num_frames: int
    scene_seed: int        # background and clutter
    hue: float             # background hue in [0, 1)
    shots: tuple[Shot, ...]
    # (width, height) of the planned scene when the file is rendered at another size (see rescaled);
    # None: the file's size, one pixel per scene unit.
    scene_size: tuple[int, int] | None = None

    @property
    def scale(self) -> float:
        """File pixels per scene unit."""
        return 1.0 if self.scene_size is None else self.height / self.scene_size[1]


def _even(value: float) -> int:
    """Nearest even integer >= 2 (yuv420p encoders need even dimensions)."""
    return max(2, 2 * round(value / 2))


def rescaled(spec: VideoSpec, short_side: int = 0, fps: int = 0) -> VideoSpec:
    """The same scene rendered with short side `short_side` px and `fps` frames per second (0: as planned).

    The long side is scaled alike and rounded to an even number; the duration stays (num_frames is
    rounded). With both 0 the spec itself is returned, so the file is byte-identical to the planned one.
    """
    if not short_side and not fps:
        return spec
    if short_side < 0 or short_side % 2 or fps < 0:
        raise ValueError(f"short_side must be even and >= 0 and fps >= 0, got {short_side}, {fps}")
    changes: dict = {}
    if short_side:
        scene = spec.scene_size or (spec.width, spec.height)
        if scene[0] < scene[1]:  # the height is the short side, so it scales exactly (VideoSpec.scale)
            raise ValueError(f"{spec.rel_path}: portrait scenes are not supported")
        width, height = (_even(side * short_side / scene[1]) for side in scene)
        changes.update(width=width, height=height, scene_size=scene)
    if fps:
        changes.update(fps=fps, num_frames=max(1, round(spec.num_frames * fps / spec.fps)))
    return replace(spec, **changes)


def plan_motion(action: str, region: tuple[float, float, float, float], radius: float, duration: float,
                rng: np.random.Generator) -> Motion:
    """A motion that performs `action` over `duration` s, keeping the object inside `region` (x0, y0, x1, y1).

    Moves cover 70-100% of the free span so the direction is obvious over ~3 s at 5 fps; spins run at
    60-110 deg/s (well under the 36 deg per 0.2 s that would alias a five-fold star).
    """
    rx0, ry0, rx1, ry1 = region
    reach = radius * (_MAX_GROWTH if action in ("grow", "shrink") else 1.0)
    lo_x, hi_x, lo_y, hi_y = rx0 + reach, rx1 - reach, ry0 + reach, ry1 - reach
    if lo_x > hi_x or lo_y > hi_y:
        raise ValueError(f"region {region} too small for radius {radius:.1f}")
    x, y = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    angle = float(rng.uniform(0, 360))
    if action in ("move_left", "move_right", "move_up", "move_down"):
        horizontal = action in ("move_left", "move_right")
        lo, hi = (lo_x, hi_x) if horizontal else (lo_y, hi_y)
        travel = (hi - lo) * rng.uniform(0.7, 1.0)
        start = rng.uniform(lo + travel, hi) if action in ("move_left", "move_up") else rng.uniform(lo, hi - travel)
        end = start - travel if action in ("move_left", "move_up") else start + travel
        if horizontal:
            return Motion(start, y, end, y, angle0=angle)
        return Motion(x, start, x, end, angle0=angle)
    if action in ("grow", "shrink"):
        small, big = _MIN_GROWTH, rng.uniform(1.2, _MAX_GROWTH)
        s0, s1 = (small, big) if action == "grow" else (big, small)
        return Motion(x, y, x, y, scale0=s0, scale1=s1, angle0=angle)
    if action in ("rotate_clockwise", "rotate_anticlockwise"):
        speed = rng.uniform(60, 110) * (1 if action == "rotate_clockwise" else -1)
        return Motion(x, y, x, y, angle0=angle, spin=float(speed))
    if action in ("appear", "disappear"):
        pop = rng.random() < 0.3
        fade_len = 0.02 if pop else rng.uniform(0.15, 0.35)
        fade_start = rng.uniform(0.0, 0.3) if action == "appear" else rng.uniform(0.4, 0.95 - fade_len)
        return Motion(x, y, x, y, angle0=angle, fade_in=action == "appear", fade_start=fade_start,
                      fade_len=fade_len)
    if action == "bounce":
        height = (hi_y - lo_y) * rng.uniform(0.5, 0.9)
        bounces = max(1, round(duration / rng.uniform(1.2, 2.0)))
        return Motion(x, hi_y, x, hi_y, angle0=angle, bounce_height=height, bounces=bounces)
    if action == STATIC:
        return Motion(x, y, x, y, angle0=angle)
    raise ValueError(f"unknown action {action!r}")


# ---------------------------------------------------------------- shapes and textures
def _shape_mask(shape: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixels inside `shape`; (a, b) are object-frame coordinates with the shape inside the unit disc."""
    rho2 = a * a + b * b
    if shape == "circle":
        return rho2 <= 1.0
    if shape == "ring":
        return (rho2 <= 1.0) & (rho2 >= 0.3)
    if shape == "square":
        return np.maximum(np.abs(a), np.abs(b)) <= 0.7
    if shape == "triangle":  # apex up (b is down), vertices on the unit circle
        return (b <= 0.5) & (b >= -1.0 + 1.8 * np.abs(a))
    if shape == "cross":
        ab, bb = np.abs(a), np.abs(b)
        return ((ab <= 0.3) & (bb <= 0.95)) | ((bb <= 0.3) & (ab <= 0.95))
    if shape == "star":  # five points: radius falls from 1 at a tip to 0.42 between tips
        phase = np.mod(np.arctan2(b, a) + math.pi / 2, 2 * math.pi / 5) * (5 / (2 * math.pi))
        tip = np.abs(2 * phase - 1) ** 1.6
        return rho2 <= (0.42 + 0.58 * tip) ** 2
    if shape == "heart":  # (x^2 + y^2 - 1)^3 <= x^2 y^3, lobes up, scaled into the unit disc
        x, y = a * 1.25, -b * 1.25 + 0.2
        x2, lobes = x * x, x * x + y * y - 1.0
        return lobes * lobes * lobes <= x2 * y * y * y
    raise ValueError(f"unknown shape {shape!r}")


def _texture_mask(texture: str, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Pixels painted in the secondary (darker) shade; patterns are fixed to the object so spins show."""
    if texture == "solid":
        return None
    if texture == "striped":
        return np.floor(a / 0.25).astype(np.int64) % 2 == 1
    if texture == "dotted":
        da, db = a / 0.5 - np.round(a / 0.5), b / 0.5 - np.round(b / 0.5)
        return da * da + db * db <= 0.09
    if texture == "checkered":
        return (np.floor(a / 0.4) + np.floor(b / 0.4)).astype(np.int64) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}")


def _secondary_shade(rgb: np.ndarray) -> np.ndarray:
    """The pattern colour: half brightness, or mid grey for white (half of white would read as grey anyway)."""
    return rgb * 0.5 if float(rgb.sum()) < 600.0 else np.full(3, 140.0)  # mean < 200 (a numpy mean costs ~5 us)


def draw_shape(frame: np.ndarray, shape: str, rgb: np.ndarray, texture: str,
               cx: float, cy: float, radius: float, angle: float, alpha: float = 1.0) -> None:
    """Paint one shape into `frame` (uint8 [H, W, 3]) in place, touching only its bounding box."""
    if alpha <= 0.0 or radius < 1.0:
        return
    height, width = frame.shape[:2]
    x0, x1 = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, width)
    y0, y1 = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, height)
    if x0 >= x1 or y0 >= y1:
        return
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx) / radius
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy) / radius
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # Screen point = R(angle) @ object point, so object coords = R(-angle) @ screen offset.
    a = xs[None, :] * cos + ys[:, None] * sin
    b = ys[:, None] * cos - xs[None, :] * sin
    inside = _shape_mask(shape, a, b)
    secondary = _texture_mask(texture, a, b)
    box = frame[y0:y1, x0:x1]
    # Boolean-mask assignments of one colour each are ~3x faster than building a per-pixel paint image.
    layers = [(inside, rgb)] if secondary is None else [
        (inside & ~secondary, rgb), (inside & secondary, _secondary_shade(rgb))]
    for where, colour in layers:
        if alpha >= 1.0:
            box[where] = colour.astype(np.uint8)
        else:
            box[where] = (alpha * colour + (1.0 - alpha) * box[where]).astype(np.uint8)


# ---------------------------------------------------------------- backgrounds
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255.0


def _upsample(coarse: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a [h, w, C] grid to [height, width, C] (corners aligned)."""
    def axis_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.linspace(0, n_in - 1, n_out, dtype=np.float32)
        lo = np.minimum(pos.astype(np.int64), n_in - 2)
        return lo, lo + 1, pos - lo

    r0, r1, wr = axis_weights(height, coarse.shape[0])
    c0, c1, wc = axis_weights(width, coarse.shape[1])
    rows = coarse[r0] * (1 - wr)[:, None, None] + coarse[r1] * wr[:, None, None]
    return rows[:, c0] * (1 - wc)[None, :, None] + rows[:, c1] * wc[None, :, None]


@dataclass(frozen=True)
class _Clutter:
    shape: str
    rgb: np.ndarray
    x: float
    y: float
    radius: float
    angle: float
    drift: tuple[float, float, float, float]  # amplitude x, amplitude y (px), period (s), phase (rad)


def _make_scene(width: int, height: int, hue: float, seed: int, scene_size: tuple[int, int] | None = None,
                scale: float = 1.0) -> tuple[np.ndarray, list[_Clutter]]:
    """A muted gradient + low-frequency noise background with static clutter baked in, and drifting clutter.

    The background is `width` x `height` pixels; clutter is placed in scene units (`scene_size`, default
    the pixel size) and drawn at `scale` pixels per unit. Backgrounds stay desaturated and mid-dark
    (value <= 0.62) so the saturated subjects, white included, always stand out; clutter is small and
    takes muted colours near the background's.
    """
    scene_width, scene_height = scene_size or (width, height)
    rng = np.random.default_rng(seed)
    near = _hsv(hue, rng.uniform(0.12, 0.35), rng.uniform(0.3, 0.55))
    far = _hsv(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.12, 0.35), rng.uniform(0.35, 0.62))
    direction = rng.uniform(0, 2 * math.pi)
    xs, ys = np.meshgrid(np.linspace(-1, 1, width, dtype=np.float32), np.linspace(-1, 1, height, dtype=np.float32))
    ramp = (xs * math.cos(direction) + ys * math.sin(direction)) * 0.5 + 0.5
    image = near * (1 - ramp[..., None]) + far * ramp[..., None]
    image += _upsample(rng.normal(0, 10, (4, 5, 3)).astype(np.float32), height, width)
    background = np.clip(image, 0, 255).astype(np.uint8)

    def clutter(drifting: bool) -> _Clutter:
        base = near if rng.random() < 0.5 else far
        rgb = np.clip(0.6 * base + 0.4 * _hsv(rng.random(), 0.3, 0.5), 0, 255)
        # At most ~6 px/s: slower than the slowest subject move (~9 px/s), so clutter never reads as the action.
        drift = (rng.uniform(5, 20), rng.uniform(3, 10), rng.uniform(20, 40), rng.uniform(0, 2 * math.pi))
        return _Clutter(str(rng.choice(SHAPES)), rgb, rng.uniform(0, scene_width), rng.uniform(0, scene_height),
                        scene_height * rng.uniform(0.04, 0.09), rng.uniform(0, 360),
                        drift if drifting else (0, 0, 1, 0))

    for item in (clutter(False) for _ in range(int(rng.integers(3, 8)))):
        draw_shape(background, item.shape, item.rgb, "solid", item.x * scale, item.y * scale, item.radius * scale,
                   item.angle)
    return background, [clutter(True) for _ in range(int(rng.integers(0, 3)))]


def render_frames(spec: VideoSpec):
    """Yield the video's frames, uint8 [height, width, 3] RGB, one per 1/fps s (the same buffer each time)."""
    scale = spec.scale
    background, drifting = _make_scene(spec.width, spec.height, spec.hue, spec.scene_seed, spec.scene_size, scale)
    frame = np.empty_like(background)
    colours = {name: np.array(rgb, np.float32) for name, rgb in COLOURS.items()}
    shot_index = 0
    for index in range(spec.num_frames):
        t = index / spec.fps
        while shot_index + 1 < len(spec.shots) and t >= spec.shots[shot_index].end:
            shot_index += 1
        np.copyto(frame, background)
        for item in drifting:
            ax, ay, period, phase = item.drift
            wave = math.sin(2 * math.pi * t / period + phase)
            draw_shape(frame, item.shape, item.rgb, "solid", (item.x + ax * wave) * scale,
                       (item.y + ay * wave) * scale, item.radius * scale, item.angle)
        if spec.shots:
            shot = spec.shots[shot_index]
            for actor in shot.actors:
                cx, cy, size, angle, alpha = actor.motion.state(t - shot.start, shot.end - shot.start)
                draw_shape(frame, actor.look.shape, colours[actor.look.colour], actor.look.texture, cx * scale,
                           cy * scale, actor.radius * size * scale, angle, alpha)
        yield frame


# ---------------------------------------------------------------- encoding
_BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1"]
# x264 ultrafast (no CABAC, no B-frames): ~0.55 ms/frame to encode here against ~1.0 for veryfast, and
# ~1.7x faster to decode in the training loaders; files are ~2.5x larger, still ~0.6 MB per 30 s video.
_CODEC_ARGS = {
    ".mp4": ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "23", "-pix_fmt", "yuv420p"],
    ".avi": ["-c:v", "mpeg4", "-q:v", "4", "-pix_fmt", "yuv420p"],
    ".webm": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "0",
              "-lag-in-frames", "0", "-b:v", "0", "-crf", "36", "-pix_fmt", "yuv420p"],
}


# The same settings for the in-process encoder (PyAV's bundled libav*): starting an ffmpeg process costs
# ~90 ms of CPU here, more than drawing and encoding a 30 s video at 64 px and 5 fps (~35 ms).
_PYAV_CODECS = {
    ".mp4": ("libx264", {"preset": "ultrafast", "crf": "23"}),
    ".avi": ("mpeg4", {}),  # qscale 4, set on the codec context
    ".webm": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "row-mt": "0", "lag-in-frames": "0",
                             "crf": "36", "b": "0"}),
}
ENCODERS = ("ffmpeg", "pyav")


def ffmpeg_binary() -> str:
    """Path of the ffmpeg CLI, or a RuntimeError saying how to install it."""
    path = shutil.which("ffmpeg")
    if path is None:
        raise RuntimeError("ffmpeg not found: apt-get install -y ffmpeg")
    return path


def _encode_pyav(spec: VideoSpec, out: Path) -> None:
    """Encode in this process with PyAV, single-threaded and bitexact, as the ffmpeg CLI path does."""
    import av  # a dependency of mmpt_lite; imported here so the CLI path does not need it

    codec, options = _PYAV_CODECS[out.suffix]
    with av.open(str(out), "w", container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=spec.fps, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        context = stream.codec_context
        context.time_base, context.thread_count, context.gop_size = Fraction(1, spec.fps), 1, spec.fps
        context.flags |= av.codec.context.Flags.bitexact
        if codec == "mpeg4":
            context.qscale = 4
        for index, frame in enumerate(render_frames(spec)):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = index
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))


def render_video(spec: VideoSpec, root: str, encoder: str = "ffmpeg") -> tuple[str, str, int]:
    """Render `spec` under `root`; returns (rel_path, sha256 hex, size in bytes).

    Frames are piped raw to one single-threaded ffmpeg with bitexact flags (`encoder` "ffmpeg"), or
    encoded in this process by PyAV with the same settings ("pyav": no process start, for small
    videos), so a spec always encodes to the same bytes (on the same ffmpeg or PyAV build). Key
    frames every second keep random access cheap for the loaders.
    """
    out = Path(root) / spec.rel_path
    out.parent.mkdir(parents=True, exist_ok=True)
    if encoder == "pyav":
        _encode_pyav(spec, out)
        return spec.rel_path, hashlib.sha256(out.read_bytes()).hexdigest(), out.stat().st_size
    if encoder != "ffmpeg":
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {list(ENCODERS)}")
    cmd = [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{spec.width}x{spec.height}", "-r", str(spec.fps),
           "-i", "-", "-threads", "1", *_CODEC_ARGS[out.suffix], "-g", str(spec.fps), *_BITEXACT, str(out)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for frame in render_frames(spec):
            proc.stdin.write(frame.data)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # ffmpeg died; its stderr below says why
    finally:
        stderr = proc.stderr.read().decode(errors="replace")
        proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on {spec.rel_path} (exit {proc.returncode}): {stderr.strip()[-500:]}")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return spec.rel_path, digest, out.stat().st_size
