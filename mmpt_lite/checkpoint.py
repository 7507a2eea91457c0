"""Checkpoint folders, written atomically, verified on read.

Layout: ``<output_dir>/checkpoints/step_<N>/`` holding
  model.safetensors   the unwrapped model's state dict (tensors only)
  train_state.pt      optimizer, scheduler, task state, step, RNG states, data position
                      (plain containers of tensors and numbers: loads with weights_only=True)
  config.yaml         the resolved run config
  meta.json           {"format": "mmpt_lite", "version": 1, "step": N, "model_sha256": ...,
                       "files": {relative path: {"bytes", "sha256"}} for every file above and in rank_state/}
  rank_state/         only when a strategy partitions optimizer state over ranks (train.strategy
                      deepspeed): rank_<R>.pt, each rank's own part (plain containers of tensors)
and ``<output_dir>/checkpoints/latest``, a one-line text file naming the newest folder.

Writing: a step folder is assembled under a temporary name, every file fsynced, the new ``latest`` written
beside the old one, then the folder renamed into place and ``latest`` replaced (two renames, which need no
space). A crash, a kill or a full disk at any moment therefore leaves the previous checkpoint and ``latest``
untouched; a failed write removes its temporary files and raises :class:`CheckpointWriteError` (one line: the
file, the errno name such as ENOSPC, the checkpoint that is still the latest).

Reading verifies what meta.json recorded: sizes (a truncation) and sha256 (a flipped byte) of the files the
reader uses -- :func:`resolve_run_checkpoint` (evaluation, ``model.video.init_from``) the weights and config,
:func:`load_checkpoint` also ``train_state.pt``, :func:`load_rank_state` its rank's file. A mismatch raises
:class:`CheckpointCorruptError` naming the file. Checkpoints written before ``files`` was recorded have their
weights checked against ``model_sha256`` only.

Resume policy (``train.resume: auto``) when the newest checkpoint is damaged: refuse, do not fall back. The
error names the damaged file and the newest older step folder that verifies, and says how to resume from it
(``train.resume=<that folder>``) or to move the damaged one aside. Falling back by itself would silently
retrain steps the user believes are done (and a staged run's ``stage_done.json`` would disagree with it).
"""

from __future__ import annotations

import errno as errno_names
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmpt_lite.config import RunConfig, save_config
from mmpt_lite.fileio import FileIntegrityError, file_sha256, fsync_path

FORMAT = "mmpt_lite"
VERSION = 1
RANK_STATE_DIR = "rank_state"


class CheckpointFormatError(ValueError):
    """The path is not a checkpoint this package can read; the one-line message names it and says why."""


class CheckpointCorruptError(CheckpointFormatError, FileIntegrityError):
    """A checkpoint file differs from what meta.json recorded at save time (size or sha256)."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (``errno``: e.g. ENOSPC); the previous checkpoint and ``latest`` are intact."""


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def _errno_of(exc: BaseException) -> int | None:
    """The OS error behind a failed write: torch.save reports one as a RuntimeError whose context holds the
    OSError of the file object it wrote to; safetensors as text ending in "(os error N)"."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    found = re.search(r"os error (\d+)", str(exc))
    return int(found.group(1)) if found else None


def _write_error(what: str, path: Path, exc: BaseException, intact: Path | None) -> CheckpointWriteError:
    code = _errno_of(exc)
    reason = (f"{errno_names.errorcode.get(code, code)} {os.strerror(code)}" if code else
              " ".join(str(exc).split())[:200])
    still = f"the previous checkpoint {intact} is intact and still latest" if intact else "no checkpoint was kept"
    error = CheckpointWriteError(f"{what} not written: {path}: {reason}; {still}")
    error.errno = code
    return error


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save through a Python file object (so an OSError, e.g. ENOSPC, stays in the exception chain), fsynced."""
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _file_record(folder: Path, relative: str) -> dict:
    path = folder / relative
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def save_checkpoint(output_dir: str | os.PathLike, step: int, *, model_state: dict[str, torch.Tensor],
                    train_state: dict[str, Any], cfg: RunConfig, keep_last: int = 3,
                    rank_states: Path | None = None) -> Path:
    """Write ``step_<step>`` atomically, point ``latest`` at it, prune to the newest ``keep_last``.

    ``rank_states``: a folder every rank has written its ``rank_<R>.pt`` into (:func:`rank_state_staging`);
    it is moved into the step folder before the step folder is renamed into place. Raises
    :class:`CheckpointWriteError` (temporary files removed, the previous checkpoint still ``latest``) when a
    file cannot be written.
    """
    root = checkpoint_root(output_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    pointer_tmp = root / f".latest.tmp{os.getpid()}"
    previous = latest_checkpoint(output_dir) if root.is_dir() else None
    current = tmp
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        # safetensors refuses shared or non-contiguous storage; clone to plain contiguous CPU tensors.
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}
        current = tmp / "model.safetensors"
        save_file(tensors, str(current))
        del tensors
        fsync_path(current)
        current = tmp / "train_state.pt"
        _torch_save(train_state, current)
        current = tmp / "config.yaml"
        save_config(cfg, current)
        fsync_path(current)
        if rank_states is not None:
            current = tmp / RANK_STATE_DIR
            os.replace(rank_states, current)
        listed = ["model.safetensors", "train_state.pt", "config.yaml"]
        if rank_states is not None:
            listed += [f"{RANK_STATE_DIR}/{p.name}" for p in sorted((tmp / RANK_STATE_DIR).glob("rank_*.pt"))]
        files = {name: _file_record(tmp, name) for name in listed}
        meta = {"format": FORMAT, "version": VERSION, "step": step,
                "model_sha256": files["model.safetensors"]["sha256"], "files": files}
        current = tmp / "meta.json"
        with open(current, "w") as f:
            f.write(json.dumps(meta, indent=1))
            f.flush()
            os.fsync(f.fileno())
        current = pointer_tmp  # written before the rename, so that nothing after it needs space
        with open(current, "w") as f:
            f.write(final.name + "\n")
            f.flush()
            os.fsync(f.fileno())
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        pointer_tmp.unlink(missing_ok=True)
        if rank_states is not None:
            shutil.rmtree(rank_states, ignore_errors=True)
        raise _write_error(f"checkpoint step {step}", current, exc, previous) from exc
    if final.exists():  # a rerun that reached the same step again: replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    os.replace(pointer_tmp, root / "latest")
    fsync_path(root)
    for old in list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def rank_state_staging(output_dir: str | os.PathLike, step: int) -> Path:
    """Where every rank writes its part of step ``step`` before the main rank assembles the step folder."""
    return checkpoint_root(output_dir) / f".tmp_rank_state_{step:08d}"


def write_rank_state(staging: Path, rank: int, state: dict[str, Any]) -> None:
    """One rank's part, written under a temporary name and renamed (a half-written file is never taken);
    CheckpointWriteError (temporary file removed) when it cannot be written."""
    tmp = staging / f".rank_{rank:05d}.pt.tmp"
    try:
        _torch_save(state, tmp)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(f"rank {rank}'s optimizer state", tmp, exc, None) from exc
    os.replace(tmp, staging / f"rank_{rank:05d}.pt")


def load_rank_state(folder: str | os.PathLike, rank: int) -> dict[str, Any]:
    """Rank ``rank``'s part of a step folder (``rank_state/rank_<R>.pt``), verified against meta.json;
    CheckpointFormatError if absent or damaged."""
    relative = f"{RANK_STATE_DIR}/rank_{rank:05d}.pt"
    path = Path(folder) / relative
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: missing (this checkpoint holds no per-rank state for rank {rank})")
    verify_files(Path(folder), check_step_folder(Path(folder)), [relative])
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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointFormatError(f"{meta_path}: format is {found!r}, expected {FORMAT!r}")
    return meta


def verify_files(folder: Path, meta: dict, names: list[str]) -> None:
    """Check files of a step folder (paths relative to it) against the sizes and sha256 meta.json recorded at save
    time; raise CheckpointCorruptError naming the first that differs. A checkpoint from before ``files`` was
    recorded has only ``model_sha256``: the weights are checked against it, the other files are not."""
    recorded = meta.get("files")
    if recorded is None:
        recorded = {"model.safetensors": {"sha256": meta["model_sha256"]}} if meta.get("model_sha256") else {}
    for name in names:
        if name not in recorded:
            continue
        path, record = folder / name, recorded[name]
        if not path.is_file():
            raise CheckpointCorruptError(f"{path}: missing, but meta.json lists it")
        size = path.stat().st_size
        if "bytes" in record and size != record["bytes"]:
            raise CheckpointCorruptError(f"{path}: {size} bytes but meta.json says {record['bytes']} (truncated or "
                                         "rewritten)")
        if file_sha256(path) != record["sha256"]:
            raise CheckpointCorruptError(f"{path}: sha256 differs from meta.json (corrupted)")


def _older_intact(folder: Path) -> Path | None:
    """The newest step folder before ``folder`` in its checkpoints/ folder whose files verify, if any."""
    older = [p for p in sorted(folder.parent.glob("step_*"), reverse=True) if p.name < folder.name]
    for candidate in older:
        try:
            meta = check_step_folder(candidate)
            verify_files(candidate, meta, list(meta.get("files", {"model.safetensors": None})))
        except CheckpointFormatError:
            continue
        return candidate
    return None


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
    verify_files(folder, check_step_folder(folder), ["model.safetensors", "config.yaml"])
    return folder


def load_checkpoint(path: str | os.PathLike, *, with_train_state: bool = True) -> dict[str, Any]:
    """Load a step folder, verified: {"model": state dict, "train_state": ..., "meta": ..., "config_path": ...}.

    A damaged file raises CheckpointCorruptError naming it and, when there is one, the newest older step folder
    that verifies (the resume policy in the module docstring: refuse, never fall back silently).
    """
    path = Path(path)
    meta = check_step_folder(path)
    names = ["model.safetensors", "config.yaml"] + (["train_state.pt"] if with_train_state else [])
    try:
        verify_files(path, meta, names)
    except CheckpointCorruptError as exc:
        older = _older_intact(path) if path.parent.name == "checkpoints" else None
        hint = (f"; the newest intact checkpoint before it is {older}: resume from it with train.resume={older}, "
                f"or move {path.name} aside" if older else "; no older intact checkpoint in the same folder")
        raise CheckpointCorruptError(f"{exc}{hint}") from None
    out = {"model": load_file(str(path / "model.safetensors")), "meta": meta, "config_path": path / "config.yaml"}
    if with_train_state:
        out["train_state"] = torch.load(path / "train_state.pt", map_location="cpu", weights_only=True)
    return out
