"""The DPO warm-ups' settings (π_θ and θ_val, trained by scoring/train/dpo.py): β, the objective, and the shared
fields' defaults for the paper's warm-up, one gentle pass over the pairs. β is also the β of the irm / lossdiff /
davir_dpo scores. The defaults are part of every DPO checkpoint's key: changing one retrains every cached warm-up and
moves the golden outputs.

Why these defaults (measured on 160 HH-RLHF pairs with the default 135M model; README, "Measured on real pairs"):
one epoch must make enough optimizer steps to move the model at all (8-10 steps taught it nothing), hence
``min_steps`` = 16; with ≥ 15 steps, full fine-tuning at 5e-6, at 5e-5 and LoRA at 5e-4 all reach 0.85-0.89 reward
accuracy on their training pairs and none generalises to unseen pairs, the larger rates only inflating the margins,
so the rate stays the paper-typical 5e-6.

The objective is TRL's plain sigmoid DPO ("dpo", the default) or the DavIR paper's DavIR-DPO ("davir-dpo"), whose
implicit rewards are each divided by |log π_ref(y|x)| (see scoring/train/dpo.py). A plain-DPO config leaves the
field out of its key, so the checkpoints trained before the field existed keep their keys.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from scoring.errors import UserError
from scoring.train.config import BaseTrainConfig

OBJECTIVES = ("dpo", "davir-dpo")  # the training losses DPOTrainConfig.objective may name


@dataclass(frozen=True, kw_only=True)
class DPOTrainConfig(BaseTrainConfig):
    """DPO warm-up of π_θ and θ_val. β is also the β of the irm / lossdiff / davir_dpo scores."""

    beta: float = 0.1  # DPO temperature (TRL's default); the scores use the same value
    objective: str = "dpo"  # one of OBJECTIVES: plain DPO, or DavIR-DPO (rewards normalised by |log π_ref|)
    learning_rate: float = 5e-6
    lora_learning_rate: float = 5e-5
    micro_batch_size: int = 4  # pairs per forward pass (each is two sequences)
    scheduler: str = "linear"
    warmup_ratio: float = 0.1
    lora_dropout: float = 0.0
    min_steps: int = 16  # one epoch makes at least this many optimizer steps: smaller batches on small data

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown DPO objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")

    def key_fields(self) -> dict:
        """As the base's, with ``objective`` left out while it is plain "dpo": a plain-DPO checkpoint keeps the key
        it had before the field existed, and a DavIR-DPO one always differs from it (its key has the field)."""
        fields = super().key_fields()
        if fields["objective"] == "dpo":
            del fields["objective"]
        return fields

    def for_pairs(self, n_pairs: int, world: int = 1) -> DPOTrainConfig:
        """This config for ``n_pairs`` training pairs: the batch shrinks (down to one pair) until one epoch makes at
        least ``min_steps`` optimizer steps. Still one pass over the pairs; only the step count changes, so a warm-up
        on a few dozen validation pairs is not over in 3 steps. The checkpoint key records the batch used. Trained by
        ``world`` processes (DDP), the shrunk batch stays a multiple of ``world`` (at least one pair per process), so
        a small warm-up makes fewer steps there than in one process, and trains a checkpoint of its own."""
        if self.min_steps <= 0 or n_pairs // self.batch_size >= self.min_steps:
            return self
        batch = max(world, n_pairs // self.min_steps // world * world)
        return replace(self, batch_size=batch, micro_batch_size=self.micro_for(batch))
