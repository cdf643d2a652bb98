"""The stages of a preference-pair score job: π_ref's pass, the DPO warm-ups of π_θ and θ_val, and their passes.

A pair job runs what its scores need (scoring.scores.pairs): ``ref`` = π_ref, the base (SFT) model, scored on every
pair; ``theta`` = π_ref after one DPO epoch over the training pairs (the eligible, unflagged ones); ``val`` =
θ_val, π_ref after one DPO epoch on the validation pairs (a user file or dataset, else a seeded held-out fraction).
Each model scores every pair with the same pass runner as instruction data (scoring.passes.runner.PAIRS: the
chosen and the rejected side of a pair, in one engine call). ``--scores margin_base`` trains nothing.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from scoring.errors import UserError
from scoring.ingest.catalog import dataset_meta, load_examples
from scoring.jobs.steps import Steps, start
from scoring.models.loading import ModelRef, pick_device
from scoring.passes.engine import PassConfig
from scoring.passes.runner import PAIRS
from scoring.store.cache import Cache
from scoring.store.jobs import Job
from scoring.store.parts import read_pass
from scoring.train.dpo import DPOTrainConfig, train_dpo


def eligible(examples) -> np.ndarray:
    """Boolean mask of the pairs DPO trains on: unflagged at ingest (degenerate pairs teach nothing or harm)."""
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


def _ref_logps(examples) -> list[tuple[float, float]]:
    return list(zip(examples["chosen_logp"].astype(float), examples["rejected_logp"].astype(float)))


def validation_pairs(cache: Cache, job: Job, examples):
    """The pairs θ_val trains on: the job's validation dataset, or its seeded held-out share of the eligible pairs
    (with their π_ref log-probs from the ref pass; a separate dataset's are computed by TRL)."""
    spec = job.val
    if spec.get("dataset"):
        if dataset_meta(cache, spec["dataset"])["fingerprint"] != spec["fingerprint"]:
            raise UserError(f"validation dataset {spec['dataset']!r} was replaced; score again")
        val = load_examples(cache, spec["dataset"], columns=list(PAIRS.columns))
        return val[eligible(val)].assign(chosen_logp=np.nan, rejected_logp=np.nan)
    pool = examples[eligible(examples)]
    held = validation_split(pool["id"].astype(str).tolist(), spec["fraction"], spec["seed"])
    return pool[pool["id"].astype(str).isin(held)]


def run_pair_job(cache: Cache, job: Job, should_stop, progress: bool) -> None:
    """Fill every pass the job needs (see the module docstring)."""
    steps, base, examples, config = start(cache, job, PAIRS, should_stop, progress)
    ref_key = steps.fill("ref", PAIRS, base, examples, config)
    ref = read_pass(cache, ref_key, ["idx", "chosen_logp", "rejected_logp"]).set_index("idx")
    examples = examples.join(ref, on="idx")  # log π_ref per pair: DPO's reference term, no second forward pass
    if "theta" in job.passes:
        train = examples[eligible(examples)]
        theta = _warm_up(steps, "theta", base, train, _ref_logps(train), ref_key, config)
        steps.fill("theta", PAIRS, theta, examples, config)
    if "val" in job.passes:
        val = validation_pairs(cache, job, examples)
        job.n_val_pairs = int(len(val))
        given = val["chosen_logp"].notna().all()
        val_model = _warm_up(steps, "val", base, val, _ref_logps(val) if given else None, ref_key, config)
        steps.fill("val", PAIRS, val_model, examples, config)


def _warm_up(steps: Steps, role: str, base: ModelRef, examples, ref_logps, ref_key: str,
             config: PassConfig) -> ModelRef:
    """One DPO epoch (the job's DPO config) from π_ref over ``examples``: the ``theta`` or ``val`` model."""
    job, pairs = steps.job, as_pairs(examples)
    return steps.train(role, f"DPO training ({role} model, {len(pairs)} pairs)", lambda on_step: train_dpo(
        steps.cache, base, steps.tokenizer, pairs, steps.template, config.max_length, DPOTrainConfig(**job.dpo),
        pick_device(), on_step, steps.should_stop, job.trust_remote_code, ref_logps, f"pair-pass:{ref_key}"))
