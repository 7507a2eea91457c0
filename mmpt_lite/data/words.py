"""Caption words for the word2vec tower: the MIL-NCE word split; word2vec fitted on a corpus's captions."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

WORD_PATTERN = re.compile(r"[\w']+")


def split_words(text: str, lowercase: bool = True) -> list[str]:
    """The MIL-NCE word split: ``re.findall(r"[\\w']+", text)``, after optional lower-casing."""
    return WORD_PATTERN.findall(text.lower() if lowercase else text)


def train_word2vec(sentences: Sequence[str], out_path: str | os.PathLike, dim: int, seed: int, epochs: int,
                   *, min_count: int = 1, window: int = 5) -> Path:
    """Fit gensim word2vec on ``sentences`` (split with :func:`split_words`) and save the vectors.

    Deterministic for a given input and seed: one worker thread (gensim >= 4 seeds its initial
    vectors from ``seed`` alone, not from the salted ``hash()`` of each word). The file is
    word2vec binary if ``out_path`` ends in ``.bin``, text otherwise; read it back with
    :func:`load_word2vec`. Returns ``out_path`` as a Path.
    """
    from gensim.models import Word2Vec  # imported here: gensim is slow to import and only needed here

    corpus = [split_words(str(s)) for s in sentences]
    corpus = [words for words in corpus if words]
    if not corpus:
        raise ValueError("train_word2vec: no words in the given sentences")
    model = Word2Vec(sentences=corpus, vector_size=dim, window=window, min_count=min_count, workers=1,
                     seed=seed, epochs=epochs)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
    model.wv.save_word2vec_format(str(tmp), binary=out_path.suffix == ".bin")
    os.replace(tmp, out_path)  # readers never see a half-written file
    return out_path
