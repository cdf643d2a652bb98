"""The 2-D map of a dataset: UMAP over the mean-pooled hidden states a base pass already computed."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from .results import read_pass
from .schema import decode_f16
from .store import Cache, atomic_write_parquet


def compute_layout(cache: Cache, pass_key: str, seed: int = 0) -> int:
    """Write ``passes/<key>/layout.parquet`` (idx, x, y). Returns the number of points laid out."""
    rows = read_pass(cache, pass_key, ["idx", "embedding"])
    rows = rows[rows["embedding"].map(lambda b: bool(b))]
    if len(rows) < 3:
        raise ValueError(f"pass {pass_key} has {len(rows)} embeddings; a layout needs at least 3")
    vectors = np.stack([decode_f16(b).astype(np.float32) for b in rows["embedding"]])  # (N, H)
    if len(rows) <= 5:
        coords = vectors[:, :2].copy()  # too few points for a neighbour graph; keep them visible
    else:
        import umap

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
    atomic_write_parquet(cache.pass_dir(pass_key) / "layout.parquet", table)
    return len(rows)
