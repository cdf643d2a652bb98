"""DPO training for the preference-pair scores: π_θ (π_ref after one epoch over the training pairs) and θ_val (π_θ
after one epoch on the validation pairs), both against π_ref's log-probabilities (scoring/jobs/pairs.py decides what
each starts from and trains on). One epoch makes at least ``min_steps`` optimizer steps (DPOTrainConfig.for_pairs).

Trained with TRL's DPOTrainer (β default 0.1; full fine-tuning, or LoRA merged back so the checkpoint loads like any
model), through the plumbing shared with the SFT reference (scoring/train/trainer.py); what is particular to DPO
lives here. The sequences are tokenised here, by :func:`encode_pairs`, with exactly the formatting the pair passes
score, so training and scoring see the same tokens; the trainer's own tokenisation is bypassed. The reference
log-probabilities log π_ref(y|x) are precomputed (``precompute_ref_log_probs``), so no second model sits in memory:
taken from the fp32 ref pass the scores use when the caller has it (the same tokens, so they are exactly the numbers
irm / lossdiff / davir_dpo use, and a whole forward pass cheaper), else computed once before training.

Two objectives (``DPOTrainConfig.objective``); with Δ = log π_θ(y|x) - log π_ref(y|x), summed over the reply tokens,
for the chosen (w) and the rejected (l) reply:

    "dpo"        -log σ(β [Δ_w - Δ_l])                                     TRL's sigmoid loss
    "davir-dpo"  -log σ(β [Δ_w / |log π_ref(y_w|x)| - Δ_l / |log π_ref(y_l|x)|])      the DavIR paper's: each
                 reward relative to how unlikely the reference finds that reply

Both are computed here, in the trainer's ``compute_loss`` (transformers' hook, the one TRL's own loss sits behind;
none of TRL's private code is copied), with log π(y|x) from the trunk's hidden states and only the reply positions
through the LM head, a slice at a time in both directions (:func:`sequence_logps`): TRL's own forward keeps
(rows x length x vocabulary) logits, which held 6.8-7.4 GB per step for 4 long HH-RLHF pairs on the 135M default.
Each micro-batch runs as groups of pairs of at most ``micro_batch_tokens`` tokens (scoring/train/bounded.py), so a
step's memory follows the configuration, not the pairs' lengths; the precomputed reference log-probs likewise
(computed like TRL's, but kept by every rank under a launcher). Under ``DAVIR_FSDP=1`` the model is loaded sharded
(scoring/train/sharded.py): only rank 0 reads it whole; TRL's weight hash, which reads every weight and is keyed to
a cache of TRL's that is not used here, is skipped (:func:`unhashed_weights`).
|log π_ref| is clamped to at least ``REF_LOGP_FLOOR`` so that a reply the reference is certain of cannot divide by
zero. The reward metrics (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
logps/rejected) are logged like TRL's (DavIR-DPO's rewards normalised). Settings: scoring/train/dpo_config.py.

Checkpoints land under ``<cache>/models/dpo-<key>/`` where the key is a fingerprint of (start model, the training
pairs' content, template, max length, training config, objective included): the same inputs reuse it, different ones
train anew. A ``.partial`` folder holds Trainer checkpoints (saved every ``checkpoint_minutes`` and on cancel) so a
killed run resumes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from scoring import ranks
from scoring.errors import UserError
from scoring.models.formatting import encode_pairs
from scoring.models.loading import ModelRef
from scoring.passes.engine import head_losses, trunk_and_head
from scoring.passes.head import trunk_inputs
from scoring.passes.runner import chunk_ranges
from scoring.store.cache import Cache
from scoring.store.keys import key_of
from scoring.train import sharded
from scoring.train.bounded import TRAIN_HEAD_ROWS, backward_groups, token_groups, unwrapped
from scoring.train.dpo_config import DPOTrainConfig
from scoring.train.trainer import Checkpoint, OnProgress, ShouldStop, load_to_train, lora_config, optimizer_steps
from scoring.train.trainer import progress_hooks, train_and_save, trainer_arguments

Pair = tuple[list[dict], str, str]  # (prompt turns, chosen reply, rejected reply)
REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                  "logps/rejected")  # fmt: skip
REF_LOGP_FLOOR = 1e-6  # DavIR-DPO divides by max(|log π_ref(y|x)|, this): a reply the reference is sure of, not by 0


def pair_token_rows(tokenizer, pairs: list[Pair], max_length: int,
                    ref_logps: list[tuple[float, float]] | None = None) -> list[dict]:  # fmt: skip
    """TRL's pre-tokenised form {prompt_ids, chosen_ids, rejected_ids} (+ ref_chosen_logps, ref_rejected_logps when
    given, one (chosen, rejected) per pair); pairs with an empty side after truncation are left out (they carry no
    training signal)."""
    rows = []
    for i, (c, r) in enumerate(encode_pairs(tokenizer, pairs, max_length)):
        if not (c.n_response_tokens and r.n_response_tokens) or c.n_prompt_tokens != r.n_prompt_tokens:
            continue
        n = c.n_prompt_tokens
        rows.append({"prompt_ids": c.ids[:n], "chosen_ids": c.ids[n:], "rejected_ids": r.ids[n:]})
        if ref_logps is not None:
            rows[-1].update(ref_chosen_logps=float(ref_logps[i][0]), ref_rejected_logps=float(ref_logps[i][1]))
    return rows


PAIR_CHUNK = 1024  # pairs tokenised at a time by pair_dataset


def pair_dataset(tokenizer, pairs: list[Pair], max_length: int, ref_logps: list[tuple[float, float]] | None = None):
    """:func:`pair_token_rows` of every pair as an Arrow-backed ``datasets.Dataset`` (None when no pair is left),
    tokenised ``PAIR_CHUNK`` pairs at a time: the token ids are held once, as int32 in Arrow's flat buffers, never
    as Python lists for the whole set, nor every side's encoding at once while tokenising. 18,832 HH-RLHF pairs
    (the test split 8 times, max length 1,024, AMD EPYC Zen 3): as lists they held 609 MB and peaked 1,658 MB
    above the start; this way 88 MB and 188 MB (int64 ids: 140 and 296 MB)."""
    from datasets import Dataset

    tables = []
    for start, end in chunk_ranges(len(pairs), PAIR_CHUNK):
        logps = ref_logps[start:end] if ref_logps is not None else None
        rows = pair_token_rows(tokenizer, pairs[start:end], max_length, logps)
        if rows:
            table = pa.Table.from_pylist(rows)
            tables.append(table.cast(pa.schema([
                pa.field(f.name, pa.list_(pa.int32())) if f.name.endswith("_ids") else f for f in table.schema])))
    return Dataset(pa.concat_tables(tables)) if tables else None


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
    cfg = cfg.for_pairs(len(pairs), ranks.current().world)
    key = dpo_key(base, pairs_fingerprint(pairs), template_fp, max_length, cfg, ref_source if ref_logps else "trl")
    checkpoint = Checkpoint(cache, f"dpo-{key}")
    if (done := checkpoint.finished()) is not None:
        return done
    rows = pair_dataset(tokenizer, pairs, max_length, ref_logps)
    if rows is None:
        raise UserError("no pair to train DPO on: every pair is flagged or has an empty side after truncation")
    partial = checkpoint.start()
    model = load_to_train(base, cfg.method, device, trust_remote_code)
    trainer = dpo_trainer(model, tokenizer, rows, cfg, partial, max_length, device, trust_remote_code,
                          [progress_hooks(cfg, on_progress, should_stop)], quiet=on_progress is not None,
                          cache_root=cache.root)  # fmt: skip
    record = {"base": base.fingerprint, "n_pairs": len(rows), "train": cfg.key_fields(),
              "steps": optimizer_steps(cfg, len(rows))}  # fmt: skip
    return train_and_save(trainer, checkpoint, tokenizer, cfg, should_stop, "davir_dpo.json", record)


def dpo_trainer(model, tokenizer, rows, cfg: DPOTrainConfig, output_dir: Path, max_length: int,
                device: str = "cpu", trust_remote_code: bool = False, callbacks: list | None = None,
                quiet: bool = False, cache_root: Path | None = None):  # fmt: skip
    """TRL's DPOTrainer (our subclass, with ``cfg.objective``'s loss) on ``rows`` (:func:`pair_dataset`'s Dataset,
    or :func:`pair_token_rows`' list); their reference log-probs when the rows carry them, else TRL computes them
    from ``model`` here, once.
    ``cache_root`` keeps this CPU's bf16 measurement (trainer.use_bf16)."""
    from datasets import Dataset

    return _trainer_class()(
        model=model,
        args=_arguments(cfg, output_dir, len(rows), device, max_length, trust_remote_code, quiet, cache_root),
        train_dataset=rows if isinstance(rows, Dataset) else Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(cfg) if cfg.method == "lora" else None,  # TRL wraps the model itself
        callbacks=callbacks or [],
        objective=cfg.objective,
        token_budget=cfg.group_tokens(device),
    )


def sequence_logps(model, input_ids, attention_mask, completion_mask):
    """log π(y|x) per row of a right-padded batch: the log-probabilities of the completion tokens (``completion_mask``
    1), each predicted from the position before it, summed, fp32. Computed like the scoring engine: the trunk's
    hidden states, and only the completion positions through the LM head, a slice at a time (in the backward pass
    too, scoring/passes/head.py), never a (rows, length, vocabulary) logits tensor."""
    import torch

    trunk, _ = trunk_and_head(model)
    inputs = trunk_inputs(trunk, input_ids)
    hidden = trunk(**inputs, attention_mask=attention_mask, use_cache=False).last_hidden_state
    mask = completion_mask[:, 1:].bool()
    nll = head_losses(model, hidden[:, :-1][mask], input_ids[:, 1:][mask], TRAIN_HEAD_ROWS)
    rows = mask.nonzero()[:, 0]
    return torch.zeros(mask.size(0), dtype=nll.dtype, device=nll.device).index_add(0, rows, -nll)


def pair_rows(inputs: dict, rows: list[int], n: int) -> dict:
    """The sub-batch of the pairs ``rows`` of a preference batch of ``n`` pairs ([chosen; rejected] rows, per-pair
    reference log-probs), cut to its own longest row."""
    both = rows + [r + n for r in rows]
    width = int(inputs["attention_mask"][both].sum(1).max())
    out = {}
    for key, value in inputs.items():
        if hasattr(value, "shape") and value.shape[:1] == (2 * n,):
            out[key] = value[both, :width] if value.dim() > 1 else value[both]
        elif hasattr(value, "shape") and value.shape[:1] == (n,):
            out[key] = value[rows]
        else:
            out[key] = value
    return out


def pair_groups(inputs: dict, budget: int) -> tuple[int, list[list[int]]]:
    """(pairs in the batch, the pairs grouped so each group's padded rows, chosen and rejected, hold at most
    ``budget`` tokens; a longer pair alone)."""
    n = inputs["input_ids"].shape[0] // 2
    lengths = inputs["attention_mask"].sum(1).tolist()
    longest = [max(lengths[i], lengths[i + n]) for i in range(n)]
    return n, token_groups(longest, max(1, budget // 2), packed=False)


def dpo_rewards(logps, ref_chosen_logps, ref_rejected_logps, beta: float):
    """(chosen, rejected) DPO rewards β (log π_θ(y|x) - log π_ref(y|x)), from ``logps`` = [chosen rows; rejected
    rows]: TRL's sigmoid loss is -log σ(chosen - rejected)."""
    chosen, rejected = logps.chunk(2, dim=0)
    return beta * (chosen - ref_chosen_logps.to(chosen)), beta * (rejected - ref_rejected_logps.to(rejected))


def davir_dpo_rewards(logps, ref_chosen_logps, ref_rejected_logps, beta: float):
    """(chosen, rejected) DavIR-DPO rewards β (log π_θ(y|x) - log π_ref(y|x)) / max(|log π_ref(y|x)|,
    REF_LOGP_FLOOR), from ``logps`` = [chosen rows; rejected rows] (the collator's order)."""
    chosen, rejected = logps.chunk(2, dim=0)
    ref_chosen, ref_rejected = ref_chosen_logps.to(chosen), ref_rejected_logps.to(rejected)
    return (beta * (chosen - ref_chosen) / ref_chosen.abs().clamp_min(REF_LOGP_FLOOR),
            beta * (rejected - ref_rejected) / ref_rejected.abs().clamp_min(REF_LOGP_FLOOR))  # fmt: skip


def _arguments(cfg: DPOTrainConfig, partial: Path, n_pairs: int, device: str, max_length: int,
               trust_remote_code: bool, quiet: bool, cache_root: Path | None):  # fmt: skip
    """TRL's DPOConfig: the shared TrainingArguments plus the DPO loss's own; ``quiet`` hides TRL's progress bar
    (when the caller reports progress itself)."""
    from trl import DPOConfig

    return DPOConfig(
        **trainer_arguments(cfg, partial, n_pairs, device, cache_root),
        beta=cfg.beta,
        loss_type=["sigmoid"],
        max_length=max_length,
        precompute_ref_log_probs=True,  # from the untrained model, once; no second copy in memory
        trust_remote_code=trust_remote_code,
        disable_tqdm=quiet,
    )


def grouped_step(trainer, model, inputs):
    """A DPO micro-batch as token-bounded groups of pairs, each group's mean loss weighted by its share of the
    micro-batch's pairs (and divided by the accumulation steps, as Trainer divides a mean loss)."""
    model = unwrapped(trainer, model)
    model.train()
    inputs = trainer._prepare_inputs(inputs)
    n, groups = pair_groups(inputs, trainer.token_budget)
    steps = trainer.current_gradient_accumulation_steps
    return backward_groups(trainer, model, [
        lambda rows=rows: sharded.run(model, trainer.compute_loss, pair_rows(inputs, rows, n)) * (len(rows) / n / steps)
        for rows in groups])  # fmt: skip


def grouped_ref_logps(trainer, model, inputs):
    """log π_ref of each pair's chosen and rejected reply when the trainer precomputes them (the caller gave none):
    the model before training (its LoRA adapter off), by :func:`sequence_logps` in token-bounded groups."""
    import torch

    n, groups = pair_groups(inputs, trainer.token_budget)
    chosen = torch.zeros(n, device=inputs["input_ids"].device)
    rejected = torch.zeros_like(chosen)
    adapter = unwrapped(trainer, trainer.model)
    off = adapter.disable_adapter() if hasattr(adapter, "disable_adapter") else contextlib.nullcontext()

    def group(rows: list[int]):
        sub = pair_rows(inputs, rows, n)
        logps = sharded.run(model, sequence_logps, sub["input_ids"], sub["attention_mask"], sub["completion_mask"])
        chosen[rows], rejected[rows] = logps.float().chunk(2, dim=0)
        return logps

    with torch.no_grad(), off, trainer.accelerator.autocast():
        # under FSDP as many forwards as every rank runs: the extra ones write the first group's values again
        for call in sharded.matched(model, [lambda rows=rows: group(rows) for rows in groups]):
            call()
    return chosen, rejected


def with_ref_logps(trainer, dataset, batch_size: int):
    """``dataset`` with π_ref's log-probs of every pair as columns (ref_chosen_logps, ref_rejected_logps), from the
    trainer's model before training. Computed like TRL's precomputation, each rank over its share of the pairs, then
    gathered; but every rank keeps the gathered values itself, where TRL has rank 0 write them to a file in its own
    temporary folder (that of an in-memory dataset), which no other rank can open."""
    import torch
    from torch.utils.data import DataLoader

    loader = trainer.accelerator.prepare(DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                                    collate_fn=trainer.data_collator))  # fmt: skip
    chosen, rejected = [], []
    for batch in loader:
        logps = trainer.accelerator.gather_for_metrics(trainer.compute_ref_log_probs(trainer.model, batch))
        chosen.append(logps[0].cpu())
        rejected.append(logps[1].cpu())
    for column, values in (("ref_chosen_logps", chosen), ("ref_rejected_logps", rejected)):
        dataset = dataset.add_column(column, np.asarray(torch.cat(values).float()))
    return dataset


def reward_means(kept: dict[str, list[float]], prefix: str) -> dict[str, float]:
    """The reward metrics kept since the last log, each the mean over every rank's pairs (a collective step under a
    launcher), as {prefix + name: mean}; ``kept`` is emptied."""
    means = ranks.means_over_ranks({name: kept.get(name, []) for name in REWARD_METRICS})
    kept.clear()
    return {prefix + name: value for name, value in means.items() if value is not None}


@contextlib.contextmanager
def unhashed_weights():
    """TRL's DPOTrainer without the weight hash its constructor takes for ``precompute_ref_log_probs``: TRL keys
    its on-disk cache of precomputed log-probs by it, and our ``_precompute_ref_logps`` neither reads nor writes
    that cache. The hash reads every weight on every rank (an 8B model: 32 GB per rank, and an fp32 copy of each
    bf16 tensor), and it cannot read a model already sharded by :func:`sharded.load` (DTensor weights)."""
    from trl.trainer import dpo_trainer

    hashed = getattr(dpo_trainer, "hash_module", None)
    if hashed is None:  # a TRL that no longer hashes here
        yield
        return
    dpo_trainer.hash_module = lambda module: None
    try:
        yield
    finally:
        dpo_trainer.hash_module = hashed


def _trainer_class():
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(sharded.ShardedCheckpoints, DPOTrainer):
        """DPOTrainer fed encode_side's {prompt_ids, chosen_ids, rejected_ids} (scoring's tokens), the ``objective``'s
        loss, each micro-batch as groups of pairs of at most ``token_budget`` tokens (scoring/train/bounded.py)."""

        def __init__(self, *args, objective: str = "dpo", token_budget: int = 1024, **kwargs):
            self.objective, self.token_budget = objective, token_budget
            self.objective_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}  # reward metrics, per log
            with unhashed_weights():
                super().__init__(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """The batch mean of -log σ(r_w - r_l), with the DPO rewards of :func:`dpo_rewards` ("dpo": TRL's
            sigmoid loss) or the DavIR-DPO ones of :func:`davir_dpo_rewards`, from the batch the preference collator
            built ([chosen; rejected] rows, completion_mask, the precomputed ref_chosen_logps / ref_rejected_logps)
            and log-probs from :func:`sequence_logps`."""
            import torch.nn.functional as F

            logps = sequence_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
            rewards = davir_dpo_rewards if self.objective == "davir-dpo" else dpo_rewards
            chosen, rejected = rewards(logps, inputs["ref_chosen_logps"], inputs["ref_rejected_logps"], self.beta)
            loss = -F.logsigmoid(chosen - rejected).mean()
            self.record_rewards(chosen.detach(), rejected.detach(), logps.detach())
            return (loss, {"logps": logps}) if return_outputs else loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            return grouped_step(self, model, inputs)

        def compute_ref_log_probs(self, model, inputs):
            return grouped_ref_logps(self, model, inputs)

        def record_rewards(self, chosen, rejected, logps) -> None:
            """Keep this group's reward metrics, per pair, for the next :meth:`log` (which averages them over the
            ranks: a group is one rank's, and ranks run different numbers of groups, so nothing collective here)."""
            metrics = self.objective_metrics["train" if self.model.training else "eval"]
            chosen_logps, rejected_logps = logps.chunk(2, dim=0)
            values = {"rewards/chosen": chosen, "rewards/rejected": rejected,
                      "rewards/accuracies": (chosen > rejected).float(), "rewards/margins": chosen - rejected,
                      "logps/chosen": chosen_logps, "logps/rejected": rejected_logps}  # fmt: skip
            for name, value in values.items():
                metrics[name] += value.float().tolist()

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            """TRL's log, plus the DavIR-DPO reward metrics kept since the last one (the mean over the pairs of
            every rank, "eval_" in eval)."""
            mode = "train" if self.model.training else "eval"
            logs.update(reward_means(self.objective_metrics[mode], "eval_" if mode == "eval" else ""))
            super().log(logs, start_time)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def _precompute_ref_logps(self, dataset, name, batch_size):
            if "ref_chosen_logps" in dataset.column_names:  # given by the caller (the ref pass)
                return dataset
            return with_ref_logps(self, dataset, batch_size)

    return PretokenizedDPOTrainer
