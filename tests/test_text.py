"""Text side: the official word tokenizer, the word2vec tower and files, the local transformer tower."""

import os
import subprocess
import sys

import pytest
import torch

from mmpt_lite.config import ModelConfig, TextTowerConfig, VideoTowerConfig
from mmpt_lite.models.build import build_model
from mmpt_lite.models.text import (
    TextModelNotFoundError,
    TransformerTextTower,
    Word2VecTextTower,
    WordTokenizer,
    load_word2vec,
    train_word2vec,
)

CAPTIONS = ["cut the onion into slices", "add the salt and the pepper", "stir the onion with salt",
            "now we cut the pepper", "pour the water and stir"] * 4


def test_word_tokenizer_follows_the_official_rules():
    tokenizer = WordTokenizer(["the", "onion", "don't", "cut", "a"], max_words=4)
    ids = tokenizer(["Don't CUT the onion!", "xyz the, the-onion a a", "", "unknown words only"])
    assert ids.dtype == torch.long and ids.shape == (4, 4)
    assert ids[0].tolist() == [3, 4, 1, 2]  # lower-cased, apostrophes kept, id = index + 1
    assert ids[1].tolist() == [1, 1, 2, 5]  # OOV dropped, punctuation splits, truncated to max_words
    assert ids[2].tolist() == [0, 0, 0, 0] and ids[3].tolist() == [0, 0, 0, 0]
    cased = WordTokenizer(["Onion"], max_words=2, lowercase=False)
    assert cased(["Onion onion"]).tolist() == [[1, 0]]
    assert tokenizer.num_embeddings == 6


def test_word2vec_tower_max_pools_over_all_slots_including_padding():
    torch.manual_seed(0)
    tower = Word2VecTextTower(6, word_dim=4, hidden_dim=8, embed_dim=3,
                              tokenizer=WordTokenizer(["a", "b", "c", "d", "e"], max_words=5))
    tokens = tower.tokenize(["a c", "e"])
    embedding = tower(tokens)
    hidden = torch.relu(tower.fc1(tower.word_embd(tokens["input_ids"])))  # [2, 5, 8], pad rows included
    torch.testing.assert_close(embedding, tower.fc2(hidden.max(dim=1).values))
    assert not tower.word_embd.weight.requires_grad  # fixed word vectors, as MIL-NCE training


def test_word2vec_tower_without_vocabulary_says_how_to_get_one():
    with pytest.raises(ValueError, match="vocab"):
        Word2VecTextTower(10, word_dim=4, hidden_dim=8, embed_dim=3).tokenize(["a"])


@pytest.mark.parametrize("name", ["vectors.txt", "vectors.bin"])
def test_train_word2vec_is_deterministic_and_round_trips(tmp_path, name):
    first = train_word2vec(CAPTIONS, tmp_path / "a" / name, dim=8, seed=3, epochs=2)
    second = train_word2vec(CAPTIONS, tmp_path / "b" / name, dim=8, seed=3, epochs=2)
    assert first.read_bytes() == second.read_bytes()
    words, vectors = load_word2vec(first)
    assert "onion" in words and "the" in words and vectors.shape == (len(words), 8)


def test_train_word2vec_does_not_depend_on_the_process_hash_seed(tmp_path):
    here = train_word2vec(CAPTIONS, tmp_path / "here.txt", dim=8, seed=3, epochs=2)
    script = ("import sys; from mmpt_lite.models.text import train_word2vec; "
              "train_word2vec(sys.argv[1:-1], sys.argv[-1], dim=8, seed=3, epochs=2)")
    other = tmp_path / "other.txt"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, *CAPTIONS, str(other)], env=env, check=True)
    assert here.read_bytes() == other.read_bytes()


def test_build_model_initialises_the_embedding_from_a_word2vec_file(tmp_path):
    path = train_word2vec(CAPTIONS, tmp_path / "w2v.txt", dim=8, seed=0, epochs=1)
    words, vectors = load_word2vec(path)
    cfg = ModelConfig(video=VideoTowerConfig(preset="vit_tiny"),
                      text=TextTowerConfig(kind="word2vec", path=str(path), word_dim=8, hidden_dim=16))
    table = build_model(cfg, max_words=6).text_tower.word_embd.weight
    assert table.shape == (len(words) + 1, 8)
    assert table[0].abs().sum() == 0
    torch.testing.assert_close(table[1:], vectors)
    # With an explicit vocabulary the file fills the rows of the words it knows.
    model = build_model(cfg, vocab=["zebra", "onion"], max_words=6)
    torch.testing.assert_close(model.text_tower.word_embd.weight[2], vectors[words.index("onion")])
    assert model.tokenizer(["onion zebra"])["input_ids"].tolist() == [[2, 1, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="word_dim"):
        build_model(ModelConfig(text=TextTowerConfig(path=str(path), word_dim=300)))


@pytest.fixture(scope="module")
def minilm_tower():
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # prove nothing is fetched
    try:
        torch.manual_seed(0)
        return TransformerTextTower(embed_dim=16, max_tokens=12).eval()
    finally:
        if previous is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def test_transformer_tower_loads_the_bundled_minilm_offline(minilm_tower):
    tokens = minilm_tower.tokenize(["cut the onion", "a much longer caption about adding salt to the pan"])
    assert set(tokens) == {"input_ids", "attention_mask"}
    assert tokens["input_ids"].shape == (2, 12)
    with torch.no_grad():
        embedding = minilm_tower(tokens)
        alone = minilm_tower(minilm_tower.tokenize(["cut the onion"]))
    assert embedding.shape == (2, 16)
    torch.testing.assert_close(embedding[:1], alone, atol=1e-5, rtol=1e-5)  # padding does not leak into the mean
    assert minilm_tower.encoder.config.hidden_size == 384


def test_transformer_tower_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(TextModelNotFoundError) as info:
        TransformerTextTower(missing)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in message and "\n" not in message
