"""model.video.attention: SDPA stays the default and unchanged; flash_attn fails in one line where it cannot run;
both kernels share one state-dict layout. The flash-vs-SDPA comparison itself needs a GPU (``gpu`` marker)."""

import pytest
import torch

from mmpt_lite.config import ConfigError, load_config
from mmpt_lite.models import vit
from mmpt_lite.models.build import build_video_tower
from mmpt_lite.models.mae import build_mae_pretrainer
from mmpt_lite.models.vit import Attention, VideoViT

TINY = "projects/debug_tiny.yaml"


def tiny_output(**kwargs) -> torch.Tensor:
    torch.manual_seed(0)
    model = VideoViT(width=48, depth=2, num_heads=3, **kwargs).eval()
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(x)["video_tokens"]


def test_sdpa_is_the_default_and_its_outputs_are_unchanged(repo_root):
    assert load_config(repo_root / TINY).model.video.attention == "sdpa"
    assert all(block.attn.kernel == "sdpa" for block in build_video_tower("vit_tiny").blocks)
    out = tiny_output()
    # Recorded with the code before the kernel switch existed (same seed, input and model).
    expected = torch.tensor([[-1.975661039352417, -0.041073691099882126, 1.348197340965271, 1.9636985063552856],
                             [-1.2454705238342285, 0.37228381633758545, -0.9146715998649597, 0.8438582420349121]])
    assert out.shape == (2, 8, 48)
    torch.testing.assert_close(out[0, :2, :4], expected, atol=1e-5, rtol=1e-5)
    assert abs(out.abs().sum().item() - 614.894775390625) < 1e-2


def test_kernels_share_one_state_dict_layout(repo_root):
    sdpa = VideoViT(width=24, depth=1, num_heads=2)
    flash = VideoViT(width=24, depth=1, num_heads=2, attention="flash_attn")
    assert sdpa.state_dict().keys() == flash.state_dict().keys()
    flash.load_state_dict(sdpa.state_dict(), strict=True)
    mae = build_mae_pretrainer("vit_tiny", load_config(repo_root / TINY).mae, "flash_attn")
    assert {m.kernel for m in mae.modules() if isinstance(m, Attention)} == {"flash_attn"}  # decoder too


def test_flash_attn_without_the_package_names_the_key(monkeypatch):
    monkeypatch.setattr(vit, "flash_attn_func", None)
    attn = Attention(dim=8, num_heads=2, kernel="flash_attn")
    with pytest.raises(ConfigError, match=r"^model\.video\.attention: flash_attn needs the flash-attn package"):
        attn(torch.randn(1, 4, 8))


def test_flash_attn_on_a_cpu_tensor_names_the_key(monkeypatch):
    calls = []
    monkeypatch.setattr(vit, "flash_attn_func", lambda *a: calls.append(a))  # as if the package were installed
    attn = Attention(dim=8, num_heads=2, kernel="flash_attn")
    with pytest.raises(ConfigError) as err, torch.autocast("cpu", dtype=torch.bfloat16):
        attn(torch.randn(1, 4, 8))
    assert str(err.value) == "model.video.attention: flash_attn runs on CUDA tensors only, got cpu; use sdpa"
    assert not calls


def test_unknown_kernel_and_fp32_training_are_refused(repo_root):
    with pytest.raises(ConfigError, match=r"model\.video\.attention: 'xformers' is not one of 'sdpa', 'flash_attn'"):
        load_config(repo_root / TINY, ["model.video.attention=xformers"])
    with pytest.raises(ConfigError, match=r"model\.video\.attention: flash_attn has no float32 kernel"):
        load_config(repo_root / TINY, ["model.video.attention=flash_attn"])  # debug_tiny trains fp32
    cfg = load_config(repo_root / TINY, ["model.video.attention=flash_attn", "train.precision=bf16"])
    assert cfg.model.video.attention == "flash_attn"
    with pytest.raises(ConfigError, match=r"^model\.video\.attention: 'flash_attn' applies to ViT presets"):
        build_video_tower("s3d", attention="flash_attn")


@pytest.mark.gpu
def test_flash_attn_matches_sdpa_under_bf16_autocast_on_a_gpu(monkeypatch):
    if vit.flash_attn_func is None:
        pytest.skip("flash-attn is not installed")
    seen = []
    real = vit.flash_attn_func
    monkeypatch.setattr(vit, "flash_attn_func", lambda q, k, v: seen.append(q.dtype) or real(q, k, v))
    torch.manual_seed(0)
    model = VideoViT(width=192, depth=2, num_heads=3).cuda().eval()
    x = torch.randn(2, 3, 8, 64, 64, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = model(x)["video_tokens"].float()
        for block in model.blocks:
            block.attn.kernel = "flash_attn"
        out = model(x)["video_tokens"].float()
    assert seen == [torch.bfloat16] * 2  # the kernel was reached, in bf16
    torch.testing.assert_close(out, ref, atol=5e-2, rtol=5e-2)


def test_a_run_with_flash_attn_on_the_cpu_stops_in_one_line(tmp_path):
    from conftest import launch_tiny

    r = launch_tiny([f"data.root={tmp_path / 'how2'}", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=1",
                     "train.device=cpu", "model.video.attention=flash_attn", "train.precision=bf16"])
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].endswith("error: model.video.attention: " + (
        "flash_attn runs on CUDA tensors only, got cpu; use sdpa" if vit.flash_attn_func is not None else
        "flash_attn needs the flash-attn package (built from source on a CUDA machine, see README 'GPU extras'); "
        "use sdpa")), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
