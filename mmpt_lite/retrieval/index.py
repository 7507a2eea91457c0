"""faiss nearest-neighbour index over per-video embeddings: exact Flat or IVFFlat, searchable on a subset.

The batch planner searches the same index several times, each time only among the videos not yet
placed in a batch. An approximate IVF search does that with faiss's ``IDSelectorBitmap`` (no rebuild,
and only the allowed vectors of the probed lists are scored); an exact search instead scans a
temporary Flat index of the allowed vectors, because faiss's brute-force search with a selector
leaves the BLAS path and is several times slower.

An IVFFlat index cannot be trained on fewer vectors than it has lists (``nlist``); that case falls
back to an exact Flat index and says so (a warning on the ``mmpt_lite`` logger and ``fallback_reason``).
"""

from __future__ import annotations

import logging
from typing import Literal

import faiss
import numpy as np

log = logging.getLogger("mmpt_lite")

IndexKind = Literal["flat", "ivfflat"]
Metric = Literal["ip", "l2"]

_FAISS_METRIC = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


class NeighbourIndex:
    """Nearest-neighbour search over ``vectors`` (float32 [N, D]); ids are row numbers 0..N-1.

    ``kind``: "flat" (exact) or "ivfflat" (``nlist`` k-means lists, ``nprobe`` of them scanned per
    query). ``metric``: "ip" (inner product; pass L2-normalised vectors for cosine) or "l2".
    IVF training uses at most ``train_points_per_list`` × nlist random vectors and ``train_iterations``
    k-means iterations: at a million vectors k-means on everything would dominate the build time,
    while the centroids only need to partition the space, not be optimal.
    """

    def __init__(self, vectors: np.ndarray, *, kind: IndexKind = "flat", metric: Metric = "ip",
                 nlist: int = 512, nprobe: int = 1, train_points_per_list: int = 64,
                 train_iterations: int = 10, seed: int = 0):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError(f"cannot index vectors of shape {vectors.shape}: expected a non-empty [N, D] array")
        if not np.isfinite(vectors).all():
            raise ValueError("cannot index non-finite (NaN/inf) vectors")
        if kind not in ("flat", "ivfflat"):
            raise ValueError(f"unknown index kind {kind!r} (expected 'flat' or 'ivfflat')")
        if metric not in _FAISS_METRIC:
            raise ValueError(f"unknown metric {metric!r} (expected 'ip' or 'l2')")
        self.num_vectors, self.dim = vectors.shape
        self.metric = metric
        self.fallback_reason = ""
        if kind == "ivfflat" and self.num_vectors < nlist:
            self.fallback_reason = (f"{self.num_vectors} vectors are fewer than nlist={nlist}, so the IVF index "
                                    f"cannot be trained; using an exact Flat index instead")
            log.warning("retrieval index: %s", self.fallback_reason)
            kind = "flat"
        self.kind: IndexKind = kind
        self.nlist = nlist if kind == "ivfflat" else 1
        self.nprobe = max(1, min(nprobe, self.nlist))
        if kind == "flat":
            self.index = self._new_flat()
            self.index.add(vectors)
            # A view of faiss's own copy (not a second copy), for exact searches over a subset.
            self.vectors = faiss.rev_swig_ptr(self.index.get_xb(), self.num_vectors * self.dim).reshape(
                self.num_vectors, self.dim)
        else:
            self.index = self._train_ivf(vectors, train_points_per_list, train_iterations, seed)
            self.index.add(vectors)
            self.vectors = vectors  # the caller's array (not copied when already float32 and contiguous)

    def _new_flat(self) -> faiss.Index:
        return faiss.IndexFlatIP(self.dim) if self.metric == "ip" else faiss.IndexFlatL2(self.dim)

    def _train_ivf(self, vectors: np.ndarray, points_per_list: int, iterations: int, seed: int) -> faiss.Index:
        index = faiss.IndexIVFFlat(self._new_flat(), self.dim, self.nlist, _FAISS_METRIC[self.metric])
        index.cp.niter = iterations
        index.cp.seed = seed
        sample_size = min(self.num_vectors, max(self.nlist, points_per_list * self.nlist))
        index.cp.max_points_per_centroid = max(1, sample_size // self.nlist)  # we subsample; faiss need not
        sample = np.random.default_rng(seed).choice(self.num_vectors, sample_size, replace=False)
        index.train(vectors[np.sort(sample)])
        return index  # faiss's Python wrapper keeps the quantizer alive as long as the index

    def is_exact(self, nprobe: int | None = None) -> bool:
        """Whether a search with ``nprobe`` lists (default: the index's own) returns the true neighbours."""
        return self.kind == "flat" or (nprobe or self.nprobe) >= self.nlist

    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest indexed vectors of each query, best first.

        queries: float32 [Q, D]. allowed: optional bool [N]; only rows where it is True may be returned.
        nprobe: IVF lists to scan (default: the index's; ignored by Flat).
        Returns (scores float32 [Q, k], ids int64 [Q, k]); scores are inner products for "ip" and squared
        distances for "l2"; missing results (fewer than k reachable vectors) have id -1.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, int(k))
        nprobe = max(1, min(nprobe or self.nprobe, self.nlist))
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != (self.num_vectors,):
                raise ValueError(f"allowed mask has shape {allowed.shape}, expected ({self.num_vectors},)")
            if allowed.all():
                allowed = None
        if allowed is not None and self.is_exact(nprobe):
            return self._search_exact_subset(queries, k, allowed)
        if self.kind == "flat":
            return self.index.search(queries, k)
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        bitmap = None
        if allowed is not None:
            bitmap = np.packbits(allowed, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(self.num_vectors, faiss.swig_ptr(bitmap))
        scores, ids = self.index.search(queries, k, params=params)
        del bitmap  # the selector points into it: it may go only after the search
        return scores, ids

    def _search_exact_subset(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        subset = np.flatnonzero(allowed)
        sub_index = self._new_flat()
        sub_index.add(self.vectors[subset])
        scores, local = sub_index.search(queries, k)
        ids = np.where(local >= 0, subset[np.maximum(local, 0)], -1)
        return scores, ids

    def describe(self, nprobe: int | None = None) -> str:
        """A short label for logs, e.g. ``IVFFlat(nlist=512, nprobe=1, ip)`` or ``Flat(ip)``."""
        if self.kind == "flat":
            return f"Flat({self.metric})"
        return f"IVFFlat(nlist={self.nlist}, nprobe={nprobe or self.nprobe}, {self.metric})"
