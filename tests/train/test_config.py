"""The training configs' defaults and checkpoint keys are pinned: a changed default (or key field) would retrain
every cached reference / DPO checkpoint and move the golden outputs, so it must be a deliberate change here."""
from __future__ import annotations

from dataclasses import asdict, replace

import pytest

from scoring.errors import UserError
from scoring.models.loading import ModelRef
from scoring.train.config import BaseTrainConfig
from scoring.train.dpo import dpo_key
from scoring.train.dpo_config import DPOTrainConfig
from scoring.train.sft import reference_key
from scoring.train.sft_config import TrainConfig
from scoring.train.trainer import optimizer_steps

SFT_KEY_FIELDS = {
    "method": "full", "epochs": 1.0, "learning_rate": 2e-05, "lora_learning_rate": 0.0002, "batch_size": 8,
    "micro_batch_size": 8, "scheduler": "cosine", "warmup_ratio": 0.03, "weight_decay": 0.0, "max_grad_norm": 1.0,
    "precision": "auto", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "seed": 0,
}  # fmt: skip
DPO_KEY_FIELDS = {
    "beta": 0.1, "method": "full", "epochs": 1.0, "learning_rate": 5e-06, "lora_learning_rate": 5e-05,
    "batch_size": 8, "micro_batch_size": 4, "scheduler": "linear", "warmup_ratio": 0.1, "weight_decay": 0.0,
    "max_grad_norm": 1.0, "precision": "auto", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "seed": 0,
    "min_steps": 16,
}  # fmt: skip


def test_the_default_key_fields_are_pinned():
    assert TrainConfig().key_fields() == SFT_KEY_FIELDS
    assert DPOTrainConfig().key_fields() == DPO_KEY_FIELDS
    memory = {"checkpoint_minutes": 10.0, "micro_batch_tokens": 0, "activation_checkpointing": "auto",
              "max_steps": 0}
    # what a job record stores; the SFT layout switch "pack" (2026-12-06) joined the record, so a score job asked for
    # again gets a new id, and reuses every pass and the reference by their keys, which it did not change
    assert asdict(TrainConfig()) == {**SFT_KEY_FIELDS, **memory, "pack": "auto"}
    assert asdict(DPOTrainConfig()) == {**DPO_KEY_FIELDS, "objective": "dpo", **memory}


def test_the_checkpoint_keys_are_pinned():
    base = ModelRef("m", "/x", "fp")
    assert reference_key(base, "d", "t", 64, TrainConfig()) == "058e031a1109c8bf"
    # min_steps (issue 11) moved both DPO keys: the warm-ups retrain, on smaller batches when the pairs are few
    assert dpo_key(base, "p", "t", 64, DPOTrainConfig()) == "48ca727a7254b850"
    assert dpo_key(base, "p", "t", 64, DPOTrainConfig(method="lora"), "ref-pass") == "040a382cda508f0f"


def test_how_often_we_save_and_how_memory_is_laid_out_are_not_part_of_the_key():
    cfg = TrainConfig()
    assert replace(cfg, checkpoint_minutes=1.0).key_fields() == cfg.key_fields()
    assert replace(cfg, micro_batch_tokens=64, activation_checkpointing="off").key_fields() == cfg.key_fields()
    assert replace(cfg, pack="off").key_fields() == replace(cfg, pack="on").key_fields() == cfg.key_fields()
    assert replace(cfg, seed=1).key_fields() != cfg.key_fields()


def test_the_token_budget_of_a_group_is_auto_by_device_unless_set():
    assert TrainConfig().group_tokens("cpu") == 512
    assert TrainConfig().group_tokens("cuda:1") == 1024
    assert TrainConfig(micro_batch_tokens=2048).group_tokens("cpu") == 2048
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        TrainConfig(micro_batch_tokens=-1).group_tokens("cpu")


def test_a_job_record_round_trips_and_the_base_needs_a_method():
    assert TrainConfig(**asdict(TrainConfig(epochs=2))) == TrainConfig(epochs=2)
    assert DPOTrainConfig(**asdict(DPOTrainConfig(beta=0.2))).beta == 0.2
    with pytest.raises(TypeError):  # the method-specific defaults live in the subclasses only
        BaseTrainConfig()


def test_one_epoch_on_few_pairs_still_makes_min_steps():
    cfg = DPOTrainConfig()  # batch 8, at least 16 steps
    assert cfg.for_pairs(1000) is cfg and optimizer_steps(cfg, 1000) == 125
    small = cfg.for_pairs(40)  # 40 // 16 = 2 pairs per step
    assert (small.batch_size, small.micro_batch_size) == (2, 2) and optimizer_steps(small, 40) == 20
    assert cfg.for_pairs(5).batch_size == 1 and optimizer_steps(cfg.for_pairs(5), 5) == 5  # never below one pair
    assert replace(cfg, min_steps=0).for_pairs(5) == replace(cfg, min_steps=0)
    assert small.key_fields() != cfg.key_fields()  # the batch used is in the checkpoint key


def test_max_steps_caps_the_run_and_is_in_the_key_only_when_set():
    cfg = TrainConfig()
    assert "max_steps" not in cfg.key_fields() and optimizer_steps(cfg, 1000) == 125
    capped = replace(cfg, max_steps=2)
    assert capped.key_fields() == {**cfg.key_fields(), "max_steps": 2} and optimizer_steps(capped, 1000) == 2


def test_a_shrunk_pair_batch_keeps_a_micro_batch_that_divides_it():
    """100 pairs // 16 steps = 6 pairs a step: micro-batches of 3, two a step. Before 2026-12-06 the micro-batch
    stayed 4, so 6 // 4 = 1 accumulation step and every step saw 4 pairs, not the 6 the checkpoint key said."""
    small = DPOTrainConfig().for_pairs(100)
    assert (small.batch_size, small.micro_batch_size) == (6, 3)
    assert small.micro_batch_size * (small.batch_size // small.micro_batch_size) == small.batch_size
    assert optimizer_steps(small, 100) == 16


def test_sized_sets_the_batch_and_the_tokens_of_a_forward():
    """score --train-batch / --train-tokens: the batch is a key field (a new checkpoint), the tokens are not."""
    sft = TrainConfig().sized(128, 16384)
    assert (sft.batch_size, sft.micro_batch_size, sft.micro_batch_tokens) == (128, 128, 16384)  # one forward a step
    assert sft.group_tokens("cuda") == 16384 and optimizer_steps(sft, 52_002) == 406
    assert TrainConfig().sized(tokens=4096).key_fields() == TrainConfig().key_fields()
    assert sft.key_fields() == {**TrainConfig().key_fields(), "batch_size": 128, "micro_batch_size": 128}
    assert TrainConfig().sized() == TrainConfig() and DPOTrainConfig().sized() == DPOTrainConfig()
    assert [DPOTrainConfig().sized(b).micro_batch_size for b in (1, 6, 7, 8, 128)] == [1, 3, 1, 4, 4]
    for bad in ({"batch": 0}, {"batch": -8}, {"tokens": -1}):
        with pytest.raises(UserError, match="training"):
            TrainConfig().sized(**bad)
