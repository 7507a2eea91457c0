"""Search index over a video folder: windows, walking, building, incremental updates, resume after kill -9,
unreadable files, refusals, and the search command (table and HTML page)."""

import base64
import html
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from conftest import make_video
from search_corpus import COLOURS, caption, colour_folder, colour_run, relative_name

from mmpt_lite.checkpoint import load_checkpoint, resolve_run_checkpoint, save_checkpoint
from mmpt_lite.config import load_config
from mmpt_lite.data.video import probe_video
from mmpt_lite.fileio import file_sha256
from mmpt_lite.search import cli
from mmpt_lite.search.html import render_results_page
from mmpt_lite.search.index import IndexRun, update_index
from mmpt_lite.search.model import default_protocol, load_search_model
from mmpt_lite.search.query import Hit, SearchIndex
from mmpt_lite.search.spans import WindowProtocol, window_spans
from mmpt_lite.search.store import read_header, read_snapshot
from mmpt_lite.search.walk import walk_videos

REPO = Path(__file__).resolve().parents[1]
QUIET = IndexRun(num_workers=0, progress=False)


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "mmpt_lite.search.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return colour_run(tmp_path_factory)


@pytest.fixture(scope="module")
def model(run):
    return load_search_model(run)


@pytest.fixture(scope="module")
def built(tmp_path_factory, model):
    """A colour folder indexed in-process: (video folder, index folder, update report)."""
    root = tmp_path_factory.mktemp("search_index")
    videos = colour_folder(root / "videos")
    loaded, record = model
    report = update_index(videos, root / "index", loaded, record, default_protocol(loaded), QUIET)
    return videos, root / "index", report


def same_index(a: Path, b: Path) -> None:
    """Two index folders hold the same table (exactly) and the same vectors (to float rounding)."""
    first, second = read_snapshot(a), read_snapshot(b)
    assert first.rows == second.rows
    assert first.skipped == second.skipped
    np.testing.assert_allclose(first.vectors, second.vectors, atol=1e-5)


# --------------------------------------------------------------------------- windows and walking
def test_windows_overlap_by_half_and_cover_the_whole_video():
    protocol = WindowProtocol(num_frames=8, fps=2.5, video_size=64, stride_seconds=1.6)  # 3.2 s windows
    assert window_spans(6.4, protocol) == [(0.0, 3.2), (1.6, 4.8), (3.2, 6.4)]
    # a tail the stride does not reach gets a window ending at the end of the video
    assert window_spans(7.0, protocol) == [(0.0, 3.2), (1.6, 4.8), (3.2, 6.4), (3.8, 7.0)]
    assert window_spans(2.0, protocol) == [(0.0, 2.0)]  # shorter than a window: one, zero-padded when decoded
    for duration in (3.3, 9.95, 31.0):
        spans = window_spans(duration, protocol)
        assert spans[0][0] == 0 and spans[-1][1] == pytest.approx(duration)
        assert all(end - start == pytest.approx(3.2) for start, end in spans)
        assert all(0 < b[0] - a[0] <= 1.6 + 1e-9 for a, b in zip(spans, spans[1:], strict=False))


def test_walk_is_recursive_case_insensitive_and_stays_inside_the_folder(tmp_path):
    root, outside = tmp_path / "videos", tmp_path / "elsewhere"
    for rel in ("a.mp4", "sub/B.MKV", "sub/deep/c.WebM", "d.Avi", "e.mov", "notes.txt", "f.mp4.part"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * 10)
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(b"y")
    (root / "out.mp4").symlink_to(outside / "secret.mp4")
    (root / "in.mp4").symlink_to(root / "a.mp4")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)  # not followed
    found, refused = walk_videos(root)
    assert [f.rel for f in found] == ["a.mp4", "d.Avi", "e.mov", "in.mp4", "sub/B.MKV", "sub/deep/c.WebM"]
    assert all(f.size == 10 and f.mtime_ns > 0 for f in found)
    assert [(r.rel, r.reason) for r in refused] == [("out.mp4", "symlink to a file outside the video folder")]


# --------------------------------------------------------------------------- building and searching
def test_index_holds_every_window_with_its_span_file_version_and_checkpoint(built, run):
    videos, index_dir, report = built
    header = read_header(index_dir)
    weights = resolve_run_checkpoint(run) / "model.safetensors"
    assert header["checkpoint"]["sha256"] == file_sha256(weights)
    assert header["video_root"] == str(videos.resolve())
    assert header["protocol"]["num_frames"] == 4 and header["protocol"]["window_seconds"] == pytest.approx(1.6)
    assert header["protocol"]["stride_seconds"] == pytest.approx(0.8)  # half a window by default
    snapshot = read_snapshot(index_dir)
    protocol = WindowProtocol.from_json(header["protocol"])
    expected = []
    for colour in sorted(COLOURS, key=relative_name):
        rel = relative_name(colour)
        stat = (videos / rel).stat()
        expected += [(rel, s, e, stat.st_size, stat.st_mtime_ns)
                     for s, e in window_spans(probe_video(str(videos / rel)).duration, protocol)]
    assert [(r.file, r.start, r.end, r.size, r.mtime_ns) for r in snapshot.rows] == expected
    np.testing.assert_allclose(np.linalg.norm(snapshot.vectors, axis=1), 1.0, rtol=1e-5)
    table = (index_dir / header["files"]["table"]).read_text().splitlines()
    assert table[0] == "id,file,start,end,size,mtime_ns,checkpoint_sha256"
    assert all(line.endswith("," + header["checkpoint"]["sha256"]) for line in table[1:])
    assert report.embedded == sorted(relative_name(c) for c in COLOURS) and report.skipped == []


def test_each_colour_caption_finds_its_own_video_first(built):
    """Six videos, k = 2: the trained towers must rank the caption's own video first (random weights would not)."""
    _, index_dir, _ = built
    index = SearchIndex(index_dir)
    for colour in COLOURS:
        hits = index.search(caption(colour), k=2)
        assert [h.rank for h in hits] == [1, 2] and hits[0].score > hits[1].score
        assert hits[0].file == relative_name(colour), (colour, hits)
        assert len({h.file for h in hits}) == 2  # one entry per file
        row = index.snapshot.rows[hits[0].window_id]
        assert (row.file, row.start, row.end) == (hits[0].file, hits[0].start, hits[0].end)
    windows = index.search(caption("red"), k=4, per_file=False)
    assert [h.score for h in windows] == sorted((h.score for h in windows), reverse=True)
    assert windows[0].file == relative_name("red")


def test_rerun_embeds_only_new_and_changed_files_and_drops_deleted_ones(tmp_path, built, model):
    loaded, record = model
    videos = tmp_path / "videos"
    shutil.copytree(built[0], videos)
    protocol = default_protocol(loaded)
    first = update_index(videos, tmp_path / "index", loaded, record, protocol, QUIET)
    assert first.commits == 1 and len(first.embedded) == len(COLOURS)

    again = update_index(videos, tmp_path / "index", loaded, record, protocol, QUIET)
    assert again.commits == 0 and again.embedded == [] and again.reused == len(COLOURS)
    assert read_header(tmp_path / "index")["generation"] == 1

    make_video(videos / "new" / "white.webm", "white", seconds=2.0, codec="libvpx-vp9")
    make_video(videos / relative_name("blue"), "blue", seconds=5.0, size="96x64")   # re-encoded: size changes
    (videos / relative_name("green")).unlink()
    update = update_index(videos, tmp_path / "index", loaded, record, protocol, QUIET)
    assert update.embedded == sorted(["new/white.webm", relative_name("blue")])
    assert update.changed == [relative_name("blue")] and update.removed == [relative_name("green")]
    assert update.reused == len(COLOURS) - 2
    assert sorted(os.listdir(tmp_path / "index")) == [".lock", "gen-000002", "index.json"]  # old generation gone

    clean = update_index(videos, tmp_path / "clean", loaded, record, protocol, QUIET)
    assert clean.reused == 0
    same_index(tmp_path / "index", tmp_path / "clean")


def test_kill_9_mid_run_then_rerun_finishes_without_redoing_committed_files(tmp_path, model, run):
    loaded, record = model
    videos = tmp_path / "videos"
    for i in range(10):
        make_video(videos / f"clip{i:02d}.mp4", COLOURS[i % len(COLOURS)], seconds=2.0 + i % 3, fps=10)
    index_dir = tmp_path / "index"
    proc = subprocess.Popen([sys.executable, "-m", "mmpt_lite.search.cli", "index", str(videos), "--checkpoint",
                             str(run), "--out", str(index_dir), "--commit_every", "1", "--workers", "1", "--quiet"],
                            cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        header = read_header(index_dir) if (index_dir / "index.json").exists() else None
        if header is not None and header["generation"] >= 2:
            break
        time.sleep(0.005)
    time.sleep(float(np.random.default_rng().uniform(0, 0.1)))  # anywhere in the next files, commits included
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = read_snapshot(index_dir)
    done = committed.header["counts"]["files"]
    assert 0 < done < 10, f"the run was not killed mid-way ({done} files committed): make the folder bigger"

    resumed = update_index(videos, index_dir, loaded, record, default_protocol(loaded), QUIET)
    assert resumed.reused == done and len(resumed.embedded) == 10 - done
    assert not [p for p in os.listdir(index_dir) if p.startswith(".gen-")]  # the killed run's temporaries are gone
    update_index(videos, tmp_path / "clean", loaded, record, default_protocol(loaded), QUIET)
    same_index(index_dir, tmp_path / "clean")


# --------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def cli_built(tmp_path_factory, run):
    """A folder with colour videos (red under a hostile name), broken files and a symlink leading out, indexed
    by the command line: (video folder, index folder, completed process)."""
    root = tmp_path_factory.mktemp("search_cli")
    videos = colour_folder(root / "videos", colours=[c for c in COLOURS if c != "red"])
    make_video(videos / "<b>red</b> & \"it's\".mp4", "red", seconds=4.0, fps=10, size="64x48")
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "notes.mp4").write_text("this is a text file with a video name\n")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=6",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(root / "full.mp4")], check=True)
    data = (root / "full.mp4").read_bytes()
    (videos / "cut.mkv").write_bytes(data[: len(data) // 2])  # the index at the front, half the frames gone
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=440:duration=2",
                    "-c:a", "aac", str(videos / "voice.mov")], check=True)
    make_video(root / "elsewhere" / "private.mp4", "white")
    (videos / "link.mp4").symlink_to(root / "elsewhere" / "private.mp4")
    result = run_cli("index", videos, "--checkpoint", run, "--out", root / "index", "--workers", "0")
    return videos, root / "index", result


def test_index_cli_skips_lists_and_counts_unreadable_files(cli_built, capsys):
    videos, index_dir, result = cli_built
    assert result.returncode == 0, result.stderr[-2000:]
    bad = ["cut.mkv", "empty.mp4", "link.mp4", "notes.mp4", "voice.mov"]
    assert f"skipped {len(bad)} unreadable file(s)" in result.stdout
    listed = [line.strip().split(":")[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed == bad
    assert ": 6 files, " in result.stdout  # the good ones, hostile name included
    assert re.search(r"index: 100%.*10/10.*skipped=5", result.stderr)  # the progress bar: 6 good + 4 tried and failed
    snapshot = read_snapshot(index_dir)
    assert [s.rel for s in snapshot.skipped] == bad
    assert {r.file for r in snapshot.rows} == {"<b>red</b> & \"it's\".mp4"} | {
        relative_name(c) for c in COLOURS if c != "red"}
    skipped_csv = (index_dir / snapshot.header["files"]["skipped"]).read_text()
    assert "empty file" in skipped_csv and "no video stream" in skipped_csv and "outside the video folder" in skipped_csv

    # unchanged broken files are not tried again; a repaired one is indexed and leaves the list
    make_video(videos / "empty.mp4", "white", seconds=2.0)
    assert cli.index_main([str(videos), "--out", str(index_dir), "--workers", "0", "--quiet"]) == 0
    again = capsys.readouterr().out
    assert "embedded 1 (" in again and "reused 6" in again and "skipped 4 unreadable" in again
    assert "empty.mp4" not in [s.rel for s in read_snapshot(index_dir).skipped]


def test_search_cli_prints_the_table_and_writes_an_escaped_self_contained_page(cli_built, tmp_path):
    videos, index_dir, _ = cli_built
    page_path = tmp_path / "results.html"
    query = "a red screen <script>alert(1)</script>"
    result = run_cli("search", index_dir, query, "-k", "3", "--html", page_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["rank", "score", "file", "span", "(s)"]
    first = lines[2]
    assert first.split()[0] == "1" and "<b>red</b> & \"it's\".mp4" in first
    assert len([line for line in lines[2:] if re.match(r"^\s+\d+\s", line)]) == 3

    page = page_path.read_text()
    assert "<script>" not in page and "<b>red" not in page  # the query and the file name arrive escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;red&lt;/b&gt; &amp; &quot;it&#x27;s&quot;" in page
    assert "http" not in page  # nothing fetched from anywhere: thumbnails are inline
    link = html.unescape(re.search(r'href="(file://[^"]+)"', page).group(1))
    file_uri, fragment = link.split("#")
    assert file_uri == (videos.resolve() / "<b>red</b> & \"it's\".mp4").as_uri()
    start, end = (float(x) for x in fragment.removeprefix("t=").split(","))
    assert 0 <= start < end and f"{start:.1f}-{end:.1f}" in first
    strip = simplejpeg.decode_jpeg(base64.b64decode(re.search(r'base64,([A-Za-z0-9+/=]+)"', page).group(1)))
    red, green, blue = strip[..., :3].reshape(-1, 3).mean(axis=0)
    assert red > 150 and green < 100 and blue < 100  # the first hit's frames are the red video's


def test_results_page_escapes_every_untrusted_text():
    hit = Hit(1, 0.5, 0, 0, '"><img src=x onerror=alert(1)>.mp4', 1.0, 2.6)
    page = render_results_page("</title><script>x()</script>", [hit], video_root=Path("/videos"),
                               thumbnails=[None], description="<i>desc</i>")
    assert "<img src=x" not in page and "<script>" not in page and "<i>" not in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;.mp4" in page
    assert 'href="file:///videos/%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.mp4#t=1.00,2.60"' in page


def test_another_checkpoint_or_window_is_refused_in_one_line(tmp_path, built, run, capsys):
    videos, index_dir, _ = built
    other = tmp_path / "other_run"  # the same run with one tensor changed, saved as training saves it
    ckpt = load_checkpoint(resolve_run_checkpoint(run))
    state = ckpt["model"]
    first = sorted(state)[0]
    state[first] = state[first] + 1.0
    weights = save_checkpoint(other, ckpt["meta"]["step"], model_state=state, train_state=ckpt["train_state"],
                              cfg=load_config(ckpt["config_path"])) / "model.safetensors"
    before = read_header(index_dir)
    status = cli.index_main([str(videos), "--checkpoint", str(other), "--out", str(index_dir), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("mmpt-lite index: error:")
    assert before["checkpoint"]["sha256"][:16] in err and file_sha256(weights)[:16] in err
    status = cli.index_main([str(videos), "--out", str(index_dir), "--fps", "5", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "fps 2.5 (asked 5.0)" in err, err
    assert read_header(index_dir) == before  # nothing written


def test_a_second_update_while_one_runs_is_refused(built, capsys):
    videos, index_dir, _ = built
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(index_dir / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        status = cli.index_main([str(videos), "--out", str(index_dir), "--quiet"])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.endswith("another mmpt-lite index run is updating this index"), err


def test_bad_arguments_end_in_one_line_and_status_2(tmp_path, built, run, capsys):
    videos, index_dir, _ = built
    (tmp_path / "file.txt").write_text("x")
    cases = [
        (cli.index_main, [str(tmp_path / "missing"), "--checkpoint", str(run), "--out", str(tmp_path / "i")],
         "is not a folder"),
        (cli.index_main, [str(videos), "--out", str(tmp_path / "new")], "--checkpoint is required"),
        (cli.index_main, [str(videos), "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "i")],
         "checkpoint not found"),
        (cli.index_main, [str(videos), "--checkpoint", str(tmp_path / "file.txt"), "--out", str(tmp_path / "i")],
         "unknown checkpoint format"),
        (cli.index_main, [str(videos)], "required: --out"),
        (cli.index_main, [str(videos), "--checkpoint", str(run), "--out", str(tmp_path / "i"), "--stride", "9"],
         "--stride must be in"),
        (cli.search_main, [str(tmp_path), "a red screen"], "no index here"),
        (cli.search_main, [str(index_dir), "a red screen", "-k", "0"], "-k must be at least 1"),
        (cli.search_main, [str(index_dir), "   "], "TEXT is empty"),
        (cli.serve_main, [str(tmp_path / "missing")], "is not a folder"),
    ]
    for main, argv, expected in cases:
        status = main(argv)
        err = capsys.readouterr().err.strip()
        assert status == 2 and len(err.splitlines()) == 1 and expected in err, (argv, err)
    assert not (tmp_path / "i").exists() and not (tmp_path / "new").exists()
