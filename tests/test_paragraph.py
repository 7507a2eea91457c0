"""Video-paragraph retrieval: DTW and OTAM against slow re-statements, order sensitivity, OTAM's lambda -> 0
limit, and the evaluator end to end (through eval/'s command line) on a generated YouCook2-format set."""

import itertools
import json
import math
import re

import numpy as np
import pytest
import yaml

from mmpt_lite.evaluation import cli
from mmpt_lite.evaluation.paragraph import (
    YoucookParagraph,
    caption_average_scores,
    dtw_score,
    otam_score,
    paragraph_scores,
)
from mmpt_lite.synth.corpus import generate_corpus

SIZES = [(1, 1), (1, 4), (3, 1), (3, 3), (4, 2), (2, 5)]


# --------------------------------------------------------------------------- slow re-statements
def slow_dtw(S):
    """The DTW recursion cell by cell on one [n, m] matrix: (cumulative sum, path length), shorter on a tie."""
    n, m = S.shape
    best = {}
    for i in range(n):
        for j in range(m):
            if i == j == 0:
                best[0, 0] = (S[0, 0], 1)
                continue
            options = [best[a, b] for a, b in ((i - 1, j - 1), (i - 1, j), (i, j - 1)) if (a, b) in best]
            total, length = max(options, key=lambda o: (o[0], -o[1]))
            best[i, j] = (S[i, j] + total, length + 1)
    total, length = best[n - 1, m - 1]
    return total / length


def brute_dtw(S):
    """Every monotone path enumerated: the mean similarity along the max-sum one (random S: no ties)."""
    n, m = S.shape

    def paths(i, j):
        if (i, j) == (n - 1, m - 1):
            yield [(i, j)]
            return
        for a, b in ((i + 1, j + 1), (i + 1, j), (i, j + 1)):
            if a < n and b < m:
                for rest in paths(a, b):
                    yield [(i, j), *rest]

    best = max(paths(0, 0), key=lambda path: sum(S[c] for c in path))
    return sum(S[c] for c in best) / len(best)


def slow_otam(S, lam):
    """OTAM's recursion with scalars: clips as rows, captions as columns padded with zero distance at both ends."""
    n, m = S.shape
    d = [[0.0] + [1.0 - S[c, k] for c in range(n)] + [0.0] for k in range(m)]

    def smin(values):
        if lam == 0:
            return min(values)
        return -lam * math.log(sum(math.exp(-v / lam) for v in values))

    g = [[0.0] * (n + 2) for _ in range(m)]
    for j in range(n + 2):
        g[0][j] = d[0][j] + (g[0][j - 1] if j else 0.0)
    for k in range(1, m):
        g[k][0] = d[k][0] + g[k - 1][0]
        for j in range(1, n + 1):
            g[k][j] = d[k][j] + smin([g[k - 1][j - 1], g[k][j - 1]])
        g[k][n + 1] = d[k][n + 1] + smin([g[k - 1][n], g[k][n], g[k - 1][n + 1]])
    return 1.0 - g[m - 1][n + 1] / n


def brute_hard_otam(S):
    """Every admissible matching enumerated: caption c on clip a_c, a_1 anywhere, a_{c+1} - a_c in {0, 1}."""
    n, m = S.shape
    best = -math.inf
    for first in range(m):
        for steps in itertools.product((0, 1), repeat=n - 1):
            clips = first + np.concatenate([[0], np.cumsum(steps)]).astype(int)
            if clips[-1] < m:
                best = max(best, float(np.mean(S[np.arange(n), clips])))
    return best  # 1 - (sum of 1 - S) / n = mean S over the matching


@pytest.mark.parametrize("n,m", SIZES)
def test_dtw_matches_the_recursion_and_path_enumeration(n, m):
    rng = np.random.default_rng(n * 10 + m)
    batch = rng.uniform(-1, 1, size=(2, 3, n, m))
    fast = dtw_score(batch)
    assert fast.shape == (2, 3)
    for index in np.ndindex(2, 3):
        assert fast[index] == pytest.approx(slow_dtw(batch[index]), abs=1e-12)
        assert fast[index] == pytest.approx(brute_dtw(batch[index]), abs=1e-12)


@pytest.mark.parametrize("n,m", SIZES)
@pytest.mark.parametrize("lam", [0.0, 0.1, 1.0])
def test_otam_matches_the_recursion(n, m, lam):
    rng = np.random.default_rng(n * 10 + m + 1)
    batch = rng.uniform(-1, 1, size=(3, n, m))
    fast = otam_score(batch, lam)
    assert fast.shape == (3,)
    for index in range(3):
        assert fast[index] == pytest.approx(slow_otam(batch[index], lam), abs=1e-10)
        if lam == 0:
            assert fast[index] == pytest.approx(brute_hard_otam(batch[index]), abs=1e-12)


@pytest.mark.parametrize("n,m", SIZES)
def test_otam_tends_to_the_hard_alignment_as_lambda_goes_to_zero(n, m):
    # Exact relation: the smooth minimum of c values lies in [min - lam log c, min], at most n + m of them along
    # any path, so 0 <= otam(S, lam) - otam(S, 0) <= lam log 3 (n + m) / n; otam(S, 0) is the hard-min
    # (DTW-style) ordered alignment, the mean similarity of the best admissible matching (brute_hard_otam).
    S = np.random.default_rng(7 * n + m).uniform(-1, 1, size=(n, m))
    hard = float(otam_score(S, 0.0))
    assert hard == pytest.approx(brute_hard_otam(S), abs=1e-12)
    gaps = []
    for lam in (1.0, 0.1, 0.01, 1e-3, 1e-4):
        gap = float(otam_score(S, lam)) - hard
        assert -1e-12 <= gap <= lam * math.log(3) * (n + m) / n + 1e-12
        gaps.append(gap)
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-3


def test_order_matters_to_dtw_and_otam_but_not_to_the_caption_average():
    rng = np.random.default_rng(0)
    captions = np.linalg.qr(rng.normal(size=(16, 5)))[0].T * 3.0  # 5 orthogonal embeddings, norm 3
    aligned, reversed_ = captions, captions[::-1]  # the same clips, in order / in reverse
    scores = paragraph_scores([captions], [aligned, reversed_])
    np.testing.assert_allclose(np.diag(captions @ aligned.T) / 9, 1.0)  # S of the aligned video is the identity
    assert scores["dtw"][0, 0] == pytest.approx(1.0) and scores["dtw"][0, 1] < 0.5
    assert scores["otam"][0, 0] >= 1.0 and scores["otam"][0, 1] < 0.5
    assert scores["caption_average"][0, 0] == pytest.approx(scores["caption_average"][0, 1], abs=1e-12)
    # the same order-invariance directly on the pure function, with an arbitrary shuffle
    shuffled = captions[rng.permutation(5)]
    average = caption_average_scores([captions], [captions, shuffled])
    assert average[0, 0] == pytest.approx(average[0, 1], abs=1e-12)
    assert dtw_score(captions @ shuffled.T) < dtw_score(captions @ captions.T)


def test_pairs_of_different_sizes_are_scored_as_if_one_by_one():
    rng = np.random.default_rng(3)
    paragraphs = [rng.normal(size=(n, 6)) for n in (2, 4, 2, 3)]
    videos = [rng.normal(size=(m, 6)) for m in (3, 2, 3, 5)]
    scores = paragraph_scores(paragraphs, videos, otam_lambda=0.1)
    unit = [[x / np.linalg.norm(x, axis=1, keepdims=True) for x in group] for group in (paragraphs, videos)]
    for p, v in itertools.product(range(4), range(4)):
        S = unit[0][p] @ unit[1][v].T
        assert scores["dtw"][p, v] == pytest.approx(slow_dtw(S), abs=1e-12)
        assert scores["otam"][p, v] == pytest.approx(slow_otam(S, 0.1), abs=1e-10)


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def youcook_set(tmp_path_factory):
    """The tiny preset's YouCook2-format set (2 videos, 10 segments) plus a third video that is a text file."""
    corpus = tmp_path_factory.mktemp("corpus")
    generate_corpus(corpus, seed=0, size="tiny", workers=1, sets=["youcook2"], short_side=64, fps=8)
    root = corpus / "youcook2"
    broken = root / "validation" / "103" / "brokenVid001.mp4"
    broken.parent.mkdir(parents=True)
    broken.write_text("this is a text file, not a video\n")
    rows = (root / "validation_youcook.csv").read_text().splitlines()
    extra = ["9,4,103,fold the red square,brokenVid001", "4,0,103,add the red square,brokenVid001"]
    csv = root / "with_broken.csv"
    csv.write_text("\n".join(rows + extra) + "\n")
    return root, csv, rows[1:]


def test_evaluator_groups_segments_by_video_in_time_order(youcook_set):
    root, csv, rows = youcook_set
    data = YoucookParagraph(None, root, csv).dataset
    assert [p.video_id for p in data.paragraphs] == [rows[0].split(",")[-1], rows[-1].split(",")[-1], "brokenVid001"]
    assert [len(p.rows) for p in data.paragraphs] == [5, 5, 2]
    assert [data.texts[i] for i in data.paragraphs[2].rows] == ["add the red square", "fold the red square"]
    with pytest.raises(ValueError, match="otam_lambda"):
        YoucookParagraph(None, root, csv, otam_lambda=-1.0)


def test_cli_end_to_end_skips_and_names_the_unreadable_video(youcook_set, tmp_path, repo_root, capsys):
    root, csv, rows = youcook_set
    words = sorted({w for row in rows for w in row.split(",")[3].split()} | {"fold", "add", "red", "square"})
    np.save(tmp_path / "words.npy", np.array(words))
    tiny = yaml.safe_load((repo_root / "projects" / "debug_tiny.yaml").read_text())
    tiny["base"] = str(repo_root / "projects" / "how2_pretrain.yaml")  # one level of base: only
    tiny["model"]["text"]["path"] = str(tmp_path / "words.npy")  # the random-init text tower needs a vocabulary
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    out = tmp_path / "paragraph.json"
    args = ["--config", str(tmp_path / "tiny.yaml"), "--random_init", "--eval_video_root", str(root),
            "--eval_csv", str(csv), "--num_windows_test", "1", "--num_frames", "4", "--fps", "4",
            "--video_size", "32", "--batch_size", "5", "--num_thread_reader", "0", "--no_cache", "--quiet",
            "--otam_lambda", "0.05", "--output", str(out)]
    assert cli.main("youcook_paragraph", args) == 0
    printed = capsys.readouterr().out
    assert "2 of 3 paragraphs" in printed and "OTAM R@10" in printed
    assert re.search(r"1 video\(s\) missing or unreadable, skipped .*\n  brokenVid001: 2 of 2 segments", printed)
    record = json.loads(out.read_text())["models"]["random init"]
    assert record["num_paragraphs"] == 2 and record["num_videos"] == 3 and record["num_segments"] == 10
    assert list(record["unreadable"]) == ["brokenVid001"] and record["num_unreadable"] == 1
    assert record["scoring"]["otam_lambda"] == 0.05
    for method in ("caption_average", "dtw", "otam"):
        metrics = record["metrics"][method]
        assert 0 <= metrics["R@1"] <= 100 and metrics["R@10"] == 100.0 and 1 <= metrics["MedR"] <= 2
        assert record["recall_at_k"][method]["k"] == [1, 2]
    assert out.with_suffix(".png").is_file()
    assert cli.main("youcook_paragraph", args[:-2] + ["--otam_lambda", "-0.5"]) == 2  # refused before decoding
    assert "--otam_lambda must be" in capsys.readouterr().err
