"""The benchmarks CI runs: benchmarks/end_to_end.py --tiny, the whole DavIR job on Alpaca rows with a tiny Llama,
prints one JSON line with every stage's time, tokens and memory; benchmarks/throughput.py --profile over a tiny Llama
says where each way's time went; benchmarks/tokenise.py times a chunk's tokenisation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "alpaca").exists(), reason="needs ../shared/data/alpaca")
def test_end_to_end_tiny_runs_every_stage(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "end_to_end.py"), "--tiny", "--rows", "48",
                          "--cache", str(tmp_path / "cache")], capture_output=True, text=True, timeout=600, check=False,
                         env=dict(os.environ, TQDM_DISABLE="1"))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rows"] == 48 and 0 < result["scored_rows"] <= 48 and result["params"] > 0
    assert set(result["stages"]) == {"ingest", "base pass", "ref training", "ref pass"}
    for stage in ("base pass", "ref training", "ref pass"):
        s = result["stages"][stage]
        assert s["seconds"] > 0 and s["tokens"] > 0 and s["tokens_per_s"] > 0 and s["peak_mb"] > 0
        assert s["mfu"] is None  # a CPU has no peak in the table
    # the base pass runs each response twice (with its prompt, and alone for IFD), the ref pass once
    assert result["stages"]["base pass"]["tokens"] > result["stages"]["ref pass"]["tokens"]
    assert result["total_s"] == pytest.approx(sum(s["seconds"] for s in result["stages"].values()), abs=0.2)


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "gsm8k").exists(), reason="needs ../shared/data/gsm8k")
def test_throughput_profile_says_where_each_ways_time_goes(tmp_path):
    from tests.tiny import build_model

    model = build_model(tmp_path / "model")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--model", str(model), "--n", "4",
                          "--max-length", "128", "--threads", "1", "--dtype", "fp32", "--profile", "--cache", str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=600, check=False,
                         env=dict(os.environ, TQDM_DISABLE="1"))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["max_abs_diff_mean_loss"] < 1e-4  # fp32 on both sides: the same losses
    for way in ("baseline", "engine"):
        profile = result["profile"][way]
        assert profile["s"] > 0 and 0 < profile["matmul_share"] < 1 and 0 < profile["attention_share"] < 1
        assert "aten::mm" in profile["top"] and sum(profile["top"].values()) <= 1.0001


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "alpaca").exists(), reason="needs ../shared/data/alpaca")
def test_tokenise_times_each_chunk_size_and_the_rendering(tmp_path):
    from tests.tiny import build_model

    model = build_model(tmp_path / "model")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tokenise.py"), "--model", str(model), "--n", "40",
                          "--chunks", "1", "16", "--repeats", "1"], capture_output=True, text=True, timeout=300,
                         check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["examples"] == 40 and set(result["ms_per_example"]) == {"chunk 1", "chunk 16", "render only"}
    assert all(ms > 0 for ms in result["ms_per_example"].values())
