"""Checkpoint folders, written atomically and loaded safely.

Layout: ``<output_dir>/checkpoints/step_<N>/`` holding
  model.safetensors   the unwrapped model's state dict (tensors only)
  train_state.pt      optimizer, scheduler, task state, step, RNG states, data position
                      (plain containers of tensors and numbers: loads with weights_only=True)
  config.yaml         the resolved run config
  meta.json           {"format": "mmpt_lite", "version": 1, "step": N, "model_sha256": ...}
  rank_state/         only when a strategy partitions optimizer state over ranks (train.strategy
                      deepspeed): rank_<R>.pt, each rank's own part (plain containers of tensors)
and ``<output_dir>/checkpoints/latest``, a one-line text file naming the newest folder.

A step folder is assembled under a temporary name and renamed into place; ``latest`` is replaced
(temp + rename) only after that, so a crash at any moment leaves the previous checkpoint usable.

Readers: resume (:func:`latest_checkpoint`, :func:`load_checkpoint`), evaluation and
``model.video.init_from`` (:func:`resolve_run_checkpoint`: whatever path a user gives -> the step folder).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmpt_lite.config import RunConfig, save_config
from mmpt_lite.fileio import atomic_write_text, file_sha256

FORMAT = "mmpt_lite"
VERSION = 1
RANK_STATE_DIR = "rank_state"


class CheckpointFormatError(ValueError):
    """The path is not a checkpoint this package can read; the one-line message names it and says why."""


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(output_dir: str | os.PathLike, step: int, *, model_state: dict[str, torch.Tensor],
                    train_state: dict[str, Any], cfg: RunConfig, keep_last: int = 3,
                    rank_states: Path | None = None) -> Path:
    """Write ``step_<step>`` atomically, point ``latest`` at it, prune to the newest ``keep_last``.

    ``rank_states``: a folder every rank has written its ``rank_<R>.pt`` into (:func:`rank_state_staging`);
    it is moved into the step folder before the step folder is renamed into place.
    """
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    # safetensors refuses shared or non-contiguous storage; clone to plain contiguous CPU tensors.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}
    save_file(tensors, str(tmp / "model.safetensors"))
    torch.save(train_state, tmp / "train_state.pt")
    save_config(cfg, tmp / "config.yaml")
    meta = {"format": FORMAT, "version": VERSION, "step": step,
            "model_sha256": file_sha256(tmp / "model.safetensors")}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if rank_states is not None:
        os.replace(rank_states, tmp / RANK_STATE_DIR)
    if final.exists():  # a rerun that reached the same step again: replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", final.name + "\n")
    for old in list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def rank_state_staging(output_dir: str | os.PathLike, step: int) -> Path:
    """Where every rank writes its part of step ``step`` before the main rank assembles the step folder."""
    return checkpoint_root(output_dir) / f".tmp_rank_state_{step:08d}"


def write_rank_state(staging: Path, rank: int, state: dict[str, Any]) -> None:
    """One rank's part, written under a temporary name and renamed (a half-written file is never taken)."""
    tmp = staging / f".rank_{rank:05d}.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, staging / f"rank_{rank:05d}.pt")


def load_rank_state(folder: str | os.PathLike, rank: int) -> dict[str, Any]:
    """Rank ``rank``'s part of a step folder (``rank_state/rank_<R>.pt``); CheckpointFormatError if absent."""
    path = Path(folder) / RANK_STATE_DIR / f"rank_{rank:05d}.pt"
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: missing (this checkpoint holds no per-rank state for rank {rank})")
    return torch.load(path, map_location="cpu", weights_only=True)


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete step folders, oldest first (temporary folders are ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / "meta.json").is_file())


def _pointer_target(pointer: Path) -> Path:
    """The folder a ``latest`` file names (relative to the file's folder unless absolute)."""
    return pointer.parent / pointer.read_text().strip()


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The folder ``latest`` names, else the newest complete step folder (resume tolerates a stale pointer)."""
    pointer = checkpoint_root(output_dir) / "latest"
    if pointer.is_file():
        cand = _pointer_target(pointer)
        if (cand / "meta.json").is_file():
            return cand
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def check_step_folder(folder: Path) -> dict:
    """meta.json of a complete mmpt_lite step folder; CheckpointFormatError naming what is missing otherwise."""
    meta_path = folder / "meta.json"
    for needed in (meta_path, folder / "config.yaml"):
        if not needed.is_file():
            raise CheckpointFormatError(f"{folder}: an mmpt_lite checkpoint folder needs {needed.name} beside "
                                        "model.safetensors (the architecture is read from config.yaml)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(f"{meta_path}: not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointFormatError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def resolve_run_checkpoint(path: str | os.PathLike) -> Path:
    """The checked step folder of a run folder, its ``checkpoints/`` folder, a step folder or its model.safetensors.

    Raises FileNotFoundError or CheckpointFormatError, one line naming the path.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    folder = path.parent if path.is_file() and path.name == "model.safetensors" else path
    for pointer in (folder / "checkpoints" / "latest", folder / "latest"):
        if pointer.is_file():
            folder = _pointer_target(pointer)
            if not (folder / "model.safetensors").is_file():
                raise CheckpointFormatError(f"{pointer} names {folder}, which holds no model.safetensors")
            break
    else:
        if not (folder / "model.safetensors").is_file():
            raise CheckpointFormatError(f"{path}: a folder without model.safetensors or a checkpoints/latest pointer")
    check_step_folder(folder)
    return folder


def load_checkpoint(path: str | os.PathLike, *, with_train_state: bool = True) -> dict[str, Any]:
    """Load a step folder: {"model": state dict, "train_state": ..., "meta": ..., "config_path": ...}."""
    path = Path(path)
    meta = check_step_folder(path)
    out = {"model": load_file(str(path / "model.safetensors")), "meta": meta, "config_path": path / "config.yaml"}
    if with_train_state:
        out["train_state"] = torch.load(path / "train_state.pt", map_location="cpu", weights_only=True)
    return out
