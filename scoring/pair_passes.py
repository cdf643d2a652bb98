"""Preference pairs through the models: the pair pass, the validation split, and the pair scoring job.

The job (kind "pair_score") runs, in order, each step reused by fingerprint when already done:

    ref pass     π_ref = the base model (``--model``, the SFT model): log π_ref(y_w|x), log π_ref(y_l|x) per pair
    theta        π_θ = π_ref after one DPO epoch over every unflagged pair (scoring.dpo), then its pass
    val          θ_val = π_ref after one DPO epoch on the validation pairs, then its pass. The validation pairs are
                 another pair dataset (``--val``), else a seeded held-out fraction of this one (default 10 %)

A pair pass scores each side as its own sequence (prompt turns + reply) with the same forward machinery as the SFT
passes (``losses.score_encoded``), two sequences per pair in one micro-batched call, and writes one immutable
Parquet part per chunk of a fixed shuffled order (schema.PAIR_LOSSES), under a temporary name then renamed, each
chunk claimed with an flock: the crash-safe, resumable, multi-worker contract of ``losses.run_pass``.
Scores only need the passes they read: ``--scores margin_base`` trains nothing.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, replace
from typing import Callable

import numpy as np
import pyarrow as pa

from . import data, models, schema
from .dpo import DPOTrainConfig, encode_side, train_dpo
from .errors import UserError
from .formatting import template_fingerprint
from .losses import PassConfig, PassProgress, chunk_ranges, done_ranges, fingerprint_fields, part_path, scoring_order
from .losses import score_encoded
from .results import read_pass
from .store import Cache, atomic_write_json, atomic_write_parquet, read_json, try_claim

PAIR_CODE_VERSION = "1"  # bump when a change alters any number a pair pass writes
PAIR_PASS_CONFIG = PassConfig(embed=False, alone=False, dtype="fp32")  # fp32: θ - π_ref differences are small
PAIR_ROLES = ("ref", "theta", "val")
DEFAULT_VAL_FRACTION = 0.1
PAIR_COLUMNS = ["idx", "id", "flag", "messages", "response", "rejected"]


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pair_pass_key(dataset_fp: str, model: models.ModelRef, template_fp: str, config: PassConfig) -> str:
    return _key({"kind": "pair", "dataset": dataset_fp, "model": model.fingerprint, "template": template_fp,
                 "config": fingerprint_fields(config), "code_version": PAIR_CODE_VERSION})  # fmt: skip


# ---------------------------------------------------------------- the pass


def run_pair_pass(cache: Cache, key: str, model, tokenizer, examples, config: PassConfig,
                  on_progress: Callable[[PassProgress], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> bool:
    """Fill ``passes/<key>/parts`` with one PAIR_LOSSES row per pair. Returns False when stopped early.

    ``examples``: DataFrame with idx, id, messages (prompt turns JSON), response (chosen), rejected.
    """
    config = replace(config, alone=False, embed=False)
    parts = cache.parts_dir(key)
    parts.mkdir(parents=True, exist_ok=True)
    n = len(examples)
    order = scoring_order(n, config.seed)
    ranges = chunk_ranges(n, config.chunk_size)
    idx, ids = examples["idx"].to_numpy(), examples["id"].to_numpy()
    prompts, chosen, rejected = (examples[c].to_numpy() for c in ("messages", "response", "rejected"))
    tokens, scored_here, started = 0, 0, time.perf_counter()
    while True:
        todo = [r for r in ranges if r not in done_ranges(parts)]
        if not todo:
            return True
        for start, end in todo:
            if should_stop and should_stop():
                return False
            claim = try_claim(parts / f".claim-{start:09d}-{end:09d}")
            if claim is None:  # another worker holds this chunk
                continue
            try:
                if part_path(parts, start, end).exists():
                    continue
                rows_at = order[start:end]
                encoded = []
                for r in rows_at:  # (chosen, rejected) of each pair, side by side
                    turns = json.loads(prompts[r])
                    encoded += [encode_side(tokenizer, turns, chosen[r], config.max_length),
                                encode_side(tokenizer, turns, rejected[r], config.max_length)]
                out = score_encoded(model, encoded, config, tokenizer.pad_token_id)
                rows = []
                for j, r in enumerate(rows_at):
                    c, rj = out[2 * j], out[2 * j + 1]
                    rows.append({
                        "idx": int(idx[r]), "id": str(ids[r]), "n_prompt_tokens": c["n_prompt_tokens"],
                        "n_chosen_tokens": c["n_response_tokens"], "n_rejected_tokens": rj["n_response_tokens"],
                        "chosen_logp": -c["loss_sum"], "rejected_logp": -rj["loss_sum"],
                        "chosen_token_ids": c["token_ids"], "rejected_token_ids": rj["token_ids"],
                        "chosen_token_losses": c["token_losses"], "rejected_token_losses": rj["token_losses"],
                        "flag": schema.join_flags(c["flag"], rj["flag"]),
                    })  # fmt: skip
                atomic_write_parquet(part_path(parts, start, end), pa.Table.from_pylist(rows, schema.PAIR_LOSSES))
            finally:
                claim.release()
            scored_here += end - start
            tokens += sum(len(e.ids) for e in encoded)
            if on_progress:
                n_done = sum(e - s for s, e in done_ranges(parts))
                elapsed = max(time.perf_counter() - started, 1e-9)
                on_progress(PassProgress(n_done, n, tokens / elapsed, (n - n_done) * elapsed / scored_here))
        if not done_ranges(parts) >= set(ranges):
            time.sleep(0.5)  # the rest is claimed by other workers


# ---------------------------------------------------------------- training sets


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


# ---------------------------------------------------------------- the job


def pair_request(
    cache: Cache,
    dataset: str,
    model: str | None = None,
    scores: list[str] | None = None,
    pass_config: PassConfig = PAIR_PASS_CONFIG,
    dpo: DPOTrainConfig = DPOTrainConfig(),
    val: str | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    trust_remote_code: bool = False,
) -> dict:
    """A job record scoring the pair dataset ``dataset`` (not yet saved). ``val``: a pair dataset name, or a file
    that is ingested as the dataset ``<dataset>-val``; None holds out ``val_fraction`` of ``dataset``."""
    from .scores import PAIR_DEFAULT_SCORES, pair_passes_needed

    meta = data.dataset_meta(cache, dataset)
    if meta.get("kind") != "pair":
        raise UserError(f"dataset {dataset!r} holds {meta.get('kind', 'sft')} examples, not preference pairs")
    scores = list(scores or PAIR_DEFAULT_SCORES)
    passes = sorted(pair_passes_needed(scores), key=PAIR_ROLES.index)
    val_spec = None
    if "val" in passes:
        val_spec = {"fraction": val_fraction, "seed": dpo.seed} if val is None else _val_dataset(cache, dataset, val)
        if val is None:
            validation_split(["x"], val_fraction)  # checks the fraction now, not in the worker
    request = {
        "kind": "pair_score",
        "dataset": dataset,
        "dataset_fingerprint": meta["fingerprint"],
        "model": model or models.DEFAULT_MODEL,
        "model_fingerprint": models.resolve(model, cache, convert=False).fingerprint,
        "passes": passes,
        "dpo": asdict(dpo) if passes != ["ref"] else None,
        "val": val_spec,
        "pass_config": fingerprint_fields(pass_config),
        "code_version": PAIR_CODE_VERSION,
        "trust_remote_code": trust_remote_code,
    }
    return {"id": _key({**request, "scores": sorted(scores)}), **request, "scores": scores}


def _val_dataset(cache: Cache, dataset: str, val: str) -> dict:
    known = {m["name"] for m in data.list_datasets(cache)}
    name = val if val in known else f"{dataset}-val"
    if val not in known:
        data.ingest(val, cache, name=name, replace=True, progress=False)
    meta = data.dataset_meta(cache, name)
    if meta.get("kind") != "pair":
        raise UserError(f"--val {val}: holds {meta.get('kind', 'sft')} examples, not preference pairs")
    return {"dataset": name, "fingerprint": meta["fingerprint"]}


def run_pair_job(cache: Cache, job: dict, should_stop, progress: bool, save_job, stopped: type[Exception]) -> None:
    """Fill every pass the job needs (see the module docstring). ``save_job`` / ``stopped`` come from scoring.jobs."""
    meta = data.dataset_meta(cache, job["dataset"])
    if meta["fingerprint"] != job["dataset_fingerprint"]:
        raise UserError(f"dataset {job['dataset']!r} was replaced since this job was queued; score it again")
    job["stage"] = "loading model"
    save_job(cache, job)
    base = models.resolve(job["model"], cache)
    tokenizer = models.load_tokenizer(base, job.get("trust_remote_code", False))
    examples = data.load_examples(cache, job["dataset"], columns=PAIR_COLUMNS)
    config = PassConfig(**job["pass_config"])
    steps = Steps(cache, job, tokenizer, config, should_stop, progress, save_job, stopped)
    ref_key = steps.fill("ref", base, examples)
    ref = read_pass(cache, ref_key, ["idx", "chosen_logp", "rejected_logp"]).set_index("idx")
    examples = examples.join(ref, on="idx")  # log π_ref per pair: DPO's reference term, no second forward pass
    if "theta" in job["passes"]:
        train = examples[eligible(examples)]
        theta = steps.train("theta", base, as_pairs(train), _ref_logps(train), ref_key)
        steps.fill("theta", theta, examples)
    if "val" in job["passes"]:
        spec = job["val"]
        if spec.get("dataset"):
            if data.dataset_meta(cache, spec["dataset"])["fingerprint"] != spec["fingerprint"]:
                raise UserError(f"validation dataset {spec['dataset']!r} was replaced; score again")
            val = data.load_examples(cache, spec["dataset"], columns=PAIR_COLUMNS)
            val = val[eligible(val)].assign(chosen_logp=np.nan, rejected_logp=np.nan)  # TRL computes π_ref
        else:
            pool = examples[eligible(examples)]
            held = validation_split(pool["id"].astype(str).tolist(), spec["fraction"], spec["seed"])
            val = pool[pool["id"].astype(str).isin(held)]
        job["n_val_pairs"] = int(len(val))
        given = val["chosen_logp"].notna().all()
        val_model = steps.train("val", base, as_pairs(val), _ref_logps(val) if given else None, ref_key)
        steps.fill("val", val_model, examples)


def _ref_logps(examples) -> list[tuple[float, float]]:
    return list(zip(examples["chosen_logp"].astype(float), examples["rejected_logp"].astype(float)))


class Steps:
    """The job's two kinds of step, with its progress bookkeeping."""

    def __init__(self, cache, job, tokenizer, config, should_stop, progress, save_job, stopped):
        self.cache, self.job, self.tokenizer, self.config = cache, job, tokenizer, config
        self.should_stop, self.progress, self.save_job, self.stopped = should_stop, progress, save_job, stopped
        self.template = template_fingerprint(tokenizer)

    def train(self, role: str, base: models.ModelRef, pairs, ref_logps=None, ref_key: str = "") -> models.ModelRef:
        job = self.job
        job.update(stage=f"DPO training ({role} model, {len(pairs)} pairs)", done=0, total=None, eta_s=None,
                   tokens_per_s=None)  # fmt: skip
        self.save_job(self.cache, job)
        started = time.perf_counter()

        def on_step(step: int, total: int) -> None:
            elapsed = time.perf_counter() - started
            job.update(done=step, total=total, eta_s=round(elapsed / max(step, 1) * (total - step)))
            self.save_job(self.cache, job)

        trained = train_dpo(self.cache, base, self.tokenizer, pairs, self.template, self.config.max_length,
                            DPOTrainConfig(**job["dpo"]), models.pick_device(), on_step, self.should_stop,
                            job.get("trust_remote_code", False), ref_logps, f"pair-pass:{ref_key}")  # fmt: skip
        if trained is None:
            raise self.stopped()
        job[f"{role}_model"] = models.model_card(trained)
        return trained

    def fill(self, role: str, ref: models.ModelRef, examples) -> str:
        """Run (or resume, or reuse) one pair pass; returns its key."""
        cache, job, config = self.cache, self.job, self.config
        key = pair_pass_key(job["dataset_fingerprint"], ref, self.template, config)
        job[f"{role}_pass"] = key
        manifest_path = cache.pass_dir(key) / "manifest.json"
        manifest = read_json(manifest_path)
        if manifest and manifest.get("complete"):
            job.update(done=manifest["n_examples"], total=manifest["n_examples"])
            self.save_job(cache, job)
            return key
        device = models.pick_device()
        dtype = models.pick_dtype(device, config.dtype)
        manifest = {
            "key": key, "kind": "pair", "role": role, "dataset": job["dataset"],
            "dataset_fingerprint": job["dataset_fingerprint"], "model": models.model_card(ref),
            "template": self.template, "config": fingerprint_fields(config), "code_version": PAIR_CODE_VERSION,
            "dtype": models.dtype_name(dtype), "n_examples": len(examples), "complete": False,
        }  # fmt: skip
        atomic_write_json(manifest_path, manifest)
        job.update(stage=f"scoring pairs ({role} model)", done=0, total=len(examples), eta_s=None)
        self.save_job(cache, job)
        model = models.load_model(ref, device, dtype, job.get("trust_remote_code", False))
        bar = None
        if self.progress:
            import sys

            from tqdm import tqdm

            bar = tqdm(total=len(examples), desc=f"{role} pass", unit="pair", file=sys.stderr)

        def on_progress(p: PassProgress) -> None:
            job.update(done=p.done, total=p.total, tokens_per_s=round(p.tokens_per_s, 1), eta_s=round(p.eta_s or 0))
            self.save_job(cache, job)
            if bar:
                bar.n = p.done
                bar.set_postfix(tok_s=f"{p.tokens_per_s:.0f}")
                bar.refresh()

        finished = run_pair_pass(cache, key, model, self.tokenizer, examples, config, on_progress, self.should_stop)
        if bar:
            bar.close()
        if not finished:
            raise self.stopped()
        manifest["complete"] = True
        atomic_write_json(manifest_path, manifest)
        return key
