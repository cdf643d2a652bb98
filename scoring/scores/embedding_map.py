"""The 2-D map of a dataset: UMAP over the mean-pooled hidden states a base pass already computed.

("Map", not "layout": ingest's layouts are column layouts. The file and the job kind keep the name ``layout`` they
had on disk, so existing caches stay valid: ``Cache.map_path`` and ``scoring.jobs.requests.MAP_JOB``.)"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from scoring.schema import decode_f16
from scoring.store.cache import Cache, atomic_write_parquet
from scoring.store.parts import read_pass


def compute_map(cache: Cache, pass_key: str, seed: int = 0) -> int:
    """Write the map of the pass ``pass_key`` (idx, x, y) to ``Cache.map_path``. Returns the number of points."""
    rows = read_pass(cache, pass_key, ["idx", "embedding"])
    rows = rows[rows["embedding"].map(lambda b: bool(b))]
    if len(rows) < 3:
        raise ValueError(f"pass {pass_key} has {len(rows)} embeddings; a layout needs at least 3")
    vectors = np.stack([decode_f16(b).astype(np.float32) for b in rows["embedding"]])  # (N, H)
    if len(rows) <= 5:
        coords = vectors[:, :2].copy()  # too few points for a neighbour graph; keep them visible
    else:
        import umap  # heavy (numba compilation): only when a map is computed

        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(15, len(rows) - 1),
            min_dist=0.1,
            metric="cosine",
            random_state=seed,  # fixed seed: the same embeddings always give the same map
        )
        coords = reducer.fit_transform(vectors)
    table = pa.table(
        {"idx": rows["idx"].to_numpy(), "x": coords[:, 0].astype(np.float32), "y": coords[:, 1].astype(np.float32)}
    )
    atomic_write_parquet(cache.map_path(pass_key), table)
    return len(rows)
