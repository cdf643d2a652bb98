"""The DavIR reference model: the base model fine-tuned once over the whole dataset, response tokens only.

Trained with transformers' Trainer (full fine-tuning, or LoRA through peft, merged back so the checkpoint loads
like any model). The checkpoint lands under ``<cache>/models/ref-<key>/`` where the key is a fingerprint of
(base model, dataset, template, max length, training config): the same inputs reuse it, different ones train
anew. Training writes Trainer checkpoints into a ``.partial`` folder, so a killed run resumes from the last one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Callable

from scoring.models.formatting import encode
from scoring.models.loading import ModelRef, cpu_has_bf16, folder_fingerprint
from scoring.passes.attention import install
from scoring.passes.engine import PassConfig, packed_batch, uses_packing
from scoring.store.cache import Cache, atomic_write_json


class KeyedConfig:
    """Base of the training configs: every field is part of the checkpoint key except how often we save."""

    def key_fields(self) -> dict:
        fields = asdict(self)
        fields.pop("checkpoint_minutes")  # how often we save changes no weight
        return fields


@dataclass(frozen=True)
class TrainConfig(KeyedConfig):
    """Reference fine-tuning. Defaults follow the DavIR paper's one pass over all the data."""

    method: str = "full"  # "full" or "lora"
    epochs: float = 1.0
    learning_rate: float = 2e-5  # full fine-tuning; LoRA uses lora_learning_rate
    lora_learning_rate: float = 2e-4
    batch_size: int = 8  # examples per optimizer step (per_device x accumulation)
    micro_batch_size: int = 8  # examples per forward pass
    scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"  # "auto" (bf16 where supported), "bf16", "fp32"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    seed: int = 0
    checkpoint_minutes: float = 10.0  # save a resumable Trainer checkpoint this often (and when cancelled)



def reference_key(base: ModelRef, dataset_fingerprint: str, template_fp: str, max_length: int, cfg: TrainConfig) -> str:
    blob = json.dumps(
        {
            "base": base.fingerprint,
            "dataset": dataset_fingerprint,
            "template": template_fp,
            "max_length": max_length,
            "train": cfg.key_fields(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Examples:
    """A torch-style dataset of (input_ids, labels) with labels = -100 off the scored tokens."""

    def __init__(self, tokenizer, messages: list[list[dict]], max_length: int):
        self.items = []
        for conv in messages:
            e = encode(tokenizer, conv, max_length)
            if e.n_response_tokens:
                labels = [t if s else -100 for t, s in zip(e.ids, e.scored)]
                self.items.append({"input_ids": e.ids, "labels": labels})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _collate(pad_id: int):
    import torch

    def collate(batch):
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            attention[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": attention}

    return collate


def use_bf16(cfg: TrainConfig, device: str) -> bool:
    if cfg.precision != "auto":
        return cfg.precision == "bf16"
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def train_reference(
    cache: Cache,
    base: ModelRef,
    tokenizer,
    messages: list[list[dict]],
    dataset_fingerprint: str,
    template_fp: str,
    max_length: int,
    cfg: TrainConfig,
    device: str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ModelRef | None:
    """Fine-tune ``base`` on ``messages`` (or reuse the checkpoint with the same key). None when stopped early."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    key = reference_key(base, dataset_fingerprint, template_fp, max_length, cfg)
    final = cache.models_dir() / f"ref-{key}"
    if (final / "config.json").exists():
        return ModelRef(name=f"ref-{key}", path=str(final), fingerprint=folder_fingerprint(final, cache))
    partial = cache.models_dir() / f".ref-{key}.partial"
    partial.mkdir(parents=True, exist_ok=True)

    data = _Examples(tokenizer, messages, max_length)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
        )
    accumulation = max(1, cfg.batch_size // cfg.micro_batch_size)
    steps = max(1, int(len(data) * cfg.epochs) // (cfg.micro_batch_size * accumulation))
    args = TrainingArguments(
        output_dir=str(partial),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=cfg.lora_learning_rate if cfg.method == "lora" else cfg.learning_rate,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=int(cfg.warmup_ratio * steps),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=use_bf16(cfg, device),
        use_cpu=not device.startswith("cuda"),
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="no",  # saved by time instead, in Hooks: a checkpoint costs ~3x the model size on disk
        save_total_limit=1,
        logging_steps=max(1, steps // 20),
        report_to=[],
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=False,
    )

    packed = not device.startswith("cuda") and uses_packing(model, PassConfig(), max_length)
    trainer = _trainer_class(packed)(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=_collate(tokenizer.pad_token_id),
        callbacks=[progress_hooks(cfg, on_progress, should_stop)],
    )
    resume = any(partial.glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    if should_stop and should_stop():
        return None
    save_final(trainer.model, tokenizer, cfg, partial, final, "davir_reference.json",
               {"base": base.fingerprint, "dataset": dataset_fingerprint, "train": cfg.key_fields(), "steps": steps})
    return ModelRef(name=f"ref-{key}", path=str(final), fingerprint=folder_fingerprint(final, cache))


def _trainer_class(packed: bool):
    """transformers' Trainer; with ``packed`` (a CPU), one whose loss runs the model over packed rows."""
    from transformers import Trainer

    if not packed:
        return Trainer

    class PackedTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # accelerate applies mixed precision by wrapping model.forward, which this loss does not call
            with self.accelerator.autocast():
                return packed_sft_loss(model, inputs, num_items_in_batch)

    return PackedTrainer


def packed_sft_loss(model, inputs: dict, num_items_in_batch=None):
    """The causal-LM loss of a padded batch (input_ids, labels with -100 off the scored tokens, attention_mask),
    computed like the scoring engine: the sequences packed side by side in one row with no padding and their shared
    prefix run once (scoring/packing.py), and only the positions that predict a label through the LM head. The
    same sum of token losses as ``model(**inputs).loss`` without the pad tokens' work or fp32 logits for every
    prompt position: on a CPU, fine-tuning SmolLM2 on GSM8K took 25-38 % less time.

    Normalised as transformers' loss is: by ``num_items_in_batch`` (labels in the whole accumulated batch) when
    given, else by this batch's labels.
    """
    import torch

    install(model)  # idempotent: packed rows need the per-sequence attention
    ids, labels, attention = inputs["input_ids"], inputs["labels"], inputs["attention_mask"]
    seqs, scoreds = [], []
    for row in range(ids.shape[0]):
        n = int(attention[row].sum())
        seqs.append(ids[row, :n].tolist())
        scoreds.append((labels[row, :n] != -100).tolist())
    pieces = packed_batch(model, seqs, scoreds, PassConfig(), want_hidden=False, device=ids.device, fused=False)
    total = torch.cat([piece for piece, _ in pieces]).sum()
    count = num_items_in_batch if num_items_in_batch is not None else sum(len(piece) for piece, _ in pieces)
    return total / count


def progress_hooks(cfg, on_progress: Callable[[int, int], None] | None, should_stop: Callable[[], bool] | None):
    """A Trainer callback: report steps, save a resumable checkpoint every ``cfg.checkpoint_minutes`` (a
    checkpoint costs ~3x the model on disk, so by time, not by step), and stop (saving) when asked."""
    from transformers import TrainerCallback

    class Hooks(TrainerCallback):
        def __init__(self):
            self.last_save = time.monotonic()

        def on_step_end(self, args, state, control, **kw):
            if on_progress:
                on_progress(state.global_step, state.max_steps)
            if time.monotonic() - self.last_save > cfg.checkpoint_minutes * 60:
                control.should_save = True
                self.last_save = time.monotonic()
            if should_stop and should_stop():
                control.should_training_stop = True
                control.should_save = True

    return Hooks()


def save_final(trained, tokenizer, cfg, partial, final, record_name: str, record: dict) -> None:
    """Merge LoRA back, save model + tokenizer + a record of how they were made, then rename into place: a
    checkpoint folder either is complete or does not exist."""
    if cfg.method == "lora":
        trained = trained.merge_and_unload()
    staging = partial / "final"
    shutil.rmtree(staging, ignore_errors=True)
    trained.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    atomic_write_json(staging / record_name, record)
    os.replace(staging, final)
    shutil.rmtree(partial, ignore_errors=True)
