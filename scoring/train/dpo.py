"""DPO training for the preference-pair scores: π_θ (one epoch over all pairs) and θ_val (one epoch on a validation
split), both started from π_ref, the base model.

Trained with TRL's DPOTrainer (sigmoid loss, β default 0.1; full fine-tuning, or LoRA merged back so the checkpoint
loads like any model). The sequences are tokenised here, by :func:`encode_side`, with exactly the formatting the
pair passes score, so training and scoring see the same tokens; the trainer's own tokenisation is bypassed.
The reference log-probabilities log π_ref(y|x) are precomputed (``precompute_ref_log_probs``), so no second model
sits in memory: taken from the fp32 ref pass the scores use when the caller has it (the same tokens, so they are
exactly the numbers irm / lossdiff subtract, and a whole forward pass cheaper), else computed by TRL once.

Checkpoints land under ``<cache>/models/dpo-<key>/`` where the key is a fingerprint of (base model, the training
pairs' content, template, max length, training config): the same inputs reuse it, different ones train anew. A
``.partial`` folder holds Trainer checkpoints (saved every ``checkpoint_minutes`` and on cancel) so a killed run
resumes.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable

from scoring.errors import UserError
from scoring.models.formatting import encode_side
from scoring.models.loading import ModelRef, folder_fingerprint
from scoring.store.cache import Cache
from scoring.train.sft import KeyedConfig, progress_hooks, save_final, use_bf16


@dataclass(frozen=True)
class DPOTrainConfig(KeyedConfig):
    """DPO warm-up of π_θ and θ_val. β is also the β of the irm / lossdiff / davir_dpo scores."""

    beta: float = 0.1  # DPO temperature (TRL's default); the scores use the same value
    method: str = "full"  # "full" or "lora"
    epochs: float = 1.0  # the paper's warm-up: one pass over the pairs
    learning_rate: float = 5e-6  # full fine-tuning; LoRA uses lora_learning_rate
    lora_learning_rate: float = 5e-5
    batch_size: int = 8  # pairs per optimizer step (per_device x accumulation)
    micro_batch_size: int = 4  # pairs per forward pass (each is two sequences)
    scheduler: str = "linear"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"  # "auto" (bf16 where supported), "bf16", "fp32"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    seed: int = 0
    checkpoint_minutes: float = 10.0  # save a resumable Trainer checkpoint this often (and when cancelled)



def pair_token_rows(tokenizer, pairs: list[tuple[list[dict], str, str]], max_length: int,
                    ref_logps: list[tuple[float, float]] | None = None) -> list[dict]:
    """TRL's pre-tokenised form {prompt_ids, chosen_ids, rejected_ids} (+ ref_chosen_logps, ref_rejected_logps when
    given, one (chosen, rejected) per pair); pairs with an empty side after truncation are left out (they carry no
    training signal)."""
    rows = []
    for i, (prompt_turns, chosen, rejected) in enumerate(pairs):
        c = encode_side(tokenizer, prompt_turns, chosen, max_length)
        r = encode_side(tokenizer, prompt_turns, rejected, max_length)
        if not (c.n_response_tokens and r.n_response_tokens) or c.n_prompt_tokens != r.n_prompt_tokens:
            continue
        n = c.n_prompt_tokens
        rows.append({"prompt_ids": c.ids[:n], "chosen_ids": c.ids[n:], "rejected_ids": r.ids[n:]})
        if ref_logps is not None:
            rows[-1].update(ref_chosen_logps=float(ref_logps[i][0]), ref_rejected_logps=float(ref_logps[i][1]))
    return rows


def pairs_fingerprint(pairs: list[tuple[list[dict], str, str]]) -> str:
    """sha256 over the training pairs' content, in order: what a DPO checkpoint was trained on."""
    h = hashlib.sha256(b"davir-dpo-pairs-v1\n")
    for pair in pairs:
        blob = json.dumps(pair, ensure_ascii=False, sort_keys=True).encode()
        h.update(b"%d:%s\n" % (len(blob), blob))
    return h.hexdigest()


def dpo_key(base: ModelRef, pairs_fp: str, template_fp: str, max_length: int, cfg: DPOTrainConfig,
            ref_source: str = "trl") -> str:
    blob = json.dumps(
        {"base": base.fingerprint, "pairs": pairs_fp, "template": template_fp, "max_length": max_length,
         "train": cfg.key_fields(), "trainer": "trl-dpo-sigmoid", "ref_logps": ref_source},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _trainer_class():
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer fed {prompt_ids, chosen_ids, rejected_ids} made by encode_side (same tokens as scoring)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def _precompute_ref_logps(self, dataset, name, batch_size):
            if "ref_chosen_logps" in dataset.column_names:  # given by the caller (the ref pass)
                return dataset
            return super()._precompute_ref_logps(dataset, name, batch_size)

    return PretokenizedDPOTrainer


def train_dpo(
    cache: Cache,
    base: ModelRef,
    tokenizer,
    pairs: list[tuple[list[dict], str, str]],
    template_fp: str,
    max_length: int,
    cfg: DPOTrainConfig,
    device: str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    trust_remote_code: bool = False,
    ref_logps: list[tuple[float, float]] | None = None,
    ref_source: str = "trl",
) -> ModelRef | None:
    """π_ref = ``base`` after ``cfg.epochs`` of DPO on ``pairs`` (prompt turns, chosen, rejected); reuses the
    checkpoint with the same key. None when stopped early.

    ``ref_logps``: (log π_ref(y_w|x), log π_ref(y_l|x)) per pair, already computed on these tokens (``ref_source``
    names where from, for the key); None lets TRL compute them."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig


    key = dpo_key(base, pairs_fingerprint(pairs), template_fp, max_length, cfg, ref_source if ref_logps else "trl")
    final = cache.models_dir() / f"dpo-{key}"
    if (final / "config.json").exists():
        return ModelRef(name=f"dpo-{key}", path=str(final), fingerprint=folder_fingerprint(final, cache))
    rows = pair_token_rows(tokenizer, pairs, max_length, ref_logps)
    if not rows:
        raise UserError("no pair to train DPO on: every pair is flagged or has an empty side after truncation")
    partial = cache.models_dir() / f".dpo-{key}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    peft_config = None
    if cfg.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
    accumulation = max(1, cfg.batch_size // cfg.micro_batch_size)
    steps = max(1, int(len(rows) * cfg.epochs) // (cfg.micro_batch_size * accumulation))
    args = DPOConfig(
        output_dir=str(partial),
        beta=cfg.beta,
        loss_type=["sigmoid"],
        max_length=max_length,
        precompute_ref_log_probs=True,  # from the untrained model, once; no second copy in memory
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
        gradient_checkpointing=False,  # TRL turns it on by default; our models fit without it and run faster
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="no",  # saved by time instead, in Hooks
        logging_steps=max(1, steps // 20),
        report_to=[],
        dataloader_num_workers=0,
        trust_remote_code=trust_remote_code,
        disable_tqdm=on_progress is not None,
    )

    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[progress_hooks(cfg, on_progress, should_stop)],
    )
    resume = any(partial.glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    if should_stop and should_stop():
        return None
    save_final(trainer.model, tokenizer, cfg, partial, final, "davir_dpo.json",
               {"base": base.fingerprint, "n_pairs": len(rows), "train": cfg.key_fields(), "steps": steps})
    return ModelRef(name=f"dpo-{key}", path=str(final), fingerprint=folder_fingerprint(final, cache))
