"""Malformed inputs through every path that reads them: shard building, the training sets, the evaluators.

Each bad item (built in ``reliability_cases.py``, once per module) sits among good items. For every path: no
crash, the documented exit status (0 with the bad items skipped, counted and named; 2 with one line naming
``file:line`` where a malformed list is refused), every good item kept, and decodable oddities kept.
``python -m pytest tests/test_reliability_inputs.py -q -s`` prints the summary table.
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from reliability_cases import (
    KEPT,
    SKIPPED,
    Case,
    build_bad_caption_files,
    build_bad_videos,
    build_good_videos,
)

from mmpt_lite.checkpoint import save_checkpoint
from mmpt_lite.config import ModelConfig, RunConfig, TextTowerConfig, VideoTowerConfig
from mmpt_lite.data.howto import CaptionError, read_caption_file
from mmpt_lite.models.build import build_model
from mmpt_lite.models.classifier import build_classifier

REPO = Path(__file__).resolve().parents[1]
WORDS = ["a", "good", "caption", "first", "second", "with", "comma", "row"]
SUMMARY: dict[str, dict] = {}   # path -> its row of the summary table


# --------------------------------------------------------------------------- the summary table
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


@pytest.fixture(scope="module", autouse=True)
def summary_table():
    yield
    if not SUMMARY:
        return
    columns = ["cases", "as expected", "bad items named", "crashes", "good items lost"]
    width = max(map(len, SUMMARY))
    lines = [f"{'path':<{width}} | " + " | ".join(columns)]
    lines += [f"{path:<{width}} | " + " | ".join(f"{row[c]!s:>{len(c)}}" for c in columns)
              for path, row in SUMMARY.items()]
    total = sum(row["cases"] for row in SUMMARY.values())
    print("\n\nmalformed inputs, by path (tests/test_reliability_inputs.py)\n" + "\n".join(lines)
          + f"\n{total} cases in all")


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


def one_line_naming(stderr: str, case: Case) -> bool:
    """The refusal is one line that names the file (and ``file:line``, or the SSv2 entry) and the reason."""
    lines = stderr.strip().splitlines()
    place = str(case.path) if case.line is None else (
        f"{case.path}: {case.line}" if isinstance(case.line, str) else f"{case.path}:{case.line}")
    return len(lines) == 1 and place in lines[0] and case.reason in lines[0]


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
