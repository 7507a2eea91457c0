"""HMDB-51 split parsing and the linear-SVM probe on synthetic window features."""

import json

import numpy as np
import pytest
from conftest import make_video

from mmpt_lite.evaluation import cli
from mmpt_lite.evaluation.linear_probe import probe_split, read_hmdb_splits, topk_accuracy_curve


def write_splits(folder, classes, per_class=6):
    """Official-format split files: per class, videos 0-3 train / 4-5 test in split 1, shifted in 2."""
    folder.mkdir(parents=True)
    for cls in classes:
        for split in (1, 2, 3):
            lines = []
            for i in range(per_class):
                code = 2 if (i + split) % per_class >= per_class - 2 else 1
                lines.append(f"{cls}_v{i}.avi {code} ")  # the official files have a trailing space
            lines.append(f"{cls}_unused.avi 0")
            (folder / f"{cls}_test_split{split}.txt").write_text("\n".join(lines) + "\n")


def test_read_splits(tmp_path):
    write_splits(tmp_path / "splits", ["wave", "jump", "brush_hair"])
    splits = read_hmdb_splits(tmp_path / "splits")
    assert splits.classes == ["brush_hair", "jump", "wave"]
    assert len(splits.videos) == 18 and not any("unused" in v for v in splits.videos)
    for k in (1, 2, 3):
        assert len(splits.train[k]) == 12 and len(splits.test[k]) == 6
        assert not set(splits.train[k]) & set(splits.test[k])
    assert splits.videos[0] == "brush_hair/brush_hair_v0.avi" and splits.labels[0] == 0
    with pytest.raises(FileNotFoundError, match="split4"):
        read_hmdb_splits(tmp_path / "splits", splits=(4,))


def separable_features(num_classes=4, videos_per_class=10, windows=3, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(num_classes, dim))
    labels = np.repeat(np.arange(num_classes), videos_per_class)
    features = centres[labels][:, None, :] + rng.normal(size=(len(labels), windows, dim))
    return features.astype(np.float32), labels


def test_probe_separates_separable_classes():
    features, labels = separable_features()
    readable = np.ones(len(labels), bool)
    test_idx = np.arange(0, len(labels), 5)
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    result = probe_split(features, labels, readable, train_idx, test_idx, 4)
    assert result["top1"] == 1.0 and result["C"] == 100.0
    assert result["num_train_windows"] == len(train_idx) * 3
    assert result["scores"].shape == (len(test_idx), 4)


def test_probe_on_random_labels_is_near_chance():
    features, _ = separable_features(seed=1)
    labels = np.random.default_rng(2).integers(0, 4, size=len(features))
    readable = np.ones(len(labels), bool)
    result = probe_split(features, labels, readable, np.arange(30), np.arange(30, 40), 4)
    assert result["top1"] <= 0.7


def test_c_grid_is_chosen_on_held_out_training_videos():
    features, labels = separable_features(seed=3)
    readable = np.ones(len(labels), bool)
    result = probe_split(features, labels, readable, np.arange(0, 40, 2), np.arange(1, 40, 2), 4,
                         c_grid=[0.001, 1.0, 100.0])
    assert set(result["holdout_accuracy"]) == {0.001, 1.0, 100.0}
    assert result["C"] == max(result["holdout_accuracy"], key=lambda c: (result["holdout_accuracy"][c], -c))


def test_unreadable_videos_are_misses_and_left_out_of_training():
    features, labels = separable_features()
    readable = np.ones(len(labels), bool)
    readable[[1, 5]] = False  # 1 is a training video, 5 a test video
    test_idx = np.arange(0, len(labels), 5)
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    result = probe_split(features, labels, readable, train_idx, test_idx, 4)
    assert result["unreadable_train"] == 1 and result["unreadable_test"] == 1
    assert result["top1"] == pytest.approx((len(test_idx) - 1) / len(test_idx))
    ks, curve = topk_accuracy_curve(result["scores"], labels[test_idx])
    assert curve[-1] == pytest.approx((len(test_idx) - 1) / len(test_idx))  # never right, at any K


def test_two_class_problem():
    features, labels = separable_features(num_classes=2)
    readable = np.ones(len(labels), bool)
    result = probe_split(features, labels, readable, np.arange(0, 20, 2), np.arange(1, 20, 2), 2)
    assert result["scores"].shape == (10, 2) and result["top1"] == 1.0


def test_hmdb_probe_end_to_end_with_cache_and_a_corrupt_video(tmp_path):
    root = tmp_path / "hmdb51"
    for cls, colour in (("wave", "red"), ("jump", "blue")):
        for i in range(4):
            make_video(root / cls / f"{cls}_v{i}.avi", colour, seconds=1.0, codec="mpeg4")
    (root / "jump" / "jump_v0.avi").write_bytes(b"RIFF but not really an avi")
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir()
    for cls in ("wave", "jump"):
        for k in (1, 2, 3):
            lines = [f"{cls}_v{i}.avi {2 if i == k else 1}" for i in range(4)]
            (splits / f"{cls}_test_split{k}.txt").write_text("\n".join(lines) + "\n")
    config = tmp_path / "tiny.yaml"
    config.write_text("model:\n  video: {preset: vit_tiny}\n  text: {vocab_size: 4, word_dim: 4, hidden_dim: 8}\n"
                      "  embed_dim: 8\neval: {num_windows_test: 2, num_frames: 4, video_size: 32, batch_size: 4}\n")
    args = ["--config", str(config), "--random_init", "--eval_video_root", str(root), "--quiet",
            "--cache_dir", str(tmp_path / "cache"), "--output", str(tmp_path / "hmdb.json")]
    assert cli.main("hmdb", args) == 0
    result = json.loads((tmp_path / "hmdb.json").read_text())["models"]["random init"]
    assert list(result["unreadable"]) == ["jump/jump_v0.avi"]
    assert result["splits"]["1"]["unreadable_train"] == 1 and result["splits"]["1"]["num_train_windows"] == 10
    assert result["top1_mean"] == 100.0  # red vs blue is separable even from random features
    assert (tmp_path / "hmdb.png").stat().st_size > 0
    assert cli.main("hmdb", args + ["--svm_c", "0.01", "1", "100"]) == 0  # another C: features from the cache
    result = json.loads((tmp_path / "hmdb.json").read_text())["models"]["random init"]
    assert result["from_cache"] and set(result["splits"]["2"]["holdout_accuracy"]) == {"0.01", "1.0", "100.0"}


def write_grey_ramp(path, frames: int, fps: int = 25):
    """Lossless video whose frame i is uniformly grey level 4·i (a crop or resize keeps the level)."""
    import av
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "bgr0"
        for i in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 4 * i, np.uint8),
                                                                   format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_probe_windows_native_rate_or_resampled(tmp_path):
    from mmpt_lite.evaluation.features import ProbeProtocol, VideoRequest, decode_probe_windows
    request = VideoRequest("ramp", str(write_grey_ramp(tmp_path / "ramp.mkv", 50)))  # 2 s at 25 fps

    def frame_ids(windows):
        return [[int(frame.mean()) // 4 for frame in window] for window in windows]

    native = decode_probe_windows(request, ProbeProtocol(num_windows=2, num_frames=4, video_size=32))
    assert native.shape == (2, 4, 32, 32, 3)
    assert frame_ids(native) == [[0, 1, 2, 3], [46, 47, 48, 49]]  # contiguous frames at linspace(0, 50 - 4)
    sparse = decode_probe_windows(request, ProbeProtocol(num_windows=2, num_frames=4, video_size=32, fps=5.0))
    assert frame_ids(sparse) == [[0, 5, 10, 15], [30, 35, 40, 45]]  # 10 frames at 5 fps, windows at 0 and 6
