"""``mmpt-lite index | search | serve``: text search over a folder of your own videos.

    mmpt-lite index VIDEO_DIR --checkpoint RUN --out INDEX     build, or bring up to date (only new/changed files)
    mmpt-lite search INDEX "a red ball bounces" [-k 10] [--html results.html]
    mmpt-lite serve INDEX [--port 8000] [--host 127.0.0.1]

Until the console entry point exists: ``python -m mmpt_lite.search.cli index ...``. Usage errors, bad paths,
checkpoints or indexes end with one line on stderr and status 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from mmpt_lite.checkpoint import CheckpointFormatError
from mmpt_lite.config import ConfigError
from mmpt_lite.evaluation.runtime import DECODERS

# What a usage mistake, a wrong path, checkpoint or index raises before any work starts.
USER_ERRORS = (CheckpointFormatError, ConfigError, FileNotFoundError, NotADirectoryError, ValueError)
LISTED_SKIPS = 20  # skipped files named on the terminal; the full list is in the index folder


class UsageError(Exception):
    """A bad flag or path: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints its whole usage block; one line says enough
        raise UsageError(message)


def printable(text: str) -> str:
    """``text`` with control characters shown escaped: a file name must not drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _fail(prog: str, exc: BaseException) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"{prog}: error: {printable(message)}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------- index
def _index_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmpt-lite index", description="Embed every video under VIDEO_DIR (overlapping windows) "
                     "into a faiss index at --out; a re-run embeds only new or changed files.")
    parser.add_argument("video_dir", metavar="VIDEO_DIR", help="folder of videos (mp4/mkv/webm/avi/mov, nested)")
    parser.add_argument("--out", required=True, metavar="INDEX", help="index folder (created or updated)")
    parser.add_argument("--checkpoint", metavar="RUN", help="mmpt_lite run / step folder, model.safetensors, "
                        "s3d_howto100m.pth or a MIL-NCE checkpoint (default for an existing index: its own)")
    parser.add_argument("--dict_path", help="word dictionary .npy of an S3D checkpoint")
    parser.add_argument("--word2vec", help="word2vec file: the text tower's vocabulary")
    parser.add_argument("--num_frames", type=int, help="frames per window (default: the checkpoint's eval protocol)")
    parser.add_argument("--fps", type=float, help="window sampling rate (default: the checkpoint's eval protocol)")
    parser.add_argument("--video_size", type=int, help="square side (default: the checkpoint's eval protocol)")
    parser.add_argument("--stride", type=float, help="seconds between window starts (default: half a window)")
    parser.add_argument("--decoder", choices=DECODERS, help="video decoder (default: the run's data.decoder)")
    parser.add_argument("--batch_size", type=int, default=64, help="windows per forward pass (default 64)")
    parser.add_argument("--workers", type=int, default=1, help="decode worker processes (0 = in process)")
    parser.add_argument("--commit_every", type=int, default=16,
                        help="files embedded between commits to disk (what a killed run can lose)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _index_plan(args):
    """(video root, loaded model, checkpoint record, protocol, run options), every check done before any decoding."""
    from mmpt_lite.search.index import IndexRun
    from mmpt_lite.search.model import default_protocol, load_search_model, resolve_device
    from mmpt_lite.search.spans import WindowProtocol
    from mmpt_lite.search.store import read_header

    root = Path(args.video_dir).expanduser()
    if not root.is_dir():
        raise UsageError(f"VIDEO_DIR {root} is not a folder")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if out.resolve() == root.resolve():
        raise UsageError(f"--out {out} is VIDEO_DIR itself; give the index its own folder")
    for flag, value, low in (("--batch_size", args.batch_size, 1), ("--workers", args.workers, 0),
                             ("--commit_every", args.commit_every, 1)):
        if value < low:
            raise UsageError(f"{flag} must be at least {low}, got {value}")
    header = read_header(out) if out.is_dir() else None
    if args.checkpoint is None and header is None:
        raise UsageError(f"--checkpoint is required to build a new index ({out} holds none)")
    if args.checkpoint is not None:
        loaded, record = load_search_model(args.checkpoint, dict_path=args.dict_path, word2vec=args.word2vec)
    else:
        old = header["checkpoint"]
        loaded, record = load_search_model(old["load_path"], dict_path=args.dict_path or old.get("dict_path"),
                                           word2vec=args.word2vec or old.get("word2vec"))
    if header is not None:
        base = WindowProtocol.from_json(header["protocol"])
    else:
        base = default_protocol(loaded, decoder=args.decoder)
    changes = {name: value for name, value in (("num_frames", args.num_frames), ("fps", args.fps),
                                                ("video_size", args.video_size), ("decoder", args.decoder))
               if value is not None}
    protocol = WindowProtocol(**{**base.__dict__, **changes})
    if args.stride is not None:
        protocol = WindowProtocol(**{**protocol.__dict__, "stride_seconds": args.stride})
    elif header is None and changes:  # the default stride follows the window the flags chose
        protocol = WindowProtocol(**{**protocol.__dict__, "stride_seconds": protocol.window_seconds / 2})
    protocol.check()
    run = IndexRun(batch_size=args.batch_size, num_workers=args.workers, commit_every=args.commit_every,
                   device=resolve_device(args.device), progress=not args.quiet)
    return root, out, loaded, record, protocol, run


def _print_update(report, out: Path) -> None:
    header = report.header
    counts = header["counts"]
    print(f"index {out}: {counts['files']} files, {counts['windows']} windows of "
          f"{header['protocol']['window_seconds']:g} s (stride {header['protocol']['stride_seconds']:g} s) | "
          f"embedded {len(report.embedded)} ({report.windows_embedded} windows), reused {report.reused}, "
          f"re-embedded {len(report.changed)} changed, dropped {len(report.removed)} deleted | "
          f"{report.seconds:.1f} s")
    if report.removed:
        print(f"dropped {len(report.removed)} deleted file(s): "
              + ", ".join(printable(r) for r in report.removed[:LISTED_SKIPS]))
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable file(s) (list: {out / header['files']['skipped']}):")
        for skip in report.skipped[:LISTED_SKIPS]:
            print(f"  {printable(skip.rel)}: {printable(skip.reason)}")
        if len(report.skipped) > LISTED_SKIPS:
            print(f"  ... and {len(report.skipped) - LISTED_SKIPS} more")
    else:
        print("skipped 0 files")


def index_main(argv: list[str] | None = None) -> int:
    """``mmpt-lite index``; returns the exit status."""
    from mmpt_lite.search.index import update_index
    from mmpt_lite.search.store import SearchIndexError

    prog = "mmpt-lite index"
    try:
        args = _index_parser().parse_args(argv)
        root, out, loaded, record, protocol, run = _index_plan(args)
        report = update_index(root, out, loaded, record, protocol, run)
    except (UsageError, SearchIndexError, *USER_ERRORS) as exc:
        return _fail(prog, exc)
    _print_update(report, out)
    return 0


# --------------------------------------------------------------------------- search
def _search_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmpt-lite search", description="Rank the indexed videos for a text query.")
    parser.add_argument("index", metavar="INDEX", help="index folder made by mmpt-lite index")
    parser.add_argument("query", metavar="TEXT", help="what to look for, e.g. \"a red ball bounces\"")
    parser.add_argument("-k", type=int, default=10, help="results to show (default 10)")
    parser.add_argument("--all_windows", action="store_true",
                        help="rank windows, not files (default: each file once, with its best window)")
    parser.add_argument("--html", metavar="PAGE", help="also write a self-contained HTML page of the results")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return parser


def search_main(argv: list[str] | None = None) -> int:
    """``mmpt-lite search``; returns the exit status."""
    from mmpt_lite.search.model import resolve_device
    from mmpt_lite.search.query import SearchIndex
    from mmpt_lite.search.store import SearchIndexError

    prog = "mmpt-lite search"
    try:
        args = _search_parser().parse_args(argv)
        if args.k < 1:
            raise UsageError(f"-k must be at least 1, got {args.k}")
        if not args.query.strip():
            raise UsageError("TEXT is empty")
        folder = Path(args.index).expanduser()
        if not folder.is_dir():
            raise UsageError(f"INDEX {folder} is not a folder")
        if args.html and Path(args.html).expanduser().is_dir():
            raise UsageError(f"--html {args.html} is a folder")
        index = SearchIndex(folder, device=resolve_device(args.device))
        hits = index.search(args.query, args.k, per_file=not args.all_windows)
    except (UsageError, SearchIndexError, *USER_ERRORS) as exc:
        return _fail(prog, exc)
    grouping = "windows" if args.all_windows else "best window per file"
    print(f"query: {printable(args.query)!r} | {len(index.files)} files, {index.num_windows} windows | {grouping}")
    width = max([len("file")] + [len(printable(h.file)) for h in hits])
    print(f"{'rank':>4}  {'score':>6}  {'file':<{width}}  span (s)")
    for hit in hits:
        print(f"{hit.rank:>4}  {hit.score:>6.3f}  {printable(hit.file):<{width}}  {hit.start:.1f}-{hit.end:.1f}")
    if args.html:
        _write_html(args, index, hits)
    return 0


def _write_html(args, index, hits) -> None:
    from mmpt_lite.search.html import render_results_page, write_results_page
    from mmpt_lite.search.thumbs import thumbnail_strip

    thumbnails = []
    for hit in hits:
        try:
            thumbnails.append(thumbnail_strip(index.file_path(hit.file_id), hit.start, hit.end,
                                              decoder=index.header["protocol"].get("decoder", "pyav")))
        except Exception:  # a file changed or gone since indexing: the page says so for that hit
            thumbnails.append(None)
    description = (f"{len(index.files)} files, {index.num_windows} windows under {index.header['video_root']}; "
                   f"checkpoint {index.header['checkpoint']['description']}")
    page = render_results_page(args.query, hits, video_root=index.video_root, thumbnails=thumbnails,
                               description=description)
    write_results_page(Path(args.html).expanduser(), page)
    print(f"wrote {args.html}")


# --------------------------------------------------------------------------- serve
def _serve_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmpt-lite serve", description="A local web app: search box, results, playback.")
    parser.add_argument("index", metavar="INDEX", help="index folder made by mmpt-lite index")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--verbose", action="store_true", help="log every request on stderr")
    return parser


def serve_main(argv: list[str] | None = None) -> int:
    """``mmpt-lite serve``; runs until interrupted; returns the exit status."""
    from mmpt_lite.search.model import resolve_device
    from mmpt_lite.search.query import SearchIndex
    from mmpt_lite.search.server import is_loopback, make_server
    from mmpt_lite.search.store import SearchIndexError

    prog = "mmpt-lite serve"
    try:
        args = _serve_parser().parse_args(argv)
        if not 0 <= args.port <= 65535:
            raise UsageError(f"--port must be in 0..65535, got {args.port}")
        folder = Path(args.index).expanduser()
        if not folder.is_dir():
            raise UsageError(f"INDEX {folder} is not a folder")
        index = SearchIndex(folder, device=resolve_device(args.device))
        try:
            server = make_server(index, args.host, args.port, verbose=args.verbose)
        except OSError as exc:
            what = "is in use" if exc.errno in (98, 48) else f"cannot be bound ({exc.strerror or exc})"
            raise UsageError(f"port {args.port} on {args.host} {what}; pick another with --port") from None
    except (UsageError, SearchIndexError, *USER_ERRORS) as exc:
        return _fail(prog, exc)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can search and play the "
              "indexed videos", file=sys.stderr)
    print(f"serving {folder} ({len(index.files)} files, {index.num_windows} windows) at http://{shown}:{port}/ "
          "(Ctrl-C to stop)", flush=True)
    def stop(_signum, _frame):
        # shutdown() waits for serve_forever's loop to notice, so it must run outside the loop's thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}  # Ctrl-C, kill
    try:
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
    return 0


COMMANDS = {"index": index_main, "search": search_main, "serve": serve_main}


def main(argv: list[str] | None = None) -> int:
    """``python -m mmpt_lite.search.cli {index,search,serve} ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m mmpt_lite.search.cli {{{','.join(COMMANDS)}}} ... "
              f"(got {printable(argv[0]) if argv else 'nothing'})", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
