"""Malformed inputs for the reliability tests, each made on the fly (ffmpeg CLI, Python) inside a given folder.

Every builder returns ``list[Case]``: one bad item per case with the outcome the package must give it, so any
input path (shard building, training sets, evaluators, a search index) can place the cases among good items and
check each one. Outcomes:

* ``kept``: a decodable oddity (one frame, variable frame rate, odd size, rotation metadata, a container other
  than the extension says, a listed id stored under another extension), or a caption file whose bad rows are
  dropped while its good rows stay (``good_rows`` of them);
* ``skipped``: unusable for this item only; the item is left out, counted and named with ``reason`` in the message;
* ``refused``: the whole list is malformed and the documented behaviour is to stop (exit status 2, one line naming
  ``file:line``, ``reason`` in it).

A path's test reports what it observed per case to :func:`tally` (which asserts it and adds the path's row to the
summary table, :func:`summary_text`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

KEPT, SKIPPED, REFUSED = "kept", "skipped", "refused"

# The good videos every path mixes the cases with: name -> lavfi pattern. 3 s at 10 fps, 64x48 (tiny, fast).
GOOD_PATTERNS = {"good_a": "testsrc2", "good_b": "smptebars", "good_c": "rgbtestsrc"}
GOOD_SECONDS, GOOD_FPS, GOOD_SIZE = 3, 10, "64x48"
# Two rows a good caption file holds (one with a quoted comma); the bad caption cases add their rows to these.
GOOD_CAPTION_ROWS = ["0.0,1.5,first caption", '1.5,2.8,"second, with a comma"']
GOOD_CAPTIONS = "start,end,text\n" + "\n".join(GOOD_CAPTION_ROWS) + "\n"
HUGE_ROWS = 100_000
HUGE_TEXT_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class Case:
    """One malformed item. ``path``: where the list points (may not exist: a missing file, or a file stored under
    another extension); ``expect``: KEPT / SKIPPED / REFUSED; ``reason``: a fragment of the message naming it;
    ``good_rows``: caption rows that must survive (caption cases); ``line``: the list line it sits on (list cases)."""

    name: str
    path: Path
    expect: str
    reason: str = ""
    good_rows: int = 0
    line: int | str | None = None


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-v", "error", *map(str, args)], check=True)


def lavfi_video(path: Path, source: str, *options: str) -> Path:
    """Encode the lavfi ``source`` (e.g. ``testsrc2=size=64x48:rate=10:duration=3``) into ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg("-f", "lavfi", "-i", source, *options, path)
    return path


def h264(path: Path, pattern: str = "testsrc2", *, size: str = GOOD_SIZE, fps: int = GOOD_FPS,
         seconds: float = GOOD_SECONDS, pix_fmt: str = "yuv420p", extra: tuple[str, ...] = ()) -> Path:
    joiner = ":" if "=" in pattern else "="   # a pattern may carry options of its own ("color=c=red")
    return lavfi_video(path, f"{pattern}{joiner}size={size}:rate={fps}:duration={seconds}", "-c:v", "libx264",
                       "-pix_fmt", pix_fmt, *extra)


def build_good_videos(folder: Path, names: dict[str, str] | None = None) -> list[Path]:
    """The good videos (``GOOD_PATTERNS`` by default) as ``<name>.mp4`` in ``folder``."""
    return [h264(folder / f"{name}.mp4", pattern) for name, pattern in (names or GOOD_PATTERNS).items()]


def build_bad_videos(folder: Path) -> list[Case]:
    """Every malformed or odd video kind, one file each in ``folder`` (``<case>.<listed extension>``)."""
    folder.mkdir(parents=True, exist_ok=True)
    work = folder / ".work"
    work.mkdir(exist_ok=True)
    cases = []

    def case(name, ext, expect, reason=""):
        cases.append(Case(name, folder / f"{name}{ext}", expect, reason))
        return folder / f"{name}{ext}"

    case("zero_byte", ".mp4", SKIPPED, "empty file").write_bytes(b"")
    whole = h264(work / "whole.mp4", seconds=4).read_bytes()   # moov index written last
    case("truncated_half", ".mp4", SKIPPED, "cannot open").write_bytes(whole[:len(whole) // 2])
    faststart = work / "faststart.mp4"   # index first: a cut leaves an index that points past the end
    ffmpeg("-i", work / "whole.mp4", "-c", "copy", "-movflags", "+faststart", faststart)
    data = faststart.read_bytes()
    case("truncated_data", ".mp4", SKIPPED, "decoding failed").write_bytes(data[:len(data) // 2])
    case("text_as_mp4", ".mp4", SKIPPED, "cannot open").write_text("this is a text file, not a video\n" * 40)
    lavfi_video(case("audio_only", ".mp4", SKIPPED, "no video stream"), "sine=frequency=440:duration=2",
                "-c:a", "aac")
    lavfi_video(work / "tone.m4a", "sine=frequency=220:duration=2", "-c:a", "aac")
    shutil.copy(work / "tone.m4a", case("m4a_as_mp4", ".mp4", SKIPPED, "no video stream"))
    h264(case("one_frame", ".mp4", KEPT), extra=("-frames:v", "1"))
    # variable frame rate: 10 frames 0.1 s apart, then 10 frames 0.3 s apart (timestamps, not counts)
    h264(case("variable_fps", ".mp4", KEPT), fps=30, seconds=4,
         extra=("-vf", "select='lt(t,1)*not(mod(n,3))+gte(t,1)*not(mod(n,9))'", "-fps_mode", "vfr"))
    h264(case("odd_81x47", ".mp4", KEPT), "testsrc", size="81x47", pix_fmt="yuv444p")   # testsrc2 rounds to even
    # lavfi sources start at 2x2: scale down to one pixel
    h264(case("tiny_1x1", ".mp4", KEPT), "color=c=orange", size="2x2", pix_fmt="yuv444p", extra=("-vf", "scale=1:1"))
    h264(case("tiny_2x2", ".mp4", KEPT), "color=c=teal", size="2x2")
    h264(case("wide_640x16", ".mp4", KEPT), size="640x16")
    h264(case("tall_16x200", ".mp4", KEPT), size="16x200")
    # display-matrix rotation (ffmpeg 5 writes it from the stream's rotate tag; ffmpeg 6+ has -display_rotation)
    rotated = case("rotated_90", ".mp4", KEPT)
    ffmpeg("-i", h264(work / "upright.mp4", size="64x48"), "-c", "copy", "-metadata:s:v:0", "rotate=90", rotated)
    lavfi_video(case("webm_as_mp4", ".mp4", KEPT), f"testsrc2=size={GOOD_SIZE}:rate=10:duration=2", "-c:v",
                "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-f", "webm")
    lavfi_video(case("mkv_as_mp4", ".mp4", KEPT), f"smptebars=size={GOOD_SIZE}:rate=10:duration=2", "-c:v",
                "libx264", "-pix_fmt", "yuv420p", "-f", "matroska")
    h264(case("mp4_as_avi", ".avi", KEPT), seconds=2, extra=("-f", "mp4"))
    # the list names other_extension.mp4; the folder holds other_extension.webm
    case("other_extension", ".mp4", KEPT)
    lavfi_video(folder / "other_extension.webm", f"testsrc2=size={GOOD_SIZE}:rate=10:duration=2", "-c:v",
                "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8")
    case("missing_file", ".mp4", SKIPPED, "file not found")
    shutil.rmtree(work)
    return cases


def build_bad_caption_files(folder: Path) -> list[Case]:
    """HowTo100M per-video caption CSVs (``start,end,text``), one malformed kind each, as ``<case>.csv``.

    KEPT cases keep their ``good_rows`` rows; their bad rows are dropped and named (``reason``); SKIPPED files
    leave their video out (``reason``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    header, good = "start,end,text\n", "".join(f"{row}\n" for row in GOOD_CAPTION_ROWS)

    def write(name, content: str | bytes, expect, reason="", good_rows=0):
        path = folder / f"{name}.csv"
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        cases.append(Case(name, path, expect, reason, good_rows))

    write("cap_missing_column", "begin,end,text\n0,1,x\n", SKIPPED, "missing column(s) start")
    write("cap_non_numeric", header + good + "abc,3.0,not a number\n", KEPT, "non-numeric time", 2)
    write("cap_nan_times", header + good + "nan,3.0,not a time\n2.0,inf,nor this\n", KEPT, "non-finite time", 2)
    write("cap_negative_times", header + good + "-2.0,1.0,before the video\n", KEPT, "negative time", 2)
    write("cap_end_before_start", header + good + "2.5,1.0,ends before it starts\n", KEPT, "end 1.0 < start 2.5", 2)
    write("cap_non_utf8", (header + good).encode() + "2.0,2.5,caf\xe9 latin-1\n".encode("latin-1"), KEPT,
          "not valid UTF-8", 2)
    write("cap_utf8_bom", "\ufeff" + header + good, KEPT, "", 2)
    write("cap_crlf", (header + good).replace("\n", "\r\n"), KEPT, "", 2)
    write("cap_empty", "", SKIPPED, "empty caption file")
    write("cap_header_only", header, SKIPPED, "no valid caption rows")
    write("cap_all_rows_bad", header + "x,y,z\n", SKIPPED, "no valid caption rows")
    # an unclosed quote swallows the rest of the file into one text field
    write("cap_unclosed_quote", header + good + '2.8,3.0,"never closed\n' + "2.9,3.0,eaten\n" * 5, KEPT,
          "unclosed quote", 2)
    write("cap_huge_rows", header + good + "".join(
        f"{3 * i / HUGE_ROWS:.6f},{min(3 * i / HUGE_ROWS + 0.5, 3.0):.6f},row {i}\n" for i in range(HUGE_ROWS)),
          KEPT, "", 2 + HUGE_ROWS)
    write("cap_huge_text", header + good + "2.8,3.0," + "x" * HUGE_TEXT_BYTES + "\n", KEPT, "characters long", 2)
    cases.append(Case("cap_missing_file", folder / "cap_missing_file.csv", SKIPPED, "caption file not found"))
    return cases


def build_bad_howto_list(path: Path, video_root: Path, good: list[str]) -> list[Case]:
    """A HowTo100M training list (``video_id,video_path``) at ``path``: the ``good`` relative paths, then one bad
    line per case (a video that does not exist, a duplicate, ``../`` and absolute paths out of ``video_root``).
    Returns the list cases (their ``line``); the good lines come first, from line 2."""
    outside = video_root.parent / "outside.mp4"
    shutil.copy(video_root / good[0], outside)   # a real video, so only the path can be the reason to skip it
    lines = [(Path(g).stem, g) for g in good]
    cases = []
    for name, rel, expect, reason in [
            ("list_missing_id", "not_there.mp4", SKIPPED, "file not found"),
            ("list_duplicate", good[0], SKIPPED, "duplicate video id"),
            ("list_dotdot", "../outside.mp4", SKIPPED, "outside the video root"),
            ("list_absolute", str(outside), SKIPPED, "outside the video root")]:
        lines.append((Path(rel).stem, rel))
        cases.append(Case(name, video_root / rel, expect, reason, line=len(lines) + 1))
    path.write_text("video_id,video_path\n" + "".join(f"{vid},{rel}\n" for vid, rel in lines))
    return cases


def place_cases(cases: list[Case], folder: Path) -> list[Case]:
    """Hard-link the cases' files (and a file stored under another extension) into ``folder``; the cases, moved."""
    folder.mkdir(parents=True, exist_ok=True)
    placed = []
    for case in cases:
        for file in case.path.parent.glob(f"{case.path.stem}.*"):
            os.link(file, folder / file.name)
        placed.append(dataclasses.replace(case, path=folder / case.path.name))
    return placed


def build_refused_lists(folder: Path, kind: str) -> list[Case]:
    """One malformed list per case, for the readers whose documented behaviour is to refuse a malformed list (exit
    status 2, one line naming ``file:line``): ``kind`` howto | msrvtt | youcook | kinetics | ssv2 | hmdb. The first entry
    of each list is good; the bad one follows (``line``: its line, or ``"entry 1"`` in an SSv2 JSON list). An HMDB
    case's ``path`` is the one split file in its own folder; an SSv2 case's folder also gets the ``labels.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = []

    def write(name, content, reason, line=2, suffix=".csv"):
        if kind == "hmdb":   # the split folder holds one file: the list the evaluator is pointed at is the folder
            path = folder / name / "brush_hair_test_split1.txt"
            path.parent.mkdir()
            path.write_text(content)
        else:
            path = folder / f"{name}{suffix}"
            path.write_text(content)
        cases.append(Case(name, path, REFUSED, reason, line=line))

    if kind == "msrvtt":
        head = "key,vid_key,video_id,sentence\nret0,good_a,good_a,a good caption\n"
        write("msrvtt_dotdot", head + "ret1,x,../outside,a caption\n", "escapes", 3)
        write("msrvtt_absolute", head + "ret1,x,/tmp/outside,a caption\n", "outside", 3)
        write("msrvtt_extra_fields", head + "ret1,x,good_b,a caption,more,fields\n", "line 3", None)
        write("msrvtt_missing_column", "key,vid_key,video_id\nret0,good_a,good_a\n", "missing column", None)
    elif kind == "youcook":
        head = "end,start,task,text,video_id\n2.0,0.0,101,a good caption,good_a\n"
        write("youcook_nan_time", head + "nan,0.0,101,a caption,good_b\n", "not a time span", 3)
        write("youcook_negative_time", head + "2.0,-1.0,101,a caption,good_b\n", "not a time span", 3)
        write("youcook_end_before_start", head + "1.0,2.0,101,a caption,good_b\n", "not a time span", 3)
        write("youcook_non_numeric_time", head + "2.0,zero,101,a caption,good_b\n", "non-numeric", 3)
        write("youcook_dotdot", head + "2.0,0.0,../../..,a caption,outside\n", "escapes", 3)
    elif kind == "kinetics":
        head = "videos/good_a.mp4 0\n"
        write("kinetics_dotdot", head + "../outside.mp4 0\n", "escapes", suffix=".txt")
        write("kinetics_absolute", head + "/tmp/outside.mp4 0\n", "outside", suffix=".txt")
        write("kinetics_bad_label", head + "videos/good_b.mp4 cat\n", "not an integer", suffix=".txt")
        write("kinetics_no_label", head + "videos/good_b.mp4\n", "expected 'path label'", suffix=".txt")
    elif kind == "ssv2":
        (folder / "labels.json").write_text(json.dumps({"Moving something": "0", "Pushing something": "1"}))
        good = {"id": "good_a", "template": "Moving [something]", "placeholders": []}
        write("ssv2_dotdot", json.dumps([good, {**good, "id": "../../outside"}]), "escapes", "entry 1", ".json")
        write("ssv2_unknown_template", json.dumps([good, {**good, "template": "Flying"}]), "is not in", "entry 1",
              ".json")
        write("ssv2_not_json", "[{'id': 1}]", "not a JSON list", None, ".json")
    elif kind == "howto":
        write("howto_no_video_path_column", "video_id,path\ngood_a,good_a.mp4\n", "no 'video_path' column", None)
        cases.append(Case("howto_list_missing", folder / "howto_list_missing.csv", REFUSED, "video list not found"))
    elif kind == "hmdb":
        head = "good_a.avi 1\n"
        write("hmdb_dotdot", head + "../outside.avi 1\n", "expected a file name")
        write("hmdb_subfolder", head + "sub/good_b.avi 2\n", "expected a file name")
        write("hmdb_bad_code", head + "good_b.avi 7\n", "expected '<video> <0|1|2>'")
    else:
        raise ValueError(f"unknown list kind {kind!r}")
    return cases


# --------------------------------------------------------------------------- checking the outcomes
SUMMARY: dict[str, dict] = {}   # path -> its row of the summary table


def tally(path: str, cases: list[Case], observed: dict[str, tuple[str, bool]], *, good_total: int,
          good_lost: list[str], crashes: int = 0) -> None:
    """Record ``path``'s row of the summary, then assert each case met its expectation.

    ``observed``: case name -> (outcome, named), outcome KEPT / SKIPPED / REFUSED (or a description of what else
    happened), named: the output names the item with the case's reason (for a KEPT case: its dropped rows, if any).
    """
    must_name = [c for c in cases if c.expect != KEPT or c.reason]
    SUMMARY[path] = {"cases": len(cases), "as expected": sum(observed[c.name] == (c.expect, True) for c in cases),
                     "bad items named": f"{sum(observed[c.name][1] for c in must_name)}/{len(must_name)}",
                     "crashes": crashes, "good items lost": f"{len(good_lost)}/{good_total}"}
    wrong = {c.name: (c.expect, observed[c.name]) for c in cases if observed[c.name] != (c.expect, True)}
    assert not wrong, f"{path}: (expected, (observed, named)) = {wrong}"
    assert crashes == 0 and not good_lost, (crashes, good_lost)


def summary_text() -> str:
    """The summary table of every path tallied so far, one line per path, and the number of cases."""
    columns = ["cases", "as expected", "bad items named", "crashes", "good items lost"]
    width = max(map(len, SUMMARY))
    lines = [f"{'path':<{width}} | " + " | ".join(columns)]
    lines += [f"{path:<{width}} | " + " | ".join(f"{row[c]!s:>{len(c)}}" for c in columns)
              for path, row in SUMMARY.items()]
    return "\n".join(lines) + f"\n{sum(row['cases'] for row in SUMMARY.values())} cases in all"


def one_line_naming(stderr: str, case: Case) -> bool:
    """The refusal is one line that names the file (and ``file:line``, or the SSv2 entry) and the reason."""
    lines = stderr.strip().splitlines()
    place = str(case.path) if case.line is None else (
        f"{case.path}: {case.line}" if isinstance(case.line, str) else f"{case.path}:{case.line}")
    return len(lines) == 1 and place in lines[0] and case.reason in lines[0]
