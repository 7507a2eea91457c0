"""Action-swapped hard-negative captions: the clip's own caption with its action phrase replaced.

Contrastive batches of different videos can be told apart by what is in them (objects, scene), so
MIL-NCE alone never needs the motion. A caption that keeps the clip's objects but names another
action ("slide the red ball to the left" -> "make the red ball bigger") is a negative that only the
action separates: the verb-focused hard negatives of "Verbs in Action" (Momeni et al., ICCV 2023),
made here from a phrase lexicon rather than a language model.

A lexicon maps each action to its phrasings. A phrase is literal words with at most one ``{}``, the
slot of the object ("slide the {} to the left"); phrases without a slot are descriptions
("moves to the left"). File form, one action per line, ``#`` comments::

    move_left<TAB>moves to the left | slide the {} to the left
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmpt_lite.config import ConfigError, DataConfig, resolve_path

# The object slot: 1-4 words, none of them "and" (which joins a second object's phrase). Inside a phrase it
# is as short as the rest of the phrase allows; at the end of one, as long as possible.
_WORD = r"(?!and(?!\S))\S+"
_SLOT_INSIDE = rf"(?P<obj>{_WORD}(?: {_WORD}){{0,3}}?)"
_SLOT_END = rf"(?P<obj>{_WORD}(?: {_WORD}){{0,3}})"


@dataclass(frozen=True)
class _Phrase:
    action: str
    text: str
    pattern: re.Pattern

    @property
    def has_slot(self) -> bool:
        return "{}" in self.text


@dataclass(frozen=True)
class ActionMatch:
    """Where an action phrase sits in a caption: characters [start, end), the object in the slot."""

    start: int
    end: int
    action: str
    obj: str | None


def _compile(text: str) -> re.Pattern:
    parts = [re.escape(part) for part in text.split("{}")]
    slot = _SLOT_END if text.endswith("{}") else _SLOT_INSIDE
    return re.compile(r"(?<!\S)" + slot.join(parts) + r"(?!\S)")


class ActionLexicon:
    """Actions and their phrasings; finds a caption's action and rewrites it as another."""

    def __init__(self, phrases: Mapping[str, Sequence[str]], source: str = "lexicon"):
        if len(phrases) < 2:
            raise ValueError(f"{source}: a lexicon needs at least two actions, got {len(phrases)}")
        self.actions = tuple(phrases)
        self.phrases: list[_Phrase] = []
        for action, texts in phrases.items():
            if not texts:
                raise ValueError(f"{source}: action {action!r} has no phrases")
            for text in texts:
                text = " ".join(text.lower().split())
                if text.count("{}") > 1 or not text.replace("{}", "").strip():
                    raise ValueError(f"{source}: action {action!r}: phrase {text!r} must hold words and at most "
                                     "one {} (the object)")
                self.phrases.append(_Phrase(action, text, _compile(text)))
        self.by_action = {a: [p for p in self.phrases if p.action == a] for a in self.actions}

    @classmethod
    def from_file(cls, path: str | Path) -> ActionLexicon:
        """Read ``action<TAB>phrase | phrase ...`` lines; a malformed line raises naming file:line."""
        path = Path(path)
        phrases: dict[str, list[str]] = {}
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            action, tab, rest = line.partition("\t")
            texts = [t.strip() for t in rest.split("|") if t.strip()]
            if not tab or not action.strip() or not texts:
                raise ValueError(f"{path}:{number}: expected 'action<TAB>phrase | phrase ...', got {line!r}")
            if action.strip() in phrases:
                raise ValueError(f"{path}:{number}: action {action.strip()!r} listed twice")
            phrases[action.strip()] = texts
        return cls(phrases, source=str(path))

    def find_all(self, caption: str) -> list[ActionMatch]:
        """Non-overlapping action phrases in ``caption`` (lower-cased), left to right, longest first."""
        text = " ".join(caption.lower().split())
        found, at = [], 0
        while True:
            best = None
            for phrase in self.phrases:
                m = phrase.pattern.search(text, at)
                if m and (best is None or (m.start(), -m.end()) < (best[0].start(), -best[0].end())):
                    best = (m, phrase)
            if best is None:
                return found
            m, phrase = best
            found.append(ActionMatch(m.start(), m.end(), phrase.action, m.group("obj") if phrase.has_slot else None))
            at = m.end()

    def rewrite(self, caption: str, match: ActionMatch, action: str, rng: np.random.Generator) -> str:
        """``caption`` with ``match`` replaced by a phrasing of ``action`` (same object, same form if it has one)."""
        text = " ".join(caption.lower().split())
        options = self.by_action[action]
        options = [p for p in options if p.has_slot == (match.obj is not None)] or options
        phrase = options[int(rng.integers(len(options)))]
        words = phrase.text
        if phrase.has_slot:  # the match's object; a description has none, so the slot just closes up
            words = words.replace("{}", match.obj) if match.obj is not None else " ".join(words.replace("{}", "").split())
        return f"{text[:match.start]}{words}{text[match.end:]}"

    def actions_in(self, captions: Sequence[str]) -> frozenset[str]:
        """The actions that ``captions`` name (e.g. a whole video's narration)."""
        return frozenset(m.action for c in captions for m in self.find_all(c))

    def negatives(self, captions: Sequence[str], rng: np.random.Generator, count: int,
                  pool: Collection[str] | None = None) -> list[str | None]:
        """``count`` hard negatives for a clip whose positives are ``captions`` (its K candidates).

        Each negative rewrites one phrase of a random candidate that has one, as an action that no
        candidate names (so it is not another correct description of the same clip), each action once.
        The actions come from ``pool`` when given (the actions of the video's narration, :meth:`actions_in`),
        else from the whole lexicon. Narration of the same video names actions that fit its scene, so the scene does
        not give the negative away and only the motion does; actions drawn from the whole lexicon can
        often be ruled out by the scene alone (a video's steps follow its task). ``None`` pads the list
        where no candidate names an action or fewer than ``count`` actions are left.
        """
        matches = [(i, m) for i, c in enumerate(captions) for m in self.find_all(c)]
        if not matches:
            return [None] * count
        named = {m.action for _, m in matches}
        others = [a for a in self.actions if (pool is None or a in pool) and a not in named]  # lexicon order
        out: list[str | None] = []
        for action in [others[i] for i in rng.permutation(len(others))][:count]:
            i, m = matches[int(rng.integers(len(matches)))]
            out.append(self.rewrite(captions[i], m, action, rng))
        return out + [None] * (count - len(out))


def lexicon_path(data: DataConfig) -> Path:
    """``data.action_negatives.lexicon``; a relative path is inside ``data.root`` (beside the captions)."""
    return resolve_path(data.root) / data.action_negatives.lexicon


def load_lexicon(data: DataConfig) -> ActionLexicon:
    """The lexicon file ``data.action_negatives.lexicon`` names; a missing or bad one is a ConfigError naming it."""
    path = lexicon_path(data)
    if not path.is_file():
        raise ConfigError(f"data.action_negatives.lexicon: {path} is not a lexicon file "
                          "(one line per action: 'action<TAB>phrase | phrase ...')")
    try:
        return ActionLexicon.from_file(path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"data.action_negatives.lexicon: {err}") from err
