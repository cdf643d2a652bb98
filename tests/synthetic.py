"""A synthetic scored cache written directly in the real schemas: examples, base and reference pass parts, job record
and UMAP layout -- everything a finished ``score`` job leaves behind, without running a model.

Why: the app's tests and the latency benchmark need scored caches of any size in seconds (a million rows would take
a real model days on this machine). Everything downstream -- views, queries, selection, export, pages -- reads these
files through the same code paths as real results. Losses are drawn so the scores have realistic shapes (a base
loss per token, a reference loss 0-60 % lower), embeddings come from a few clusters, and a few rows can carry
untrusted text (``extra_rows``) for the XSS checks.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from scoring.ingest.demo import SWAP_LABEL
from scoring.jobs.influence import PART, influence_request, sample_pool
from scoring.passes.runner import chunk_ranges, scoring_order
from scoring.schema import EXAMPLES, LOSSES, PAIR_EXAMPLES, PAIR_LOSSES
from scoring.scores.tables import pick_job, score_table
from scoring.selection.influence import agreement
from scoring.selection.pairs import DEFAULT_BAND
from scoring.store.cache import Cache, atomic_write_json, atomic_write_parquet
from scoring.store.jobs import Job, save_job
from scoring.store.parts import part_path

CATEGORIES = ("open_qa", "brainstorming", "classification", "summarization", "creative_writing")
WORDS = ("alpha", "beta", "gamma", "delta", "planet", "river", "number", "capital", "sort", "convert", "answer")
XSS_PROMPT = 'Say hi <script>window.__xss = 1</script>'
XSS_RESPONSE = '<img src=x onerror="window.__xss = 2"><b>bold?</b> <script>alert(1)</script>'


def _blobs(lengths: np.ndarray, dtype: str, rng: np.random.Generator, scale: np.ndarray | None = None) -> pa.Array:
    """One binary value per row holding ``lengths[i]`` numbers of ``dtype``, built without a Python loop."""
    total = int(lengths.sum())
    if dtype == "<i4":
        values = rng.integers(3, 380, total).astype("<i4")
    else:
        per_row = np.repeat(scale if scale is not None else np.ones(len(lengths)), lengths)
        values = (rng.gamma(2.0, 0.5, total) * per_row).astype(np.float16)
    width = np.dtype(dtype).itemsize
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths * width, out=offsets[1:])
    return pa.BinaryArray.from_buffers(pa.binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(values.tobytes())])


def _texts(n: int, rng: np.random.Generator) -> tuple[list[str], list[str], list[str]]:
    words = np.asarray(WORDS)
    a, b, c = (words[rng.integers(0, len(words), n)] for _ in range(3))
    prompts = [f"Task {i}: {x} {y}" for i, x, y in zip(range(n), a, b)]
    responses = [f"Answer {i}: {y} {z} {x}." for i, x, y, z in zip(range(n), a, b, c)]
    cats = np.asarray(CATEGORIES)[rng.integers(0, len(CATEGORIES), n)].tolist()
    return prompts, responses, cats


def build(root: str | Path, n: int = 300, dataset: str = "synth", dim: int = 16, part_rows: int = 64,
          seed: int = 0, extra_rows: list[dict] | None = None, model: str = "synthetic-model",
          layout: bool = True) -> Cache:  # fmt: skip
    """Write dataset ``dataset`` with ``n`` rows (+ ``extra_rows``: dicts with id / prompt / response) and a
    finished score job over it into the cache at ``root``; returns the Cache."""
    cache = Cache(root)
    rng = np.random.default_rng(seed)
    prompts, responses, cats = _texts(n, rng)
    ids = [f"ex-{i:07d}" for i in range(n)]
    for row in extra_rows or []:
        ids.append(str(row["id"]))
        prompts.append(str(row["prompt"]))
        responses.append(str(row["response"]))
        cats.append(str(row.get("category", CATEGORIES[0])))
    total = len(ids)
    idx = np.arange(total, dtype=np.int64)
    flags = np.where(rng.random(total) < 0.02, "too_long", "").astype(object)
    flags[-len(extra_rows or []) or total:] = ""  # extra rows stay clean (selectable)
    originals = [json.dumps({"id": i, "instruction": p, "output": r, "category": c})
                 for i, p, r, c in zip(ids, prompts, responses, cats)]  # fmt: skip
    messages = [json.dumps([{"role": "user", "content": p}, {"role": "assistant", "content": r}])
                for p, r in zip(prompts, responses)]  # fmt: skip
    examples = pa.table({
        "idx": idx, "id": ids, "kind": ["sft"] * total, "messages": messages, "prompt": prompts,
        "response": responses, "flag": flags.tolist(), "source": [f"synthetic:{i}" for i in range(total)],
        "original": originals,
    }, schema=EXAMPLES)  # fmt: skip
    atomic_write_parquet(cache.examples_path(dataset), examples)
    fingerprint = hashlib.sha256(f"{dataset}:{total}:{seed}:{extra_rows}".encode()).hexdigest()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(cache.dataset_meta_path(dataset), {
        "name": dataset, "fingerprint": fingerprint, "source": "synthetic", "layout": "alpaca", "kind": "sft",
        "n_rows": total, "flag_counts": {"too_long": int((flags != "").sum())} if (flags != "").any() else {},
        "columns": ["id", "instruction", "output", "category"], "id_column": "id", "limit": None, "field_map": None,
        "created": now,
    })  # fmt: skip

    n_prompt = rng.integers(8, 120, total).astype(np.int32)
    n_resp = rng.integers(4, 48, total).astype(np.int32)
    base_mean = rng.gamma(4.0, 0.4, total) + 0.2  # (N,) mean loss per response token
    reduction = rng.beta(2.0, 4.0, total) * 0.9  # (N,) relative drop after fine-tuning
    alone_ratio = 1.0 + rng.gamma(2.0, 0.15, total)  # (N,) the response alone is harder than with its prompt
    centres = rng.normal(size=(8, dim))
    cluster = rng.integers(0, 8, total)
    emb = (centres[cluster] + 0.35 * rng.normal(size=(total, dim))).astype(np.float16)  # (N, dim)
    emb_blobs = pa.BinaryArray.from_buffers(
        pa.binary(), total, [None, pa.py_buffer(np.arange(total + 1, dtype=np.int32) * dim * 2), pa.py_buffer(emb.tobytes())]
    )  # fmt: skip
    token_ids = _blobs(n_resp, "<i4", rng)
    base_tok = _blobs(n_resp, "<f2", rng, base_mean)
    ref_tok = _blobs(n_resp, "<f2", rng, base_mean * (1 - reduction))
    key = hashlib.sha256(f"{fingerprint}:{model}".encode()).hexdigest()[:16]
    passes = {"base": f"base{key}", "ref": f"ref{key}"}
    order = scoring_order(total, seed)
    for role, losses, tok in (("base", base_mean, base_tok), ("ref", base_mean * (1 - reduction), ref_tok)):
        pkey = passes[role]
        for start, end in chunk_ranges(total, part_rows):
            rows = np.sort(order[start:end])
            take = pa.array(rows)
            part = pa.table({
                "idx": idx[rows], "id": pa.array(ids).take(take), "n_prompt_tokens": n_prompt[rows],
                "n_response_tokens": n_resp[rows], "loss_sum": losses[rows] * n_resp[rows],
                "alone_loss_sum": (losses[rows] * alone_ratio[rows] * n_resp[rows]) if role == "base" else np.full(len(rows), np.nan),
                "token_ids": token_ids.take(take), "token_losses": tok.take(take),
                "embedding": emb_blobs.take(take) if role == "base" else pa.array([b""] * len(rows), pa.binary()),
                "flag": pa.array(flags[rows].tolist(), pa.string()),
            }, schema=LOSSES)  # fmt: skip
            atomic_write_parquet(part_path(cache.parts_dir(pkey), start, end), part)
        atomic_write_json(cache.pass_dir(pkey) / "manifest.json", {
            "key": pkey, "role": role, "dataset": dataset, "dataset_fingerprint": fingerprint, "n_examples": total,
            "complete": True, "created": now,
        })  # fmt: skip
    if layout:
        xy = centres[cluster][:, :2] * 3 + rng.normal(size=(total, 2))
        atomic_write_parquet(cache.map_path(passes["base"]), pa.table(
            {"idx": idx, "x": xy[:, 0].astype(np.float32), "y": xy[:, 1].astype(np.float32)}))
    job_id = hashlib.sha256(f"job:{key}".encode()).hexdigest()[:16]
    atomic_write_json(cache.jobs_dir() / f"{job_id}.json", {
        "id": job_id, "kind": "score", "dataset": dataset, "dataset_fingerprint": fingerprint, "model": model,
        "model_fingerprint": key, "reference": "train", "passes": ["base", "ref"],
        "scores": ["davir", "rho", "ifd", "ppl"], "base_pass": passes["base"], "ref_pass": passes["ref"],
        "pass_config": {"embed": True, "max_length": 1024}, "state": "done", "stage": "done", "done": total,
        "total": total, "created": now, "finished": now, "updated": now, "error": None, "owner_pid": None,
    })  # fmt: skip
    return cache


def _pair_side(rng: np.random.Generator, n_tokens: int, shift: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Token ids and per-token NLL under ref / theta / val for one reply (theta and val move each token by ``shift``
    times a random fraction: positive shift = the model likes the reply more after training)."""
    ids = rng.integers(3, 380, n_tokens).astype("<i4")
    ref = rng.gamma(2.0, 0.6, n_tokens) + 0.05
    theta = np.clip(ref * (1 - shift * rng.uniform(0.2, 1.0, n_tokens)), 0.01, None)
    val = np.clip(ref * (1 - 0.6 * shift * rng.uniform(0.0, 1.0, n_tokens)), 0.01, None)
    return ids, {r: v.astype(np.float16) for r, v in (("ref", ref), ("theta", theta), ("val", val))}


def build_pairs(root: str | Path, n: int = 120, dataset: str = "pairs", swap_fraction: float = 0.2,
                part_rows: int = 32, seed: int = 0, extra_rows: list[dict] | None = None,
                model: str = "synthetic-model") -> Cache:  # fmt: skip
    """Write the preference-pair dataset ``dataset`` (``n`` pairs + ``extra_rows``: dicts with id / prompt / chosen /
    rejected) and a finished ``pair_score`` job with ref, theta and val passes into the cache at ``root``.

    A seeded ``swap_fraction`` of the generated pairs is labelled ``defect`` = "swapped_pair" (like ``demo --pairs``)
    and moves the wrong way under DPO, so ``irm`` ranks them low. Returns the Cache."""
    cache = Cache(root)
    rng = np.random.default_rng(seed)
    prompts, chosen, _ = _texts(n, rng)
    rejected = [f"Not sure, maybe {i * 7 % 13}." for i in range(n)]
    ids = [f"p-{i:06d}" for i in range(n)]
    swapped = np.zeros(n, dtype=bool)
    swapped[rng.choice(n, round(swap_fraction * n), replace=False)] = True
    defects = [SWAP_LABEL if s else "" for s in swapped]
    for row in extra_rows or []:
        ids.append(str(row["id"]))
        prompts.append(str(row["prompt"]))
        chosen.append(str(row["chosen"]))
        rejected.append(str(row["rejected"]))
        defects.append("")
    total = len(ids)
    swapped = np.concatenate([swapped, np.zeros(total - n, dtype=bool)])
    idx = np.arange(total, dtype=np.int64)
    flags = [""] * total
    flags[1] = "duplicate"  # one flagged pair: never selected
    originals = [json.dumps({"id": i, "prompt": p, "chosen": c, "rejected": r, "defect": d})
                 for i, p, c, r, d in zip(ids, prompts, chosen, rejected, defects)]  # fmt: skip
    messages = [json.dumps([{"role": "user", "content": p}]) for p in prompts]
    examples = pa.table({
        "idx": idx, "id": ids, "kind": ["pair"] * total, "messages": messages, "prompt": prompts,
        "response": chosen, "flag": flags, "source": [f"synthetic:{i}" for i in range(total)],
        "original": originals, "rejected": rejected,
    }, schema=PAIR_EXAMPLES)  # fmt: skip
    atomic_write_parquet(cache.examples_path(dataset), examples)
    fingerprint = hashlib.sha256(f"pairs:{dataset}:{total}:{seed}:{extra_rows}".encode()).hexdigest()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(cache.dataset_meta_path(dataset), {
        "name": dataset, "fingerprint": fingerprint, "source": "synthetic", "layout": "pair_prompt", "kind": "pair",
        "n_rows": total, "flag_counts": {"duplicate": 1}, "columns": ["id", "prompt", "chosen", "rejected", "defect"],
        "id_column": "id", "limit": None, "field_map": None, "created": now,
    })  # fmt: skip

    strength = rng.uniform(0.05, 0.5, total)  # (N,) how far DPO moves each pair
    n_prompt = rng.integers(6, 40, total).astype(np.int32)
    sides = []  # per pair: (chosen ids, chosen nll per role), (rejected ids, rejected nll per role)
    for i in range(total):
        sign = -1.0 if swapped[i] else 1.0
        sides.append((_pair_side(rng, int(rng.integers(3, 20)), sign * strength[i]),
                      _pair_side(rng, int(rng.integers(3, 20)), -sign * strength[i])))  # fmt: skip
    key = hashlib.sha256(f"{fingerprint}:{model}".encode()).hexdigest()[:16]
    passes = {role: f"pair{role}{key}" for role in ("ref", "theta", "val")}
    order = scoring_order(total, seed)
    for role, pkey in passes.items():
        for start, end in chunk_ranges(total, part_rows):
            rows = np.sort(order[start:end])
            cols: dict[str, list] = {c: [] for c in PAIR_LOSSES.names}
            for i in rows:
                (cid, cnll), (rid, rnll) = sides[i]
                for name, value in (("idx", int(i)), ("id", ids[i]), ("n_prompt_tokens", int(n_prompt[i])),
                                    ("n_chosen_tokens", len(cid)), ("n_rejected_tokens", len(rid)),
                                    ("chosen_logp", -float(cnll[role].astype(np.float64).sum())),
                                    ("rejected_logp", -float(rnll[role].astype(np.float64).sum())),
                                    ("chosen_token_ids", cid.tobytes()), ("rejected_token_ids", rid.tobytes()),
                                    ("chosen_token_losses", cnll[role].tobytes()),
                                    ("rejected_token_losses", rnll[role].tobytes()), ("flag", flags[i])):  # fmt: skip
                    cols[name].append(value)
            atomic_write_parquet(part_path(cache.parts_dir(pkey), start, end), pa.table(cols, schema=PAIR_LOSSES))
        atomic_write_json(cache.pass_dir(pkey) / "manifest.json", {
            "key": pkey, "role": role, "kind": "pair", "dataset": dataset, "dataset_fingerprint": fingerprint,
            "n_examples": total, "complete": True, "dtype": "float32", "created": now,
        })  # fmt: skip
    job_id = hashlib.sha256(f"pairjob:{key}".encode()).hexdigest()[:16]
    atomic_write_json(cache.jobs_dir() / f"{job_id}.json", {
        "id": job_id, "kind": "pair_score", "dataset": dataset, "dataset_fingerprint": fingerprint, "model": model,
        "model_fingerprint": key, "passes": ["ref", "theta", "val"], "dpo": {"beta": 0.1},
        "val": {"fraction": 0.1, "seed": 0},
        "scores": ["margin_base", "irm", "lossdiff", "davir_dpo", "len_diff", "logp_chosen", "logp_rejected"],
        **{f"{role}_pass": pkey for role, pkey in passes.items()}, "pass_config": {"max_length": 1024},
        "state": "done", "stage": "done", "done": total, "total": total, "created": now, "finished": now,
        "updated": now, "error": None, "owner_pid": None,
    })  # fmt: skip
    return cache


def _stats(n: int, reward_accuracy: float, margin: float, preference: float) -> dict:
    return {"n": n, "reward_accuracy": reward_accuracy, "reward_margin": margin, "preference_accuracy": preference}


WARMUPS = {  # a warm-up report as scoring.jobs.pairs.warmup_report writes it (θ_val trained from θ)
    "theta": {"start": "ref", "n_pairs": 120, "train": {"before": _stats(120, 0.0, 0.0, 0.55),
                                                       "after": _stats(120, 0.8167, 0.1234, 0.6083)},
              "validation": {"before": _stats(13, 0.0, 0.0, 0.5385), "after": _stats(13, 0.6923, 0.0456, 0.5385)}},
    "val": {"start": "theta", "n_pairs": 13, "train": {"before": _stats(13, 0.6923, 0.0456, 0.5385),
                                                      "after": _stats(13, 0.9231, 0.2101, 0.6154)}},
}  # fmt: skip
TIMINGS = {"ref pass": 12.3, "theta training": 40.1, "theta pass": 11.0, "val training": 5.2, "val pass": 10.9}


def add_influence(root: str | Path, dataset: str = "pairs", sample: int = 64, seed: int = 0) -> Job:
    """Give the dataset's ``pair_score`` job (from :func:`build_pairs`) a warm-up report, step timings and a θ model
    card, and write a finished ``influence`` job over it as scoring.jobs.influence leaves one: IF on a seeded sample
    (drawn to track −lossdiff, plus noise) in parts ``<cache>/influence/<key>/part-<start>.parquet`` (start, idx,
    influence) and the agreement report (scoring.selection.influence.agreement) in ``job.result``. Returns it."""
    cache = Cache(root)
    source = pick_job(cache, dataset)
    source.warmups, source.timings, source.theta_model = WARMUPS, TIMINGS, {"path": "synthetic-theta"}
    save_job(cache, source)
    chosen = sample_pool(score_table(cache, dataset, source.id)[0], sample, seed)
    lossdiff = chosen["lossdiff"].to_numpy(dtype=float)
    influence = -lossdiff + np.random.default_rng(seed + 1).normal(0.0, lossdiff.std(), len(chosen))
    key = hashlib.sha256(f"influence:{source.id}:{sample}:{seed}".encode()).hexdigest()[:16]
    folder = cache.root / "influence" / key
    for start in range(0, len(chosen), PART):
        stop = min(start + PART, len(chosen))
        atomic_write_parquet(folder / f"part-{start:07d}.parquet", pa.table({
            "start": np.full(stop - start, start, dtype=np.int64), "idx": chosen["idx"].to_numpy()[start:stop],
            "influence": influence[start:stop]}))  # fmt: skip
    job = influence_request(cache, dataset, source.id, sample, seed)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    job.result = {**agreement(chosen.assign(influence=influence), DEFAULT_BAND), "key": key, "n_val": 13,
                  "sample_seed": seed}  # fmt: skip
    job.progress(state="done", stage="done", done=len(chosen), total=len(chosen), created=now, finished=now)
    save_job(cache, job)
    return job
