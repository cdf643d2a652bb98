"""The DPO warm-ups' settings (π_θ and θ_val, trained by scoring/train/dpo.py): β and the shared fields' defaults
for the paper's warm-up, one gentle pass over the pairs. β is also the β of the irm / lossdiff / davir_dpo scores.
The defaults are part of every DPO checkpoint's key: changing one retrains every cached warm-up and moves the golden
outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

from scoring.train.config import BaseTrainConfig


@dataclass(frozen=True, kw_only=True)
class DPOTrainConfig(BaseTrainConfig):
    """DPO warm-up of π_θ and θ_val. β is also the β of the irm / lossdiff / davir_dpo scores."""

    beta: float = 0.1  # DPO temperature (TRL's default); the scores use the same value
    learning_rate: float = 5e-6
    lora_learning_rate: float = 5e-5
    micro_batch_size: int = 4  # pairs per forward pass (each is two sequences)
    scheduler: str = "linear"
    warmup_ratio: float = 0.1
    lora_dropout: float = 0.0
