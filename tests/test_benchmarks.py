"""The benchmarks CI runs: benchmarks/end_to_end.py --tiny, the whole DavIR job on Alpaca rows with a tiny Llama,
prints one JSON line with every stage's time, tokens and memory; benchmarks/throughput.py --profile over a tiny Llama
says where each way's time went; benchmarks/tokenise.py times a chunk's tokenisation, and a pass with and without
tokenising ahead."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "alpaca").exists(), reason="needs ../shared/data/alpaca")
def test_end_to_end_tiny_runs_every_stage(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "end_to_end.py"), "--tiny", "--rows", "48",
                          "--train-batch", "16", "--cache", str(tmp_path / "cache")], capture_output=True, text=True,
                         timeout=600, check=False, env=dict(os.environ, TQDM_DISABLE="1"))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rows"] == 48 and 0 < result["scored_rows"] <= 48 and result["params"] > 0
    assert (result["train_batch"], result["train_tokens"]) == (16, 512)  # asked; the CPU's default tokens
    assert set(result["stages"]) == {"ingest", "base pass", "ref training", "ref pass"}
    for stage in ("base pass", "ref training", "ref pass"):
        s = result["stages"][stage]
        assert s["seconds"] > 0 and s["tokens"] > 0 and s["tokens_per_s"] > 0 and s["peak_mb"] > 0
        assert s["mfu"] is None  # a CPU has no peak in the table
    # the base pass runs each response twice (with its prompt, and alone for IFD), the ref pass once
    assert result["stages"]["base pass"]["tokens"] > result["stages"]["ref pass"]["tokens"]
    assert result["total_s"] == pytest.approx(sum(s["seconds"] for s in result["stages"].values()), abs=0.2)


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "alpaca").exists(), reason="needs ../shared/data/alpaca")
def test_end_to_end_stopped_by_timeout_reports_the_stages_it_reached(tmp_path):
    """gpu_checks.sh bounds end_to_end.py by the time the GPU lease has left: a SIGTERM mid-job still prints what the
    job reached."""
    jobs = tmp_path / "cache" / "jobs"
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "end_to_end.py"), "--tiny", "--rows", "200",
                             "--cache", str(tmp_path / "cache")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=dict(os.environ, TQDM_DISABLE="1"))  # fmt: skip
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:  # until the base pass is done: the fine-tune is next
        records = [json.loads(p.read_text()) for p in jobs.glob("*.json")] if jobs.exists() else []
        if any("base pass" in (r.get("timings") or {}) for r in records):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 124, out[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["partial"] is True and result["rows"] == 200 and result["params"] > 0
    assert result["stages_done"]["base pass"] > 0 and "ref pass" not in result["stages_done"]
    assert result["in_progress"]["stage"] and result["stopped_after_s"] > 0


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
def test_tokenise_times_each_chunk_size_the_rendering_and_a_pass_both_ways(tmp_path):
    from tests.tiny import build_model

    model = build_model(tmp_path / "model")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tokenise.py"), "--model", str(model), "--n", "40",
                          "--chunks", "1", "16", "--repeats", "1", "--pass", "80", "--small", "16", "--threads", "1"],
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["examples"] == 40 and set(result["ms_per_example"]) == {"chunk 1", "chunk 16", "render only"}
    assert all(ms > 0 for ms in result["ms_per_example"].values())
    scored = result["pass"]
    assert (scored["rows"], scored["chunk"], scored["device"], scored["threads"]) == (80, 64, "cpu", 1)
    assert set(scored["seconds"]) == {"inline", "prefetch"} and all(s > 0 for s in scored["seconds"].values())


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "gsm8k").exists(), reason="needs ../shared/data/gsm8k")
def test_memory_data_size_reports_ingest_and_the_examples_a_job_holds(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--data-size", "gsm8k:300",
                          "--cache", str(tmp_path / "cache")], capture_output=True, text=True, timeout=300,
                         check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["data"] == "gsm8k" and result["ingest"]["rows"] == 300
    assert result["ingest"]["peak_mb"] > 0 and result["ingest"]["s"] > 0
    assert 0 < result["text_mb"] < 1  # 300 GSM8K conversations: ~0.2 MB of messages JSON
    assert result["held_mb"] >= 0


def test_memory_alpaca_variants_repeat_alpaca_with_every_row_distinct(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import memory as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    data = tmp_path / "data"
    (data / "alpaca").mkdir(parents=True)
    rows = [{"instruction": f"Say {w}.", "input": "", "output": w} for w in ("hi", "yes", "no")]
    (data / "alpaca" / "a.json").write_text(json.dumps(rows))
    monkeypatch.setattr(bench, "DATA", data)
    path = bench.alpaca_variants(tmp_path / "cache", 7)
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert written[:3] == rows and len(written) == 7
    assert written[3]["instruction"] == "Say hi. (variant 1)" and written[6]["instruction"] == "Say hi. (variant 2)"
    assert len({json.dumps(r) for r in written}) == 7
