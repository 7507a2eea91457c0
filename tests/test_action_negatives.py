"""Action-swapped hard-negative captions: lexicon files, phrase matching, rewriting, the negatives of a clip."""

import numpy as np
import pytest

from mmpt_lite.config import ConfigError, config_from_dict
from mmpt_lite.data.action_negatives import ActionLexicon, load_lexicon
from mmpt_lite.data.prepare import ensure_corpus
from mmpt_lite.synth.corpus import write_lexicon
from mmpt_lite.synth.render import Look
from mmpt_lite.synth.text import DESCRIBE, INSTRUCT, describe, draw_wording, instruct

KITCHEN = {"cut": ["cut the {} into pieces", "chop the {}", "cuts"],
           "stir": ["stir the {}", "stirs"],
           "pour": ["pour the {} in", "pours"]}


def run_config(root, lexicon="actions.tsv", synthetic=True):
    return config_from_dict({"data": {"root": str(root), "synthetic": {"enabled": synthetic},
                                      "action_negatives": {"count": 2, "lexicon": lexicon}}})


@pytest.fixture(scope="module")
def how2_synth(tmp_path_factory):
    """The lexicon file the generator writes into its corpus, read back."""
    return ActionLexicon.from_file(write_lexicon(tmp_path_factory.mktemp("synth")))


def test_lexicon_file_round_trip_and_errors(tmp_path):
    good = tmp_path / "verbs.tsv"
    good.write_text("# kitchen verbs\ncut\tcut the {} into pieces | chop the {} | cuts\n\nstir\tstir the {} | stirs\n")
    lexicon = ActionLexicon.from_file(good)
    assert lexicon.actions == ("cut", "stir")
    assert [m.action for m in lexicon.find_all("now chop the onion and stir the sauce")] == ["cut", "stir"]
    assert load_lexicon(run_config(tmp_path, "verbs.tsv").data).actions == ("cut", "stir")  # inside data.root
    assert load_lexicon(run_config(tmp_path / "elsewhere", str(good)).data).actions == ("cut", "stir")  # absolute

    bad = tmp_path / "bad.tsv"
    bad.write_text("cut\tchop the {}\nstir the {} with a spoon\n")
    with pytest.raises(ValueError, match=rf"{bad}:2: expected 'action<TAB>phrase"):
        ActionLexicon.from_file(bad)
    twice = tmp_path / "twice.tsv"
    twice.write_text("cut\tchop the {}\ncut\tcuts\n")
    with pytest.raises(ValueError, match=rf"{twice}:2: action 'cut' listed twice"):
        ActionLexicon.from_file(twice)
    with pytest.raises(ValueError, match="at most one {}"):
        ActionLexicon({"a": ["put the {} on the {}"], "b": ["b"]})
    with pytest.raises(ValueError, match="at least two actions"):
        ActionLexicon({"a": ["a"]})
    with pytest.raises(ConfigError, match=rf"^data.action_negatives.lexicon: {tmp_path}/missing.tsv is not a lexicon"):
        load_lexicon(run_config(tmp_path, "missing.tsv").data)
    with pytest.raises(ConfigError, match=rf"^data.action_negatives.lexicon: {bad}:2: expected"):
        load_lexicon(run_config(tmp_path, "bad.tsv").data)


def test_find_all_takes_the_longest_phrase_and_stops_objects_at_and():
    lexicon = ActionLexicon(KITCHEN)
    found = lexicon.find_all("ok so Cut the red  onion into pieces and stir the big pot then it pours")
    assert [(m.action, m.obj) for m in found] == [("cut", "red onion"), ("stir", "big pot then it"), ("pour", None)]
    text = "ok so cut the red onion into pieces and stir the big pot then it pours"
    assert text[found[0].start:found[0].end] == "cut the red onion into pieces"
    assert lexicon.find_all("nothing to see here") == []
    assert lexicon.find_all("haircuts") == [], "phrases match whole words only"


def test_rewrite_keeps_the_object_and_the_form():
    lexicon = ActionLexicon(KITCHEN)
    rng = np.random.default_rng(0)
    caption = "now chop the green pepper"
    match = lexicon.find_all(caption)[0]
    for _ in range(10):
        out = lexicon.rewrite(caption, match, "stir", rng)
        assert out == "now stir the green pepper"
    description = "the chef cuts slowly"
    out = lexicon.rewrite(description, lexicon.find_all(description)[0], "pour", rng)
    assert out == "the chef pours slowly"


def test_negatives_name_actions_no_candidate_names(how2_synth):
    lexicon = how2_synth
    rng = np.random.default_rng(3)
    captions = ["now we slide the red ball to the left", "alright", "the red ball grows"]
    negatives = lexicon.negatives(captions, rng, 6)
    assert len(negatives) == 6 and len(set(negatives)) == 6
    for negative in negatives:
        found = {m.action for m in lexicon.find_all(negative)}
        assert found and not found & {"move_left", "grow"}, negative
        assert "red ball" in negative
    assert lexicon.negatives(["alright", "okay"], rng, 3) == [None, None, None]
    # Same rng state, same negatives: the sample is a function of its seed.
    assert lexicon.negatives(captions, np.random.default_rng(5), 4) == lexicon.negatives(
        captions, np.random.default_rng(5), 4)


def test_negatives_from_the_videos_narration_use_only_its_other_actions(how2_synth):
    lexicon = how2_synth
    captions = ["now we slide the red ball to the left", "um so yeah"]
    narration = captions + ["the blue star spins clockwise", "make the red ball bigger", "okay",
                            "the red ball moves to the left"]
    for seed in range(5):
        negatives = lexicon.negatives(captions, np.random.default_rng(seed), 4, pool=lexicon.actions_in(narration))
        assert negatives[2:] == [None, None], "two other actions in the narration, the rest is padding"
        assert {m.action for n in negatives[:2] for m in lexicon.find_all(n)} == {"rotate_clockwise", "grow"}
        assert all("red ball" in n for n in negatives[:2])
    assert lexicon.actions_in(narration) == {"move_left", "rotate_clockwise", "grow"}
    assert lexicon.negatives(captions, np.random.default_rng(0), 2, pool=lexicon.actions_in(captions)) == [None, None]


def test_how2_synth_lexicon_reads_every_caption_the_generator_writes(how2_synth):
    lexicon = how2_synth
    rng = np.random.default_rng(0)
    look = Look("cross", "red", "striped")
    for action in DESCRIBE:
        for _ in range(20):
            wording = draw_wording(rng)
            for caption in (describe(look, action, wording), instruct(look, action, wording)):
                found = lexicon.find_all(caption)
                assert [m.action for m in found] == [action], caption
    assert set(lexicon.actions) == set(INSTRUCT)
    # Per action, its description then instruction phrasings, in the generator's order.
    assert [(p.action, p.text) for p in lexicon.phrases] == [(a, t) for a in DESCRIBE for t in (*DESCRIBE[a], *INSTRUCT[a])]


def test_a_synthetic_corpus_without_its_lexicon_file_gets_one(tmp_path):
    cfg = run_config(tmp_path)
    (tmp_path / "train.csv").write_text("video_path\n")  # a complete corpus made before it carried the file
    ensure_corpus(cfg, tmp_path, build=False)  # only the main rank writes
    assert not (tmp_path / "actions.tsv").exists()
    ensure_corpus(cfg, tmp_path, build=True)
    assert load_lexicon(cfg.data).actions == tuple(DESCRIBE)
