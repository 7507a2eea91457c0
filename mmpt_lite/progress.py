"""Progress bars that stay readable in a log file.

On a terminal: tqdm as usual. Redirected to a file, tqdm would redraw one ever-growing line with carriage
returns; here each redraw becomes its own line (with the bar's rate and ETA), at most every
``file_interval_s`` seconds, so `tail` and a saved log show how far a phase got and how long it has left.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class _LinePerRedraw:
    """A text stream for tqdm that turns each carriage-return redraw into one newline-terminated line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").replace("\x1b[A", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, *, file_interval_s: float = 15.0, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on stderr: redrawn every second on a terminal, one line per
    ``file_interval_s`` in a file."""
    stream = kwargs.pop("file", sys.stderr)
    if stream.isatty():
        return tqdm(iterable, file=stream, mininterval=kwargs.pop("mininterval", 1.0), **kwargs)
    kwargs.pop("dynamic_ncols", None)
    return tqdm(iterable, file=_LinePerRedraw(stream), mininterval=file_interval_s, ncols=100,
                **{k: v for k, v in kwargs.items() if k != "mininterval"})
