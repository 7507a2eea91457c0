"""Wording for the how2-synth corpus: clean captions for the evaluation sets and noisy ASR-style narration.

Paraphrase lists of paired actions (left/right, up/down, clockwise/anticlockwise, grow/shrink, ...)
are aligned index by index, so the same :class:`Wording` gives two captions that differ only in the
direction words (what the fine-grained set needs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmpt_lite.synth.render import Look

SHAPE_WORDS = {
    "circle": ("circle", "ball", "disc"), "square": ("square", "box", "block"), "triangle": ("triangle",),
    "star": ("star",), "ring": ("ring", "donut", "hoop"), "cross": ("cross", "plus sign"), "heart": ("heart",),
}
TEXTURE_WORDS = {"striped": ("striped",), "dotted": ("dotted", "spotted"),
                 "checkered": ("checkered", "checked")}
# Third-person phrases; index i of one list pairs with index i of its opposite.
DESCRIBE = {
    "move_left": ("moves to the left", "slides to the left", "goes left", "travels leftwards",
                  "drifts to the left side"),
    "move_right": ("moves to the right", "slides to the right", "goes right", "travels rightwards",
                   "drifts to the right side"),
    "move_up": ("moves up", "slides upwards", "goes up", "travels upwards", "rises to the top"),
    "move_down": ("moves down", "slides downwards", "goes down", "travels downwards", "sinks to the bottom"),
    "grow": ("grows", "gets bigger", "grows larger", "expands", "becomes larger"),
    "shrink": ("shrinks", "gets smaller", "shrinks down", "contracts", "becomes smaller"),
    "rotate_clockwise": ("rotates clockwise", "spins clockwise", "turns clockwise",
                         "rotates in a clockwise direction", "spins around clockwise"),
    "rotate_anticlockwise": ("rotates anticlockwise", "spins counterclockwise", "turns anticlockwise",
                             "rotates in a counterclockwise direction", "spins around anticlockwise"),
    "appear": ("appears", "fades in", "shows up", "comes into view", "pops into view"),
    "disappear": ("disappears", "fades away", "vanishes", "goes out of view", "pops out of view"),
    "bounce": ("bounces", "bounces up and down", "hops", "keeps bouncing", "jumps up and down"),
}
INSTRUCT = {
    "move_left": ("slide the {} to the left", "move the {} left", "push the {} leftwards"),
    "move_right": ("slide the {} to the right", "move the {} right", "push the {} rightwards"),
    "move_up": ("lift the {} up", "move the {} up", "push the {} upwards"),
    "move_down": ("lower the {} down", "move the {} down", "push the {} downwards"),
    "grow": ("make the {} bigger", "grow the {}", "enlarge the {}"),
    "shrink": ("make the {} smaller", "shrink the {}", "squeeze the {} down"),
    "rotate_clockwise": ("rotate the {} clockwise", "turn the {} clockwise", "spin the {} clockwise"),
    "rotate_anticlockwise": ("rotate the {} anticlockwise", "turn the {} counterclockwise",
                             "spin the {} anticlockwise"),
    "appear": ("bring in the {}", "add the {}", "put the {} in"),
    "disappear": ("take away the {}", "remove the {}", "make the {} vanish"),
    "bounce": ("bounce the {}", "make the {} bounce", "let the {} hop"),
}
_CLEAN_FRAMES = ("{det} {noun} {verb}", "{det} {noun} {verb} on a plain background",
                 "in this clip {det} {noun} {verb}", "we see {det} {noun} that {verb}")
_SAY_INSTRUCTION = ("now we {}", "okay so now let's {}", "next we're going to {}", "and then you {}", "{}",
                    "so we just {} like this", "what i do here is {}")
_SAY_DESCRIPTION = ("the {}", "you can see the {}", "and now the {}", "so the {} there", "watch how the {}")
_INTROS = ("hi everyone today we're doing the {}", "welcome back today i'll show you the {}",
           "hey guys so this is my {}")
_OUTROS = ("and that's the {} done thanks for watching", "so that was the {} see you next time",
           "that's it for the {} don't forget to subscribe")
FILLERS = ("okay so now let's", "alright", "as you can see", "um so yeah", "there we go", "that looks good",
           "make sure you take your time with this one", "let me just move the camera a bit",
           "this is really easy", "you know what i mean", "so that's pretty much it", "okay",
           "let's get started", "and that's about it for this part")


@dataclass(frozen=True)
class Wording:
    """Random choices behind one caption; reuse one to word two objects/actions identically."""

    frame: int
    phrase: int
    synonym: int
    texture: bool    # mention the texture
    definite: bool   # "the" rather than "a"/"an"


def draw_wording(rng: np.random.Generator, texture_prob: float = 0.4) -> Wording:
    return Wording(int(rng.integers(1 << 16)), int(rng.integers(1 << 16)), int(rng.integers(1 << 16)),
                   bool(rng.random() < texture_prob), bool(rng.random() < 0.5))


def noun(look: Look, wording: Wording) -> str:
    """'striped red star', 'blue ball' ..."""
    shape, colour, texture = look
    words = [colour, _choose(SHAPE_WORDS[shape], wording.synonym)]
    if wording.texture and texture != "solid":
        words.insert(0, _choose(TEXTURE_WORDS[texture], wording.synonym))
    return " ".join(words)


def describe(look: Look, action: str, wording: Wording) -> str:
    """A clean caption, e.g. 'a striped red star spins clockwise'."""
    name = noun(look, wording)
    det = "the" if wording.definite else ("an" if name[0] in "aeiou" else "a")
    frame = _choose(_CLEAN_FRAMES, wording.frame)
    return frame.format(det=det, noun=name, verb=_choose(DESCRIBE[action], wording.phrase))


def instruct(look: Look, action: str, wording: Wording) -> str:
    """A clean instruction (YouCook2 style), e.g. 'slide the red circle to the left'."""
    return _choose(INSTRUCT[action], wording.phrase).format(noun(look, wording))


def narrate(rng: np.random.Generator, task_name: str, steps, duration: float) -> list[tuple[float, float, str]]:
    """ASR-like narration of a video: (start, end, text) lines inside [0, duration], sorted by start.

    `steps` are objects with .start, .end and .doers (a list of (look, action)). The noise model:
    each line is shifted from its step by N(0, 2 s) clipped to +-5 s; 10% of steps are never
    mentioned and 10% of lines describe a different step of the video; 35% of steps get a second
    line; filler lines arrive about every 8 s; lines last 1.5-4.5 s, so neighbours overlap; and a
    quarter of lines carry an ASR slip (a dropped, repeated or "uh" word).
    """
    lines = []

    def add(anchor: float, sentence: str) -> None:
        start = min(max(anchor, 0.0), duration - 1.0)
        end = min(start + rng.uniform(1.5, 4.5), duration)
        lines.append((round(start, 2), round(end, 2), _asr_slip(rng, sentence)))

    add(rng.uniform(0.0, 1.0), pick(rng, _INTROS).format(task_name))
    for step in steps:
        if rng.random() < 0.1:
            continue
        spoken = steps[int(rng.integers(len(steps)))] if rng.random() < 0.1 else step
        anchor = step.start + rng.uniform(0.0, 0.5) * (step.end - step.start) + float(np.clip(rng.normal(0, 2), -5, 5))
        add(anchor, _say_step(rng, spoken))
        if rng.random() < 0.35:
            look, action = spoken.doers[0]
            add(anchor + rng.uniform(1.0, 3.0), _say_description(rng, look, action))
    for _ in range(int(rng.poisson(duration / 8))):
        add(rng.uniform(0.0, duration), pick(rng, FILLERS))
    add(duration - rng.uniform(2.0, 4.0), pick(rng, _OUTROS).format(task_name))
    return sorted(lines)


def _choose(options, index: int):
    return options[index % len(options)]


def pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _say_description(rng: np.random.Generator, look: Look, action: str) -> str:
    wording = draw_wording(rng, texture_prob=0.25)
    subject_verb = f"{noun(look, wording)} {_choose(DESCRIBE[action], wording.phrase)}"
    return _choose(_SAY_DESCRIPTION, wording.frame).format(subject_verb)


def _say_step(rng: np.random.Generator, step) -> str:
    """Narrate a step, as an instruction (60%) or a description; a second doer is mentioned half the time."""
    look, action = step.doers[0]
    if rng.random() < 0.6:
        wording = draw_wording(rng, texture_prob=0.25)
        sentence = _choose(_SAY_INSTRUCTION, wording.frame).format(instruct(look, action, wording))
    else:
        sentence = _say_description(rng, look, action)
    if len(step.doers) > 1 and rng.random() < 0.5:
        other, other_action = step.doers[1]
        wording = draw_wording(rng, texture_prob=0.25)
        sentence += f" and the {noun(other, wording)} {_choose(DESCRIBE[other_action], wording.phrase)}"
    return sentence


def _asr_slip(rng: np.random.Generator, sentence: str) -> str:
    words = sentence.split()
    roll = rng.random()
    if roll < 0.25 and len(words) > 3:
        at = int(rng.integers(len(words)))
        if roll < 0.08:
            del words[at]
        elif roll < 0.16:
            words.insert(at, words[at])
        else:
            words.insert(at, "uh" if rng.random() < 0.5 else "um")
    return " ".join(words)
