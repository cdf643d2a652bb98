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
