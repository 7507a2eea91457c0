"""Malformed inputs through every path that reads them: shard building, the training sets, the evaluators.

Each bad item (built in ``reliability_cases.py``, once per module) sits among good items. For every path: no
crash, the documented exit status (0 with the bad items skipped, counted and named; 2 with one line naming
``file:line`` where a malformed list is refused), every good item kept, and decodable oddities kept.
``python -m pytest tests/test_reliability_inputs.py -q -s`` prints the summary table.
"""

import csv
import dataclasses
import json
import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from reliability_cases import (
    GOOD_CAPTIONS,
    KEPT,
    REFUSED,
    SKIPPED,
    SUMMARY,
    Case,
    build_bad_caption_files,
    build_bad_howto_list,
    build_bad_videos,
    build_good_videos,
    build_refused_lists,
    one_line_naming,
    place_cases,
    summary_text,
    tally,
)

from mmpt_lite.checkpoint import save_checkpoint
from mmpt_lite.config import ModelConfig, RunConfig, TextTowerConfig, VideoTowerConfig
from mmpt_lite.data.classify_sets import ClassifyClipDataset, read_classify_set, read_kinetics_list, skipped_video_ids
from mmpt_lite.data.howto import CaptionError, read_caption_file
from mmpt_lite.data.loader import MilNceClipDataset, TrainLoader
from mmpt_lite.data.shards import ShardedCaptionStore, ShardedVideoStore
from mmpt_lite.data.video import read_all_frames
from mmpt_lite.data.video_sets import MaeClipDataset, prepare_mae_data, train_video_paths
from mmpt_lite.evaluation import cli
from mmpt_lite.models.build import build_model
from mmpt_lite.models.classifier import build_classifier

REPO = Path(__file__).resolve().parents[1]
WORDS = ["a", "good", "caption", "first", "second", "with", "comma", "row"]


@pytest.fixture(scope="module", autouse=True)
def summary_table():
    yield
    if SUMMARY:
        print("\n\nmalformed inputs, by path (tests/test_reliability_inputs.py)\n" + summary_text())


# --------------------------------------------------------------------------- shared inputs
@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> SimpleNamespace:
    """Every bad video kind and the good videos, made once; each path links them into its own layout."""
    folder = tmp_path_factory.mktemp("pool")
    return SimpleNamespace(bad=build_bad_videos(folder / "bad"), good=build_good_videos(folder / "good"))


def link_good(pool, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for video in pool.good:
        os.link(video, folder / video.name)
    return [folder / video.name for video in pool.good]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> SimpleNamespace:
    """Two finished run folders at their initial weights (the inputs are under test, not the model): a video-text
    model (vit_tiny + word2vec) and a 3-class classifier, saved as training saves them."""
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    word2vec = root / "word2vec.txt"
    word2vec.write_text("\n".join([f"{len(WORDS)} 8"] + [w + " " + " ".join(f"{x:.4f}" for x in rng.normal(size=8))
                                                         for w in WORDS]) + "\n")
    base = RunConfig()
    cfg = dataclasses.replace(
        base, model=ModelConfig(video=VideoTowerConfig(preset="vit_tiny"),
                                text=TextTowerConfig(path=str(word2vec), word_dim=8, hidden_dim=16), embed_dim=16),
        data=dataclasses.replace(base.data, max_words=8, num_frames=4, fps=5.0, video_size=32, num_candidates=2,
                                 min_time=1.0),
        eval=dataclasses.replace(base.eval, num_windows_test=1, num_frames=4, video_size=32, batch_size=8, hmdb_fps=5),
        train=dataclasses.replace(base.train, output_dir=str(root / "retrieval"), seed=3))
    torch.manual_seed(3)
    model = build_model(cfg.model, max_words=8)
    save_checkpoint(root / "retrieval", 1, model_state=model.state_dict(), train_state={"step": 1}, cfg=cfg)
    classify_cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, task="classify", output_dir=str(root / "classify")),
        classify=dataclasses.replace(base.classify, sampling_stride=2, test_clips=1, test_crops=1))
    torch.manual_seed(1)
    save_checkpoint(root / "classify", 1, model_state=build_classifier("vit_tiny", 3).state_dict(), train_state={},
                    cfg=classify_cfg)
    return SimpleNamespace(retrieval=root / "retrieval", classify=root / "classify", cfg=cfg, model=model)


def run_script(script: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


# --------------------------------------------------------------------------- caption files
def test_caption_reader_drops_bad_rows_by_line_and_refuses_unusable_files(tmp_path):
    """Each caption case on its own: KEPT files give exactly their good rows (bad ones named with their line),
    SKIPPED files raise CaptionError with the reason; the 100k-row and 10 MB files parse in linear time."""
    cases = build_bad_caption_files(tmp_path)
    observed, lost = {}, []
    for case in cases:
        try:
            times, texts, dropped = read_caption_file(case.path)
        except CaptionError as err:
            observed[case.name] = (SKIPPED, case.reason in err.reason and err.path == str(case.path))
            continue
        named = all(isinstance(line, int) and line > 1 for line, _ in dropped) and (
            any(case.reason in why for _, why in dropped) if case.reason else not dropped)
        outcome = KEPT if len(texts) == case.good_rows == len(times) else f"kept {len(texts)} rows"
        observed[case.name] = (outcome, named)
        assert times.dtype == np.float32 and (times[:, 1] >= times[:, 0]).all() and (times >= 0).all()
        assert all(len(t) <= 10_000 for t in texts)
        good_texts = {"first caption", "second, with a comma"}   # the good rows every KEPT file holds
        lost += [f"{case.name}: {text}" for text in sorted(good_texts - set(texts))]
    tally("caption reader (howto.read_caption_file)", cases, observed, good_lost=lost,
          good_total=2 * sum(c.expect == KEPT for c in cases))


def test_caption_reader_leaves_the_csv_field_limit_as_it_was(tmp_path):
    import csv as csv_module

    limit = csv_module.field_size_limit()
    (tmp_path / "big.csv").write_text("start,end,text\n0,1," + "x" * 200_000 + "\n1,2,fine\n")
    _, texts, dropped = read_caption_file(tmp_path / "big.csv")
    assert texts == ["fine"] and dropped[0][0] == 2 and "200,000 characters" in dropped[0][1]
    assert csv_module.field_size_limit() == limit


# --------------------------------------------------------------------------- shard building
@pytest.fixture(scope="module")
def corpus(tmp_path_factory, pool) -> SimpleNamespace:
    """A HowTo100M-format corpus: good videos with good captions; every bad video with good captions; a copy of a
    good video under every bad caption file; a list with bad lines after the good ones."""
    root = tmp_path_factory.mktemp("howto")
    videos, captions = root / "videos", root / "captions"
    good = link_good(pool, videos)
    video_cases = place_cases(pool.bad, videos)
    caption_cases = build_bad_caption_files(captions)
    for case in caption_cases:
        os.link(good[0], videos / f"{case.name}.mp4")
    for video in good + [c.path for c in video_cases]:
        (captions / f"{video.stem}.csv").write_text(GOOD_CAPTIONS)
    listed = [v.name for v in good + [c.path for c in video_cases]] + [f"{c.name}.mp4" for c in caption_cases]
    list_cases = build_bad_howto_list(root / "train.csv", videos, listed)
    return SimpleNamespace(root=root, videos=videos, captions=captions, good=[v.stem for v in good],
                           video_cases=video_cases, caption_cases=caption_cases, list_cases=list_cases)


@pytest.fixture(scope="module")
def shards(corpus) -> SimpleNamespace:
    """``scripts/shard_howto.py`` over the corpus (2 worker processes, 5 fps, short side 32)."""
    out = corpus.root / "shards"
    proc = run_script("scripts/shard_howto.py", "--csv", corpus.root / "train.csv", "--video_root", corpus.videos,
                      "--caption_root", corpus.captions, "--out", out, "--workers", 2, "--fps", 5, "--short_side", 32,
                      "--quiet")
    return SimpleNamespace(out=out, proc=proc)


def test_shard_build_skips_and_names_every_bad_item_and_keeps_every_good_one(corpus, shards):
    proc = shards.proc
    crashes = int(proc.returncode != 0 or "Traceback" in proc.stderr)
    assert crashes == 0, proc.stderr[-3000:]
    store, captions = ShardedVideoStore(shards.out), ShardedCaptionStore(shards.out)
    stored = set(store.video_ids)
    with open(shards.out / "skipped.csv", newline="") as f:
        skipped = list(csv.DictReader(f))

    def named(case: Case, kind: str, **fields) -> bool:
        return any(r["kind"] == kind and Path(r["file"]).name == case.path.name and case.reason in r["reason"]
                   and all(r[k] == str(v) for k, v in fields.items()) for r in skipped)

    observed = {}
    for case in corpus.video_cases:
        vid = case.path.stem
        outcome = KEPT if vid in stored and store.num_frames(vid) > 0 else SKIPPED
        observed[case.name] = (outcome, outcome == KEPT or named(case, "video"))
    for case in corpus.caption_cases:
        texts = captions.get(case.name)[2] if case.name in stored else None
        outcome = SKIPPED if texts is None else KEPT if len(texts) == case.good_rows else f"kept {len(texts)} rows"
        observed[case.name] = (outcome, named(case, "caption_row" if case.expect == KEPT else "captions")
                               if case.reason else outcome == KEPT)
    for case in corpus.list_cases:
        stem = case.path.stem
        if case.name == "list_missing_id":   # listed, absent: a video the builder could not read
            observed[case.name] = (SKIPPED if stem not in stored else KEPT, named(case, "video"))
        else:   # a bad line of the list: named with its line; an escaping path is never read
            in_report = any(r["kind"] == "video_list" and r["line"] == str(case.line) and case.reason in r["reason"]
                            for r in skipped)
            observed[case.name] = (SKIPPED if in_report and "outside" not in stored else KEPT, in_report)
    lost = [v for v in corpus.good if v not in stored or list(captions.get(v)[2]) != ["first caption",
                                                                                      "second, with a comma"]]
    cases = corpus.video_cases + corpus.caption_cases + corpus.list_cases
    tally("shard build (scripts/shard_howto.py)", cases, observed, good_total=len(corpus.good), good_lost=lost,
          crashes=crashes)

    report = json.loads((shards.out / "report.json").read_text())
    kept = [c for c in corpus.video_cases + corpus.caption_cases if c.expect == KEPT]
    dropped = [c for c in corpus.video_cases + corpus.caption_cases if c.expect == SKIPPED]
    assert report["videos_written"] == len(corpus.good) + len(kept) == len(stored)
    assert report["videos_skipped"] == len(dropped) + 1   # + the listed id with no file
    assert f"{report['videos_written']} written, {report['videos_skipped']} skipped" in proc.stdout


def test_shard_script_refuses_a_malformed_list_in_one_line(tmp_path, capsys):
    script = runpy.run_path(str(REPO / "scripts" / "shard_howto.py"), run_name="shard_howto")
    cases = build_refused_lists(tmp_path, "howto")
    observed, crashes = {}, 0
    for case in cases:
        try:
            status = script["main"](["--csv", str(case.path), "--out", str(tmp_path / f"out_{case.name}"), "--quiet"])
        except Exception:  # noqa: BLE001 - counted as a crash in the summary, then the test fails on it
            status, crashes = None, crashes + 1
        observed[case.name] = (REFUSED if status == 2 else f"exit {status}", one_line_naming(capsys.readouterr().err,
                                                                                              case))
    tally("shard build: refused lists", cases, observed, good_total=0, good_lost=[], crashes=crashes)


# --------------------------------------------------------------------------- training sets
def test_training_loader_draws_every_stored_video_as_full_clips(corpus, shards, models):
    """MilNceClipDataset + TrainLoader over the shards: one epoch draws every stored video, the kept oddities and
    the caption files that lost rows included, each a full [T, S, S, 3] clip with K captions."""
    store, captions = ShardedVideoStore(shards.out), ShardedCaptionStore(shards.out)
    dataset = MilNceClipDataset.from_config(models.cfg.data, store, captions, models.model.tokenizer)
    loader = TrainLoader(dataset, batch_size=8, rank=0, world_size=1, seed=0)
    drawn = set()
    for _, batch in zip(range(loader.steps_per_epoch()), loader, strict=False):
        assert batch.video.shape[1:] == (4, 32, 32, 3) and batch.video.dtype == torch.uint8
        assert next(iter(batch.text.values())).shape[:2] == (len(batch.video), 2)
        drawn.update(batch.video_index.tolist())
    ids = list(store.video_ids)
    assert drawn == set(range(len(ids)))
    # naming the bad rows was the shard builder's job: here each kept item only has to make a full clip
    cases = [dataclasses.replace(c, reason="") for c in corpus.video_cases + corpus.caption_cases if c.expect == KEPT]
    observed = {}
    for case in cases:
        vid = case.name if case.name.startswith("cap_") else case.path.stem
        sample = dataset[(ids.index(vid), 7)]
        full = sample["video"].shape == (4, 32, 32, 3) and bool(sample["video"].any(dim=(1, 2, 3)).all())
        observed[case.name] = (KEPT if full else "blank or short clip", True)
    tally("training loader (MilNceClipDataset, TrainLoader)", cases, observed, good_total=len(corpus.good),
          good_lost=[v for v in corpus.good if ids.index(v) not in drawn])


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory, pool) -> SimpleNamespace:
    """A Kinetics-format set: the good videos (labels 0-2) and every bad video (label 0) under ``videos/``; the
    lists repeat the first line; ``train.txt`` also names ``../outside.mp4`` and an absolute path out of the set."""
    root = tmp_path_factory.mktemp("sets")
    set_root = root / "kinetics"
    good = link_good(pool, set_root / "videos")
    video_cases = place_cases(pool.bad, set_root / "videos")
    entries = [(f"videos/{v.name}", i) for i, v in enumerate(good)] + [(f"videos/{c.path.name}", 0)
                                                                       for c in video_cases]
    listed = entries + [entries[0]]
    os.link(good[0], root / "outside.mp4")
    (set_root / "classes.txt").write_text("class_a\nclass_b\nclass_c\n")
    for name, lines in [("val.txt", listed), ("clean_train.txt", listed),
                        ("train.txt", listed + [("../outside.mp4", 1), (str(root / "outside.mp4"), 1)])]:
        (set_root / name).write_text("".join(f"{path} {label}\n" for path, label in lines))
    return SimpleNamespace(root=root, set_root=set_root, good=[f"videos/{v.name}" for v in good],
                           video_cases=video_cases, duplicate_line=len(listed), escape_lines=(len(listed) + 1,
                                                                                              len(listed) + 2))


def test_video_only_and_classification_sets_read_from_raw_lists(kinetics, models):
    """Masked pretraining's set preparation (``prepare_mae_data``: the raw Kinetics list -> shards) keeps the
    oddities and names the rest (the out-of-root lines too); the classification training set over those shards
    names each skipped video; the classification reader refuses the list with out-of-root lines by file:line."""
    cfg = dataclasses.replace(models.cfg, data=dataclasses.replace(models.cfg.data, root=str(kinetics.root)),
                              mae=dataclasses.replace(models.cfg.mae, dataset="kinetics"))
    prepared = prepare_mae_data(cfg, build=True)
    store = prepared.video_store
    report = json.loads((prepared.shard_root / "report.json").read_text())
    list_skips = {s["line"]: s["reason"] for s in report["skipped"] if s["kind"] == "video_list"}
    mae = MaeClipDataset(store, num_frames=4, stride=2, video_size=32)
    clips_ok = all(mae[(i, i)]["video"].shape == (4, 32, 32, 3) for i in range(len(mae)))
    skipped = skipped_video_ids(store)
    train = read_kinetics_list(kinetics.set_root / "clean_train.txt", kinetics.set_root,
                               kinetics.set_root / "classes.txt")
    classify = ClassifyClipDataset(store, train, sampling="dense", num_frames=4, stride=2, size=32, flip=False)
    samples_ok = all(classify[(i, i)]["video"].shape == (4, 32, 32, 3) for i in range(len(classify)))
    assert clips_ok and samples_ok
    observed = {}
    for case in kinetics.video_cases:
        vid, rel = case.path.stem, f"videos/{case.path.name}"
        in_both = vid in store.video_ids and vid in classify.video_ids
        named = case.reason in skipped.get(vid, "") and case.reason in classify.skipped.get(rel, "")
        observed[case.name] = (KEPT if in_both else SKIPPED, in_both or named)
    duplicate = Case("list_duplicate", kinetics.set_root / "clean_train.txt", SKIPPED, "repeats",
                     line=kinetics.duplicate_line)
    observed[duplicate.name] = (SKIPPED, any(f"clean_train.txt:{duplicate.line}: " in d and "repeats" in d
                                             for d in train.duplicates))
    escapes = [Case(f"list_{form}", kinetics.set_root / "train.txt", SKIPPED, "outside the video root", line=line)
               for form, line in zip(("dotdot", "absolute"), kinetics.escape_lines, strict=True)]
    for case in escapes:   # lines of the shard builder's list, written from train.txt in its order (+ a header)
        observed[case.name] = (SKIPPED if "outside" not in store.video_ids else KEPT,
                               case.reason in list_skips.get(case.line + 1, ""))
    refused = Case("classify_list_out_of_root", kinetics.set_root / "train.txt", REFUSED, "escapes",
                   line=kinetics.escape_lines[0])
    try:
        read_classify_set(kinetics.set_root, "kinetics", "train")
        observed[refused.name] = ("read", False)
    except ValueError as err:
        observed[refused.name] = (REFUSED, one_line_naming(str(err), refused))
    lost = [rel for rel in kinetics.good if Path(rel).stem not in store.video_ids or Path(rel).stem not in
            classify.video_ids]
    tally("video-only / classification training sets (raw lists)", kinetics.video_cases + [duplicate, *escapes,
                                                                                             refused],
          observed, good_total=len(kinetics.good), good_lost=lost)


def test_raw_training_lists_that_do_not_parse_are_named_errors(tmp_path):
    """Masked pretraining reads the set's own list before sharding: an SSv2 list that is not JSON or has an entry
    without an id is a ValueError naming the file (and entry); bytes that are not UTF-8 in a Kinetics list cost only
    that line's video (a missing file, named where it is read), never the list."""
    ssv2 = tmp_path / "ssv2"
    ssv2.mkdir()
    cases = [Case("ssv2_entry_without_id", ssv2 / "train.json", REFUSED, "expected an object with an 'id'",
                  line="entry 1"),
             Case("ssv2_not_json", ssv2 / "train.json", REFUSED, "not a JSON list")]
    observed = {}
    for case, content in zip(cases, ['[{"id": "v1"}, {"label": "no id"}]', "[{'id': 1}]"], strict=True):
        case.path.write_text(content)
        try:
            train_video_paths(ssv2, "ssv2")
            observed[case.name] = ("read", False)
        except ValueError as err:
            observed[case.name] = (REFUSED, one_line_naming(str(err), case))
    kinetics = tmp_path / "kinetics"
    kinetics.mkdir()
    (kinetics / "train.txt").write_bytes(b"videos/good_a.mp4 0\nvideos/caf\xe9.mp4 1\nvideos/good_b.mp4 2\n")
    paths = train_video_paths(kinetics, "kinetics")
    listed = read_kinetics_list(kinetics / "train.txt", kinetics)
    latin1 = Case("kinetics_not_utf8", kinetics / "train.txt", KEPT)
    observed[latin1.name] = (KEPT if len(paths) == len(listed.videos) == 3 and "\ufffd" in paths[1] else "lost", True)
    lost = [p for p in ("videos/good_a.mp4", "videos/good_b.mp4") if p not in paths or p not in listed.videos]
    tally("raw training lists (train_video_paths, read_kinetics_list)", [*cases, latin1], observed, good_total=2,
          good_lost=lost)


# --------------------------------------------------------------------------- evaluators
def eval_cli(task: str, capsys, *args) -> tuple[int | None, str, str]:
    """``eval/eval_<task>.py``'s main in this process: (exit status, stdout, stderr); status None = it crashed."""
    try:
        status = cli.main(task, ["--no_cache", "--quiet", *map(str, args)])
    except Exception:  # noqa: BLE001 - counted as a crash in the summary, then the test fails on it
        status = None
        print(traceback.format_exc(), file=sys.stderr)
    out, err = capsys.readouterr()
    return status, out, err


def check_eval_record(path: str, record: dict, stdout: str, cases: list[Case], name_of, good: list[str],
                      duplicate: Case) -> None:
    """Tally an evaluator's JSON record: every SKIPPED case among the missing / unreadable videos with its reason
    and printed by name, every KEPT case and good video evaluated, the repeated list row named with its line."""
    problems = {**{name: "file not found" for name in record.get("missing", [])}, **record["unreadable"]}
    observed = {}
    for case in cases:
        name = name_of(case)
        if name in problems:
            observed[case.name] = (SKIPPED, case.reason in problems[name] and f"  {name}: " in stdout)
        else:
            observed[case.name] = (KEPT, True)
    observed[duplicate.name] = (SKIPPED, any(f"{duplicate.path}:{duplicate.line}: " in d for d in record["duplicates"])
                                and "1 repeated list entry left out" in stdout)
    tally(path, [*cases, duplicate], observed, good_total=len(good), good_lost=[g for g in good if g in problems])


def refusals(kind: str, task: str, folder: Path, capsys, *args) -> tuple[list[Case], dict, int]:
    """Run ``task``'s command line on each refused list of ``kind``: (cases, observed, crashes)."""
    cases = build_refused_lists(folder, kind)
    observed, crashes = {}, 0
    for case in cases:
        listed = case.path.parent if kind == "hmdb" else case.path   # HMDB reads a folder of split files
        status, _, err = eval_cli(task, capsys, *args, "--eval_video_root", folder, "--eval_csv", listed)
        crashes += status is None
        observed[case.name] = (REFUSED if status == 2 else f"exit {status}", one_line_naming(err, case))
    return cases, observed, crashes


def test_msrvtt_eval_scores_bad_videos_as_named_misses(pool, models, tmp_path, capsys):
    root = tmp_path / "msrvtt"
    good = [v.stem for v in link_good(pool, root)]
    cases = place_cases(pool.bad, root)
    ids = good + [c.path.stem for c in cases] + [good[0]]
    (root / "msrvtt_test.csv").write_text("key,vid_key,video_id,sentence\n" + "".join(
        f"ret{i},{v},{v},a caption of {v}\n" for i, v in enumerate(ids)))
    out = tmp_path / "msrvtt.json"
    status, stdout, stderr = eval_cli("msrvtt", capsys, "--pretrain_cnn_path", models.retrieval, "--eval_video_root",
                                      root, "--output", out)
    assert status == 0, stderr   # None: a crash (its traceback is in stderr)
    record = json.loads(out.read_text())["models"]["checkpoint"]
    assert record["num_texts"] == len(ids) - 1 and record["num_duplicates"] == 1
    duplicate = Case("list_duplicate", root / "msrvtt_test.csv", SKIPPED, "repeats", line=len(ids) + 1)
    check_eval_record("eval_msrvtt.py", record, stdout, cases, lambda c: c.path.stem, good, duplicate)


def test_youcook_eval_scores_bad_segments_as_named_misses(pool, models, tmp_path, capsys):
    root = tmp_path / "youcook2"
    folder = root / "validation" / "101"
    good = link_good(pool, folder)
    cases = place_cases(pool.bad, folder)
    cases.append(Case("segment_past_end", folder / "good_b.mp4", SKIPPED, "no frames in"))
    rows = [(v.stem, 0, 2) for v in good] + [(c.path.stem, 0, 2) for c in cases[:-1]] + [("good_b", 10, 12),
                                                                                           ("good_a", 0, 2)]
    (root / "validation_youcook.csv").write_text("end,start,task,text,video_id\n" + "".join(
        f"{end},{start},101,a caption of {vid},{vid}\n" for vid, start, end in rows))
    out = tmp_path / "youcook.json"
    status, stdout, stderr = eval_cli("youcook", capsys, "--pretrain_cnn_path", models.retrieval,
                                      "--eval_video_root", root, "--output", out)
    assert status == 0, stderr   # None: a crash (its traceback is in stderr)
    record = json.loads(out.read_text())["models"]["checkpoint"]
    duplicate = Case("list_duplicate", root / "validation_youcook.csv", SKIPPED, "repeats", line=len(rows) + 1)

    def segment(case):
        return "good_b[10-12s]" if case.name == "segment_past_end" else f"{case.path.stem}[0-2s]"

    check_eval_record("eval_youcook.py", record, stdout, cases, segment, [f"{v.stem}[0-2s]" for v in good],
                      duplicate)

    # The same list as paragraphs: a video with an unreadable segment is skipped whole (its paragraph with it),
    # so good_b, whose second segment lies past its end, is the case here and the other good videos must stay.
    status, stdout, stderr = eval_cli("youcook_paragraph", capsys, "--pretrain_cnn_path", models.retrieval,
                                      "--eval_video_root", root, "--output", out)
    assert status == 0, stderr
    record = json.loads(out.read_text())["models"]["checkpoint"]
    cases[-1] = dataclasses.replace(cases[-1], reason="1 of 2 segments unreadable")
    check_eval_record("eval_youcook_paragraph.py", record, stdout, cases,
                      lambda c: "good_b" if c.name == "segment_past_end" else c.path.stem,
                      [v.stem for v in good if v.stem != "good_b"], duplicate)


def test_hmdb_probe_leaves_bad_videos_out_and_names_them(pool, models, tmp_path, capsys):
    root = tmp_path / "hmdb51"
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    lines = {}
    for cls in ("brush_hair", "cartwheel"):
        good = link_good(pool, root / cls)
        lines[cls] = [f"{good[0].name} 1", f"{good[1].name} 1", f"{good[2].name} 2"]
    cases = place_cases(pool.bad, root / "brush_hair")
    lines["brush_hair"] += [f"{c.path.name} 2" for c in cases] + [lines["brush_hair"][0]]
    for cls, cls_lines in lines.items():
        (splits / f"{cls}_test_split1.txt").write_text("\n".join(cls_lines) + "\n")
    out = tmp_path / "hmdb.json"
    status, stdout, stderr = eval_cli("hmdb", capsys, "--pretrain_cnn_path", models.retrieval, "--eval_video_root",
                                      root, "--splits", 1, "--output", out)
    assert status == 0, stderr   # None: a crash (its traceback is in stderr)
    record = json.loads(out.read_text())["models"]["checkpoint"]
    duplicate = Case("list_duplicate", splits / "brush_hair_test_split1.txt", SKIPPED, "repeats",
                     line=len(lines["brush_hair"]))
    good = [f"{cls}/{v.name}" for cls in lines for v in pool.good]
    check_eval_record("eval_hmdb.py", record, stdout, cases, lambda c: f"brush_hair/{c.path.name}", good, duplicate)


def test_classify_eval_skips_bad_videos_after_one_try_and_names_them(kinetics, models, tmp_path, capsys):
    out = tmp_path / "classify.json"
    status, stdout, stderr = eval_cli("classify", capsys, "--pretrain_cnn_path", models.classify,
                                      "--eval_video_root", kinetics.set_root, "--output", out)
    assert status == 0, stderr   # None: a crash (its traceback is in stderr)
    record = json.loads(out.read_text())["models"]["checkpoint"]
    skipped = [c for c in kinetics.video_cases if c.expect == SKIPPED]
    listed = len(kinetics.good) + len(kinetics.video_cases)
    assert record["accuracy_over"] == f"accuracy over {listed - len(skipped)} of {listed} videos"
    duplicate = Case("list_duplicate", kinetics.set_root / "val.txt", SKIPPED, "repeats", line=kinetics.duplicate_line)
    check_eval_record("eval_classify.py", record, stdout, kinetics.video_cases, lambda c: f"videos/{c.path.name}",
                      kinetics.good, duplicate)


def test_evaluators_refuse_malformed_lists_in_one_line(models, tmp_path, capsys):
    cases, observed, crashes = [], {}, 0
    for kind, task, args in [("msrvtt", "msrvtt", ["--pretrain_cnn_path", models.retrieval]),
                             ("youcook", "youcook", ["--pretrain_cnn_path", models.retrieval]),
                             ("hmdb", "hmdb", ["--pretrain_cnn_path", models.retrieval, "--splits", 1]),
                             ("kinetics", "classify", ["--pretrain_cnn_path", models.classify]),
                             ("ssv2", "classify", ["--pretrain_cnn_path", models.classify, "--dataset", "ssv2"])]:
        kind_cases, kind_observed, kind_crashes = refusals(kind, task, tmp_path / kind, capsys, *args)
        cases += kind_cases
        observed.update(kind_observed)
        crashes += kind_crashes
    # the script itself, in its own process: status 2, the one line, no traceback
    case = next(c for c in cases if c.name == "msrvtt_dotdot")
    proc = run_script("eval/eval_msrvtt.py", "--pretrain_cnn_path", models.retrieval, "--eval_video_root",
                      case.path.parent, "--eval_csv", case.path, "--no_cache")
    crashes += "Traceback" in proc.stderr
    assert proc.returncode == 2 and one_line_naming(proc.stderr, case), proc.stderr
    tally("evaluators: refused lists (eval/*.py)", cases, observed, good_total=0, good_lost=[], crashes=crashes)


# --------------------------------------------------------------------------- decoders agree on the oddities
def test_decoders_read_the_kept_oddities_alike(pool):
    """The ffmpeg and PyAV backends give the same frames for every kept odd video (rotation tags included: both
    return the coded pixels), and refuse the same bad ones."""
    for case in pool.bad:
        results = {}
        for backend in ("pyav", "ffmpeg"):
            try:
                results[backend] = read_all_frames(case.path if case.path.exists() else case.path.with_suffix(".webm"),
                                                   fps=5, backend=backend)
            except Exception as err:  # noqa: BLE001 - compared below: both must refuse, with VideoDecodeError
                results[backend] = err
        if case.expect == SKIPPED:
            assert all(type(r).__name__ == "VideoDecodeError" for r in results.values()), (case.name, results)
            continue
        a, b = results["pyav"], results["ffmpeg"]
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), (case.name, results)
        count = min(len(a), len(b))
        assert abs(len(a) - len(b)) <= 1 and count > 0 and a.shape[1:] == b.shape[1:], (case.name, a.shape, b.shape)
        assert np.abs(a[:count].astype(int) - b[:count]).mean() < 2, case.name


# --------------------------------------------------------------------------- search index
def test_search_index_skips_and_names_bad_videos_and_keeps_every_good_one(pool, models, tmp_path):
    """``mmpt-lite index`` walks the folder itself: a listed-but-absent file is not an input here, and a file
    stored under another extension is simply indexed under its own name."""
    from mmpt_lite.search.cli import index_main
    from mmpt_lite.search.store import read_snapshot

    root = tmp_path / "videos"
    good = [v.name for v in link_good(pool, root)]
    cases = [c for c in place_cases(pool.bad, root) if c.name != "missing_file"]
    crashes = 0
    try:
        status = index_main([str(root), "--checkpoint", str(models.retrieval), "--out", str(tmp_path / "index"),
                             "--workers", "0", "--quiet"])
    except Exception:  # noqa: BLE001 - counted as a crash in the summary, then the test fails on it
        status, crashes = None, 1
        traceback.print_exc()
    assert status == 0
    snapshot = read_snapshot(tmp_path / "index")
    indexed = {row.file for row in snapshot.rows}
    skipped = {s.rel: s.reason for s in snapshot.skipped}
    observed = {}
    for case in cases:
        name = case.path.name if case.path.exists() else case.path.with_suffix(".webm").name
        if name in skipped:
            observed[case.name] = (SKIPPED, case.reason in skipped[name])
        else:
            observed[case.name] = (KEPT if name in indexed else "absent", True)
    tally("search index (mmpt-lite index)", cases, observed, good_total=len(good),
          good_lost=[g for g in good if g not in indexed], crashes=crashes)
