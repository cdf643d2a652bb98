"""The Trainer plumbing the SFT reference (sft.py) and the DPO warm-ups (dpo.py) share, one small piece each: the
checkpoint's place, reuse of a finished checkpoint, the base model in fp32, bf16 or not, LoRA, the step
arithmetic and the TrainingArguments both methods set alike, the progress / timed-checkpoint / stop callback, resume
from the last ``.partial/checkpoint-*``, and the final save (LoRA merged back, model + tokenizer + a record, renamed
into place atomically). Under ``torchrun`` / ``accelerate launch`` Trainer and TRL train data-parallel (DDP): each
rank's micro-batches are its share of the same optimizer step (:func:`per_rank_batches`), the ranks stop and save
checkpoints together, and rank 0 alone writes the final model (scoring.ranks); with ``DAVIR_FSDP=1`` the model is
sharded over them instead (scoring/train/sharded.py).

Why shared: the two methods differ only in their data, loss and trainer class (transformers' Trainer vs TRL's
DPOTrainer); everything around them must behave the same so that a cancelled job resumes, a finished checkpoint is
reused, and a trained model loads like any other, whichever method made it.

A checkpoint lives at ``<cache>/models/<name>/`` (``ref-<key>``, ``dpo-<key>``); while training, Trainer checkpoints
go to ``<cache>/models/.<name>.partial/``, so a killed run resumes there and a complete model folder is the only kind
that exists under the final name.
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scoring import ranks
from scoring.errors import UserError
from scoring.models.loading import ModelRef, folder_fingerprint, save_tokenizer
from scoring.models.precision import cpu_bf16
from scoring.store.cache import Cache, atomic_write_json
from scoring.train import sharded
from scoring.train.config import BaseTrainConfig

OnProgress = Callable[[int, int], None]  # (optimizer steps done, total)
ShouldStop = Callable[[], bool]


@dataclass(frozen=True)
class Checkpoint:
    """Where the model of one training run lands (``<cache>/models/<name>/``) and is staged meanwhile."""

    cache: Cache
    name: str  # "ref-<key>" or "dpo-<key>"

    @property
    def final(self) -> Path:
        return self.cache.models_dir() / self.name

    @property
    def partial(self) -> Path:
        """The staging folder: Trainer checkpoints to resume from, then the final save before its rename."""
        return self.cache.models_dir() / f".{self.name}.partial"

    def model_ref(self) -> ModelRef:
        return ModelRef(name=self.name, path=str(self.final), fingerprint=folder_fingerprint(self.final, self.cache))

    def finished(self) -> ModelRef | None:
        """The trained model when a run with the same key already completed (reused, not retrained)."""
        return self.model_ref() if (self.final / "config.json").exists() else None

    def start(self) -> Path:
        self.partial.mkdir(parents=True, exist_ok=True)
        return self.partial


def load_base(base: ModelRef, trust_remote_code: bool = False):
    """The model to train, in fp32 (mixed precision, when on, only autocasts: the master weights stay fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32, trust_remote_code=trust_remote_code)


def load_to_train(base: ModelRef, method: str, device: str, trust_remote_code: bool = False):
    """The base model to train with ``method``: whole (:func:`load_base`), or under ``DAVIR_FSDP`` split over the
    ranks with only rank 0 reading it whole (scoring/train/sharded.py)."""
    if sharded.wanted(method):
        return sharded.load(base.path, device, lambda: load_base(base, trust_remote_code), trust_remote_code)
    return load_base(base, trust_remote_code)


def use_bf16(cfg: BaseTrainConfig, device: str, cache_root=None) -> bool:
    """Whether to train in bf16 autocast: as ``cfg.precision`` says, or ("auto") on a GPU that supports it and on a
    CPU whose measured bf16 products are not slower than fp32's (scoring/models/precision.py, kept under
    ``cache_root``)."""
    if cfg.precision != "auto":
        return cfg.precision == "bf16"
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_bf16_supported()
    return cpu_bf16(cache_root)["bf16"]


def lora_config(cfg: BaseTrainConfig):
    """peft's LoRA settings: rank, alpha and dropout from ``cfg``, adapters on every linear layer."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip


def accumulation_steps(cfg: BaseTrainConfig) -> int:
    """Micro-batches per optimizer step, so that one step sees ``cfg.batch_size`` examples."""
    return max(1, cfg.batch_size // cfg.micro_batch_size)


def per_rank_batches(cfg: BaseTrainConfig, world: int) -> tuple[int, int]:
    """(examples per forward on each rank, micro-batches per optimizer step on each rank) for ``world`` ranks, so
    that one optimizer step still sees ``cfg.batch_size`` examples, the same ones as in one process: the rank's
    micro-batch shrinks to ``batch_size / world`` when the configured one would overshoot, and the accumulation
    steps are divided among the ranks."""
    if world == 1:
        return cfg.micro_batch_size, accumulation_steps(cfg)
    batch = cfg.micro_batch_size * accumulation_steps(cfg)
    micro = min(cfg.micro_batch_size, batch // world)
    if micro < 1 or batch % (micro * world):
        raise UserError(f"a batch of {batch} examples does not split evenly over {world} processes "
                        f"({micro or 1} per forward each); choose a batch size that is a multiple of {world}")
    return micro, batch // (micro * world)


def optimizer_steps(cfg: BaseTrainConfig, n_examples: int) -> int:
    """How many optimizer steps ``cfg.epochs`` over ``n_examples`` take (at least one; at most ``cfg.max_steps``
    when set)."""
    steps = max(1, int(n_examples * cfg.epochs) // (cfg.micro_batch_size * accumulation_steps(cfg)))
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def trainer_arguments(cfg: BaseTrainConfig, output_dir: Path, n_examples: int, device: str,
                      cache_root: Path | None = None) -> dict:  # fmt: skip
    """The TrainingArguments (or TRL config) fields both methods set alike, from ``cfg``; ``cache_root`` keeps this
    CPU's bf16 measurement (:func:`use_bf16`)."""
    steps = optimizer_steps(cfg, n_examples)
    micro, accumulation = per_rank_batches(cfg, ranks.current().world)
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps or -1,
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": accumulation,
        "learning_rate": cfg.lora_learning_rate if cfg.method == "lora" else cfg.learning_rate,
        "lr_scheduler_type": cfg.scheduler,
        "warmup_steps": int(cfg.warmup_ratio * steps),
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm,
        "bf16": use_bf16(cfg, device, cache_root),
        "use_cpu": not device.startswith("cuda"),
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "save_strategy": "no",  # saved by time instead, in progress_hooks: a checkpoint costs ~3x the model on disk
        "logging_steps": max(1, steps // 20),
        "report_to": [],
        "dataloader_num_workers": 0,
        # one fused kernel per step: foreach AdamW makes full-size temporaries (+0.5 GB at the step for 135M params)
        "optim": "adamw_torch_fused",
        "gradient_checkpointing": cfg.checkpointing_on(device),
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
    }


def progress_hooks(cfg: BaseTrainConfig, on_progress: OnProgress | None, should_stop: ShouldStop | None):
    """A Trainer callback: report steps, save a resumable checkpoint every ``cfg.checkpoint_minutes`` (a
    checkpoint costs ~3x the model on disk, so by time, not by step), and stop (saving) when asked. Under a launcher
    the ranks decide together (a rank that saved or stopped alone would leave the others waiting)."""
    from transformers import TrainerCallback

    class Hooks(TrainerCallback):
        def __init__(self):
            self.last_save = time.monotonic()

        def on_step_end(self, args, state, control, **kw):
            if on_progress:
                on_progress(state.global_step, state.max_steps)
            if ranks.any_true(time.monotonic() - self.last_save > cfg.checkpoint_minutes * 60):
                control.should_save = True
                self.last_save = time.monotonic()
            if ranks.any_true(bool(should_stop and should_stop())):
                control.should_training_stop = True
                control.should_save = True

    return Hooks()


def train_resuming(trainer, partial: Path) -> None:
    """Train, picking up from the last Trainer checkpoint in ``partial`` when a previous run left one."""
    resume = ranks.from_main(any(partial.glob("checkpoint-*")))
    trainer.train(resume_from_checkpoint=True if resume else None)


def save_final(trained, tokenizer, cfg: BaseTrainConfig, partial: Path, final: Path, record_name: str,
               record: dict, state_dict: dict | None = None) -> None:  # fmt: skip
    """Merge LoRA back, save model + tokenizer + a record of how they were made, then rename into place: a
    checkpoint folder either is complete or does not exist. ``state_dict``: the weights gathered from a sharded
    model (scoring/train/sharded.py)."""
    if cfg.method == "lora":
        trained = trained.merge_and_unload()
    staging = partial / "final"
    shutil.rmtree(staging, ignore_errors=True)
    trained.save_pretrained(staging, state_dict=state_dict)
    save_tokenizer(tokenizer, staging)
    atomic_write_json(staging / record_name, record)
    os.replace(staging, final)
    shutil.rmtree(partial, ignore_errors=True)


def train_and_save(trainer, checkpoint: Checkpoint, tokenizer, cfg: BaseTrainConfig, should_stop: ShouldStop | None,
                   record_name: str, record: dict) -> ModelRef | None:  # fmt: skip
    """Run ``trainer`` (resuming), then save its model as ``checkpoint``; None when stopped early (the partial
    folder keeps a Trainer checkpoint to resume from). Under a launcher: data-parallel, saved by rank 0 alone, every
    rank returning once it is saved."""
    train_resuming(trainer, checkpoint.partial)
    if ranks.any_true(bool(should_stop and should_stop())):
        return None
    whole = sharded.full_state_dict(trainer.model) if sharded.is_sharded(trainer.model) else None  # every rank
    if ranks.current().main:
        save_final(trainer.model, tokenizer, cfg, checkpoint.partial, checkpoint.final, record_name, record, whole)
    ranks.barrier()
    return checkpoint.model_ref()
