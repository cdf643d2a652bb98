"""The two kinds of step every score job is made of -- fill a model pass, train a model -- with the job's progress.

Both dataset kinds run their stages through one :class:`Steps`: it records each stage in the job (so ``status``
and the app follow it), draws the progress bar in the foreground, and turns a cancel request into
:class:`Stopped`. Under a launcher every rank runs the same steps together (scoring.ranks): a pass is shared out
by chunks, a fine-tune is data-parallel, and rank 0 alone writes the record. What a stage computes lives in scoring.passes (the pass runner) and scoring.train.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm import tqdm

from scoring import ranks
from scoring.errors import UserError
from scoring.ingest.catalog import dataset_meta, load_examples, load_table
from scoring.jobs import memory
from scoring.models.formatting import template_fingerprint
from scoring.models.loading import ModelRef, load_tokenizer, model_card, resolve
from scoring.passes.engine import PassConfig
from scoring.passes.runner import PassProgress, RowKind, fill_pass, pass_key, pass_manifest
from scoring.store.cache import Cache
from scoring.store.jobs import ROLES, Job, save_job


class Stopped(Exception):
    """The job was cancelled between two chunks or two training steps."""


class Steps:
    """One running job's steps: ``fill`` a pass, ``train`` a model; each keeps the job record up to date."""

    def __init__(self, cache: Cache, job: Job, tokenizer, should_stop: Callable[[], bool], progress: bool):
        self.cache, self.job, self.tokenizer = cache, job, tokenizer
        self.should_stop, self.progress = should_stop, progress and ranks.current().main  # one progress bar
        self.template = template_fingerprint(tokenizer)

    def stage(self, text: str, **changes) -> None:
        self.job.progress(stage=text, rss_mb=memory.rss_mb(), **changes)
        save_job(self.cache, self.job)

    def timed(self, name: str, started: float) -> None:
        """Record the wall time of step ``name`` in ``job.timings`` (seconds; a reused pass or model costs ~0) and
        its peak resident memory in ``job.peak_mb`` (MB, since the step's :func:`memory.reset_peak`)."""
        self.job.timings = {**(self.job.timings or {}), name: round(time.perf_counter() - started, 1)}
        self.job.peak_mb = {**(self.job.peak_mb or {}), name: memory.peak_mb()}

    def fill(self, role: str, kind: RowKind, ref: ModelRef, examples, config: PassConfig,
             other: tuple[str, str] | None = None, record: bool = True) -> str:  # fmt: skip
        """Run (or resume, or reuse) the ``role`` pass of model ``ref``; returns its key. ``other`` = (name,
        fingerprint) of another dataset the examples come from (a separate validation set): its pass key is kept in
        ``job.val_passes[role]``, not as the job's own pass. ``record=False``: kept nowhere in the job (an
        evaluation's passes over its eval sets, whose keys its result holds)."""
        cache, job, started = self.cache, self.job, time.perf_counter()
        memory.release()
        memory.reset_peak()
        dataset, fingerprint = other or (job.dataset, job.dataset_fingerprint)
        key = pass_key(kind, fingerprint, ref, self.template, config)
        if record and other:
            job.val_passes = {**(job.val_passes or {}), role: key}
        elif record:
            job.set_pass_key(role, key)
        manifest = pass_manifest(cache, key)
        name = f"{role} pass" + (f" on {dataset}" if other else "")
        if ranks.all_true(bool(manifest and manifest.get("complete"))):  # every rank decides alike
            self.stage(job.stage, done=manifest["n_examples"], total=manifest["n_examples"])
            self.timed(name, started)  # reused: ~0 s
            return key
        what = "scoring pairs" if kind.name == "pair" else "scoring"
        where = f", on {dataset}" if other else ""
        self.stage(f"{what} ({role} model{where})", done=0, total=len(examples), eta_s=None)
        bar = tqdm(total=len(examples), desc=f"{role} pass", unit="ex", file=sys.stderr) if self.progress else None

        def on_progress(p: PassProgress) -> None:
            job.progress(done=p.done, total=p.total, tokens_per_s=round(p.tokens_per_s, 1), eta_s=round(p.eta_s or 0),
                         rss_mb=memory.rss_mb())  # fmt: skip
            save_job(cache, job)
            if bar:
                bar.n = p.done
                bar.set_postfix(tok_s=f"{p.tokens_per_s:.0f}")
                bar.refresh()

        about = {"role": role, "dataset": dataset, "dataset_fingerprint": fingerprint, "template": self.template}
        finished = fill_pass(cache, key, kind, ref, self.tokenizer, examples, config, about, job.trust_remote_code,
                             on_progress, self.should_stop)  # fmt: skip
        if bar:
            bar.close()
        if not finished:
            raise Stopped()
        self.timed(name, started)
        return key

    def train(self, role: str, stage: str, run: Callable[[Callable[[int, int], None]], ModelRef | None]) -> ModelRef:
        """Train a model with ``run(on_step)``; records its card as the job's ``<role>_model`` when ``role`` is a pass
        role (an evaluation arm's is kept in its result instead). ``run`` returns None when it stopped early
        (cancelled), which becomes :class:`Stopped`."""
        job = self.job
        self.stage(stage, done=0, total=None, tokens_per_s=None, eta_s=None)
        started = time.perf_counter()
        memory.release()
        memory.reset_peak()

        def on_step(step: int, total: int) -> None:
            elapsed = time.perf_counter() - started
            job.progress(done=step, total=total, eta_s=round(elapsed / max(step, 1) * (total - step)),
                         rss_mb=memory.rss_mb())  # fmt: skip
            save_job(self.cache, job)

        trained = run(on_step)
        if trained is None:
            raise Stopped()
        self.timed(f"{role} training", started)
        if role in ROLES:
            setattr(job, "reference_model" if role == "ref" else f"{role}_model", model_card(trained))
        return trained


def start(cache: Cache, job: Job, kind: RowKind, should_stop, progress: bool, frame: bool = True):
    """What every score job does first: check the dataset is still what was asked for, resolve and load the base
    model's tokenizer, and read the examples (the kind's columns: a DataFrame, or with ``frame=False`` the Arrow
    table, held at about the text's own size). Returns (steps, base model, examples, pass config)."""
    if dataset_meta(cache, job.dataset)["fingerprint"] != job.dataset_fingerprint:
        raise UserError(f"dataset {job.dataset!r} was replaced since this job was queued; score it again")
    job.progress(stage="loading model")
    save_job(cache, job)
    base = resolve(job.model, cache)
    steps = Steps(cache, job, load_tokenizer(base, job.trust_remote_code), should_stop, progress)
    examples = (load_examples if frame else load_table)(cache, job.dataset, columns=list(kind.columns))
    return steps, base, examples, PassConfig(**job.pass_config)
