"""The checkpoint behind an index: loading it, what the header records about it, its default windows,
and query embedding with its text tower.

Loading goes through the evaluator's ``load_model`` (mmpt_lite run / checkpoints / step folder or
``model.safetensors``, the official S3D file, a MIL-NCE training file). The header records the path the
user gave, the step folder or file it resolved to (what a later search loads, so a run that keeps
training does not silently swap the model under an index), and the sha256 of the weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mmpt_lite.evaluation.checkpoints import (
    MMPT_CLASSIFY_FORMAT,
    MMPT_MAE_FORMAT,
    LoadedModel,
    detect_checkpoint,
    load_model,
)
from mmpt_lite.evaluation.features import embed_texts
from mmpt_lite.evaluation.zeroshot import MsrvttRetrieval
from mmpt_lite.search.spans import WindowProtocol
from mmpt_lite.search.store import SearchIndexError

NO_TEXT_TOWER = {MMPT_MAE_FORMAT: "a masked-pretraining run", MMPT_CLASSIFY_FORMAT: "a classification run"}


def load_search_model(path: str | os.PathLike, *, dict_path: str | None = None,
                      word2vec: str | None = None) -> tuple[LoadedModel, dict]:
    """(the model in eval mode, the header's checkpoint record). Raises the loader's errors
    (FileNotFoundError, CheckpointFormatError, ValueError) and ValueError for a model without a text tower."""
    given = Path(path).expanduser().absolute()
    source = detect_checkpoint(given)
    load_path = source.folder if source.folder is not None else source.weights
    dict_path = str(Path(dict_path).expanduser().absolute()) if dict_path else None
    word2vec = str(Path(word2vec).expanduser().absolute()) if word2vec else None
    loaded = load_model(load_path, dict_path=dict_path, word2vec=word2vec)
    if loaded.kind in NO_TEXT_TOWER:
        raise ValueError(f"{given}: {NO_TEXT_TOWER[loaded.kind]} has no trained text tower to search with; "
                         "use a video-text (MIL-NCE / VideoCLIP) checkpoint")
    record = {"path": str(given), "load_path": str(Path(load_path).absolute()), "sha256": loaded.checkpoint_id,
              "kind": loaded.kind, "dict_path": dict_path, "word2vec": word2vec, "description": loaded.description}
    return loaded, record


def load_header_model(header: dict, index_dir: str | os.PathLike) -> LoadedModel:
    """The model an index was built with, from its header; SearchIndexError when it is gone or changed."""
    record = header["checkpoint"]
    try:
        loaded, found = load_search_model(record["load_path"], dict_path=record.get("dict_path"),
                                          word2vec=record.get("word2vec"))
    except (FileNotFoundError, ValueError) as exc:  # CheckpointFormatError is a ValueError too
        raise SearchIndexError(f"{index_dir}: cannot load the index's checkpoint {record['load_path']}: "
                               f"{str(exc).splitlines()[0]}") from None
    if found["sha256"] != record["sha256"]:
        raise SearchIndexError(f"{index_dir}: checkpoint {record['load_path']} changed since indexing (sha256 now "
                               f"{found['sha256'][:16]}..., index built with {record['sha256'][:16]}...): re-index")
    return loaded


def default_protocol(loaded: LoadedModel, *, decoder: str | None = None) -> WindowProtocol:
    """The MSR-VTT evaluator's window for this checkpoint (its run config's eval section, or the published
    protocol for S3D files) with a stride of half a window; the run's decoder unless ``decoder`` is given."""
    config = loaded.config
    retrieval = MsrvttRetrieval.protocol_from_config(config.eval if config is not None else None)
    window = retrieval.num_frames / retrieval.fps
    return WindowProtocol(retrieval.num_frames, float(retrieval.fps), retrieval.video_size, window / 2,
                          decoder or (config.data.decoder if config is not None else "pyav"))


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 [N, D] rows scaled to unit L2 norm (an all-zero row stays zero)."""
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def embed_queries(loaded: LoadedModel, texts: list[str], device: torch.device) -> np.ndarray:
    """float32 [Q, D] L2-normalised text embeddings (the evaluator's ``embed_texts``)."""
    model = loaded.model
    with torch.no_grad():
        return normalise_rows(embed_texts(model, texts, device=device))


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when available; ValueError for ``cuda`` without a device."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device available")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
