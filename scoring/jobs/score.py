"""The stages of an instruction-data score job: base pass, reference fine-tune, reference pass.

The base pass gives every proxy (loss, perplexity, IFD with its prompt-free pass, token counts, the embedding the
map is drawn from); the reference is the base fine-tuned once on the whole dataset (or a model the user names);
the reference pass gives ``loss_ref`` and with it DavIR and RHO. Passes and checkpoints are keyed by content, so
a job re-run after a crash, or a second job over the same data, reuses everything already made.
"""
from __future__ import annotations

import json
from dataclasses import replace

from scoring.ingest.catalog import column_values
from scoring.jobs.steps import start
from scoring.models.loading import model_card, pick_device, resolve
from scoring.passes.runner import INSTRUCTIONS
from scoring.store.cache import Cache
from scoring.store.jobs import Job
from scoring.train.sft import TrainConfig, train_reference


def run_score_job(cache: Cache, job: Job, should_stop, progress: bool) -> None:
    """Fill every pass the job needs, training the reference on the way when asked to."""
    steps, base, examples, config = start(cache, job, INSTRUCTIONS, should_stop, progress, frame=False)  # Arrow
    steps.fill("base", INSTRUCTIONS, base, examples, config)
    if "ref" not in job.passes:
        return
    if job.reference == "train":
        conversations = (json.loads(m) for m in column_values(examples, "messages"))  # parsed as tokenised
        ref = steps.train("ref", "training reference", lambda on_step: train_reference(
            cache, base, steps.tokenizer, conversations, job.dataset_fingerprint, steps.template, config.max_length,
            TrainConfig(**job.train), pick_device(), on_step, should_stop))  # fmt: skip
    else:
        ref = resolve(job.reference, cache)
        job.reference_model = model_card(ref)
    steps.fill("ref", INSTRUCTIONS, ref, examples, replace(config, embed=False, alone=False))
