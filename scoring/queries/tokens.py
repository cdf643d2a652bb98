"""Per-token views of one example, for each dataset kind: which tokens the models found hard, and how that changed.

Instruction data (:func:`token_view`): each response token's loss under the base and the reference model and the
reduction between them. Preference pairs (:func:`pair_example`, :func:`pair_token_frame`): each reply token's
log-probability under π_ref and π_θ. Read from the token blobs of the passes' parts; token ids are turned back
into text with the job's tokenizer when it can be loaded here (else shown as ``#id``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from scoring.errors import UserError
from scoring.ingest.catalog import load_row
from scoring.models.loading import cached_tokenizer
from scoring.queries.view import positions, query
from scoring.schema import decode_f16, decode_i32
from scoring.scores.tables import pick_job
from scoring.scores.view_reads import column
from scoring.scores.views import View
from scoring.store.cache import Cache
from scoring.store.parts import connect, parts_glob, sql_str


def cache_tokenizer(cache: Cache, view: View):
    """The tokenizer of the view's job (None when it cannot be loaded here)."""
    return cached_tokenizer(cache, view.job.model or "")


def decode_tokens(tokenizer, ids) -> list[str]:
    """Each token id as its text, or ``#id`` without a tokenizer."""
    if tokenizer is None:
        return [f"#{int(t)}" for t in ids]
    return [tokenizer.decode([int(t)]) for t in ids]


def _pass_row(cache: Cache, view: View, role: str, idx: int) -> pd.Series | None:
    position = int(positions(view, [idx])[0])
    parts = column(view, f"{role}_part")
    part = int(parts[position]) if position < len(parts) else -1
    key = view.job.pass_key(role)
    names = view.stats.get(f"{role}_parts") or []
    if part < 0 or not key or part >= len(names):
        return None
    path = cache.parts_dir(key) / names[part]
    got = query(f"SELECT token_ids, token_losses FROM read_parquet({sql_str(path)}) WHERE idx = ?", [int(idx)])
    return got.iloc[0] if len(got) else None


def token_view(cache: Cache, view: View, idx: int) -> pd.DataFrame:
    """Per response token: its text, base loss, reference loss and the reduction base - reference (NaN w/o ref).

    Read from the token_losses blobs of the two passes' parts (the view says which part holds the row).
    """
    base = _pass_row(cache, view, "base", idx)
    if base is None:
        return pd.DataFrame(columns=["token", "base", "ref", "reduction"])
    ids = decode_i32(base["token_ids"])
    base_losses = decode_f16(base["token_losses"]).astype(np.float32)
    ref = _pass_row(cache, view, "ref", idx)
    ref_losses = decode_f16(ref["token_losses"]).astype(np.float32) if ref is not None else None
    if ref_losses is None or len(ref_losses) != len(base_losses):
        ref_losses = np.full(len(base_losses), np.nan, dtype=np.float32)
    tokens = decode_tokens(cache_tokenizer(cache, view), ids)
    return pd.DataFrame({"token": tokens, "base": base_losses, "ref": ref_losses, "reduction": base_losses - ref_losses})


def pair_example(cache: Cache, dataset: str, idx: int, job_id: str | None = None) -> dict:
    """One pair for display: prompt, chosen and rejected texts, flag, and per model pass ("ref", "theta", "val")
    the scored token ids and per-token NLL of each side (numpy arrays; empty where that pass has not run yet).

    The app's pair view colours tokens from these; decoding the ids needs the job's tokenizer."""
    job = pick_job(cache, dataset, job_id)
    row = load_row(cache, dataset, idx, ["id", "prompt", "response", "rejected", "flag"])
    if row is None:
        raise UserError(f"dataset {dataset!r} has no pair with idx {idx}")
    out = {"idx": int(idx), "id": row["id"], "prompt": row["prompt"], "chosen": row["response"],
           "rejected": row["rejected"], "flag": row["flag"], "tokens": {}}  # fmt: skip
    for role in ("ref", "theta", "val"):
        glob = parts_glob(cache, job.pass_key(role))
        if glob is None:
            continue
        found = connect().execute(f"SELECT * FROM read_parquet({sql_str(glob)}) WHERE idx = ?", [int(idx)]).df()
        if found.empty:
            continue
        r = found.iloc[0]
        out["tokens"][role] = {side: {"ids": decode_i32(r[f"{side}_token_ids"]),
                                      "nll": decode_f16(r[f"{side}_token_losses"]).astype(float)}
                               for side in ("chosen", "rejected")}  # fmt: skip
    return out


def pair_token_frame(tokenizer, side: dict[str, dict], name: str) -> pd.DataFrame:
    """Per token of one reply: text, log π_ref, log π_θ and the change log π_θ − log π_ref (NaN without θ)."""
    ref = side["ref"][name]
    ids, ref_nll = ref["ids"], ref["nll"]
    theta = side.get("theta", {}).get(name)
    theta_nll = theta["nll"] if theta is not None and len(theta["nll"]) == len(ref_nll) else np.full(len(ref_nll), np.nan)
    tokens = decode_tokens(tokenizer, ids)
    return pd.DataFrame({"token": tokens, "ref_logp": -ref_nll, "theta_logp": -theta_nll,
                         "change": ref_nll - theta_nll})  # fmt: skip
