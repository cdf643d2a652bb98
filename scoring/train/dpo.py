"""DPO training for the preference-pair scores: π_θ (π_ref after one epoch over the training pairs) and θ_val (π_θ
after one epoch on the validation pairs), both against π_ref's log-probabilities (scoring/jobs/pairs.py decides what
each starts from and trains on). One epoch makes at least ``min_steps`` optimizer steps (DPOTrainConfig.for_pairs).

Trained with TRL's DPOTrainer (β default 0.1; full fine-tuning, or LoRA merged back so the checkpoint loads like any
model), through the plumbing shared with the SFT reference (scoring/train/trainer.py); what is particular to DPO
lives here. The sequences are tokenised here, by :func:`encode_side`, with exactly the formatting the pair passes
score, so training and scoring see the same tokens; the trainer's own tokenisation is bypassed. The reference
log-probabilities log π_ref(y|x) are precomputed (``precompute_ref_log_probs``), so no second model sits in memory:
taken from the fp32 ref pass the scores use when the caller has it (the same tokens, so they are exactly the numbers
irm / lossdiff / davir_dpo use, and a whole forward pass cheaper), else computed by TRL once.

Two objectives (``DPOTrainConfig.objective``); with Δ = log π_θ(y|x) - log π_ref(y|x), summed over the reply tokens,
for the chosen (w) and the rejected (l) reply:

    "dpo"        -log σ(β [Δ_w - Δ_l])                                     TRL's own sigmoid loss, untouched
    "davir-dpo"  -log σ(β [Δ_w / |log π_ref(y_w|x)| - Δ_l / |log π_ref(y_l|x)|])      the DavIR paper's: each
                 reward relative to how unlikely the reference finds that reply

DavIR-DPO is computed here, in the trainer's ``compute_loss`` (transformers' hook, the one TRL's own loss sits
behind; none of TRL's private code is copied), from a plain forward pass; |log π_ref| is clamped to at least
``REF_LOGP_FLOOR`` so that a reply the reference is certain of cannot divide by zero. Its reward metrics
(rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected) are logged like
TRL's, the rewards normalised. Settings: scoring/train/dpo_config.py.

Checkpoints land under ``<cache>/models/dpo-<key>/`` where the key is a fingerprint of (start model, the training
pairs' content, template, max length, training config, objective included): the same inputs reuse it, different ones
train anew. A ``.partial`` folder holds Trainer checkpoints (saved every ``checkpoint_minutes`` and on cancel) so a
killed run resumes.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
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
REF_LOGP_FLOOR = 1e-6  # DavIR-DPO divides by max(|log π_ref(y|x)|, this): a reply the reference is sure of, not by 0


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
    """``base`` after ``cfg.epochs`` of DPO on ``pairs`` (prompt turns, chosen, rejected), with the batch
    :meth:`DPOTrainConfig.for_pairs` gives for that many pairs; reuses the checkpoint with the same key. None when
    stopped early.

    ``ref_logps``: (log π_ref(y_w|x), log π_ref(y_l|x)) per pair, already computed on these tokens (``ref_source``
    names where from, for the key); None lets TRL compute them."""
    cfg = cfg.for_pairs(len(pairs))
    key = dpo_key(base, pairs_fingerprint(pairs), template_fp, max_length, cfg, ref_source if ref_logps else "trl")
    checkpoint = Checkpoint(cache, f"dpo-{key}")
    if (done := checkpoint.finished()) is not None:
        return done
    rows = pair_token_rows(tokenizer, pairs, max_length, ref_logps)
    if not rows:
        raise UserError("no pair to train DPO on: every pair is flagged or has an empty side after truncation")
    partial = checkpoint.start()
    trainer = dpo_trainer(load_base(base, trust_remote_code), tokenizer, rows, cfg, partial, max_length, device,
                          trust_remote_code, [progress_hooks(cfg, on_progress, should_stop)],
                          quiet=on_progress is not None)  # fmt: skip
    record = {"base": base.fingerprint, "n_pairs": len(rows), "train": cfg.key_fields(),
              "steps": optimizer_steps(cfg, len(rows))}  # fmt: skip
    return train_and_save(trainer, checkpoint, tokenizer, cfg, should_stop, "davir_dpo.json", record)


def dpo_trainer(model, tokenizer, rows: list[dict], cfg: DPOTrainConfig, output_dir: Path, max_length: int,
                device: str = "cpu", trust_remote_code: bool = False, callbacks: list | None = None,
                quiet: bool = False):  # fmt: skip
    """TRL's DPOTrainer (our subclass, with ``cfg.objective``'s loss) on ``rows`` from :func:`pair_token_rows`;
    their reference log-probs when the rows carry them, else TRL computes them from ``model`` here, once."""
    from datasets import Dataset

    return _trainer_class()(
        model=model,
        args=_arguments(cfg, output_dir, len(rows), device, max_length, trust_remote_code, quiet),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(cfg) if cfg.method == "lora" else None,  # TRL wraps the model itself
        callbacks=callbacks or [],
        objective=cfg.objective,
    )


def completion_logps(logits, input_ids, completion_mask):
    """log π(y|x) per row: the log-probabilities of the completion tokens (``completion_mask`` 1), each predicted
    from the position before it, summed; in fp32 whatever the logits' dtype. Only the completion positions are
    normalised (log_softmax over the vocabulary), not the whole padded batch."""
    import torch

    mask = completion_mask[:, 1:].bool()
    scored = logits[:, :-1][mask].float()  # (completion tokens of all rows, vocab), rows in order
    token_logps = scored.log_softmax(-1).gather(-1, input_ids[:, 1:][mask].unsqueeze(-1)).squeeze(-1)
    rows = mask.nonzero()[:, 0]
    return torch.zeros(mask.size(0), dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)


def davir_dpo_rewards(logps, ref_chosen_logps, ref_rejected_logps, beta: float):
    """(chosen, rejected) DavIR-DPO rewards β (log π_θ(y|x) - log π_ref(y|x)) / max(|log π_ref(y|x)|,
    REF_LOGP_FLOOR), from ``logps`` = [chosen rows; rejected rows] (the collator's order)."""
    chosen, rejected = logps.chunk(2, dim=0)
    ref_chosen, ref_rejected = ref_chosen_logps.to(chosen), ref_rejected_logps.to(rejected)
    return (beta * (chosen - ref_chosen) / ref_chosen.abs().clamp_min(REF_LOGP_FLOOR),
            beta * (rejected - ref_rejected) / ref_rejected.abs().clamp_min(REF_LOGP_FLOOR))  # fmt: skip


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
        """DPOTrainer fed {prompt_ids, chosen_ids, rejected_ids} made by encode_side (same tokens as scoring), with
        the loss ``objective`` names (one of dpo_config.OBJECTIVES)."""

        def __init__(self, *args, objective: str = "dpo", **kwargs):
            self.objective = objective
            self.objective_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}  # DavIR-DPO's, per log
            super().__init__(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """TRL's loss for "dpo"; for "davir-dpo" the batch mean of -log σ(r_w - r_l) with the DavIR-DPO rewards
            of :func:`davir_dpo_rewards`, from the batch the preference collator built ([chosen; rejected] rows,
            completion_mask, the precomputed ref_chosen_logps / ref_rejected_logps)."""
            if self.objective == "dpo":
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            import torch.nn.functional as F

            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            logps = completion_logps(outputs.logits, inputs["input_ids"], inputs["completion_mask"])
            chosen, rejected = davir_dpo_rewards(logps, inputs["ref_chosen_logps"], inputs["ref_rejected_logps"],
                                                 self.beta)  # fmt: skip
            loss = -F.logsigmoid(chosen - rejected).mean()
            self.record_rewards(chosen.detach(), rejected.detach(), logps.detach())
            return (loss, outputs) if return_outputs else loss

        def record_rewards(self, chosen, rejected, logps) -> None:
            """Keep this batch's reward metrics (gathered over processes) for the next :meth:`log`."""
            metrics = self.objective_metrics["train" if self.model.training else "eval"]
            chosen, rejected = self.accelerator.gather(chosen), self.accelerator.gather(rejected)
            chosen_logps, rejected_logps = (self.accelerator.gather(half) for half in logps.chunk(2, dim=0))
            values = {"rewards/chosen": chosen, "rewards/rejected": rejected,
                      "rewards/accuracies": (chosen > rejected).float(), "rewards/margins": chosen - rejected,
                      "logps/chosen": chosen_logps, "logps/rejected": rejected_logps}  # fmt: skip
            for name, value in values.items():
                metrics[name].append(value.mean().item())

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            """TRL's log, plus the DavIR-DPO reward metrics kept since the last one (averaged, "eval_" in eval)."""
            mode = "train" if self.model.training else "eval"
            prefix = "eval_" if mode == "eval" else ""
            logs.update({prefix + k: sum(v) / len(v) for k, v in self.objective_metrics[mode].items()})
            self.objective_metrics[mode].clear()
            super().log(logs, start_time)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def _precompute_ref_logps(self, dataset, name, batch_size):
            if "ref_chosen_logps" in dataset.column_names:  # given by the caller (the ref pass)
                return dataset
            return super()._precompute_ref_logps(dataset, name, batch_size)

    return PretokenizedDPOTrainer
