"""The DavIR reference model: the base model fine-tuned once over the whole dataset, response tokens only.

Trained with transformers' Trainer (full fine-tuning, or LoRA through peft, merged back so the checkpoint loads
like any model), through the plumbing shared with the DPO warm-ups (scoring/train/trainer.py); what is particular
to the reference lives here: its dataset (labels only on the scored response tokens), the padding collator, and a
loss computed like the scoring engine's (packed rows on a CPU, or wherever ``TrainConfig.pack`` asks), each
micro-batch run as token-bounded groups so that memory follows the configuration, not the data
(scoring/train/bounded.py). Settings: scoring/train/sft_config.py.

The checkpoint lands under ``<cache>/models/ref-<key>/`` where the key is a fingerprint of (base model, dataset,
template, max length, training config): the same inputs reuse it, different ones train anew. Training writes
Trainer checkpoints into a ``.partial`` folder, so a killed run resumes from the last one.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from scoring.errors import UserError
from scoring.models.formatting import encode_many
from scoring.models.loading import ModelRef
from scoring.passes.attention import install
from scoring.passes.engine import PassConfig, packed_batch, response_losses, uses_packing
from scoring.store.cache import Cache
from scoring.store.keys import key_of
from scoring.train import sharded
from scoring.train.bounded import TRAIN_HEAD_ROWS, bounded_step
from scoring.train.sft_config import TrainConfig
from scoring.train.trainer import Checkpoint, OnProgress, ShouldStop, accumulation_steps, load_to_train, lora_config
from scoring.train.trainer import optimizer_steps, progress_hooks, train_and_save, trainer_arguments


def reference_key(base: ModelRef, dataset_fingerprint: str, template_fp: str, max_length: int, cfg: TrainConfig) -> str:
    return key_of({
        "base": base.fingerprint,
        "dataset": dataset_fingerprint,
        "template": template_fp,
        "max_length": max_length,
        "train": cfg.key_fields(),
    })  # fmt: skip


class Examples:
    """A torch-style dataset of (input_ids, labels) with labels = -100 off the scored tokens.

    Held as three flat arrays -- every example's token ids (int32) end to end, their scored flags, and where each
    example starts -- about 5 bytes a token; Python lists of ints held ~150 (Alpaca's 5.55 M tokens: ~0.8 GB, the
    difference between a fine-tune that fits 3 GB and one that does not). ``messages`` may be any iterable (a
    generator parsing one conversation at a time): it is tokenised ``CHUNK`` conversations at a time, so no
    tokenised copy of the whole dataset is ever built in Python objects either."""

    CHUNK = 1024

    def __init__(self, tokenizer, messages: Iterable[list[dict]], max_length: int):
        ids, scored, lengths = [], [], []
        for chunk in _chunks(messages, self.CHUNK):
            kept = [e for e in encode_many(tokenizer, chunk, max_length) if e.n_response_tokens]
            if kept:
                ids.append(np.fromiter(itertools.chain.from_iterable(e.ids for e in kept), dtype=np.int32))
                scored.append(np.fromiter(itertools.chain.from_iterable(e.scored for e in kept), dtype=bool))
                lengths.extend(len(e.ids) for e in kept)
        self.ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
        self.scored = np.concatenate(scored) if scored else np.zeros(0, dtype=bool)
        self.starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])

    def __len__(self):
        return len(self.starts) - 1

    def lengths(self) -> list[int]:
        """Each example's number of tokens."""
        return np.diff(self.starts).tolist()

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        start, end = self.starts[i], self.starts[i + 1]
        ids = self.ids[start:end].astype(np.int64)
        return {"input_ids": ids, "labels": np.where(self.scored[start:end], ids, -100)}


def _chunks(items: Iterable, size: int):
    """Lists of ``size`` consecutive items (the last one shorter)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def collator(pad_id: int):
    """The Trainer's data collator: right-pads a list of :class:`Examples` items into input_ids, labels and
    attention_mask tensors."""
    import torch

    def collate(batch):
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.as_tensor(b["input_ids"])
            labels[row, :n] = torch.as_tensor(b["labels"])
            attention[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": attention}

    return collate


def train_reference(
    cache: Cache,
    base: ModelRef,
    tokenizer,
    messages: Iterable[list[dict]],
    dataset_fingerprint: str,
    template_fp: str,
    max_length: int,
    cfg: TrainConfig,
    device: str = "cpu",
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
) -> ModelRef | None:
    """Fine-tune ``base`` on ``messages`` (or reuse the checkpoint with the same key). None when stopped early."""
    checkpoint = Checkpoint(cache, f"ref-{reference_key(base, dataset_fingerprint, template_fp, max_length, cfg)}")
    if (done := checkpoint.finished()) is not None:
        return done
    data = Examples(tokenizer, messages, max_length)
    if not len(data):
        raise UserError(f"no example to fine-tune the reference on: none has a response token within the first "
                        f"{max_length} tokens (--max-length); raise it, or give a reference model")  # fmt: skip
    partial = checkpoint.start()
    model = load_to_train(base, cfg.method, device)
    if cfg.method == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(cfg))
    packed = cfg.packs(device) and uses_packing(model, PassConfig(pack="on"), max_length)
    trainer = _trainer_class(packed, cfg.group_tokens(device), cfg.micro_batch_size * accumulation_steps(cfg))(
        model=model,
        args=_arguments(cfg, partial, len(data), device, checkpoint.cache.root),
        train_dataset=data,
        data_collator=collator(tokenizer.pad_token_id),
        callbacks=[progress_hooks(cfg, on_progress, should_stop)],
    )
    record = {"base": base.fingerprint, "dataset": dataset_fingerprint, "train": cfg.key_fields(),
              "steps": optimizer_steps(cfg, len(data))}  # fmt: skip
    return train_and_save(trainer, checkpoint, tokenizer, cfg, should_stop, "davir_reference.json", record)


def _arguments(cfg: TrainConfig, partial: Path, n_examples: int, device: str, cache_root: Path):
    """transformers' TrainingArguments: the shared ones plus the reference's own."""
    from transformers import TrainingArguments

    return TrainingArguments(
        **trainer_arguments(cfg, partial, n_examples, device, cache_root),
        save_total_limit=1,
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,  # the collator needs "labels" as the dataset gives it
        disable_tqdm=False,
    )


def _trainer_class(packed: bool, budget: int, batch: int):
    """transformers' Trainer whose training step runs each micro-batch as groups of at most ``budget`` tokens
    (scoring/train/bounded.py), the loss computed like the scoring engine's: packed rows (``packed``: a CPU, or
    ``TrainConfig.pack`` "on") or padded rows, the LM head a slice at a time. Its sampler groups examples of like
    length into optimizer steps of ``batch`` examples whatever the number of processes, so that a DDP run's step k
    trains on the same examples as one process's."""
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class ReferenceTrainer(sharded.ShardedCheckpoints, Trainer):
        def _get_train_sampler(self, train_dataset=None):
            data = train_dataset if train_dataset is not None else self.train_dataset
            return LengthGroupedSampler(batch, lengths=data.lengths())

        def training_step(self, model, inputs, num_items_in_batch=None):
            return bounded_step(self, model, inputs, num_items_in_batch, budget, packed,
                                lambda m, sub: sft_loss_sum(m, sub, packed))  # fmt: skip

    return ReferenceTrainer


def sft_loss_sum(model, inputs: dict, packed: bool):
    """The sum of the token losses of a right-padded batch (input_ids, labels with -100 off the scored tokens,
    attention_mask), differentiable, computed like the scoring engine: only the positions that predict a label reach
    the LM head, a slice at a time in both directions (scoring/passes/head.py). ``packed``: the sequences
    side by side in one row with no padding and their shared prefix run once (scoring/passes/packing.py); on a CPU,
    fine-tuning SmolLM2 on GSM8K took 25-38 % less time than the padded batch."""
    import torch

    config = PassConfig(head_rows=TRAIN_HEAD_ROWS)
    ids, labels, attention = inputs["input_ids"], inputs["labels"], inputs["attention_mask"]
    if not packed:
        losses, _ = response_losses(model, ids, attention, labels != -100, config.head_rows)
        return losses.sum()
    install(model)  # idempotent: packed rows need the per-sequence attention
    seqs, scoreds = [], []
    for row in range(ids.shape[0]):
        n = int(attention[row].sum())
        seqs.append(ids[row, :n].tolist())
        scoreds.append((labels[row, :n] != -100).tolist())
    pieces = packed_batch(model, seqs, scoreds, config, want_hidden=False, device=ids.device, fused=False)
    return torch.cat([piece for piece, _ in pieces]).sum()


def packed_sft_loss(model, inputs: dict, num_items_in_batch=None):
    """The causal-LM loss of a padded batch over packed rows: the same as ``model(**inputs).loss`` without the pad
    tokens' work or fp32 logits for every prompt position. Normalised as transformers' loss is: by
    ``num_items_in_batch`` (labels in the whole accumulated batch) when given, else by this batch's labels."""
    count = num_items_in_batch if num_items_in_batch is not None else int((inputs["labels"][:, 1:] != -100).sum())
    return sft_loss_sum(model, inputs, packed=True) / count
