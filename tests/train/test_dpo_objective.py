"""The DPO warm-up's objective: DavIR-DPO's loss, as the trainer computes it on a real batch, is the paper's formula
(each side's implicit reward divided by |log π_ref(y|x)|); plain DPO through the same harness is TRL's sigmoid loss;
a DavIR-DPO run trains other weights into a checkpoint of its own; an unknown objective is refused."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from scoring.errors import UserError
from scoring.models.formatting import template_fingerprint
from scoring.models.loading import ModelRef, load_tokenizer, resolve
from scoring.train.dpo import REF_LOGP_FLOOR, davir_dpo_rewards, dpo_key, dpo_trainer, pair_token_rows, train_dpo
from scoring.train.dpo_config import OBJECTIVES, DPOTrainConfig
from tests.tiny import build_model

# Replies of different lengths, so that the batch is padded and each side has its own |log π_ref|.
PAIRS = [
    ([{"role": "user", "content": "What is 12 + 30?"}], "12 + 30 = 42.", "The answer is 12 + 30 = 51, I think."),
    ([{"role": "user", "content": "Reverse the word planet."}], "The reversed word is tenalp.", "planet"),
    ([{"role": "user", "content": "Sort the numbers 5, 2, 9."}], "2, 5, 9.", "9, 5, 2 is sorted."),
]
TRAIN_PAIRS = [([{"role": "user", "content": f"What is {i} + {i}?"}], f"{i} + {i} = {2 * i}.", f"Maybe {2 * i + 3}.")
               for i in range(8)]  # fmt: skip
CFG = DPOTrainConfig(precision="fp32", learning_rate=1e-3, batch_size=4, micro_batch_size=4)
BETA = 0.5


def reply_logp(model, prompt_ids: list[int], reply_ids: list[int]) -> float:
    """log π(reply | prompt) by hand: one unpadded forward pass over the whole sequence, in float64, summing the
    log-probability of each reply token given everything before it."""
    ids = prompt_ids + reply_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[t - 1, ids[t]].item() for t in range(len(prompt_ids), len(ids)))


def side_logps(model, rows: list[dict]) -> list[tuple[float, float]]:
    return [(reply_logp(model, r["prompt_ids"], r["chosen_ids"]), reply_logp(model, r["prompt_ids"], r["rejected_ids"]))
            for r in rows]  # fmt: skip


def dpo_margin(policy: tuple[float, float], ref: tuple[float, float]) -> float:
    return BETA * ((policy[0] - ref[0]) - (policy[1] - ref[1]))


def davir_dpo_margin(policy: tuple[float, float], ref: tuple[float, float]) -> float:
    return BETA * ((policy[0] - ref[0]) / abs(ref[0]) - (policy[1] - ref[1]) / abs(ref[1]))


def neg_log_sigmoid(z: float) -> float:
    return math.log1p(math.exp(-z)) if z > 0 else -z + math.log1p(math.exp(z))


@pytest.fixture(scope="module")
def harness(tiny_model, tmp_path_factory):
    """The tokenizer, the pairs as trainer rows with reference log-probs from a *different* tiny model (so that the
    implicit rewards are not all 0), and the hand-computed (chosen, rejected) log-probs of policy and reference."""
    tmp = tmp_path_factory.mktemp("objective")
    tok = load_tokenizer(ModelRef("tiny", str(tiny_model), "fp"))
    reference = AutoModelForCausalLM.from_pretrained(build_model(tmp / "ref", seed=1), dtype=torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    plain_rows = pair_token_rows(tok, PAIRS, 64)
    ref, pol = side_logps(reference, plain_rows), side_logps(policy, plain_rows)
    rows = pair_token_rows(tok, PAIRS, 64, ref_logps=ref)
    assert len(rows) == len(PAIRS) and len({len(r["chosen_ids"]) for r in rows}) > 1
    return tok, rows, ref, pol, tmp


@pytest.mark.parametrize(("objective", "margin"), [("davir-dpo", davir_dpo_margin), ("dpo", dpo_margin)])
def test_the_trainer_loss_is_the_objectives_formula(harness, tiny_model, objective, margin):
    tok, rows, ref, pol, tmp = harness
    cfg = replace(CFG, beta=BETA, objective=objective)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trainer = dpo_trainer(model, tok, rows, cfg, tmp / objective, 64, quiet=True)
    trainer.model.train()  # as in training (the tiny Llama has no dropout): metrics go to "train"
    batch = trainer.data_collator(rows)
    assert batch["input_ids"].shape[0] == 2 * len(rows) and (batch["attention_mask"] == 0).any()  # padded
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()

    margins = [margin(p, r) for p, r in zip(pol, ref, strict=True)]
    expected = sum(neg_log_sigmoid(m) for m in margins) / len(margins)
    other = davir_dpo_margin if margin is dpo_margin else dpo_margin
    expected_other = sum(neg_log_sigmoid(other(p, r)) for p, r in zip(pol, ref, strict=True)) / len(margins)
    assert abs(expected - expected_other) > 1e-3  # the two objectives are told apart by this batch
    assert loss == pytest.approx(expected, abs=1e-5)

    trainer.log({})  # the reward metrics, TRL's for "dpo" and ours for "davir-dpo", reach the log alike
    logged = trainer.state.log_history[-1]
    assert logged["rewards/margins"] == pytest.approx(sum(margins) / len(margins), abs=1e-5)
    assert logged["rewards/accuracies"] == pytest.approx(sum(m > 0 for m in margins) / len(margins))


def test_a_reference_certain_of_a_reply_does_not_divide_by_zero():
    logps = torch.tensor([-1e-9, -2.0, -3.0, -1.0])  # [chosen rows; rejected rows]
    chosen, rejected = davir_dpo_rewards(logps, torch.tensor([0.0, -4.0]), torch.tensor([-2.0, -0.5]), BETA)
    assert torch.isfinite(chosen).all() and torch.isfinite(rejected).all()
    assert chosen.tolist() == pytest.approx([BETA * -1e-9 / REF_LOGP_FLOOR, BETA * 2.0 / 4.0])
    assert rejected.tolist() == pytest.approx([BETA * -1.0 / 2.0, BETA * -0.5 / 0.5])


def test_davir_dpo_trains_other_weights_into_a_checkpoint_of_its_own(cache, tiny_model):
    base = resolve(str(tiny_model), cache)
    tok = load_tokenizer(base)
    davir_cfg = replace(CFG, objective="davir-dpo")
    dpo = train_dpo(cache, base, tok, TRAIN_PAIRS, template_fingerprint(tok), 64, CFG)
    davir = train_dpo(cache, base, tok, TRAIN_PAIRS, template_fingerprint(tok), 64, davir_cfg)
    assert davir.path != dpo.path and davir.fingerprint != dpo.fingerprint
    before, after_dpo, after_davir = (load_file(str(Path(p) / "model.safetensors"))
                                      for p in (tiny_model, dpo.path, davir.path))  # fmt: skip
    assert [k for k in before if not torch.equal(before[k], after_davir[k])], "DavIR-DPO moved no weight"
    assert [k for k in before if not torch.equal(after_dpo[k], after_davir[k])], "DavIR-DPO trained as DPO does"
    record = json.loads((Path(davir.path) / "davir_dpo.json").read_text())
    assert record["train"]["objective"] == "davir-dpo"


def test_the_objective_is_in_the_key_and_plain_dpo_keeps_its_old_key():
    base = ModelRef("m", "/x", "fp")
    davir = DPOTrainConfig(objective="davir-dpo")
    assert "objective" not in DPOTrainConfig().key_fields() and davir.key_fields()["objective"] == "davir-dpo"
    assert dpo_key(base, "p", "t", 64, davir) != dpo_key(base, "p", "t", 64, DPOTrainConfig())
    assert dpo_key(base, "p", "t", 64, DPOTrainConfig()) == "48ca727a7254b850"  # tests/train/test_config.py's
    assert OBJECTIVES == ("dpo", "davir-dpo")


def test_an_unknown_objective_is_refused():
    with pytest.raises(UserError, match="unknown DPO objective 'ipo'"):
        DPOTrainConfig(objective="ipo")
    with pytest.raises(UserError):  # a job record with a bad objective, as the job runner rebuilds it
        DPOTrainConfig(**{**asdict(DPOTrainConfig()), "objective": "DPO"})
