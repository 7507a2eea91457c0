"""Multi-view classification evaluation: the accuracy function, the evaluator over real videos (one unreadable),
the command-line plumbing for a model without a text tower."""

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mmpt_lite.evaluation import cli
from mmpt_lite.evaluation.checkpoints import LoadedModel
from mmpt_lite.evaluation.classify import (
    PROTOCOLS,
    ClassifyEval,
    ClassifyProtocol,
    classify_protocol,
    decode_classify_views,
    multiview_accuracy,
)
from mmpt_lite.evaluation.features import VideoRequest
from mmpt_lite.evaluation.runtime import EvalRuntime
from mmpt_lite.synth.corpus import generate_corpus

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not found")
SMALL = ClassifyProtocol(num_frames=4, stride=2, num_clips=2, num_crops=3, test_size=32)


class TinyClassifier(nn.Module):
    """Conv3d + global pooling + Linear: video float [B, 3, T, S, S] -> {"logits": [B, C]}."""

    video_mean = (0.45, 0.45, 0.45)
    video_std = (0.225, 0.225, 0.225)

    def __init__(self, num_classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(3, 8, kernel_size=3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, video: torch.Tensor) -> dict:
        pooled = self.conv(video).relu().mean(dim=(2, 3, 4))
        return {"logits": self.head(pooled), "pooled": pooled}


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> Path:
    """The tiny kinetics and ssv2 sets; kinetics' val list gets one unreadable video (a text file named .mp4)."""
    out = tmp_path_factory.mktemp("cls_eval") / "how2"
    generate_corpus(out, seed=0, size="tiny", workers=2, sets=["kinetics", "ssv2"], short_side=64, fps=8)
    bad = out / "kinetics" / "videos" / "val" / "move_left" / "broken.mp4"
    bad.write_text("this is not a video\n")
    with open(out / "kinetics" / "val.txt", "a") as f:
        f.write("videos/val/move_left/broken.mp4 0\n")
    return out


def test_multiview_accuracy_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=(40, 6, 7)) * 3, rng.integers(0, 7, 40)
    labels[:7] = np.arange(7)
    m = multiview_accuracy(scores, labels)
    probs = torch.softmax(torch.tensor(scores), dim=-1).mean(dim=1)
    top5 = probs.topk(5, dim=1).indices.numpy()
    assert np.allclose(m["video_scores"], probs.numpy())
    assert m["top1"] == pytest.approx(np.mean(probs.argmax(1).numpy() == labels))
    assert m["top5"] == pytest.approx(np.mean([lab in row for lab, row in zip(labels, top5, strict=True)]))
    confusion = np.zeros((7, 7), int)
    for true, pred in zip(labels, probs.argmax(1).numpy(), strict=True):
        confusion[true, pred] += 1
    assert (m["confusion"] == confusion).all() and m["confusion"].sum() == 40
    per_class = [np.mean(probs.argmax(1).numpy()[labels == c] == c) for c in range(7)]
    assert m["mean_class_accuracy"] == pytest.approx(np.mean(per_class))
    # k is capped by the classes; a class without videos is left out of the mean
    few = multiview_accuracy(np.eye(3)[[0, 1, 1]][:, None] * 5, np.array([0, 1, 0]), num_classes=4)
    assert few["top5_k"] == 3 and few["top5"] == 1.0 and few["top1"] == pytest.approx(2 / 3)
    assert few["mean_class_accuracy"] == pytest.approx(0.75) and np.isnan(few["per_class_accuracy"][3])


def test_protocol_presets_and_flags(tmp_path):
    assert PROTOCOLS["kinetics_vit"] == ClassifyProtocol() and ClassifyProtocol().num_views == 15
    x3d = PROTOCOLS["x3d"]
    assert (x3d.num_frames, x3d.stride, x3d.num_clips, x3d.num_crops, x3d.test_size) == (13, 6, 10, 3, 182)
    ssv2 = PROTOCOLS["ssv2"]
    assert (ssv2.dataset, ssv2.sampling, ssv2.num_frames, ssv2.num_views) == ("ssv2", "segments", 16, 6)
    assert classify_protocol("x3d", num_clips=1).num_clips == 1
    with pytest.raises(ValueError, match="--num_crops must be at least 1"):
        classify_protocol("kinetics_vit", num_crops=0)
    args = cli.build_parser("classify").parse_args(["--dataset", "ssv2", "--num_crops", "1"])
    protocol, source = ClassifyEval.protocol_from_args(args)
    assert protocol == ClassifyProtocol("ssv2", "segments", 16, 1, 2, 1, 224) and source == "ssv2 preset"
    assert ClassifyEval.default_video_root(None, protocol).name == "ssv2"
    assert ClassifyEval.default_list_path(tmp_path / "ssv2", protocol) == tmp_path / "ssv2" / "validation.json"
    with pytest.raises(ValueError, match="--fps does not apply"):
        ClassifyEval.protocol_from_args(cli.build_parser("classify").parse_args(["--fps", "5"]))


def test_views_are_clips_times_crops(sets):
    video = next((sets / "kinetics" / "videos" / "val").rglob("*_*.mp4"))
    views = decode_classify_views(VideoRequest("v", str(video)), SMALL)
    assert views.shape == (6, 4, 32, 32, 3) and views.dtype == np.uint8
    assert not np.array_equal(views[0], views[2])  # left and right crops differ (moving pattern)


def test_evaluator_skips_the_unreadable_video_and_scores_the_rest(sets, tmp_path):
    evaluator = ClassifyEval(SMALL, sets / "kinetics")
    assert evaluator.list_path.name == "val.txt" and len(evaluator.dataset.videos) == 4
    model = TinyClassifier()
    record, row, curves = evaluator.evaluate(model, EvalRuntime(batch_size=2))
    assert record["num_listed"] == 4 and record["num_evaluated"] == 3 and record["num_unreadable"] == 1
    assert list(record["unreadable"]) == ["videos/val/move_left/broken.mp4"]
    assert record["accuracy_over"] == "accuracy over 3 of 4 videos"
    assert np.asarray(record["confusion_matrix"]).sum() == 3 and record["classes"][0] == "move_left"
    assert 0 <= record["top1"] <= record["top5"] == 100.0  # 3 classes: top-5 is top-3
    assert row["videos"] == "3/4" and curves[""][0].tolist() == [1, 2, 3]

    # The command line's run over the same plan: table, JSON, top-K plot and confusion matrix, no text tower.
    plan = cli.Plan(evaluator, {"checkpoint": LoadedModel(model, "test", "id", None, "tiny classifier")},
                    EvalRuntime(batch_size=4), "test")
    out = tmp_path / "kinetics.json"
    assert cli.run(plan, argparse.Namespace(output=str(out), plot=None)) == 0
    result = json.loads(out.read_text())
    assert result["task"] == "classify" and result["protocol"]["num_clips"] == 2
    saved = result["models"]["checkpoint"]
    assert saved["checkpoint"]["max_words"] is None and saved["top1"] == pytest.approx(record["top1"])
    assert saved["unreadable"].keys() == {"videos/val/move_left/broken.mp4"}
    assert (tmp_path / "kinetics.png").stat().st_size > 0 and (tmp_path / "kinetics_confusion.png").stat().st_size > 0


def test_ssv2_segments_evaluation(sets):
    protocol = classify_protocol("ssv2", num_frames=4, num_crops=1, test_size=32)
    evaluator = ClassifyEval(protocol, sets / "ssv2")
    assert evaluator.list_path.name == "validation.json"
    record, _, _ = evaluator.evaluate(TinyClassifier(), EvalRuntime(batch_size=3))
    assert record["num_evaluated"] == 3 and record["num_unreadable"] == 0 and record["num_views"] == 2
    with pytest.raises(ValueError, match="gives 5 logits, the set has 3 classes"):
        evaluator.evaluate(TinyClassifier(5), EvalRuntime(batch_size=3))


def classify_run(tmp_path: Path, sets: Path) -> Path:
    """A classification run folder (vit_tiny, 3 classes) as the classify task saves it."""
    from mmpt_lite.checkpoint import save_checkpoint
    from mmpt_lite.config import RunConfig
    from mmpt_lite.models.classifier import build_classifier

    cfg = RunConfig()
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, task="classify"),
        data=dataclasses.replace(cfg.data, root=str(sets), num_frames=4, video_size=32),
        model=dataclasses.replace(cfg.model, video=dataclasses.replace(cfg.model.video, preset="vit_tiny")),
        classify=dataclasses.replace(cfg.classify, sampling_stride=2, test_clips=2, test_crops=1))
    torch.manual_seed(1)
    model = build_classifier("vit_tiny", 3)
    save_checkpoint(tmp_path / "run", 5, model_state=model.state_dict(), train_state={}, cfg=cfg)
    return tmp_path / "run"


def test_eval_classify_loads_a_classification_run_and_takes_its_views(sets, tmp_path, capsys):
    run = classify_run(tmp_path, sets)
    out = tmp_path / "res.json"
    status = cli.main("classify", ["--pretrain_cnn_path", str(run), "--compare_random_init", "--no_cache", "--quiet",
                                   "--output", str(out)])
    assert status == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["protocol"]["defaults_from"] == "run config classify section"
    assert (result["protocol"]["num_clips"], result["protocol"]["num_crops"], result["protocol"]["test_size"],
            result["protocol"]["stride"], result["protocol"]["num_frames"]) == (2, 1, 32, 2, 4)
    assert result["eval_list"] == str(sets / "kinetics" / "val.txt")
    models = result["models"]
    assert models["checkpoint"]["checkpoint"]["kind"] == "mmpt_lite_classify"
    assert models["random init"]["checkpoint"]["kind"] == "random_init"
    assert all(m["num_evaluated"] == 3 and m["num_unreadable"] == 1 for m in models.values())
    assert (tmp_path / "res_confusion_checkpoint.png").is_file()
    printed = capsys.readouterr().out
    assert "accuracy over 3 of 4 videos" in printed and "broken.mp4" in printed
    assert cli.main("classify", ["--pretrain_cnn_path", str(run), "--fps", "5"]) == 2
