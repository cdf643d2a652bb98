"""The 2-D map of a dataset: UMAP over the mean-pooled hidden states a base pass already computed.

UMAP is fitted on at most :data:`MAP_FIT` rows, so the map's time and memory are bounded by that, not by the data:
a larger dataset's map is fitted on a fixed-seed sample of that many rows, and every other row is placed at the
distance-weighted mean of the map positions of its :data:`PLACE_NEIGHBOURS` nearest fitted rows (cosine, as UMAP
measures them), read and placed one batch at a time. Every row gets a point, so map clusters (``--quota cluster``)
cover the whole dataset. At or under :data:`MAP_FIT` rows the map is UMAP over all of them, as it always was.

("Map", not "layout": ingest's layouts are column layouts. The file and the job kind keep the name ``layout`` they
had on disk, so existing caches stay valid: ``Cache.map_path`` and ``scoring.jobs.requests.MAP_JOB``.)"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from scoring.store.cache import Cache, atomic_write_parquet
from scoring.store.parts import embedded_idx, embedding_batches, parts_glob

# UMAP over all 51,302 embedded Alpaca rows (the tiny model's 64-d states; AMD EPYC Zen 3, 2 cores) took 83 s and
# 888 MB; fitted on 20,000 of them with the rest placed, its 10 nearest map neighbours kept 1.6 % of each row's 10
# nearest in the embedding, against 3.6 % fitted on all (UMAP's own transform: 1.7 %, 30x slower). So every row is
# fitted up to this many, and only larger datasets pay in map quality for bounded time and memory.
MAP_FIT = 100_000
PLACE_NEIGHBOURS = 15


def compute_map(cache: Cache, pass_key: str, seed: int = 0) -> int:
    """Write the map of the pass ``pass_key`` (idx, x, y) to ``Cache.map_path``. Returns the number of points."""
    glob = parts_glob(cache, pass_key)
    idx = embedded_idx(glob)
    if len(idx) < 3:
        raise ValueError(f"pass {pass_key} has {len(idx)} embeddings; a layout needs at least 3")
    fit = idx if len(idx) <= MAP_FIT else np.sort(np.random.default_rng(seed).choice(idx, MAP_FIT, replace=False))
    vectors = np.empty((len(fit), 0), np.float32)
    for batch_idx, batch in embedding_batches(glob):
        keep = np.isin(batch_idx, fit)
        if not vectors.shape[1]:
            vectors = np.empty((len(fit), batch.shape[1]), np.float32)
        vectors[np.searchsorted(fit, batch_idx[keep])] = batch[keep]
    coords, fitted = np.full((len(idx), 2), np.nan, np.float32), _fit(vectors, seed)
    coords[np.searchsorted(idx, fit)] = fitted
    if len(fit) < len(idx):
        _place_the_rest(glob, fit, vectors, fitted, idx, coords, seed)
    table = pa.table({"idx": idx, "x": coords[:, 0], "y": coords[:, 1]})
    atomic_write_parquet(cache.map_path(pass_key), table)
    return len(idx)


def _fit(vectors: np.ndarray, seed: int) -> np.ndarray:
    """UMAP's 2-D embedding of ``vectors`` (too few for a neighbour graph: their first two coordinates)."""
    if len(vectors) <= 5:
        return vectors[:, :2].copy()  # too few points for a neighbour graph; keep them visible
    import umap  # heavy (numba compilation): only when a map is computed

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(15, len(vectors) - 1),
        min_dist=0.1,
        metric="cosine",
        random_state=seed,  # fixed seed: the same embeddings always give the same map
    )
    return reducer.fit_transform(vectors)


def _place_the_rest(glob: str, fit: np.ndarray, vectors: np.ndarray, fitted: np.ndarray, idx: np.ndarray,
                    coords: np.ndarray, seed: int) -> None:  # fmt: skip
    """Each row not in ``fit``: at the distance-weighted mean of its nearest fitted rows' map positions."""
    from pynndescent import NNDescent  # umap-learn's own nearest-neighbour index

    index = NNDescent(vectors, metric="cosine", n_neighbors=PLACE_NEIGHBOURS, random_state=seed)
    for batch_idx, batch in embedding_batches(glob):
        rest = ~np.isin(batch_idx, fit)
        if rest.any():
            near, distance = index.query(batch[rest], k=PLACE_NEIGHBOURS)
            weight = 1.0 / (distance + 1e-6)
            placed = (fitted[near] * weight[..., None]).sum(axis=1) / weight.sum(axis=1, keepdims=True)
            coords[np.searchsorted(idx, batch_idx[rest])] = placed
