"""model.video.init_from: an MAE run's encoder (or an HF VideoMAE file) initialises the MIL-NCE video tower."""

import pytest
import torch
from safetensors.torch import save_file
from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEModel

from mmpt_lite.checkpoint import save_checkpoint
from mmpt_lite.config import MaeConfig, ModelConfig, RunConfig, TextTowerConfig, VideoTowerConfig
from mmpt_lite.models.build import build_model
from mmpt_lite.models.convert_hf import convert_hf_videomae
from mmpt_lite.models.init_from import init_video_tower
from mmpt_lite.models.mae import build_mae_pretrainer

# transformers config with vit_tiny's encoder shape (192 wide, 4 blocks, 3 heads).
HF_TINY = dict(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=192, num_hidden_layers=4,
               num_attention_heads=3, intermediate_size=768, layer_norm_eps=1e-6, decoder_hidden_size=32,
               decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64)


def milnce_model(preset: str = "vit_tiny"):
    cfg = ModelConfig(video=VideoTowerConfig(preset=preset), text=TextTowerConfig(word_dim=16, hidden_dim=32),
                      embed_dim=32)
    return build_model(cfg, vocab=["shape", "moves", "left"])


def assert_tower_equals(model, encoder_state: dict) -> None:
    tower = model.video_tower.state_dict()
    for key, value in encoder_state.items():
        assert torch.equal(tower[key], value), key


def test_mae_run_encoder_loads_into_milnce_tower(tmp_path):
    torch.manual_seed(0)
    mae = build_mae_pretrainer("vit_tiny", MaeConfig())
    save_checkpoint(tmp_path, 5, model_state=mae.state_dict(), train_state={"step": 5}, cfg=RunConfig())
    encoder = {k.removeprefix("encoder."): v for k, v in mae.state_dict().items() if k.startswith("encoder.")}
    for source in (tmp_path, tmp_path / "checkpoints" / "step_00000005"):  # run folder or step folder
        model = milnce_model()
        report = init_video_tower(model, source)
        assert_tower_equals(model, encoder)
        assert f"loaded {len(encoder)} tensors" in report
        assert "missing keys: none; unexpected keys: none" in report
        assert "decoder x" in report and "mask_token x 1" in report and "encoder_to_decoder x 1" in report


def test_hf_pretraining_files_load(tmp_path):
    hf = VideoMAEForPreTraining(VideoMAEConfig(**HF_TINY, use_mean_pooling=False))
    converted, _ = convert_hf_videomae(hf.state_dict())
    encoder = {k.removeprefix("encoder."): v for k, v in converted.items() if k.startswith("encoder.")}
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors"))
    torch.save({"model": hf.state_dict()}, tmp_path / "pytorch_model.bin")
    for name in ("model.safetensors", "pytorch_model.bin"):
        model = milnce_model()
        report = init_video_tower(model, tmp_path / name)
        assert_tower_equals(model, encoder)
        assert "transformers VideoMAE layout" in report and "missing keys: none; unexpected keys: none" in report


def test_missing_keys_are_reported(tmp_path):
    # use_mean_pooling=True: the HF encoder has no final LayerNorm, the pretraining-style tower does.
    hf = VideoMAEModel(VideoMAEConfig(**HF_TINY, use_mean_pooling=True))
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors"))
    report = init_video_tower(milnce_model(), tmp_path / "model.safetensors")
    assert "missing keys: norm.weight, norm.bias;" in report
    with pytest.raises(ValueError, match="does not fill the video tower: missing norm.weight, norm.bias"):
        init_video_tower(milnce_model(), tmp_path / "model.safetensors", strict=True)


def test_other_preset_is_an_error(tmp_path):
    mae = build_mae_pretrainer("vit_s", MaeConfig(decoder_depth=1))
    save_checkpoint(tmp_path, 1, model_state=mae.state_dict(), train_state={}, cfg=RunConfig())
    with pytest.raises(ValueError, match="does not fit model.video.preset"):
        init_video_tower(milnce_model("vit_tiny"), tmp_path)
    with pytest.raises(FileNotFoundError):
        init_video_tower(milnce_model(), tmp_path / "nowhere")


def test_classifier_starts_from_each_source(tmp_path):
    """A fine-tuning ViT (fc_norm, class head) from a masked-pretraining run, a MIL-NCE run's video tower and a
    transformers VideoMAE file; an S3D classifier from the official checkpoint's top-level layout."""
    from mmpt_lite.models.classifier import build_classifier

    torch.manual_seed(0)
    mae = build_mae_pretrainer("vit_tiny", MaeConfig())
    save_checkpoint(tmp_path / "mae", 5, model_state=mae.state_dict(), train_state={"step": 5}, cfg=RunConfig())
    encoder = {k.removeprefix("encoder."): v for k, v in mae.state_dict().items()
               if k.startswith("encoder.") and not k.startswith("encoder.norm.")}
    model = build_classifier("vit_tiny", 5)
    report = init_video_tower(model, tmp_path / "mae")
    assert_tower_equals(model, encoder)
    # the fine-tuning ViT pools with fc_norm where the pretraining encoder normalises every token
    assert "missing keys: fc_norm.weight, fc_norm.bias; unexpected keys: norm.bias, norm.weight" in report

    milnce = milnce_model()
    save_checkpoint(tmp_path / "milnce", 3, model_state=milnce.state_dict(), train_state={"step": 3}, cfg=RunConfig())
    model = build_classifier("vit_tiny", 5)
    report = init_video_tower(model, tmp_path / "milnce")
    tower = {k: v for k, v in milnce.video_tower.state_dict().items() if not k.startswith("norm.")}
    assert_tower_equals(model, tower)
    assert "text_tower x" in report and "video_proj x 2" in report

    hf = VideoMAEForPreTraining(VideoMAEConfig(**HF_TINY, use_mean_pooling=False))
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors"))
    assert "transformers VideoMAE layout" in init_video_tower(build_classifier("vit_tiny", 5),
                                                              tmp_path / "model.safetensors")

    s3d = build_model(ModelConfig(video=VideoTowerConfig(preset="s3d"), text=TextTowerConfig(word_dim=16,
                                                                                               hidden_dim=32)),
                      vocab=["shape", "moves"])
    torch.save(s3d.state_dict(), tmp_path / "s3d_howto100m.pth")  # the official file's top-level key layout
    model = build_classifier("s3d", 5)
    report = init_video_tower(model, tmp_path / "s3d_howto100m.pth")
    own = model.video_tower.state_dict()
    assert own.keys() <= s3d.state_dict().keys()
    assert all(torch.equal(own[k], s3d.state_dict()[k]) for k in own)
    assert "missing keys: none" in report and "fc x 2" in report and "text_module x" in report
