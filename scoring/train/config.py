"""The knobs every DavIR training run shares, documented once: the base of the SFT reference's config
(sft_config.TrainConfig) and the DPO warm-ups' (dpo_config.DPOTrainConfig).

Both runs go through the same Trainer plumbing (scoring/train/trainer.py), which reads only these fields; a subclass
sets its own defaults for the fields that have none here and adds what only its method needs (DPO's β). Every field
is part of the checkpoint key (:meth:`BaseTrainConfig.key_fields`) except those that change no weight beyond float
rounding: how often a checkpoint is saved (``checkpoint_minutes``) and how the work is laid out in memory
(``micro_batch_tokens``, ``activation_checkpointing``). A changed key field trains a new checkpoint, so changing a
subclass's default retrains every cached model and moves the golden outputs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from scoring.errors import UserError


@dataclass(frozen=True, kw_only=True)
class BaseTrainConfig:
    """One training run's settings. The fields without a default here are the ones the two methods set differently
    (a subclass must give them); keyword-only, so that a subclass may add fields and move defaults freely."""

    method: str = "full"  # "full" fine-tuning, or "lora" (peft adapters on every linear layer, merged back after)
    epochs: float = 1.0  # passes over the data; fractions train on part of it
    learning_rate: float  # peak rate of full fine-tuning
    lora_learning_rate: float  # peak rate when method == "lora" (adapters want a higher one)
    batch_size: int = 8  # examples per optimizer step (micro_batch_size x gradient accumulation)
    micro_batch_size: int  # examples per forward pass
    scheduler: str  # transformers' lr_scheduler_type
    warmup_ratio: float  # share of the optimizer steps spent warming the rate up
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # gradient clipping
    precision: str = "auto"  # "auto" (bf16 where it pays: trainer.use_bf16), "bf16", "fp32"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float
    seed: int = 0  # the Trainer's seed and data seed
    max_steps: int = 0  # stop after this many optimizer steps (0: the epochs decide); in the key only when set
    checkpoint_minutes: float = 10.0  # save a resumable Trainer checkpoint this often (and when cancelled)
    # Memory (scoring/train/bounded.py): each forward / backward sees at most this many tokens (packed: real tokens;
    # padded: rows x longest row; a longer example goes alone), gradients accumulated over the groups. 0: "auto",
    # :meth:`group_tokens` (512 on a CPU, whose memory is the machine's; 1,024 on a GPU).
    micro_batch_tokens: int = 0
    # Decoder layers keep only their inputs and recompute the rest in the backward pass: "auto" (on a CPU, whose
    # memory is the machine's; off on a GPU, where it would cost ~30 % of the step), "on", "off".
    activation_checkpointing: str = "auto"

    def key_fields(self) -> dict:
        """The fields a trained checkpoint depends on: all but how often we save and how the work is laid out in
        memory, which change no weight beyond float rounding."""
        fields = asdict(self)
        for name in ("checkpoint_minutes", "micro_batch_tokens", "activation_checkpointing"):
            fields.pop(name)
        if not fields["max_steps"]:  # unset: the keys of checkpoints trained before the field existed still match
            del fields["max_steps"]
        return fields

    def sized(self, batch: int | None = None, tokens: int | None = None):
        """This config with ``batch`` examples per optimizer step and ``tokens`` per forward / backward
        (``micro_batch_tokens``, 0 = auto); None keeps a field. The micro-batch becomes :meth:`micro_for` the batch,
        so that an optimizer step still sees exactly ``batch`` examples. What ``score --train-batch / --train-tokens``
        set: on a GPU, over tens of thousands of examples, a batch of 8 makes one optimizer step (a pass over every
        weight and its two Adam moments) per ~1k tokens, and 1,024-token forwards leave most of the GPU idle."""
        if batch is not None and (not isinstance(batch, int) or batch < 1):
            raise UserError(f"the training batch must be a whole number of examples >= 1, not {batch!r}")
        if tokens is not None and (not isinstance(tokens, int) or tokens < 0):
            raise UserError(f"the training tokens per forward must be >= 0 (0: auto), not {tokens!r}")
        out = self if tokens is None else replace(self, micro_batch_tokens=tokens)
        return out if batch is None else replace(out, batch_size=batch, micro_batch_size=out.micro_for(batch))

    def micro_for(self, batch: int) -> int:
        """The micro-batch for ``batch`` examples per step: the largest divisor of it up to this config's."""
        return max(d for d in range(1, min(self.micro_batch_size, batch) + 1) if batch % d == 0)

    def group_tokens(self, device: str) -> int:
        """The token budget of one forward / backward on ``device``: ``micro_batch_tokens``, or when 0 (auto) 512
        on a CPU and 1,024 on a GPU. On a CPU, 512-token groups lowered the default model's fine-tune step peaks by
        60-100 MB against 1,024 in a 4-step probe, 3-5 % slower."""
        if self.micro_batch_tokens < 0:
            raise ValueError(f"micro_batch_tokens must be 0 (auto) or a number of tokens, "
                             f"not {self.micro_batch_tokens}")
        return self.micro_batch_tokens or (1024 if device.startswith("cuda") else 512)

    def checkpointing_on(self, device: str) -> bool:
        """Whether activation checkpointing is on for a run on ``device``."""
        if self.activation_checkpointing not in ("auto", "on", "off"):
            raise ValueError(f"activation_checkpointing must be auto, on or off, not {self.activation_checkpointing!r}")
        if self.activation_checkpointing == "auto":
            return not device.startswith("cuda")
        return self.activation_checkpointing == "on"
