"""DPO training for the preference-pair scores: π_θ (one epoch over all pairs) and θ_val (one epoch on a validation
split), both started from π_ref, the base model.

Trained with TRL's DPOTrainer (sigmoid loss, β default 0.1; full fine-tuning, or LoRA merged back so the checkpoint
loads like any model), through the plumbing shared with the SFT reference (scoring/train/trainer.py); what is
particular to DPO lives here. The sequences are tokenised here, by :func:`encode_side`, with exactly the formatting
the pair passes score, so training and scoring see the same tokens; the trainer's own tokenisation is bypassed.
The reference log-probabilities log π_ref(y|x) are precomputed (``precompute_ref_log_probs``), so no second model
sits in memory: taken from the fp32 ref pass the scores use when the caller has it (the same tokens, so they are
exactly the numbers irm / lossdiff subtract, and a whole forward pass cheaper), else computed by TRL once.
Settings: scoring/train/dpo_config.py.

Checkpoints land under ``<cache>/models/dpo-<key>/`` where the key is a fingerprint of (base model, the training
pairs' content, template, max length, training config): the same inputs reuse it, different ones train anew. A
``.partial`` folder holds Trainer checkpoints (saved every ``checkpoint_minutes`` and on cancel) so a killed run
resumes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from scoring.errors import UserError
from scoring.models.formatting import encode_side
from scoring.models.loading import ModelRef
from scoring.store.cache import Cache
from scoring.store.keys import key_of
from scoring.train.dpo_config import DPOTrainConfig
from scoring.train.trainer import Checkpoint, OnProgress, ShouldStop, load_base, lora_config
from scoring.train.trainer import optimizer_steps, progress_hooks, train_and_save, trainer_arguments

Pair = tuple[list[dict], str, str]  # (prompt turns, chosen reply, rejected reply)


def pair_token_rows(tokenizer, pairs: list[Pair], max_length: int,
                    ref_logps: list[tuple[float, float]] | None = None) -> list[dict]:  # fmt: skip
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


def pairs_fingerprint(pairs: list[Pair]) -> str:
    """sha256 over the training pairs' content, in order: what a DPO checkpoint was trained on."""
    h = hashlib.sha256(b"davir-dpo-pairs-v1\n")
    for pair in pairs:
        blob = json.dumps(pair, ensure_ascii=False, sort_keys=True).encode()
        h.update(b"%d:%s\n" % (len(blob), blob))
    return h.hexdigest()


def dpo_key(base: ModelRef, pairs_fp: str, template_fp: str, max_length: int, cfg: DPOTrainConfig,
            ref_source: str = "trl") -> str:  # fmt: skip
    return key_of(
        {"base": base.fingerprint, "pairs": pairs_fp, "template": template_fp, "max_length": max_length,
         "train": cfg.key_fields(), "trainer": "trl-dpo-sigmoid", "ref_logps": ref_source},
    )  # fmt: skip


def train_dpo(
    cache: Cache,
    base: ModelRef,
    tokenizer,
    pairs: list[Pair],
    template_fp: str,
    max_length: int,
    cfg: DPOTrainConfig,
    device: str = "cpu",
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
    trust_remote_code: bool = False,
    ref_logps: list[tuple[float, float]] | None = None,
    ref_source: str = "trl",
) -> ModelRef | None:
    """π_ref = ``base`` after ``cfg.epochs`` of DPO on ``pairs`` (prompt turns, chosen, rejected); reuses the
    checkpoint with the same key. None when stopped early.

    ``ref_logps``: (log π_ref(y_w|x), log π_ref(y_l|x)) per pair, already computed on these tokens (``ref_source``
    names where from, for the key); None lets TRL compute them."""
    from datasets import Dataset

    key = dpo_key(base, pairs_fingerprint(pairs), template_fp, max_length, cfg, ref_source if ref_logps else "trl")
    checkpoint = Checkpoint(cache, f"dpo-{key}")
    if (done := checkpoint.finished()) is not None:
        return done
    rows = pair_token_rows(tokenizer, pairs, max_length, ref_logps)
    if not rows:
        raise UserError("no pair to train DPO on: every pair is flagged or has an empty side after truncation")
    partial = checkpoint.start()
    trainer = _trainer_class()(
        model=load_base(base, trust_remote_code),
        args=_arguments(cfg, partial, len(rows), device, max_length, trust_remote_code, on_progress is not None),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(cfg) if cfg.method == "lora" else None,  # TRL wraps the model itself
        callbacks=[progress_hooks(cfg, on_progress, should_stop)],
    )
    record = {"base": base.fingerprint, "n_pairs": len(rows), "train": cfg.key_fields(),
              "steps": optimizer_steps(cfg, len(rows))}  # fmt: skip
    return train_and_save(trainer, checkpoint, tokenizer, cfg, should_stop, "davir_dpo.json", record)


def _arguments(cfg: DPOTrainConfig, partial: Path, n_pairs: int, device: str, max_length: int,
               trust_remote_code: bool, quiet: bool):  # fmt: skip
    """TRL's DPOConfig: the shared TrainingArguments plus the DPO loss's own; ``quiet`` hides TRL's progress bar
    (when the caller reports progress itself)."""
    from trl import DPOConfig

    return DPOConfig(
        **trainer_arguments(cfg, partial, n_pairs, device),
        beta=cfg.beta,
        loss_type=["sigmoid"],
        max_length=max_length,
        precompute_ref_log_probs=True,  # from the untrained model, once; no second copy in memory
        gradient_checkpointing=False,  # TRL turns it on by default; our models fit without it and run faster
        trust_remote_code=trust_remote_code,
        disable_tqdm=quiet,
    )


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
