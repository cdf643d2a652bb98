"""The SFT reference fine-tune's settings (trained by scoring/train/sft.py): the shared fields' defaults for the
DavIR paper's one pass over all the data. The defaults are part of every reference checkpoint's key: changing one
retrains every cached reference model and moves the golden outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

from scoring.train.config import BaseTrainConfig


@dataclass(frozen=True, kw_only=True)
class TrainConfig(BaseTrainConfig):
    """Reference fine-tuning. Defaults follow the DavIR paper's one pass over all the data."""

    learning_rate: float = 2e-5
    lora_learning_rate: float = 2e-4
    micro_batch_size: int = 8  # the whole batch in one forward pass
    scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    lora_dropout: float = 0.05
