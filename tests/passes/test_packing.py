"""Packed rows give the numbers of scoring each sequence alone: attention never crosses a sequence boundary,
positions restart per sequence, and a shared prefix computed once changes nothing."""
from __future__ import annotations

import pytest
import torch

from scoring.models.formatting import encode
from scoring.passes import attention, packing
from scoring.passes.engine import PassConfig, score_encoded, score_sequences, uses_packing
from tests.passes.test_engine import CONVS, hf_mean_loss, load

SYSTEM = {"role": "system", "content": "You are a careful assistant who checks every sum twice before answering."}


def with_system(conv):
    return [SYSTEM, *conv]


@pytest.mark.parametrize("system", [False, True])
def test_packed_equals_padded_equals_one_at_a_time(tiny_model, system):
    model, tokenizer = load(tiny_model)
    convs = [with_system(c) if system else c for c in CONVS]
    encoded = [encode(tokenizer, c, 256) for c in convs]
    packed = score_encoded(model, encoded, PassConfig(pack="on"), tokenizer.pad_token_id)
    padded = score_encoded(model, encoded, PassConfig(pack="off"), tokenizer.pad_token_id)
    for e, a, b in zip(encoded, packed, padded):
        assert a["loss_sum"] == pytest.approx(b["loss_sum"], rel=1e-5)
        assert a["alone_loss_sum"] == pytest.approx(b["alone_loss_sum"], rel=1e-5)
        assert a["loss_sum"] / e.n_response_tokens == pytest.approx(hf_mean_loss(model, e), rel=1e-5)
        emb_a = torch.frombuffer(bytearray(a["embedding"]), dtype=torch.float16).float()
        emb_b = torch.frombuffer(bytearray(b["embedding"]), dtype=torch.float16).float()
        assert torch.allclose(emb_a, emb_b, atol=2e-3)


def test_a_system_prompt_is_shared_and_computed_once(tiny_model):
    _, tokenizer = load(tiny_model)
    encoded = [encode(tokenizer, with_system(c), 256) for c in CONVS[:5]]
    prefix = packing.shared_prefix([e.ids for e in encoded], [e.n_prompt_tokens for e in encoded])
    assert prefix >= len(tokenizer(SYSTEM["content"])["input_ids"])  # the whole system turn at least
    assert prefix < min(e.n_prompt_tokens for e in encoded)  # never reaches a state that predicts a scored token
    assert packing.shared_prefix([encoded[0].ids], [encoded[0].n_prompt_tokens]) == 0  # alone: nothing to share


def test_each_sequence_attends_only_to_itself(tiny_model):
    """Changing one sequence's tokens leaves every other sequence's losses in the same packed row unchanged."""
    model, tokenizer = load(tiny_model)
    encoded = [encode(tokenizer, c, 256) for c in CONVS[:6]]
    seqs = [e.ids for e in encoded]
    masks = [e.scored for e in encoded]
    config = PassConfig(pack="on", batch_tokens=100_000)
    with torch.inference_mode():
        before = score_sequences(model, seqs, masks, config, tokenizer.pad_token_id)
        changed = [list(s) for s in seqs]
        changed[2] = [changed[2][0]] + [7] * (len(changed[2]) - 1)
        after = score_sequences(model, changed, masks, config, tokenizer.pad_token_id)
    for k in range(6):
        same = torch.allclose(before[k][0], after[k][0], rtol=1e-5, atol=1e-6)
        assert same == (k != 2)


def test_models_packing_cannot_serve_fall_back_to_padding(tiny_model):
    model, _ = load(tiny_model)
    assert uses_packing(model, PassConfig(), 64)
    assert not uses_packing(model, PassConfig(pack="off"), 64)
    model.config.sliding_window = 32  # a window shorter than the sequence changes attention: no packing
    assert not attention.can_pack(model, 64) and attention.can_pack(model, 32)


def test_packed_batches_hold_real_tokens_within_the_budget():
    lengths = [5, 90, 12, 40, 40, 7, 300, 64]
    batches = list(packing.packed_batches(lengths, 128))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or sum(lengths[i] for i in b) <= 128


def test_cpu_workers_score_batches_side_by_side_and_restore_torch_threads(tiny_model):
    model, tokenizer = load(tiny_model)
    encoded = [encode(tokenizer, c, 256) for c in CONVS]
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # two single-threaded workers, whatever the machine has
    try:
        rows = score_encoded(model, encoded, PassConfig(batch_tokens=64), tokenizer.pad_token_id)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    for e, row in zip(encoded, rows):
        assert row["loss_sum"] / e.n_response_tokens == pytest.approx(hf_mean_loss(model, e), rel=1e-5)


def _segments(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, gqa):
    """varlen_attn's documented semantics on a CPU (the kernel itself is CUDA-only): each segment's queries over its
    own keys; causal aligned to the lower right, as flash attention aligns it when a segment has more keys than
    queries."""
    assert causal and cu_q.dtype == torch.int32 and cu_k.dtype == torch.int32
    assert max_q == int((cu_q[1:] - cu_q[:-1]).max()) and max_k == int((cu_k[1:] - cu_k[:-1]).max())
    assert k.shape[0] == int(cu_k[-1]) and gqa == (q.shape[1] != k.shape[1])
    outs = []
    for j in range(len(cu_q) - 1):
        qs, ks, vs = (x[int(c[j]) : int(c[j + 1])].transpose(0, 1) for x, c in ((q, cu_q), (k, cu_k), (v, cu_k)))
        lq, lk = qs.shape[1], ks.shape[1]
        mask = torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=lk - lq)
        outs.append(torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale,
                                                                     enable_gqa=gqa).transpose(0, 1))  # fmt: skip
    return torch.cat(outs)


def varlen_attn_now(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):  # fmt: skip
    """torch >= 2.13's signature."""
    return _segments(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale, window_size == (-1, 0), enable_gqa)


def varlen_attn_first(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """The first releases' signature: no scale (1 / sqrt(D)), as many key heads as query heads."""
    return _segments(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, None, is_causal, False)


@pytest.mark.parametrize("signature", [varlen_attn_now, varlen_attn_first])
@pytest.mark.parametrize("prefix", [0, 5])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_one_varlen_call_lays_the_row_out_as_one_sdpa_call_per_sequence(prefix, kv_heads, signature):
    """The GPU's one-call layout (prefix as its own segment, its keys gathered in front of each sequence's), run
    through either torch signature's documented semantics, gives the per-sequence SDPA path's output.
    tests/test_gpu.py runs the real kernel against the same path."""
    lengths = [3, 9, 1, 6]
    starts = [prefix + sum(lengths[:i]) for i in range(len(lengths))]
    pack = attention.Pack(prefix=prefix, starts=starts, lengths=lengths)
    n = prefix + sum(lengths)
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 4, n, 16, generator=generator)
    key, value = (torch.randn(1, kv_heads, n, 16, generator=generator) for _ in range(2))
    expected = attention.per_sequence_attention(query, key, value, pack, 0.3)
    got = attention.varlen_attention(query, key, value, pack, 0.3, attention.causal_varlen(signature))
    assert got.shape == expected.shape == (1, n, 4, 16)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert pack.varlen_layout("cpu") is pack.varlen_layout("cpu")  # built once per row, shared by every layer


def test_the_varlen_kernel_serves_only_half_precision_cuda_rows():
    assert attention.varlen_kernel(torch.zeros(1, 2, 3, 16)) is None  # a CPU row: one SDPA call per sequence
    assert attention.varlen_kernel(torch.zeros(1, 2, 3, 16, dtype=torch.bfloat16)) is None


def test_compiled_layers_compile_once_for_rows_of_any_layout(tiny_model):
    """``--compile`` with packed rows (a GPU with ``pack="on"``; compiled here on the CPU, where the engine never
    compiles): the attention is opaque to torch.compile, so a new row layout reuses the layers' graphs. Traced, each
    micro-batch's layout recompiled every layer until torch.compile fell back to eager after 8."""
    from torch._dynamo.utils import counters

    from scoring.passes.engine import compile_layers

    model, tokenizer = load(tiny_model)
    encoded = [encode(tokenizer, with_system(c), 256) for c in CONVS]
    config = PassConfig(alone=False, embed=False, pack="on", batch_tokens=10**6)
    chunks = [encoded[i * 3 : i * 3 + 3 + i] for i in range(4)]  # 3 to 6 sequences: four different layouts
    eager = [score_encoded(model, chunk, config, tokenizer.pad_token_id) for chunk in chunks]
    torch._dynamo.reset()
    try:
        compile_layers(model)
        compiled = [score_encoded(model, chunks[0], config, tokenizer.pad_token_id)]
        graphs = counters["stats"]["unique_graphs"]
        assert graphs > 0  # the layers did compile
        compiled += [score_encoded(model, chunk, config, tokenizer.pad_token_id) for chunk in chunks[1:]]
        assert counters["stats"]["unique_graphs"] == graphs  # and no other layout compiled them again
    finally:
        torch._dynamo.reset()
    for want, got in zip(eager, compiled):
        assert [r["loss_sum"] for r in got] == pytest.approx([r["loss_sum"] for r in want], rel=1e-4)
