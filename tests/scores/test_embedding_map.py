"""The UMAP map: one point per embedded example, the same map for the same embeddings."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd

from scoring.models.loading import ModelRef, load_model, load_tokenizer
from scoring.passes.engine import PassConfig
from scoring.passes.runner import INSTRUCTIONS, run_pass
from scoring.scores.embedding_map import compute_map
from scoring.store.parts import connect, sql_str


def layout_table(cache, key: str) -> pd.DataFrame:
    """The map of pass ``key`` (idx, x, y), in idx order."""
    return connect().execute(f"SELECT * FROM read_parquet({sql_str(cache.map_path(key))}) ORDER BY idx").df()


def test_layout_has_one_point_per_example_and_is_deterministic(tiny_model, cache):
    ref = ModelRef("tiny", str(tiny_model), "x")
    convs = [
        [{"role": "user", "content": f"Task {i}: reverse {w}"}, {"role": "assistant", "content": w[::-1]}]
        for i, w in enumerate(["planet", "orange", "silver", "garden", "rocket", "window", "yellow", "castle"] * 4)
    ]
    frame = pd.DataFrame({"idx": range(len(convs)), "id": [str(i) for i in range(len(convs))],
                          "messages": [json.dumps(c) for c in convs]})  # fmt: skip
    run_pass(cache, "p", INSTRUCTIONS, load_model(ref), load_tokenizer(ref), frame, PassConfig(chunk_size=8))
    assert compute_map(cache, "p") == len(convs)
    first = layout_table(cache, "p")
    assert sorted(first["idx"]) == list(range(len(convs)))
    assert np.isfinite(first[["x", "y"]].to_numpy()).all()
    compute_map(cache, "p")
    pd.testing.assert_frame_equal(first, layout_table(cache, "p"))


def test_the_engine_never_imports_streamlit():
    modules = ("scoring, scoring.cli, scoring.jobs.runner, scoring.jobs.worker, scoring.scores.tables, "
               "scoring.scores.embedding_map")
    code = f"import sys, {modules}; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
