"""HMDB-51 linear probe (MIL-NCE protocol): official split files and a linear SVM over window features.

Every window of a training video is one SVM sample; a test video's class is the argmax of its windows'
decision scores summed. Videos that could not be decoded are left out of training (and reported by the
caller) and count as errors at test time, so accuracies stay comparable across runs.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmpt_lite.data.video import resolve_video_path
from mmpt_lite.evaluation.cache import cache_key, files_fingerprint
from mmpt_lite.evaluation.features import ProbeProtocol, VideoRequest, WindowFeatures, decode_probe_windows
from mmpt_lite.evaluation.metrics import recall_curve
from mmpt_lite.evaluation.runtime import EvalRuntime, Evaluator
from mmpt_lite.fileio import file_sha256

SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<split>\d+)\.txt$")
TRAIN_CODE, TEST_CODE = 1, 2
DEFAULT_C = 100.0
# sklearn's default of 1,000 iterations often stops short of convergence at C=100 on raw features;
# the protocol fixes C, not the solver budget, so give liblinear room to converge.
DEFAULT_MAX_ITER = 10_000


@dataclass
class HmdbSplits:
    """The official train/test lists.

    Attributes:
        classes: class names, sorted; label = index.
        videos: relative paths ``<class>/<video>.avi`` of every video used by any loaded split, sorted.
        labels: int64 [len(videos)].
        train: split number -> int64 indices into ``videos`` (code 1).
        test: split number -> int64 indices into ``videos`` (code 2).
        duplicates: one ``file:line: ...`` message per repeated line of a split file (the first is kept).
    """

    classes: list[str]
    videos: list[str]
    labels: np.ndarray
    train: dict[int, np.ndarray]
    test: dict[int, np.ndarray]
    duplicates: list[str] = field(default_factory=list)


def read_hmdb_splits(split_dir: str | Path, splits: tuple[int, ...] = (1, 2, 3)) -> HmdbSplits:
    """Parse ``<class>_test_split{k}.txt`` files (lines ``<video>.avi <code>``, 1 train / 2 test / 0 unused).

    A line naming a video an earlier line of the same file named is left out (listed in ``duplicates``); a line
    that is not ``<file name> <0|1|2>`` (a path with ``/`` included) is a ValueError naming ``file:line``."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"HMDB split folder not found: {split_dir}")
    codes: dict[int, dict[str, int]] = {k: {} for k in splits}
    classes: set[str] = set()
    duplicates: list[str] = []
    for path in sorted(split_dir.iterdir()):
        match = SPLIT_FILE.match(path.name)
        if not match or int(match["split"]) not in codes:
            continue
        cls = match["cls"]
        classes.add(cls)
        first_line: dict[str, int] = {}
        for line_no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise ValueError(f"{path}:{line_no}: expected '<video> <0|1|2>', got {line!r}")
            if "/" in fields[0] or fields[0] in (".", ".."):   # videos sit in the class folder: no path may leave it
                raise ValueError(f"{path}:{line_no}: expected a file name inside {cls}/, got the path {fields[0]!r}")
            if fields[0] in first_line:
                duplicates.append(f"{path}:{line_no}: {fields[0]} repeats line {first_line[fields[0]]} "
                                  "(kept the first)")
                continue
            first_line[fields[0]] = line_no
            codes[int(match["split"])][f"{cls}/{fields[0]}"] = int(fields[1])
    missing = [k for k in splits if not codes[k]]
    if missing:
        raise FileNotFoundError(f"no *_test_split{missing[0]}.txt files in {split_dir}")
    class_list = sorted(classes)
    used = sorted({v for per_split in codes.values() for v, c in per_split.items() if c in (TRAIN_CODE, TEST_CODE)})
    index = {v: i for i, v in enumerate(used)}
    labels = np.array([class_list.index(v.split("/", 1)[0]) for v in used], dtype=np.int64)

    def members(k: int, code: int) -> np.ndarray:
        return np.array(sorted(index[v] for v, c in codes[k].items() if c == code), dtype=np.int64)

    return HmdbSplits(class_list, used, labels,
                      train={k: members(k, TRAIN_CODE) for k in splits},
                      test={k: members(k, TEST_CODE) for k in splits}, duplicates=duplicates)


def _fit_svm(features: np.ndarray, labels: np.ndarray, c: float, max_iter: int, seed: int):
    """Fit on window samples: features float [V, W, D], labels [V] -> V·W samples.

    Returns (the fitted LinearSVC, whether liblinear converged).
    """
    # Imported here: scikit-learn takes over a second to import and retrieval never needs it.
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    num_windows = features.shape[1]
    svm = LinearSVC(C=c, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        svm.fit(features.reshape(-1, features.shape[-1]), np.repeat(labels, num_windows))
    return svm, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def video_scores(svm, features: np.ndarray, num_classes: int) -> np.ndarray:
    """Summed window decision scores: features [V, W, D] -> float [V, num_classes] (columns = labels)."""
    num_videos, num_windows, dim = features.shape
    decision = svm.decision_function(features.reshape(-1, dim))
    if decision.ndim == 1:  # binary problem: sklearn returns the score of classes_[1] only
        decision = np.stack([-decision, decision], axis=1)
    summed = decision.reshape(num_videos, num_windows, -1).sum(axis=1)
    out = np.full((num_videos, num_classes), -np.inf)
    out[:, svm.classes_] = summed  # classes absent from training can never be predicted
    return out


def holdout_accuracy(features: np.ndarray, labels: np.ndarray, grid: list[float], *,
                     holdout_fraction: float = 0.2, max_iter: int = DEFAULT_MAX_ITER,
                     seed: int = 0) -> dict[float, float]:
    """Per-video accuracy on a held-out part of the training videos for each C in ``grid``.

    The split is by video (a video's windows never straddle it). It is stratified when every class has
    at least two videos, holding out at least one video per class; otherwise it is a plain random split.
    """
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    present = int((counts > 0).sum())
    num_heldout = max(1, int(np.ceil(holdout_fraction * len(labels))))
    stratified = counts[counts > 0].min() >= 2 and len(labels) - max(num_heldout, present) >= present
    if stratified:
        num_heldout = max(num_heldout, present)
    fit_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=num_heldout, random_state=seed,
                                        stratify=labels if stratified else None)
    num_classes = int(labels.max()) + 1
    result = {}
    for c in grid:
        svm, _ = _fit_svm(features[fit_idx], labels[fit_idx], c, max_iter, seed)
        predicted = video_scores(svm, features[val_idx], num_classes).argmax(axis=1)
        result[float(c)] = float(np.mean(predicted == labels[val_idx]))
    return result


def probe_split(features: np.ndarray, labels: np.ndarray, readable: np.ndarray, train_idx: np.ndarray,
                test_idx: np.ndarray, num_classes: int, *, c: float = DEFAULT_C,
                c_grid: list[float] | None = None, max_iter: int = DEFAULT_MAX_ITER, seed: int = 0) -> dict:
    """Train on one split's training videos and score its test videos.

    Args:
        features: float [V, W, D] window features of every video.
        labels: int [V]; readable: bool [V] (False = decoding failed).
        train_idx, test_idx: indices into the V videos.
        c: the SVM's C when there is no ``c_grid``.
        c_grid: C values to choose from on a held-out part of the training videos.
    Returns:
        dict with top1 (unreadable test videos count as wrong), chosen C, the held-out accuracy
        per C, counts, whether the solver converged, and scores float [len(test_idx), num_classes].
    """
    train_ok = train_idx[readable[train_idx]]
    if len(np.unique(labels[train_ok])) < 2:
        raise ValueError("the training split has fewer than two classes with readable videos")
    holdout = None
    chosen = c
    if c_grid:
        holdout = holdout_accuracy(features[train_ok], labels[train_ok], c_grid, max_iter=max_iter, seed=seed)
        chosen = max(holdout, key=lambda c: (holdout[c], -c))  # best accuracy, then the smaller C
    svm, converged = _fit_svm(features[train_ok], labels[train_ok], chosen, max_iter, seed)
    scores = video_scores(svm, features[test_idx], num_classes)
    scores[~readable[test_idx]] = np.nan
    predicted = np.where(readable[test_idx], np.nan_to_num(scores, nan=-np.inf).argmax(axis=1), -1)
    return {
        "top1": float(np.mean(predicted == labels[test_idx])),
        "C": chosen,
        "holdout_accuracy": holdout,
        "num_train_videos": int(len(train_ok)),
        "num_train_windows": int(len(train_ok) * features.shape[1]),
        "num_test_videos": int(len(test_idx)),
        "unreadable_train": int(len(train_idx) - len(train_ok)),
        "unreadable_test": int((~readable[test_idx]).sum()),
        "converged": converged,
        "scores": scores,
    }


def topk_accuracy_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-K accuracy for K = 1 … num_classes from scores [V, C] (NaN rows = unreadable = always wrong).

    Ties are pessimistic, as in :mod:`mmpt_lite.evaluation.metrics`.
    """
    filled = np.nan_to_num(scores, nan=-np.inf)
    true_score = filled[np.arange(len(labels)), labels][:, None]
    ranks = (filled >= true_score).sum(axis=1) - 1
    ranks[np.isnan(scores).any(axis=1)] = scores.shape[1]
    return recall_curve(ranks, scores.shape[1])


# --------------------------------------------------------------------------- features and the whole probe
def _split_files_hash(split_dir: Path) -> str:
    return cache_key({p.name: file_sha256(p) for p in sorted(split_dir.glob("*_test_split*.txt"))})


def probe_all_splits(features: WindowFeatures, splits: HmdbSplits, *, c: float = DEFAULT_C,
                     c_grid: list[float] | None = None, max_iter: int = DEFAULT_MAX_ITER, seed: int = 0) -> dict:
    """Top-1 per split and their mean: {"splits": {k: probe_split(...)}, "top1_mean": float}."""
    if not features.readable.any():
        raise ValueError("no HMDB video could be decoded; see the errors listed")
    per_split = {k: probe_split(features.features, splits.labels, features.readable, splits.train[k],
                                splits.test[k], len(splits.classes), c=c, c_grid=c_grid, max_iter=max_iter,
                                seed=seed)
                 for k in splits.train}
    return {"splits": per_split, "top1_mean": float(np.mean([r["top1"] for r in per_split.values()]))}


class HmdbProbe(Evaluator):
    """HMDB-51 linear probe over the official split files; ``svm_c``: one C, or several chosen per split."""

    name = "hmdb"
    title = "HMDB-51 linear probe (LinearSVC on pooled window features), top-1"
    synthetic_folder = "hmdb51"
    default_list = "testTrainMulti_7030_splits"
    list_is_folder = True
    needs_text = False
    # HMDB windows are contiguous frames of the whole video, by default at its native rate
    fps_help = ("resample the video to this rate first (default: the run config's eval.hmdb_fps; 0 = native "
                "rate, the published protocol)")
    ylabel = "top-K accuracy"
    consequence = "left out of SVM training, wrong at test"
    protocol_type = ProbeProtocol
    fps_setting = "hmdb_fps"
    decode_windows = staticmethod(decode_probe_windows)
    feature_output = "probe"

    def __init__(self, protocol: ProbeProtocol, video_root: str | Path, list_path: str | Path | None = None, *,
                 splits: tuple[int, ...] = (1, 2, 3), svm_c: list[float] | None = None):
        self.splits, self.svm_c = tuple(splits), list(svm_c or [DEFAULT_C])
        super().__init__(protocol, video_root, list_path)

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--svm_c", type=float, nargs="+", help=f"LinearSVC C (default {DEFAULT_C:g}); "
                            "several values: chosen per split on a held-out 20%% of the training videos")
        parser.add_argument("--splits", type=int, nargs="+", default=[1, 2, 3], help="official splits to run")

    @classmethod
    def options(cls, args) -> dict:
        return {"splits": tuple(args.splits), "svm_c": args.svm_c}

    def read(self) -> HmdbSplits:
        return read_hmdb_splits(self.list_path, self.splits)

    def cache_parts(self, requests: list[VideoRequest]) -> dict:
        return {"splits": _split_files_hash(self.list_path), "videos": self.dataset.videos,
                "fingerprint": files_fingerprint([Path(r.path) for r in requests])}

    def evaluate(self, model: torch.nn.Module, runtime: EvalRuntime, checkpoint_id: str | None = None):
        splits = self.dataset
        requests = [VideoRequest(v, resolve_video_path(self.video_root / v)) for v in splits.videos]
        features, cached = self.window_features(model, runtime, requests, checkpoint_id)
        probe = probe_all_splits(features, splits, c=self.svm_c[0],
                                 c_grid=self.svm_c if len(self.svm_c) > 1 else None)
        curves, split_records = {}, {}
        for k, r in probe["splits"].items():
            curves[f", split {k}"] = topk_accuracy_curve(r["scores"], splits.labels[splits.test[k]])
            split_records[k] = {key: v for key, v in r.items() if key != "scores"}
        row = {**{f"split{k}": 100 * r["top1"] for k, r in probe["splits"].items()},
               "mean": 100 * probe["top1_mean"]}
        record = {"top1_mean": 100 * probe["top1_mean"], "splits": split_records, "num_videos": len(splits.videos),
                  "num_classes": len(splits.classes), "num_unreadable": len(features.errors),
                  "unreadable": features.errors, "duplicates": splits.duplicates, "from_cache": cached}
        return record, row, curves

    def columns(self) -> list[str]:
        return [f"split{k}" for k in self.splits] + ["mean"]

    def heading(self, records: dict[str, dict]) -> str:
        return f"{self.title} (%), {len(self.splits)} split(s)"
