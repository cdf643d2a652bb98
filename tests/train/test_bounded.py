"""Training memory bounded by the configuration (scoring/train/bounded.py): splitting a micro-batch into token
groups, recomputing activations and slicing the LM head change no weight beyond float rounding."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from scoring.models.formatting import template_fingerprint
from scoring.models.loading import ModelRef, load_model, load_tokenizer, resolve
from scoring.train.bounded import token_groups
from scoring.train.sft import Examples, collator, sft_loss_sum, train_reference
from scoring.train.sft_config import TrainConfig

CONVS = [
    [{"role": "user", "content": f"What is {i} + {i}?"},
     {"role": "assistant", "content": f"{i} + {i} = {2 * i}." + " Indeed." * (i % 5)}]
    for i in range(16)
]  # fmt: skip


def test_token_groups_keep_within_the_budget_and_cover_every_row():
    lengths = [30, 5, 12, 40, 8, 8]
    for packed in (True, False):
        groups = token_groups(lengths, 32, packed)
        assert sorted(i for g in groups for i in g) == list(range(6))
        for g in groups:
            size = sum(lengths[i] for i in g) if packed else len(g) * max(lengths[i] for i in g)
            assert size <= 32 or len(g) == 1  # a row longer than the budget goes alone
    assert token_groups(lengths, 10_000, True) == [list(range(6))]


def train(cache, tiny_model, **fields):
    cache_dir = cache.root / "models"
    for old in cache_dir.glob("ref-*"):  # the memory fields are not in the key: train anew each time
        import shutil

        shutil.rmtree(old)
    base = resolve(str(tiny_model), cache)
    tokenizer = load_tokenizer(base)
    cfg = TrainConfig(learning_rate=1e-3, precision="fp32", batch_size=8, micro_batch_size=8, epochs=2, **fields)
    ref = train_reference(cache, base, tokenizer, CONVS, "fp", template_fingerprint(tokenizer), 64, cfg)
    return load_file(str(ref.path) + "/model.safetensors")


def test_split_micro_batches_and_checkpointing_train_the_same_weights(cache, tiny_model):
    whole = train(cache, tiny_model, micro_batch_tokens=100_000, activation_checkpointing="off")
    split = train(cache, tiny_model, micro_batch_tokens=40, activation_checkpointing="on")  # ~one example each
    base = load_file(str(tiny_model) + "/model.safetensors")
    assert any(not torch.equal(whole[k], base[k]) for k in whole)  # it trained
    for name, weight in whole.items():
        torch.testing.assert_close(split[name], weight, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("system", [False, True])
def test_the_padded_loss_equals_the_packed_one_with_the_same_gradients(tiny_model, system):
    """The two ways the reference's loss is computed (packed rows on a CPU, padded rows on a GPU), both through the
    sliced LM head, against each other and against the model's own loss."""
    ref = ModelRef("tiny", str(tiny_model), "x")
    tokenizer, model = load_tokenizer(ref), load_model(ref)
    model.train()
    sys_turn = [{"role": "system", "content": "Answer with the sum."}] if system else []
    items = Examples(tokenizer, [sys_turn + c for c in CONVS[:6]], 64)
    batch = collator(tokenizer.pad_token_id)([items[i] for i in range(len(items))])
    labels = int((batch["labels"][:, 1:] != -100).sum())

    def loss_and_grads(compute):
        model.zero_grad()
        loss = compute()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, plain_grads = loss_and_grads(lambda: model(**batch).loss)
    for packed in (True, False):
        loss, grads = loss_and_grads(lambda packed=packed: sft_loss_sum(model, batch, packed) / labels)
        assert loss == pytest.approx(plain, rel=1e-5)
        assert grads.keys() == plain_grads.keys()
        for name, grad in plain_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


PAIRS = [([{"role": "user", "content": f"What is {i} + {i}?"}], f"{i} + {i} = {2 * i}." + " Sure." * (i % 4),
          f"Maybe {2 * i + 3}.") for i in range(8)]  # fmt: skip


def train_pairs(cache, tiny_model, **fields):
    import shutil

    from scoring.train.dpo import DPOTrainConfig, train_dpo

    for old in (cache.root / "models").glob("dpo-*"):  # the memory fields are not in the key
        shutil.rmtree(old)
    base = resolve(str(tiny_model), cache)
    tokenizer = load_tokenizer(base)
    cfg = DPOTrainConfig(precision="fp32", learning_rate=1e-3, batch_size=4, micro_batch_size=4, min_steps=0,
                         epochs=2, **fields)  # fmt: skip
    ref = train_dpo(cache, base, tokenizer, PAIRS, template_fingerprint(tokenizer), 64, cfg)
    return load_file(str(ref.path) + "/model.safetensors")


def test_dpo_groups_of_pairs_and_checkpointing_train_the_same_weights(cache, tiny_model):
    whole = train_pairs(cache, tiny_model, micro_batch_tokens=100_000, activation_checkpointing="off")
    split = train_pairs(cache, tiny_model, micro_batch_tokens=40, activation_checkpointing="on")  # one pair each
    base = load_file(str(tiny_model) + "/model.safetensors")
    assert any(not torch.equal(whole[k], base[k]) for k in whole)
    for name, weight in whole.items():
        torch.testing.assert_close(split[name], weight, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("budget", [40, 100_000])
def test_precomputed_reference_log_probs_are_the_models(tiny_model, tmp_path, budget):
    """What the trainer computes for π_ref when the caller gives none, in groups or whole: each reply's summed
    log-probability under the untrained model, by hand."""
    from scoring.train.dpo import DPOTrainConfig, dpo_trainer, pair_token_rows
    from tests.train.test_dpo_objective import side_logps

    ref = ModelRef("tiny", str(tiny_model), "x")
    tokenizer, model = load_tokenizer(ref), load_model(ref)
    rows = pair_token_rows(tokenizer, PAIRS[:5], 64)
    cfg = DPOTrainConfig(precision="fp32", batch_size=4, micro_batch_size=4, micro_batch_tokens=budget)
    trainer = dpo_trainer(model, tokenizer, rows, cfg, tmp_path / "out", 64, quiet=True)
    batch = trainer.data_collator(rows)
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    want = side_logps(model, rows)
    assert chosen.tolist() == pytest.approx([c for c, _ in want], abs=1e-4)
    assert rejected.tolist() == pytest.approx([r for _, r in want], abs=1e-4)
