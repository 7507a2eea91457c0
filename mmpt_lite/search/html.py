"""A self-contained HTML page of search results: inline CSS, thumbnails as base64 JPEGs, no script.

Every text that reaches the page (the query, file names, error reasons) is escaped with ``html.escape``:
file names are as untrusted as the query. Each hit links to ``file:///abs/path#t=start,end`` (a media
fragment: the browser opens the local file at the window's start).
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from mmpt_lite.fileio import atomic_write_text
from mmpt_lite.search.query import Hit

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } .meta { color: #666; }
ol { list-style: none; padding: 0; } li { margin: 0 0 1em; padding: .6em; border: 1px solid #ddd; border-radius: 6px; }
.strip { display: block; max-width: 100%; height: 72px; background: #000; margin-bottom: .3em; }
.score { font-weight: 600; } .span { font-family: ui-monospace, monospace; } .missing { color: #a00; }
"""


def format_span(start: float, end: float) -> str:
    return f"{start:.1f}-{end:.1f} s"


def file_link(path: Path, start: float, end: float) -> str:
    """``file:///abs/path#t=start,end`` with the path percent-encoded."""
    return f"{Path(os.path.abspath(path)).as_uri()}#t={start:.2f},{end:.2f}"


def render_results_page(query: str, hits: list[Hit], *, video_root: Path, thumbnails: list[bytes | None],
                        description: str = "") -> str:
    """The page as a string; ``thumbnails[i]`` is hit i's JPEG strip (None: drawn as a note instead)."""
    esc = html.escape
    items = []
    for hit, jpeg in zip(hits, thumbnails, strict=True):
        if jpeg is not None:
            picture = (f'<img class="strip" alt="frames of {esc(hit.file)}" '
                       f'src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode("ascii")}">')
        else:
            picture = '<div class="missing">(no thumbnail: the file could not be read)</div>'
        link = file_link(video_root / hit.file, hit.start, hit.end)
        items.append(f'<li>{picture}<div><span class="score">#{hit.rank} &middot; {hit.score:.3f}</span> '
                     f'<span class="span">{esc(format_span(hit.start, hit.end))}</span> '
                     f'<a href="{esc(link)}">{esc(hit.file)}</a></div></li>')
    body = "\n".join(items) if items else "<p>No results.</p>"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{esc(query)} - mmpt-lite search</title><style>{STYLE}</style></head><body>\n'
            f'<h1>Results for &ldquo;{esc(query)}&rdquo;</h1>\n'
            f'<p class="meta">{esc(description)}</p>\n<ol>\n{body}\n</ol>\n</body></html>\n')


def write_results_page(path: str | os.PathLike, page: str) -> None:
    """Write the page atomically (a reader never sees half of it)."""
    atomic_write_text(path, page)
