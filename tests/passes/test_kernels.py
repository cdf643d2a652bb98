"""The fused CPU kernels compute what transformers' bf16 modules compute, and the fused trunk is the model's forward.

Each kernel is checked against the transformers / torch operation it replaces, on random bf16 data; the fused
trunk against the model's own forward on tiny random-weight models (Llama with grouped-query attention, Qwen2 with
attention biases), with and without a shared prefix.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scoring.models.formatting import encode
from scoring.models.loading import ModelRef, load_model, load_tokenizer
from scoring.passes import attention, packing
from scoring.passes import cpu_kernels as kernels
from scoring.passes.engine import PassConfig, trunk_and_head, fingerprint_fields, score_encoded, uses_kernels
from tests.passes.test_engine import CONVS
from tests.passes.test_packing import with_system

pytestmark = pytest.mark.usefixtures("cpu_one_thread")
u16 = kernels.as_u16


def bf16(*shape, scale=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) * scale).bfloat16()


def assert_within_one_bf16_step(got, want, most=1e-3):
    """Equal except, on at most a ``most`` share of elements, one bf16 rounding step (a differently ordered fp32
    sum can land on the other side of a rounding boundary)."""
    differ = got != want
    assert differ.float().mean().item() <= most
    step = want.float().abs().clamp(min=1e-30) * 2.0**-7
    assert bool(((got.float() - want.float()).abs() <= step + 1e-30)[differ].all())


def hf_rms_norm(x, weight, eps):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(x.shape[-1], eps=eps).bfloat16()
    norm.weight.data.copy_(weight)
    with torch.no_grad():
        return norm(x)


def test_exp_is_accurate_over_the_float32_range():
    x = np.linspace(-88.0, 87.0, 200_001, dtype=np.float32)
    mantissa, scale = np.empty_like(x), np.empty(x.shape, np.uint32)
    kernels._exp_neg(x, mantissa, scale)
    got = mantissa.astype(np.float64) * scale.view(np.float32)
    want = np.exp(-x.astype(np.float64))
    assert np.max(np.abs(got / want - 1)) < 5e-7


def test_rms_norm_matches_llama_rms_norm():
    x, weight = bf16(300, 96, scale=3.0), bf16(96, seed=1) + 1
    out = torch.empty_like(x)
    kernels.rms_norm(u16(x), weight.float().numpy(), 1e-5, u16(out))
    assert_within_one_bf16_step(out, hf_rms_norm(x, weight, 1e-5))


def test_add_rms_norm_adds_in_place_then_normalises():
    residual, delta, weight = bf16(300, 96), bf16(300, 96, seed=1), bf16(96, seed=2)
    want_sum = residual + delta
    out = torch.empty_like(residual)
    kernels.add_rms_norm(u16(residual), u16(delta), weight.float().numpy(), 1e-6, u16(out))
    assert torch.equal(residual, want_sum)  # bf16(a + b), as the layer's residual add
    assert_within_one_bf16_step(out, hf_rms_norm(want_sum, weight, 1e-6))


def test_silu_mul_matches_silu_times_up_even_in_place():
    gate, up = bf16(200, 160, scale=4.0), bf16(200, 160, seed=1)
    want = F.silu(gate) * up
    kernels.silu_mul(u16(gate), u16(up), u16(gate))  # in place, as the fused trunk calls it
    assert_within_one_bf16_step(gate, want, most=1e-4)


def test_rotary_matches_apply_rotary_pos_emb_in_head_major_layout():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    n, heads, d = 50, 3, 16
    x = bf16(n, heads * d)
    angles = torch.arange(n)[:, None].float() * (1.0 / 10000 ** (torch.arange(0, d, 2).float() / d))
    cos, sin = torch.cat([angles, angles], -1).cos().bfloat16(), torch.cat([angles, angles], -1).sin().bfloat16()
    out = torch.empty(heads, n, d, dtype=torch.bfloat16)
    kernels.rotary(u16(x), u16(cos), u16(sin), heads, u16(out))
    want, _ = apply_rotary_pos_emb(x.view(1, n, heads, d).transpose(1, 2), x.view(1, n, heads, d).transpose(1, 2),
                                   cos[None], sin[None])  # fmt: skip
    assert torch.equal(out, want[0])


def test_cross_entropy_matches_fp32_log_softmax():
    logits = bf16(64, 5000, scale=4.0)
    logits[3] = -30.0  # a flat row: every token equally likely
    targets = torch.randint(0, 5000, (64,), generator=torch.Generator().manual_seed(3))
    out = np.empty(64, np.float32)
    kernels.cross_entropy(u16(logits), targets.numpy(), out)
    want = F.cross_entropy(logits.float(), targets, reduction="none").numpy()
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    assert out[3] == pytest.approx(np.log(5000), rel=1e-6)


# ---------------------------------------------------------------- the fused trunk


def qwen2_model(folder):
    """A tiny random-weight Qwen2 (attention biases) sharing the tiny Llama's tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)  # fmt: skip
    return Qwen2ForCausalLM(config).bfloat16().eval(), tokenizer


def llama_model(folder):
    ref = ModelRef(name="tiny", path=str(folder), fingerprint="x")
    return load_model(ref, "cpu", torch.bfloat16), load_tokenizer(ref)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("shared", [False, True])
def test_fused_trunk_is_the_models_forward(tiny_model, family, shared):
    model, tokenizer = (llama_model if family == "llama" else qwen2_model)(tiny_model)
    encoded = [encode(tokenizer, with_system(c), 256) for c in CONVS[:8]]
    seqs = [e.ids for e in encoded]
    prefix = packing.shared_prefix(seqs, [e.scored.index(True) for e in encoded]) if shared else 0
    assert (prefix > 0) == shared
    trunk, _ = trunk_and_head(model)
    attention.install(model)
    with torch.inference_mode():
        fused, _ = packing.packed_hidden(trunk, seqs, prefix, "cpu", fused=True)
        eager, _ = packing.packed_hidden(trunk, seqs, prefix, "cpu", fused=False)
    assert fused.dtype == torch.bfloat16 and fused.shape == eager.shape
    assert (fused == eager).float().mean().item() > 0.99
    torch.testing.assert_close(fused.float(), eager.float(), rtol=0.05, atol=0.05)


def test_scores_with_kernels_match_scores_without(tiny_model):
    model, tokenizer = llama_model(tiny_model)
    encoded = [encode(tokenizer, c, 256) for c in CONVS]
    assert uses_kernels(model, PassConfig(), packed=True)
    fused = score_encoded(model, encoded, PassConfig(), tokenizer.pad_token_id)
    eager = score_encoded(model, encoded, PassConfig(kernels="off"), tokenizer.pad_token_id)
    for a, b in zip(fused, eager):
        assert a["loss_sum"] == pytest.approx(b["loss_sum"], rel=1e-2)
        assert a["alone_loss_sum"] == pytest.approx(b["alone_loss_sum"], rel=1e-2)
        emb_a = torch.frombuffer(bytearray(a["embedding"]), dtype=torch.float16).float()
        emb_b = torch.frombuffer(bytearray(b["embedding"]), dtype=torch.float16).float()
        assert torch.allclose(emb_a, emb_b, atol=0.05)


def test_kernels_only_where_they_compute_the_model(tiny_model):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model, _ = llama_model(tiny_model)
    assert uses_kernels(model, PassConfig(), packed=True)
    assert not uses_kernels(model, PassConfig(), packed=False)  # padded batches: the model's own forward
    assert not uses_kernels(model, PassConfig(kernels="off"), packed=True)
    qwen3 = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)).bfloat16()  # fmt: skip
    assert not uses_kernels(qwen3, PassConfig(), packed=True)  # another family (q / k norms: not what we compute)
    trunk, _ = trunk_and_head(model)
    full = trunk.rotary_emb.inv_freq
    trunk.rotary_emb.inv_freq = full[: full.numel() // 2]  # rotary over half of each head only
    try:
        assert not uses_kernels(model, PassConfig(), packed=True)
    finally:
        trunk.rotary_emb.inv_freq = full
    assert uses_kernels(model, PassConfig(), packed=True)
    assert not uses_kernels(model.float(), PassConfig(), packed=True)  # the kernels are bf16 only


def test_the_kernel_choice_is_part_of_the_pass_key():
    assert fingerprint_fields(PassConfig())["kernels"] == "auto"
    assert fingerprint_fields(PassConfig(kernels="off")) != fingerprint_fields(PassConfig())


def test_the_kernel_benchmark_reports_every_kernel(capsys):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"
    spec = importlib.util.spec_from_file_location("kernels_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--rows", "64", "--repeats", "1"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) >= {"rms_norm", "add_rms_norm", "rotary", "silu_mul", "cross_entropy"}
    assert all(result[name]["kernel_ms"] > 0 and result[name]["eager_ms"] > 0 for name in ("rms_norm", "rotary"))
