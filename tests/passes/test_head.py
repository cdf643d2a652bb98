"""The sliced LM-head loss (scoring/passes/head.py) against cross_entropy over the whole logits matrix."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scoring.passes.head import sliced_nll, trunk_inputs


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_values_and_gradients_equal_the_whole_matrix(rows):
    g = torch.Generator().manual_seed(0)
    states = torch.randn(37, 16, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,), generator=g)
    upstream = torch.rand(37, generator=g, dtype=torch.float64)

    want = F.cross_entropy(states @ weight.T, targets, reduction="none")
    (want * upstream).sum().backward()
    want_gs, want_gw = states.grad.clone(), weight.grad.clone()
    states.grad = weight.grad = None

    got = sliced_nll(states, weight, targets, rows)
    (got * upstream.float()).sum().backward()
    torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(states.grad, want_gs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, want_gw, rtol=1e-5, atol=1e-6)


def test_shared_weight_accumulates_like_tied_embeddings():
    """A weight used elsewhere too (tied input embeddings) gets both gradients."""
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(20, 8, generator=g, requires_grad=True)
    ids = torch.randint(0, 20, (9,), generator=g)
    targets = torch.randint(0, 20, (9,), generator=g)

    def loss(fn):
        states = torch.tanh(weight[ids])  # the embedding lookup of the same matrix
        return fn(states).sum()

    loss(lambda s: F.cross_entropy(s @ weight.T, targets, reduction="none")).backward()
    want = weight.grad.clone()
    weight.grad = None
    loss(lambda s: sliced_nll(s, weight, targets, 4)).backward()
    torch.testing.assert_close(weight.grad, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("already", [False, True])
def test_into_grad_adds_the_weight_gradient_in_place(already):
    """Training's path: the head's weight gradient goes straight into ``weight.grad`` (the same tensor, added to
    what is there: an earlier micro-batch's, and the tied embedding's), not through autograd."""
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(30, 8, generator=g, requires_grad=True)
    ids = torch.randint(0, 30, (11,), generator=g)
    targets = torch.randint(0, 30, (11,), generator=g)
    earlier = torch.randn(30, 8, generator=g)

    def run(fn):
        weight.grad = earlier.clone() if already else None
        fn(torch.tanh(weight[ids])).sum().backward()
        return weight.grad

    want = run(lambda s: F.cross_entropy(s @ weight.T, targets, reduction="none")).clone()
    got = run(lambda s: sliced_nll(s, weight, targets, 4, into_grad=True))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def tiny_llama(tied: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=3, tie_word_embeddings=tied)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).float()


@pytest.mark.parametrize("already", [False, True])
@pytest.mark.parametrize("tied", [True, False])
def test_the_embedding_lookup_adds_its_gradient_into_grad(already, tied):
    """Training's lookup (trunk_inputs): the same weight gradient as the trunk's own nn.Embedding, added to what
    ``.grad`` already holds, the padding row left untrained by the lookup (the ids include the pad id 3)."""
    model = tiny_llama(tied)
    trunk, weight = model.model, model.model.embed_tokens.weight
    ids = torch.tensor([[5, 3, 9, 9, 17, 3, 22, 39], [1, 2, 3, 4, 5, 6, 7, 8]])
    earlier = torch.randn_like(weight)

    def grad_of(inputs: dict) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        if already:
            weight.grad = earlier.clone()
        hidden = trunk(**inputs, use_cache=False).last_hidden_state
        F.cross_entropy(model.lm_head(hidden[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
        return weight.grad.clone()

    want = grad_of({"input_ids": ids})
    inputs = trunk_inputs(trunk, ids)
    assert set(inputs) == {"inputs_embeds"}
    torch.testing.assert_close(grad_of(inputs), want, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(want[3]) == (tied or already) * want.shape[1]  # the lookup never trains the pad row


def test_the_embedding_lookup_is_the_trunks_own_unless_training_a_plain_fp32_embedding():
    model = tiny_llama()
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert set(trunk_inputs(model.model, ids)) == {"input_ids"}
    model.model.embed_tokens.weight.requires_grad_(False)
    assert set(trunk_inputs(model.model, ids)) == {"input_ids"}
    model.model.embed_tokens.weight.requires_grad_(True)
    model.model.embed_tokens.max_norm = 1.0
    assert set(trunk_inputs(model.model, ids)) == {"input_ids"}
    model.model.embed_tokens.max_norm = None
    embedded = trunk_inputs(model.model, ids)["inputs_embeds"]
    torch.testing.assert_close(embedded, model.model.embed_tokens(ids))
