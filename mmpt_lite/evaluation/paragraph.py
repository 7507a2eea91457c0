"""Video-paragraph retrieval on YouCook2-format sets (NORTON, Lin et al. ICLR 2024; after TempCLR).

A video's clips are its caption segments in time order (each decoded with the retrieval protocol's windows,
its embedding the mean of its window embeddings, as in ``zeroshot``); its paragraph is its captions in the
same order. For every (paragraph p, video v) the clip-caption similarity matrix S_pv [n captions of p,
m clips of v] holds cosines of the model's text and video embeddings, and one of three rules turns it (or the
embeddings) into a paragraph-to-video score: :func:`caption_average_scores`, :func:`dtw_score`,
:func:`otam_score`. Paragraph p matches video p; text->video R@1/5/10 and MedR come from ``metrics``.

Cosine rather than the raw dot product of ``zeroshot``: OTAM is defined on distances 1 - cos, and a
cosine matrix keeps DTW's mean-along-the-path in [-1, 1] whatever the embedding norms.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mmpt_lite.evaluation.features import RetrievalProtocol, VideoRequest, decode_retrieval_windows, embed_texts
from mmpt_lite.evaluation.metrics import ground_truth_ranks, metrics_from_ranks, recall_curve
from mmpt_lite.evaluation.runtime import EvalRuntime, Evaluator, in_eval_mode
from mmpt_lite.evaluation.zeroshot import read_youcook_list, segment_cache_parts

DEFAULT_OTAM_LAMBDA = 0.1  # Cao et al.'s smooth-minimum temperature
METHODS = {"caption_average": "avg", "dtw": "DTW", "otam": "OTAM"}  # record key -> table / plot label
TABLE_METRICS = ("R@1", "R@5", "R@10", "MedR")


# --------------------------------------------------------------------------- scores
def _unit(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` [..., D] scaled to unit length (a zero row stays zero instead of becoming NaN)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def caption_average_scores(paragraphs: Sequence[np.ndarray], videos: Sequence[np.ndarray]) -> np.ndarray:
    """float64 [P, V]: cosine of (mean of paragraph p's caption embeddings, mean of video v's clip embeddings).

    Args: paragraphs[p] [n_p, D]; videos[v] [m_v, D] (raw embeddings; the means are of the embeddings as the
    model outputs them). Order-invariant by construction: the baseline the two alignments are measured against.
    """
    texts = _unit(np.stack([np.asarray(p, np.float64).mean(axis=0) for p in paragraphs]))
    clips = _unit(np.stack([np.asarray(v, np.float64).mean(axis=0) for v in videos]))
    return texts @ clips.T


def dtw_score(S: np.ndarray) -> np.ndarray:
    """DTW of captions against clips: the monotone path of maximum summed similarity, divided by its length.

    Args: S float [..., n, m], rows = captions in order, columns = clips in order (leading dims are batched).
    Returns: float64 [...].

    Path: from (0, 0) to (n-1, m-1) with steps (1, 1), (1, 0), (0, 1); cumulative
    C[i, j] = S[i, j] + max(C[i-1, j-1], C[i-1, j], C[i, j-1]), the path length carried beside it (on a tie
    of sums the shorter path is kept). Normalised by the path's length, not by n: within one paragraph's row
    of scores n is a constant, so dividing by it would change no rank, and with mostly positive cosines the
    max-sum path grows with m, favouring videos with more clips. The mean similarity along the path does not.
    """
    S = np.asarray(S, dtype=np.float64)
    n, m = S.shape[-2:]
    total = np.empty_like(S)
    length = np.empty(S.shape, dtype=np.int64)
    total[..., 0, 0], length[..., 0, 0] = S[..., 0, 0], 1
    for i in range(n):
        for j in range(m):
            if i == 0 and j == 0:
                continue
            # diagonal first: with the strict comparison below, equal sums keep the earliest shortest path
            before = [(a, b) for a, b in ((i - 1, j - 1), (i - 1, j), (i, j - 1)) if a >= 0 and b >= 0]
            best, best_length = total[..., before[0][0], before[0][1]], length[..., before[0][0], before[0][1]]
            for a, b in before[1:]:
                candidate, candidate_length = total[..., a, b], length[..., a, b]
                better = (candidate > best) | ((candidate == best) & (candidate_length < best_length))
                best, best_length = np.where(better, candidate, best), np.where(better, candidate_length, best_length)
            total[..., i, j], length[..., i, j] = S[..., i, j] + best, best_length + 1
    return total[..., -1, -1] / length[..., -1, -1]


def _smooth_min(values: list[np.ndarray], lam: float) -> np.ndarray:
    """-lam log sum exp(-x / lam) over ``values`` (each [...]), shifted by the minimum for stability; lam 0: min."""
    stacked = np.stack(values)
    low = stacked.min(axis=0)
    if lam == 0 or len(values) == 1:
        return low
    return low - lam * np.log(np.exp(-(stacked - low) / lam).sum(axis=0))


def otam_score(S: np.ndarray, lam: float = DEFAULT_OTAM_LAMBDA) -> np.ndarray:
    """OTAM (Cao et al. 2020): ordered alignment of the captions to a run of clips, padded at both ends.

    Args: S float [..., n, m] cosine similarities, rows = captions, columns = clips (leading dims batched);
        lam >= 0 the smooth-minimum temperature (0: the hard minimum, the limit lam -> 0).
    Returns: float64 [...] = 1 - gamma / n; higher = better.

    Distances d = 1 - S, laid out with clips as rows (k) and captions as columns, and a zero-distance column
    added before the first caption and after the last (Cao et al.'s padding). gamma is the cumulative distance
    at the bottom-right corner, with
      gamma(k, j) = d(k, j) + smin(gamma(k-1, j-1), gamma(k, j-1), gamma(k-1, j))  in the two padding columns,
      gamma(k, j) = d(k, j) + smin(gamma(k-1, j-1), gamma(k, j-1))                 in the caption columns,
    the first row from the left only; smin = -lam log sum exp(-x / lam). Every caption is matched exactly once,
    each to the same clip as the previous caption or the next one, and the clips before the first match and
    after the last are free (the padding): a video is not penalised for unnarrated clips at its ends, while a
    paragraph must be covered in order. The orientation (the paragraph fully used) is the query's side: it makes
    gamma a sum of exactly n distances, so gamma / n is a mean distance comparable across videos of any length.
    Since smin lies in [min - lam log c, min] for c values, 0 <= otam(lam) - otam(0) <= lam log 3 (n + m) / n.
    """
    if not (lam >= 0 and math.isfinite(lam)):
        raise ValueError(f"OTAM's lambda must be a finite number >= 0, got {lam}")
    S = np.asarray(S, dtype=np.float64)
    n, m = S.shape[-2:]
    distance = np.zeros((*S.shape[:-2], m, n + 2))
    distance[..., 1:n + 1] = 1.0 - np.swapaxes(S, -1, -2)
    gamma = np.empty_like(distance)
    for k in range(m):
        for j in range(n + 2):
            if k == 0:
                gamma[..., 0, j] = distance[..., 0, j] + (gamma[..., 0, j - 1] if j > 0 else 0.0)
                continue
            if j == 0:
                before = [gamma[..., k - 1, 0]]
            else:
                before = [gamma[..., k - 1, j - 1], gamma[..., k, j - 1]]
                if j == n + 1:
                    before.append(gamma[..., k - 1, j])
            gamma[..., k, j] = distance[..., k, j] + _smooth_min(before, lam)
    return 1.0 - gamma[..., m - 1, n + 1] / n


def alignment_scores(paragraphs: Sequence[np.ndarray], videos: Sequence[np.ndarray],
                     score: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """float64 [P, V]: ``score`` (e.g. :func:`dtw_score`) of every S_pv = unit(paragraph p) · unit(video v)ᵀ.

    Args: paragraphs[p] [n_p, D], videos[v] [m_v, D]; ``score`` maps [..., n, m] -> [...].
    Pairs are batched by (n_p, m_v), so the recursions loop over cells once per size pair, not once per pair.
    """
    texts, clips = [_unit(p) for p in paragraphs], [_unit(v) for v in videos]
    out = np.empty((len(texts), len(clips)))
    by_n: dict[int, list[int]] = {}
    by_m: dict[int, list[int]] = {}
    for p, t in enumerate(texts):
        by_n.setdefault(len(t), []).append(p)
    for v, c in enumerate(clips):
        by_m.setdefault(len(c), []).append(v)
    for rows in by_n.values():
        text_block = np.stack([texts[p] for p in rows])  # [Pn, n, D]
        for columns in by_m.values():
            clip_block = np.stack([clips[v] for v in columns])  # [Vm, m, D]
            similarities = np.einsum("pnd,vmd->pvnm", text_block, clip_block)
            out[np.ix_(rows, columns)] = score(similarities)
    return out


def paragraph_scores(paragraphs: Sequence[np.ndarray], videos: Sequence[np.ndarray],
                     otam_lambda: float = DEFAULT_OTAM_LAMBDA) -> dict[str, np.ndarray]:
    """{method in METHODS: float64 [P, V] scores}; paragraphs[p] [n_p, D] captions, videos[v] [m_v, D] clips."""
    return {"caption_average": caption_average_scores(paragraphs, videos),
            "dtw": alignment_scores(paragraphs, videos, dtw_score),
            "otam": alignment_scores(paragraphs, videos, lambda S: otam_score(S, otam_lambda))}


# --------------------------------------------------------------------------- the evaluator
@dataclass
class Paragraph:
    """One video of the list: its id, file, and its rows of the list (caption i <-> segment i) in time order."""

    video_id: str
    path: str
    rows: list[int]


@dataclass
class ParagraphSet:
    """The list's captions and segment requests in file order (texts[i] <-> requests[i]), grouped by video;
    ``duplicates``: the repeated rows the reader left out (``file:line: ...``)."""

    texts: list[str]
    requests: list[VideoRequest]
    paragraphs: list[Paragraph]
    duplicates: list[str] = field(default_factory=list)


@dataclass
class ParagraphResult:
    """Per method: metrics (``metrics_from_ranks``; None when no paragraph could be scored) and ranks int [P]."""

    metrics: dict[str, dict | None]
    ranks: dict[str, np.ndarray]
    num_paragraphs: int
    num_segments: int
    missing: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    from_cache: bool = False


class YoucookParagraph(Evaluator):
    """YouCook2 validation as paragraphs: the ``youcook`` list and windows, one paragraph and one video per
    ``video_id``. A video with a missing file or any unreadable segment is skipped (as query and as candidate):
    a clip sequence with a hole would misalign its own paragraph. The record says over how many it scored."""

    name = "youcook_paragraph"
    title = "YouCook2 validation video-paragraph retrieval (paragraph->video)"
    synthetic_folder = "youcook2"
    default_list = "validation_youcook.csv"
    ylabel = "recall@K"
    consequence = "skipped (their paragraphs are not scored)"
    protocol_type = RetrievalProtocol
    decode_windows = staticmethod(decode_retrieval_windows)
    feature_output = "video_embedding"

    def __init__(self, protocol, video_root, list_path=None, otam_lambda: float = DEFAULT_OTAM_LAMBDA):
        if not (otam_lambda >= 0 and math.isfinite(otam_lambda)):
            raise ValueError(f"--otam_lambda must be a finite number >= 0, got {otam_lambda}")
        self.otam_lambda = float(otam_lambda)
        super().__init__(protocol, video_root, list_path)

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--otam_lambda", type=float, default=DEFAULT_OTAM_LAMBDA,
                            help="OTAM smooth-minimum temperature (0 = hard minimum)")

    @classmethod
    def options(cls, args) -> dict:
        return {"otam_lambda": args.otam_lambda}

    def read(self) -> ParagraphSet:
        listed = read_youcook_list(self.list_path, self.video_root)
        by_path: dict[str, Paragraph] = {}
        for i, request in enumerate(listed.requests):
            video_id = request.name.rsplit("[", 1)[0]  # the reader names segments <video_id>[<start>-<end>s]
            by_path.setdefault(request.path, Paragraph(video_id, request.path, [])).rows.append(i)
        for paragraph in by_path.values():  # time order; the list's own order breaks ties
            paragraph.rows.sort(key=lambda i: (listed.requests[i].start, listed.requests[i].end, i))
        return ParagraphSet(listed.texts, listed.requests, list(by_path.values()), listed.duplicates)

    def cache_parts(self, requests: list[VideoRequest]) -> dict:
        return segment_cache_parts(self.list_path, requests)

    @in_eval_mode
    def result(self, model: torch.nn.Module, runtime: EvalRuntime,
               checkpoint_id: str | None = None) -> ParagraphResult:
        """Embed every segment and caption, drop videos that cannot be read whole, score the rest three ways."""
        data = self.dataset
        found, cached = self.window_features(model, runtime, data.requests, checkpoint_id)
        texts = embed_texts(model, data.texts, device=runtime.device)
        missing, unreadable, kept = [], {}, []
        for paragraph in data.paragraphs:
            bad = [data.requests[i].name for i in paragraph.rows if not found.readable[i]]
            if not os.path.isfile(paragraph.path):
                missing.append(paragraph.video_id)
            elif bad:
                unreadable[paragraph.video_id] = (f"{len(bad)} of {len(paragraph.rows)} segments unreadable; "
                                                  f"{bad[0]}: {found.errors.get(bad[0], 'not decoded')}")
            else:
                kept.append(paragraph)
        metrics: dict[str, dict | None] = dict.fromkeys(METHODS)
        ranks = {method: np.zeros(0, np.int64) for method in METHODS}
        if kept:
            clips = found.features.astype(np.float64).mean(axis=1)  # [N, D]: a segment's windows averaged
            scores = paragraph_scores([texts[p.rows] for p in kept], [clips[p.rows] for p in kept], self.otam_lambda)
            for method, matrix in scores.items():
                ranks[method] = ground_truth_ranks(matrix)  # paragraph p's own video is column p
                metrics[method] = metrics_from_ranks(ranks[method])
        return ParagraphResult(metrics, ranks, len(kept), sum(len(p.rows) for p in kept), sorted(missing),
                               unreadable, cached)

    def evaluate(self, model: torch.nn.Module, runtime: EvalRuntime, checkpoint_id: str | None = None):
        result = self.result(model, runtime, checkpoint_id)
        curves = {method: recall_curve(ranks) for method, ranks in result.ranks.items() if ranks.size}
        record = {"metrics": result.metrics, "num_paragraphs": result.num_paragraphs,
                  "num_videos": len(self.dataset.paragraphs), "num_segments": result.num_segments,
                  "num_missing": len(result.missing), "num_unreadable": len(result.unreadable),
                  "missing": result.missing, "unreadable": result.unreadable,
                  "duplicates": self.dataset.duplicates,
                  "scoring": {"similarity": "cosine of caption and clip embeddings (a clip's windows averaged)",
                              "caption_average": "cosine of the mean caption and the mean clip embedding",
                              "dtw": "max-sum monotone path over S, divided by the path's length",
                              "otam": "1 - smooth-min ordered alignment distance (1 - S, clips padded at both "
                                      "ends) / number of captions",
                              "otam_lambda": self.otam_lambda},
                  "from_cache": result.from_cache,
                  "recall_at_k": {method: {"k": ks, "recall": recall} for method, (ks, recall) in curves.items()}}
        row = {f"{label} {metric}": (values or {}).get(metric)
               for method, label in METHODS.items() for metric in TABLE_METRICS
               for values in [result.metrics[method]]}
        return record, row, {f" ({METHODS[method]})": curve for method, curve in curves.items()}

    def columns(self) -> list[str]:
        return [f"{label} {metric}" for label in METHODS.values() for metric in TABLE_METRICS]

    def heading(self, records: dict[str, dict]) -> str:
        first = next(iter(records.values()))
        count = first["num_paragraphs"]
        chance = f", chance R@1 = {100 / count:.2f}%" if count else ""
        return (f"{self.title}: {count} of {first['num_videos']} paragraphs{chance}; "
                f"OTAM lambda = {self.otam_lambda:g}")
