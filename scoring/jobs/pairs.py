"""The stages of a preference-pair score job: π_ref's pass, the DPO warm-ups of π_θ and θ_val, and their passes.

A pair job runs what its scores need (scoring.scores.pairs), as arXiv 2510.13212 defines the models:

- ``ref`` = π_ref, the base (SFT) model, scored on every pair;
- ``theta`` = π_ref after one DPO epoch over the *training* pairs: the eligible (unflagged) ones minus the
  validation pairs;
- ``val`` = θ_val = **θ** after one DPO epoch on the validation pairs (``val.start`` = "ref" trains it from π_ref
  instead, the old reading, kept to measure both against the influence they stand for: scoring.jobs.influence).

Both warm-ups minimise the DPO loss against π_ref (its log-probs come from the ref pass, so θ_val's reference is
π_ref, not the θ it starts from). The validation pairs are a user dataset (``--val``; its own ref / theta / val
passes are recorded in ``job.val_passes``; pairs of the dataset with the same content are held out too), else a
seeded held-out fraction of the eligible pairs. Either way they are never in θ's training set, and their ids are in
``job.val_ids``: the score table flags them ``validation_pair`` and no selection keeps them.

Each model scores every pair with the same pass runner as instruction data (scoring.passes.runner.PAIRS). After the
passes, ``job.warmups`` reports per warm-up the reward accuracy and mean margin on its own training pairs before and
after it (and θ's on the validation pairs it never saw): the evidence that the warm-ups moved the model.
``--scores margin_base`` trains nothing.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scoring.errors import UserError
from scoring.ingest.catalog import dataset_meta, load_examples
from scoring.jobs.steps import Steps, start
from scoring.models.loading import ModelRef, pick_device
from scoring.passes.engine import PassConfig
from scoring.passes.runner import PAIRS
from scoring.scores.pairs import reward_stats
from scoring.store.cache import Cache
from scoring.store.jobs import Job
from scoring.store.parts import read_pass
from scoring.train.dpo import DPOTrainConfig, train_dpo

VAL_STARTS = ("theta", "ref")  # what θ_val is trained from: θ (the paper) or π_ref (measured for comparison)
LOGP_COLUMNS = ["chosen_logp", "rejected_logp"]


def eligible(examples) -> np.ndarray:
    """Boolean mask of the pairs DPO may train on: unflagged at ingest (degenerate pairs teach nothing or harm)."""
    return (examples["flag"].fillna("") == "").to_numpy()


def validation_split(ids: list[str], fraction: float, seed: int = 0) -> set[str]:
    """A seeded held-out ``fraction`` of ``ids`` (at least one): the lowest sha256(seed:id). Depends only on the ids,
    so adding rows moves few of them."""
    if not 0 < fraction < 1:
        raise UserError(f"--val-fraction {fraction}: must lie strictly between 0 and 1")
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return set(ranked[: max(1, round(fraction * len(ids)))])


def as_pairs(examples) -> list[tuple[list[dict], str, str]]:
    return [(json.loads(m), c, r) for m, c, r in zip(examples["messages"], examples["response"], examples["rejected"])]


def _content(examples) -> pd.Series:
    """One string per pair: its prompt turns, chosen and rejected reply (to find a validation pair in the pool)."""
    return examples["messages"] + "\x00" + examples["response"] + "\x00" + examples["rejected"]


@dataclass
class Split:
    """The validation pairs of a job and what they take out of the dataset."""

    val: pd.DataFrame  # the validation pairs (PAIRS columns; chosen_logp / rejected_logp once joined)
    held: np.ndarray  # (n,) bool over the dataset: pairs held out (never in θ's training set nor a selection)
    other: tuple[str, str] | None  # (name, fingerprint) of a separate validation dataset, else None

    def train(self, examples: pd.DataFrame) -> pd.DataFrame:
        """θ's training pairs: eligible and not held out."""
        return examples[eligible(examples) & ~self.held]


def split(cache: Cache, job: Job, examples: pd.DataFrame) -> Split:
    """The job's validation pairs: its validation dataset (pairs of ``examples`` with the same content are held
    out too), or its seeded held-out share of the eligible pairs."""
    spec = job.val or {}
    if spec.get("dataset"):
        if dataset_meta(cache, spec["dataset"])["fingerprint"] != spec["fingerprint"]:
            raise UserError(f"validation dataset {spec['dataset']!r} was replaced; score again")
        val = load_examples(cache, spec["dataset"], columns=list(PAIRS.columns))
        val = val[eligible(val)]
        held = _content(examples).isin(set(_content(val))).to_numpy()
        return Split(val, held, (spec["dataset"], spec["fingerprint"]))
    pool = examples[eligible(examples)]
    ids = validation_split(pool["id"].astype(str).tolist(), spec.get("fraction", 0.1), spec.get("seed", 0))
    held = examples["id"].astype(str).isin(ids).to_numpy()
    return Split(examples[held], held, None)


def with_logps(cache: Cache, examples: pd.DataFrame, key: str, prefix: str = "") -> pd.DataFrame:
    """``examples`` joined (on idx) to a pair pass's chosen / rejected log-probs, as ``<prefix>chosen_logp`` …"""
    logps = read_pass(cache, key, ["idx", *LOGP_COLUMNS]).set_index("idx").add_prefix(prefix)
    return examples.drop(columns=[c for c in logps.columns if c in examples.columns]).join(logps, on="idx")


def ref_logps(examples) -> list[tuple[float, float]]:
    return list(zip(examples["chosen_logp"].astype(float), examples["rejected_logp"].astype(float)))


def run_pair_job(cache: Cache, job: Job, should_stop, progress: bool) -> None:
    """Fill every pass the job needs (see the module docstring), then report what the warm-ups learned."""
    steps, base, examples, config = start(cache, job, PAIRS, should_stop, progress)
    ref_key = steps.fill("ref", PAIRS, base, examples, config)
    examples = with_logps(cache, examples, ref_key)  # log π_ref per pair: DPO's reference term, no second pass
    if "theta" not in job.passes:
        return
    parts = split(cache, job, examples)
    job.val_ids = examples["id"][parts.held].astype(str).tolist()
    job.n_val_pairs = int(len(parts.val))
    val = parts.val
    if parts.other:
        val = with_logps(cache, val, steps.fill("ref", PAIRS, base, val, config, parts.other))
    theta = _warm_up(steps, "theta", base, parts.train(examples), ref_key, config)
    steps.fill("theta", PAIRS, theta, examples, config)
    models = {"ref": base, "theta": theta}
    if "val" in job.passes:
        start_from = job.val.get("start", "theta")
        models["val"] = _warm_up(steps, "val", models[start_from], val, ref_key, config)
        steps.fill("val", PAIRS, models["val"], examples, config)
    if parts.other:
        for role in ("theta", "val"):
            if role in models:
                steps.fill(role, PAIRS, models[role], val, config, parts.other)
    job.warmups = warmup_report(cache, job, examples, parts)


def _warm_up(steps: Steps, role: str, start_from: ModelRef, examples, ref_key: str, config: PassConfig) -> ModelRef:
    """One DPO epoch (the job's DPO config) from ``start_from`` over ``examples``, against π_ref's log-probs (the
    ``chosen_logp`` / ``rejected_logp`` columns): the ``theta`` or ``val`` model."""
    job, pairs = steps.job, as_pairs(examples)
    logps = ref_logps(examples)
    return steps.train(role, f"DPO training ({role} model, {len(pairs)} pairs)", lambda on_step: train_dpo(
        steps.cache, start_from, steps.tokenizer, pairs, steps.template, config.max_length, DPOTrainConfig(**job.dpo),
        pick_device(), on_step, steps.should_stop, job.trust_remote_code, logps, f"pair-pass:{ref_key}"))


def pass_logps(cache: Cache, job: Job, examples: pd.DataFrame, role: str, on_val_dataset: bool) -> pd.DataFrame:
    """``examples`` with ``ref_*`` and ``<role>_*`` log-prob columns from the job's passes (over the job's dataset,
    or over its separate validation dataset)."""
    keys = job.val_passes if on_val_dataset else job.pass_keys()
    out = with_logps(cache, examples, keys["ref"], "ref_")
    return with_logps(cache, out, keys[role], f"{role}_") if role != "ref" else out


def warmup_report(cache: Cache, job: Job, examples: pd.DataFrame, parts: Split) -> dict:
    """Per warm-up, :func:`reward_stats` on its own training pairs before and after it; for θ also on the
    validation pairs (which it never saw). "before" of θ is π_ref (every reward margin is 0 there)."""
    beta = float(job.dpo["beta"])
    on_val = parts.other is not None
    val = parts.val if on_val else examples[parts.held]
    train = parts.train(examples)

    def stats(frame, role, data_is_val):
        table = pass_logps(cache, job, frame, role, data_is_val and on_val)
        return reward_stats(table, role, beta)

    report = {"theta": {"start": "ref", "n_pairs": len(train),
                        "train": {"before": stats(train, "ref", False), "after": stats(train, "theta", False)},
                        "validation": {"before": stats(val, "ref", True), "after": stats(val, "theta", True)}}}
    if "val" in job.passes:
        start_from = job.val.get("start", "theta")
        report["val"] = {"start": start_from, "n_pairs": len(val),
                         "train": {"before": stats(val, start_from, True), "after": stats(val, "val", True)}}
    return report
