"""The UMAP map: one point per embedded example, the same map for the same embeddings."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from scoring.models.loading import ModelRef, load_model, load_tokenizer
from scoring.passes.engine import PassConfig
from scoring.passes.runner import INSTRUCTIONS, run_pass
from scoring.schema import decode_f16
from scoring.scores import embedding_map
from scoring.scores.embedding_map import _fit, compute_map
from scoring.store import parts
from scoring.store.parts import connect, read_pass, sql_str


def layout_table(cache, key: str) -> pd.DataFrame:
    """The map of pass ``key`` (idx, x, y), in idx order."""
    return connect().execute(f"SELECT * FROM read_parquet({sql_str(cache.map_path(key))}) ORDER BY idx").df()


def embedded_pass(tiny_model, cache, n: int = 32) -> np.ndarray:
    """Run a base pass named "p" over ``n`` short conversations; returns their embeddings in idx order."""
    ref = ModelRef("tiny", str(tiny_model), "x")
    words = ["planet", "orange", "silver", "garden", "rocket", "window", "yellow", "castle"]
    convs = [[{"role": "user", "content": f"Task {i}: reverse {w}"}, {"role": "assistant", "content": w[::-1]}]
             for i, w in enumerate((words * (n // len(words) + 1))[:n])]  # fmt: skip
    frame = pd.DataFrame({"idx": range(len(convs)), "id": [str(i) for i in range(len(convs))],
                          "messages": [json.dumps(c) for c in convs]})  # fmt: skip
    run_pass(cache, "p", INSTRUCTIONS, load_model(ref), load_tokenizer(ref), frame, PassConfig(chunk_size=8))
    return np.stack([decode_f16(b).astype(np.float32) for b in read_pass(cache, "p", ["embedding"])["embedding"]])


def test_layout_has_one_point_per_example_and_is_deterministic(tiny_model, cache):
    vectors = embedded_pass(tiny_model, cache)
    assert compute_map(cache, "p") == len(vectors)
    first = layout_table(cache, "p")
    assert sorted(first["idx"]) == list(range(len(vectors)))
    assert np.isfinite(first[["x", "y"]].to_numpy()).all()
    compute_map(cache, "p")
    pd.testing.assert_frame_equal(first, layout_table(cache, "p"))
    np.testing.assert_array_equal(first[["x", "y"]].to_numpy(), _fit(vectors, 0))  # UMAP over every row


def test_a_map_of_more_rows_than_it_fits_places_the_rest_from_their_nearest_fitted_rows(tiny_model, cache,
                                                                                        monkeypatch):  # fmt: skip
    vectors = embedded_pass(tiny_model, cache, n=40)
    monkeypatch.setattr(embedding_map, "MAP_FIT", 24)
    monkeypatch.setattr(parts, "EMBEDDING_BATCH", 7)  # read in several batches
    assert compute_map(cache, "p") == 40
    points = layout_table(cache, "p")
    assert points["idx"].tolist() == list(range(40)) and np.isfinite(points[["x", "y"]].to_numpy()).all()
    fit = np.sort(np.random.default_rng(0).choice(np.arange(40), 24, replace=False))
    xy = points[["x", "y"]].to_numpy()
    np.testing.assert_array_equal(xy[fit], _fit(vectors[fit], 0))  # UMAP over the sample alone
    rest = np.setdiff1d(np.arange(40), fit)
    k = embedding_map.PLACE_NEIGHBOURS
    distance, near = NearestNeighbors(n_neighbors=k, metric="cosine").fit(vectors[fit]).kneighbors(vectors[rest])
    weight = 1.0 / (distance + 1e-6)
    expected = (xy[fit][near] * weight[..., None]).sum(axis=1) / weight.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(xy[rest], expected, rtol=1e-3, atol=1e-3)


def test_the_engine_never_imports_streamlit():
    modules = ("scoring, scoring.cli, scoring.jobs.runner, scoring.jobs.worker, scoring.scores.tables, "
               "scoring.scores.embedding_map")
    code = f"import sys, {modules}; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
