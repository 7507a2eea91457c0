"""Zero-shot retrieval: window placement, decoding, scoring, unreadable videos, the in-training API, the CLI."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import make_video

from mmpt_lite.config import ModelConfig, RunConfig, TextTowerConfig, VideoTowerConfig
from mmpt_lite.data.video import read_clip
from mmpt_lite.evaluation import cli, features
from mmpt_lite.evaluation.features import (
    RetrievalProtocol,
    VideoRequest,
    decode_retrieval_windows,
)
from mmpt_lite.evaluation.runtime import EvalRuntime
from mmpt_lite.evaluation.windows import frame_window_starts, retrieval_window_starts
from mmpt_lite.evaluation.zeroshot import MsrvttRetrieval, YoucookRetrieval, retrieval_scores
from mmpt_lite.models.build import build_model
from mmpt_lite.models.preprocess import VideoInput

COLOURS = ["red", "blue", "green", "yellow"]
WORDS = ["a", "red", "blue", "green", "yellow", "square", "video", "spins", "broken"]


@pytest.fixture(scope="module")
def msrvtt_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("msrvtt")
    rows = ["key,vid_key,video_id,sentence"]
    for i, colour in enumerate(COLOURS):
        make_video(root / f"video{i}.mp4", colour, seconds=1.0 + i)
        rows.append(f"ret{i},msr{i},video{i},a {colour} square")
    (root / "video9.mp4").write_bytes(b"\x00\x00\x00 this is not an mp4 file")  # deliberately corrupt
    rows.append("ret9,msr9,video9,a broken video")
    rows.append("ret8,msr8,video8,a video nobody downloaded")  # missing file
    (root / "msrvtt_test.csv").write_text("\n".join(rows) + "\n")
    return root


def tiny_model():
    torch.manual_seed(0)
    cfg = ModelConfig(video=VideoTowerConfig(preset="vit_tiny"),
                      text=TextTowerConfig(word_dim=8, hidden_dim=16), embed_dim=16)
    return build_model(cfg, vocab=WORDS, max_words=8)


def test_window_starts_follow_milnce():
    # linspace(start, max(start, end - num_frames/fps - 0.4), n)
    np.testing.assert_allclose(retrieval_window_starts(0.0, 10.0, 4, 16, 5.0), np.linspace(0, 6.4, 4))
    np.testing.assert_allclose(retrieval_window_starts(3.0, 5.0, 3, 16, 5.0), [3.0, 3.0, 3.0])  # short segment
    np.testing.assert_array_equal(frame_window_starts(100, 16, 5), [0, 21, 42, 63, 84])
    np.testing.assert_array_equal(frame_window_starts(10, 16, 3), [0, 0, 0])


def test_windows_are_decoded_cropped_and_zero_padded(msrvtt_root):
    protocol = RetrievalProtocol(num_windows=2, num_frames=8, fps=5.0, video_size=32)
    # 1 s video: each window starts at 0 and holds 5 real frames at 5 fps, then 3 zero frames.
    windows = decode_retrieval_windows(VideoRequest("v0", str(msrvtt_root / "video0.mp4")), protocol)
    assert windows.shape == (2, 8, 32, 32, 3) and windows.dtype == np.uint8
    assert windows[:, :5].reshape(2, 5, -1).max(axis=2).min() > 0
    assert windows[:, 5:].max() == 0
    # Red stays red through the square crop and resize (no channel swap).
    assert windows[0, 0, 16, 2, 0] > 200 and windows[0, 0, 16, 2, 2] < 60


def test_model_normalisation_is_applied():
    model = tiny_model()
    white = torch.full((1, 2, 4, 4, 3), 255, dtype=torch.uint8)
    video = VideoInput(model, torch.device("cpu"))(white)
    assert video.shape == (1, 3, 2, 4, 4)
    expected = (1.0 - torch.tensor(model.video_mean)) / torch.tensor(model.video_std)
    torch.testing.assert_close(video[0, :, 0, 0, 0], expected.float())


def test_scores_average_windows_and_sink_unreadable_columns():
    texts = np.array([[1.0, 0.0], [0.0, 1.0]])
    windows = np.array([[[2.0, 0.0], [0.0, 0.0]], [[0.0, 4.0], [0.0, 2.0]]])  # means (1, 0), (0, 3)
    scores = retrieval_scores(texts, windows, np.array([True, True]))
    np.testing.assert_allclose(scores, [[1.0, 0.0], [0.0, 3.0]])
    scores = retrieval_scores(texts, windows, np.array([True, False]))
    assert np.isneginf(scores[:, 1]).all()


def test_corrupt_and_missing_videos_are_reported_and_counted_as_misses(msrvtt_root):
    model = tiny_model().train()
    result = MsrvttRetrieval(RetrievalProtocol(2, 4, 5.0, 32), msrvtt_root).run(model, EvalRuntime(batch_size=2))
    assert model.training  # the caller's mode is restored
    assert result["num_texts"] == result["num_videos"] == 6
    assert result["missing"] == ["video8"] and result["num_missing"] == 1
    assert list(result["unreadable"]) == ["video9"] and "video9.mp4" in result["unreadable"]["video9"]
    # The two bad columns rank last for their own captions: at most 4 of 6 captions can be in the top 4.
    assert result["R@5"] <= 100 * 5 / 6 and result["MeanR"] >= (5 + 5) / 6
    with pytest.raises(FileNotFoundError):
        MsrvttRetrieval(RetrievalProtocol(1, 4, 5.0, 32), msrvtt_root, msrvtt_root / "nope.csv")


def test_youcook_rows_are_segments(tmp_path):
    make_video(tmp_path / "validation" / "101" / "abc.mp4", "red", seconds=4.0)
    make_video(tmp_path / "validation" / "102" / "def.mp4", "blue", seconds=2.0)
    (tmp_path / "validation_youcook.csv").write_text(
        "end,start,task,text,video_id\n2,0,101,a red square,abc\n4,2,101,red spins,abc\n"
        "2,0,102,a blue square,def\n9,5,102,after the end,def\n3,1,103,missing,ghi\n")
    dataset = YoucookRetrieval(RetrievalProtocol(), tmp_path).dataset  # the default list name
    assert [(r.start, r.end) for r in dataset.requests][:2] == [(0.0, 2.0), (2.0, 4.0)]
    assert dataset.requests[4].path.endswith("validation/103/ghi.mp4")
    evaluator = YoucookRetrieval(RetrievalProtocol(2, 4, 5.0, 32), tmp_path)
    result = evaluator.run(tiny_model(), EvalRuntime(batch_size=4, num_workers=1))
    assert result["missing"] == ["ghi[1-3s]"]
    assert list(result["unreadable"]) == ["def[5-9s]"]  # the segment lies past the end of the file


def test_cli_rejects_bad_flags_and_paths_with_status_2(msrvtt_root, tmp_path, capsys):
    assert cli.main("msrvtt", ["--num_frames", "x"]) == 2
    assert cli.main("msrvtt", ["--eval_video_root", str(msrvtt_root)]) == 2  # no checkpoint
    assert cli.main("msrvtt", ["--pretrain_cnn_path", str(tmp_path / "missing.pth")]) == 2
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert cli.main("msrvtt", ["--pretrain_cnn_path", str(tmp_path / "notes.txt")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("eval_msrvtt.py: error:") for line in errors)
    assert "unknown checkpoint format" in errors[-1]


def test_in_training_evaluation_is_the_evaluator_with_the_runs_protocol_and_decoder(msrvtt_root, monkeypatch):
    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, num_windows_test=2, num_frames=4, fps=5.0,
                                                            video_size=32, batch_size=2),
                              data=dataclasses.replace(cfg.data, decoder="ffmpeg"))
    evaluator = MsrvttRetrieval.from_run_config(cfg, msrvtt_root)
    runtime = EvalRuntime.for_training(cfg, "cpu")
    assert evaluator.protocol == RetrievalProtocol(2, 4, 5.0, 32) and runtime.cache.root is None
    backends = []

    def recording_read_clip(*args, backend, **kwargs):
        backends.append(backend)
        return read_clip(*args, backend="pyav", **kwargs)

    monkeypatch.setattr(features, "read_clip", recording_read_clip)
    model = tiny_model().train()
    result = evaluator.run(model, runtime)
    assert model.training and set(backends) == {"ffmpeg"}  # data.decoder reaches the decoder; mode restored
    assert result == MsrvttRetrieval(RetrievalProtocol(2, 4, 5.0, 32), msrvtt_root).run(model, EvalRuntime(batch_size=2))
    assert cli.EVALUATORS == {"msrvtt": MsrvttRetrieval, "youcook": YoucookRetrieval, "hmdb": cli.HmdbProbe,
                              "classify": cli.ClassifyEval, "youcook_paragraph": cli.YoucookParagraph}
