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
    # How a group's sequences are laid out (scoring/train/bounded.py): "auto" packs them side by side with no padding
    # on a CPU and pads them on a GPU; "on" packs on a GPU too (one variable-length flash-attention call per layer,
    # scoring/passes/attention.py); "off" pads. Float rounding only, so not part of the key.
    pack: str = "auto"

    def key_fields(self) -> dict:
        fields = super().key_fields()
        fields.pop("pack")
        return fields

    def micro_for(self, batch: int) -> int:
        """The whole batch in one forward pass, as by default (its groups are bounded by tokens, not examples)."""
        return batch

    def packs(self, device: str) -> bool:
        """Whether the groups are packed rows on ``device`` (where the model allows it)."""
        if self.pack not in ("auto", "on", "off"):
            raise ValueError(f"pack must be auto, on or off, not {self.pack!r}")
        return self.pack == "on" or (self.pack == "auto" and not device.startswith("cuda"))
