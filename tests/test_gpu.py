"""GPU paths: bf16 scoring on CUDA agrees with fp32, compiled or not, packed (one varlen flash call per layer) or
padded; the SFT reference (padded or packed) and the DPO warm-up train in bf16 on CUDA;
a whole `score --wait` job runs on CUDA. Skipped cleanly where torch sees no CUDA device."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from scoring.models.formatting import encode, template_fingerprint
from scoring.models.loading import ModelRef, load_model, load_tokenizer, pick_dtype, resolve
from scoring.passes import attention
from scoring.passes.engine import PassConfig, score_encoded
from scoring.train.dpo import train_dpo
from scoring.train.dpo_config import DPOTrainConfig
from scoring.train.sft import train_reference
from scoring.train.sft_config import TrainConfig
from scoring.train.trainer import use_bf16
from tests.helpers import ok
from tests.test_cli import records  # the CLI tests' data

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CONVS = [[{"role": "user", "content": f"Add {i} and {i}."}, {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}]
         for i in range(32)]  # fmt: skip


def mean_losses(model, tokenizer, convs, compile: bool = False, pack: str = "auto") -> list[float]:
    encoded = [encode(tokenizer, c, 128) for c in convs]
    config = PassConfig(alone=False, embed=False, compile=compile, pack=pack)
    rows = score_encoded(model, encoded, config, tokenizer.pad_token_id)
    return [r["loss_sum"] / r["n_response_tokens"] for r in rows]


def test_bf16_on_cuda_matches_fp32(tiny_model):
    ref = ModelRef("tiny", str(tiny_model), "x")
    tokenizer = load_tokenizer(ref)
    convs = CONVS[:16]
    assert pick_dtype("cuda") in (torch.bfloat16, torch.float16)
    fast = mean_losses(load_model(ref, "cuda", pick_dtype("cuda")), tokenizer, convs)
    exact = mean_losses(load_model(ref, "cpu"), tokenizer, convs)
    assert fast == pytest.approx(exact, rel=3e-2)


@pytest.mark.parametrize("pack", ["auto", "on"])
def test_compiled_layers_give_the_eager_numbers_on_cuda(tiny_model, pack):
    """Padded rows (the GPU's "auto") or packed ones, whose attention torch.compile leaves alone."""
    ref = ModelRef("tiny", str(tiny_model), "x")
    tokenizer = load_tokenizer(ref)
    model = load_model(ref, "cuda", pick_dtype("cuda"))
    eager = mean_losses(model, tokenizer, CONVS, pack=pack)
    compiled = mean_losses(model, tokenizer, CONVS, compile=True, pack=pack)
    assert getattr(model, "_davir_compiled", False)
    assert compiled == pytest.approx(eager, rel=2e-2)


@pytest.mark.parametrize("prefix", [0, 5])
def test_one_varlen_flash_call_gives_the_per_sequence_attention(prefix):
    """The real kernel (tests/passes/test_packing.py checks the layout on a CPU against its documented semantics)."""
    lengths = [3, 9, 1, 6, 40]
    pack = attention.Pack(prefix=prefix, starts=[prefix + sum(lengths[:i]) for i in range(len(lengths))],
                          lengths=lengths)  # fmt: skip
    n = prefix + sum(lengths)
    query = torch.randn(1, 4, n, 64, device="cuda", dtype=torch.bfloat16)
    key, value = (torch.randn(1, 2, n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    if attention.varlen_kernel(query) is None:
        pytest.skip(f"torch {torch.__version__} has no torch.nn.attention.varlen")
    expected = attention.per_sequence_attention(query.float(), key.float(), value.float(), pack, 0.125)
    got = attention.varlen_attention(query, key, value, pack, 0.125, attention.varlen_kernel(query))
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2)


def test_packed_rows_on_cuda_give_the_padded_numbers(tiny_model):
    """``pack="on"``: packed rows through one varlen call per layer (or per-sequence SDPA on an older torch)."""
    ref = ModelRef("tiny", str(tiny_model), "x")
    tokenizer = load_tokenizer(ref)
    model = load_model(ref, "cuda", pick_dtype("cuda"))
    padded = mean_losses(model, tokenizer, CONVS, pack="off")
    packed = mean_losses(model, tokenizer, CONVS, pack="on")
    assert packed == pytest.approx(padded, rel=2e-2)


@pytest.mark.parametrize("method, pack", [("full", "auto"), ("lora", "auto"), ("full", "on")])
def test_reference_trains_in_bf16_on_cuda_and_learns_its_data(cache, tiny_model, method, pack):
    """Padded rows (the GPU's "auto"), or packed through one varlen flash call per layer and its backward ("on")."""
    cfg = TrainConfig(method=method, epochs=3, learning_rate=3e-3, lora_learning_rate=1e-2, batch_size=4,
                      micro_batch_size=4, pack=pack)
    assert use_bf16(cfg, "cuda")  # precision "auto" means bf16 on a GPU that has it
    base = resolve(str(tiny_model), cache)
    tokenizer = load_tokenizer(base)
    ref = train_reference(cache, base, tokenizer, CONVS, "gpu-fp", template_fingerprint(tokenizer), 64, cfg,
                          device="cuda")  # fmt: skip
    before, after = load_file(base.path + "/model.safetensors"), load_file(ref.path + "/model.safetensors")
    assert before.keys() == after.keys()
    assert all(t.dtype == torch.float32 for t in after.values())  # bf16 autocast, fp32 master weights saved
    assert [k for k in before if not torch.equal(before[k], after[k])], "no weight moved"
    dtype = pick_dtype("cuda")
    loss_base = mean_losses(load_model(base, "cuda", dtype), tokenizer, CONVS)
    loss_ref = mean_losses(load_model(ref, "cuda", dtype), tokenizer, CONVS)
    assert all(math.isfinite(x) for x in loss_ref)
    assert sum(loss_ref) < 0.98 * sum(loss_base)  # 24 steps at a high rate: the reference learned its data


def test_dpo_warm_up_trains_in_bf16_on_cuda(cache, tiny_model):
    base = resolve(str(tiny_model), cache)
    tokenizer = load_tokenizer(base)
    pairs = [([{"role": "user", "content": f"What is {i} + {i}?"}], f"{i} + {i} = {2 * i}.", f"Maybe {2 * i + 3}.")
             for i in range(16)]  # fmt: skip
    cfg = DPOTrainConfig(learning_rate=1e-3)
    assert use_bf16(cfg, "cuda")
    trained = train_dpo(cache, base, tokenizer, pairs, template_fingerprint(tokenizer), 64, cfg, device="cuda")
    before, after = load_file(base.path + "/model.safetensors"), load_file(trained.path + "/model.safetensors")
    assert [k for k in before if not torch.equal(before[k], after[k])], "no weight moved"
    assert all(torch.isfinite(t).all() for t in after.values())


def test_a_score_job_runs_on_cuda(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("DAVIR_DEVICE", "cuda")
    src = tmp_path / "alp.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records()))
    c = ("--cache", str(tmp_path / "cache"))
    ok("ingest", str(src), "--name", "alp", *c)
    ok("score", "alp", "--model", str(tiny_model), "--max-length", "128", "--wait", *c)
    ok("scores", "alp", "--out", str(tmp_path / "s.csv"), *c)
    frame = pd.read_csv(tmp_path / "s.csv")
    assert len(frame) == len(records())
    done = frame.dropna(subset=["davir"])
    assert len(done) >= len(frame) - 1  # the empty response has no loss
    assert (done["davir"] - (1 - done["loss_ref"] / done["loss_base"])).abs().max() < 1e-5
