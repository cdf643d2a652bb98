"""The UMAP map: one point per embedded example, the same map for the same embeddings."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd

from scoring.layout import compute_layout
from scoring.losses import PassConfig, run_pass
from scoring.models import ModelRef, load_model, load_tokenizer
from scoring.results import layout_table


def test_layout_has_one_point_per_example_and_is_deterministic(tiny_model, cache):
    ref = ModelRef("tiny", str(tiny_model), "x")
    convs = [
        [{"role": "user", "content": f"Task {i}: reverse {w}"}, {"role": "assistant", "content": w[::-1]}]
        for i, w in enumerate(["planet", "orange", "silver", "garden", "rocket", "window", "yellow", "castle"] * 4)
    ]
    frame = pd.DataFrame({"idx": range(len(convs)), "id": [str(i) for i in range(len(convs))],
                          "messages": [json.dumps(c) for c in convs]})  # fmt: skip
    run_pass(cache, "p", load_model(ref), load_tokenizer(ref), frame, PassConfig(chunk_size=8))
    assert compute_layout(cache, "p") == len(convs)
    first = layout_table(cache, {"base_pass": "p"})
    assert sorted(first["idx"]) == list(range(len(convs)))
    assert np.isfinite(first[["x", "y"]].to_numpy()).all()
    compute_layout(cache, "p")
    pd.testing.assert_frame_equal(first, layout_table(cache, {"base_pass": "p"}))


def test_the_engine_never_imports_streamlit():
    code = "import sys, scoring.cli, scoring.jobs, scoring.results, scoring.layout; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
