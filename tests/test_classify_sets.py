"""Classification sets: list readers, frame sampling, crops, and the clip dataset over real shards."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mmpt_lite.data.batch import collate
from mmpt_lite.data.classify_sets import (
    ClassifyClipDataset,
    dense_indices,
    dense_test_indices,
    multiscale_resize,
    read_classify_set,
    read_kinetics_list,
    read_ssv2_list,
    segment_indices,
    segment_test_indices,
    short_side_jitter,
    uniform_crops,
)
from mmpt_lite.data.shard_build import build_video_shards
from mmpt_lite.data.shards import ShardedVideoStore
from mmpt_lite.data.video_sets import train_video_paths
from mmpt_lite.synth.corpus import generate_corpus

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not found")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The tiny corpus's kinetics and ssv2 sets (3 classes, 1 train + 1 val video each), short side 64, 8 fps."""
    out = tmp_path_factory.mktemp("cls") / "how2"
    generate_corpus(out, seed=0, size="tiny", workers=2, sets=["kinetics", "ssv2"], short_side=64, fps=8)
    return out


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- readers
def test_the_synthetic_sets_read_in_both_real_formats(corpus):
    kin = read_classify_set(corpus / "kinetics", "kinetics", "train")
    assert kin.classes == ["move_left", "move_right", "rotate_clockwise"]
    assert kin.labels.dtype == np.int64 and kin.labels.tolist() == [0, 1, 2]
    assert all((corpus / "kinetics" / v).is_file() for v in kin.videos) and kin.duplicates == []
    assert kin.video_ids() == [Path(v).stem for v in train_video_paths(corpus / "kinetics", "kinetics")]
    ssv2 = read_classify_set(corpus / "ssv2", "ssv2", "val")
    assert ssv2.list_path.name == "validation.json" and len(ssv2.classes) == 3
    entries = json.loads((corpus / "ssv2" / "validation.json").read_text())
    assert ssv2.videos == [f"videos/{e['id']}.webm" for e in entries]
    table = json.loads((corpus / "ssv2" / "labels.json").read_text())
    assert ssv2.labels.tolist() == [int(table[e["template"].replace("[", "").replace("]", "")]) for e in entries]
    assert all((corpus / "ssv2" / v).is_file() for v in ssv2.videos)


def test_kinetics_paths_with_spaces_commas_classes_and_duplicates(tmp_path):
    lst = write(tmp_path / "val.txt", "a b/c d.mp4 1\n\nx/y.mp4,0\n" f"{tmp_path}/abs.mp4 2\n./x/y.mp4 1\n")
    s = read_kinetics_list(lst)
    assert s.videos == ["a b/c d.mp4", "x/y.mp4", "abs.mp4"] and s.labels.tolist() == [1, 0, 2]
    assert s.classes == ["0", "1", "2"]
    assert len(s.duplicates) == 1 and f"{lst}:5" in s.duplicates[0] and "line 3" in s.duplicates[0]
    write(tmp_path / "classes.txt", "walk\nrun\njump\n")
    assert read_kinetics_list(lst).classes == ["walk", "run", "jump"]
    write(tmp_path / "classes.txt", "walk\nrun\n")
    with pytest.raises(ValueError, match=rf"{lst}:4: label 2 but .*classes.txt names 2 classes"):
        read_kinetics_list(lst)


@pytest.mark.parametrize("lines, bad_line, message", [
    ("a.mp4 0\nb.mp4 one\n", 2, "label 'one' is not an integer"),
    ("a.mp4 0\nb.mp4\n", 2, "expected 'path label'"),
    ("a.mp4 -1\n", 1, "negative label -1"),
    ("a.mp4 0\n\n../outside.mp4 1\n", 3, "escapes the set root"),
    ("a/../../b.mp4 1\n", 1, "escapes the set root"),
    ("{elsewhere}/c.mp4 1\n", 1, "outside the set root"),  # an absolute path beside the set's folder
])
def test_kinetics_errors_name_file_and_line(tmp_path, lines, bad_line, message):
    (tmp_path / "set").mkdir()
    lst = write(tmp_path / "set" / "train.txt", lines.format(elsewhere=tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match=rf"{lst}:{bad_line}: .*{message}"):
        read_kinetics_list(lst)


def test_empty_lists_and_unknown_ssv2_templates_are_errors(tmp_path):
    lst = write(tmp_path / "train.txt", "\n \n")
    with pytest.raises(ValueError, match=rf"{lst}: empty list"):
        read_kinetics_list(lst)
    write(tmp_path / "labels.json", json.dumps({"Pushing something": "0", "Pulling something": "1"}))
    entries = [{"id": "7", "template": "Pulling [something]"}, {"id": "8", "template": "Throwing [something]"}]
    val = write(tmp_path / "validation.json", json.dumps(entries))
    with pytest.raises(ValueError, match=rf"{val}: entry 1: template 'Throwing something' is not in"):
        read_ssv2_list(val)
    val.write_text(json.dumps(entries[:1] * 2))
    s = read_ssv2_list(val)
    assert s.videos == ["videos/7.webm"] and s.labels.tolist() == [1] and len(s.duplicates) == 1
    assert s.classes == ["Pushing something", "Pulling something"]
    with pytest.raises(FileNotFoundError, match="val.txt"):
        read_classify_set(tmp_path, "kinetics", "val")
    write(tmp_path / "test.csv", "v.mp4,0\n")  # SlowFast's name for the evaluation list
    assert read_classify_set(tmp_path, "kinetics", "val").list_path.name == "test.csv"


# --------------------------------------------------------------------------- sampling
def test_dense_sampling_ranges_and_test_windows():
    rng = np.random.default_rng(0)
    for total in (1, 10, 61, 300):
        idx = dense_indices(total, rng, 16, 4)
        assert idx.dtype == np.int64 and idx.shape == (16,) and 0 <= idx.min() and idx.max() < total
        if total >= 61:
            assert (np.diff(idx) == 4).all()
    views = dense_test_indices(300, 16, 4, 5)
    assert views.shape == (5, 16) and views.dtype == np.int64
    assert views[0, 0] == 0 and views[-1, -1] == 299  # first at the start, last at the end
    assert len({tuple(v) for v in views.tolist()}) == 5 and (np.diff(views, axis=1) == 4).all()
    assert dense_test_indices(300, 16, 4, 1)[0, 0] == (300 - 61) // 2 + 1  # the centre: round(239 / 2)
    short = dense_test_indices(20, 13, 6, 10)
    assert short.shape == (10, 13) and short.max() == 19 and short.min() == 0


def test_segment_sampling_takes_one_frame_per_segment_and_test_views_differ():
    rng = np.random.default_rng(1)
    total, n = 50, 16
    edges = np.floor(np.arange(n + 1) * total / n).astype(int)
    draws = np.stack([segment_indices(total, rng, n) for _ in range(200)])
    assert draws.dtype == np.int64 and ((draws >= edges[:-1]) & (draws < edges[1:])).all()
    assert all(len(np.unique(draws[:, i])) == edges[i + 1] - edges[i] for i in range(n))  # every frame reachable
    assert segment_indices(5, rng, 16).max() <= 4 and segment_indices(5, rng, 16).shape == (16,)
    for total, views in ((50, 2), (32, 2), (120, 3), (16, 1)):
        test = segment_test_indices(total, n, views)
        assert test.shape == (views, n) and test.min() >= 0 and test.max() < total
        assert len({tuple(v) for v in test.tolist()}) == views
        tick = total / n  # view frames lie inside their segment [tick·x, tick·(x + 1))
        assert ((test >= np.floor(tick * np.arange(n))) & (test < tick * np.arange(1, n + 1))).all()


# --------------------------------------------------------------------------- transforms
def gradient(t=2, h=40, w=60) -> np.ndarray:
    """uint8 [t, h, w, 3], red = column, green = row: a crop's content says where it came from."""
    cols = np.broadcast_to(np.arange(w)[None, :] * 4, (h, w))
    rows = np.broadcast_to(np.arange(h)[:, None] * 4, (h, w))
    frame = np.stack([cols, rows, np.zeros((h, w))], -1).astype(np.uint8)
    return np.repeat(frame[None], t, axis=0)


def test_ssv2_training_never_flips():
    frames = gradient()
    for seed in range(40):
        clip = multiscale_resize(frames, np.random.default_rng(seed), 32, flip=False)
        assert clip.shape == (2, 32, 32, 3)
        assert (np.diff(clip[0, 16, :, 0].astype(int)) >= 0).all()  # left to right still increases
    flipped = [multiscale_resize(frames, np.random.default_rng(s), 32, flip=True) for s in range(40)]
    assert any((np.diff(c[0, 16, :, 0].astype(int)) < 0).any() for c in flipped)


def test_short_side_jitter_crops_size_from_a_rescaled_frame():
    frames = gradient(h=60, w=90)
    for seed in range(10):
        clip = short_side_jitter(frames, np.random.default_rng(seed), 40, min_scale=45, max_scale=57, flip=False)
        assert clip.shape == (2, 40, 40, 3) and clip.dtype == np.uint8
    with pytest.raises(ValueError):
        short_side_jitter(frames, np.random.default_rng(0), 40, min_scale=30, max_scale=50, flip=False)


def test_three_test_crops_cover_left_centre_right_and_portrait_top_to_bottom():
    crops = uniform_crops(gradient(h=40, w=60), 40, 3)
    assert crops.shape == (3, 2, 40, 40, 3)
    assert [int(c[0, 0, 0, 0]) for c in crops] == [0, 40, 80]  # red = 4·column: offsets 0, 10, 20
    assert int(crops[2, 0, 0, -1, 0]) == 59 * 4  # the right crop reaches the last column
    assert int(uniform_crops(gradient(h=40, w=60), 40, 1)[0, 0, 0, 0, 0]) == 40  # one crop: the centre
    portrait = uniform_crops(gradient(h=60, w=40), 40, 3)
    assert [int(c[0, 0, 0, 1]) for c in portrait] == [0, 40, 80]  # green = 4·row
    assert uniform_crops(gradient(h=40, w=60), 20, 3).shape == (3, 2, 20, 20, 3)  # resized first


# --------------------------------------------------------------------------- the dataset over shards
@pytest.fixture(scope="module")
def kinetics_shards(corpus, tmp_path_factory):
    """Shards of the kinetics training list plus one corrupt listed video (skipped by the builder)."""
    root = tmp_path_factory.mktemp("kin_root")
    shutil.copytree(corpus / "kinetics", root, dirs_exist_ok=True)
    (root / "videos" / "train" / "broken.mp4").write_bytes(b"not a video")
    with open(root / "train.txt", "a") as f:
        f.write("videos/train/broken.mp4 1\n")
    video_list = root / "shard_list.csv"
    with open(video_list, "w", newline="") as f:
        csv.writer(f).writerows([["video_path"], *[[p] for p in train_video_paths(root, "kinetics")]])
    out = root / "shards"
    build_video_shards(video_list, root, out, fps=8, short_side=48, workers=1, progress=False)
    return root, ShardedVideoStore(out)


def test_dataset_over_real_shards_gives_labelled_clips(kinetics_shards):
    root, store = kinetics_shards
    train = read_classify_set(root, "kinetics", "train")
    data = ClassifyClipDataset(store, train, sampling="dense", num_frames=4, stride=2, size=32, spatial="multiscale",
                               flip=True)
    assert len(data) == 3 and data.skipped.keys() == {"videos/train/broken.mp4"}
    a, b = data[(1, 5)], data[(1, 5)]
    assert a["video"].shape == (4, 32, 32, 3) and a["video"].dtype == torch.uint8
    assert torch.equal(a["video"], b["video"]) and a["label"].dtype == torch.int64
    assert [int(data[(i, 0)]["label"]) for i in range(3)] == train.labels[:3].tolist()
    jitter = ClassifyClipDataset(store, train, sampling="segments", num_frames=3, size=32,
                                 spatial="short_side_jitter", flip=False, jitter=(36, 44))
    batch = collate([jitter[(i, i)] for i in range(3)])
    assert batch.video.shape == (3, 3, 32, 32, 3) and batch.label.tolist() == [0, 1, 2]
    assert batch.to(torch.device("cpu")).label.tolist() == [0, 1, 2]


def test_dataset_names_a_listed_video_missing_from_the_shards(kinetics_shards, tmp_path):
    root, store = kinetics_shards
    lst = write(tmp_path / "other.txt", "videos/train/never_sharded.mp4 0\n")
    with pytest.raises(ValueError, match="never_sharded.mp4"):
        ClassifyClipDataset(store, read_kinetics_list(lst, root), flip=False)
    ssv2_like = read_kinetics_list(lst, root)
    ssv2_like.name = "ssv2"
    with pytest.raises(ValueError, match="must not be flipped"):
        ClassifyClipDataset(store, ssv2_like, flip=True)
