"""Table schemas, defined once. Every writer builds its Arrow tables from these; every reader relies on them.

Examples (``datasets/<name>/examples.parquet``), one row per ingested record:

    idx       int64   row number in ingest order (0..N-1); the key used by passes and parts
    id        string  stable example id: the source's unique id column, else str(idx)
    kind      string  "sft" (instruction / chat) or "pair" (preference pair)
    messages  string  JSON list of {"role", "content"}; the loss covers the "assistant" turns
    prompt    string  display text of everything before the last assistant turn
    response  string  the last assistant turn
    flag      string  "" when fine, else snake_case reasons joined by ","
    source    string  "file:line" (or "file:#row") the row came from
    original  string  JSON of the original record, for export

Pair examples (``examples.parquet`` of a dataset whose meta has kind "pair"; scoring.ingest.pairs): the EXAMPLES
columns with ``messages`` = the prompt turns both sides share (no final assistant turn), ``response`` = the chosen
reply, plus

    rejected  string  the rejected reply

Loss table (``passes/<key>/parts/*.parquet``), one row per example per model pass:

    idx                int64    example row number
    id                 string   example id (denormalised so exports never need a join)
    n_prompt_tokens    int32    tokens before the first scored token (after truncation)
    n_response_tokens  int32    scored (assistant) tokens
    loss_sum           float64  summed NLL of the response tokens given the prompt
    alone_loss_sum     float64  summed NLL of the same tokens with no prompt (for IFD); NaN when not computed
    token_ids          binary   int32 little-endian ids of the scored tokens
    token_losses       binary   float16 per-token NLL of the scored tokens (given the prompt)
    embedding          binary   float16 mean-pooled last hidden state; empty when not computed
    flag               string   "" or reasons found while scoring (e.g. "too_long")

Pair loss table (``passes/<key>/parts/*.parquet`` of a pair pass; scoring.passes.runner.PAIRS), one row per pair per model:

    idx, id                                   as above
    n_prompt_tokens                           int32    tokens before the reply (after truncation)
    n_chosen_tokens, n_rejected_tokens        int32    scored reply tokens of each side
    chosen_logp, rejected_logp                float64  summed log-probability of each reply given the prompt
    chosen_token_ids, rejected_token_ids      binary   int32 ids of the scored tokens of each side
    chosen_token_losses, rejected_token_losses binary  float16 per-token NLL of each side
    flag                                      string   "" or reasons found while scoring (e.g. "too_long")
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

EXAMPLES = pa.schema(
    [
        ("idx", pa.int64()),
        ("id", pa.string()),
        ("kind", pa.string()),
        ("messages", pa.string()),
        ("prompt", pa.string()),
        ("response", pa.string()),
        ("flag", pa.string()),
        ("source", pa.string()),
        ("original", pa.string()),
    ]
)

PAIR_EXAMPLES = pa.schema([*EXAMPLES, ("rejected", pa.string())])

LOSSES = pa.schema(
    [
        ("idx", pa.int64()),
        ("id", pa.string()),
        ("n_prompt_tokens", pa.int32()),
        ("n_response_tokens", pa.int32()),
        ("loss_sum", pa.float64()),
        ("alone_loss_sum", pa.float64()),
        ("token_ids", pa.binary()),
        ("token_losses", pa.binary()),
        ("embedding", pa.binary()),
        ("flag", pa.string()),
    ]
)

PAIR_LOSSES = pa.schema(
    [
        ("idx", pa.int64()),
        ("id", pa.string()),
        ("n_prompt_tokens", pa.int32()),
        ("n_chosen_tokens", pa.int32()),
        ("n_rejected_tokens", pa.int32()),
        ("chosen_logp", pa.float64()),
        ("rejected_logp", pa.float64()),
        ("chosen_token_ids", pa.binary()),
        ("rejected_token_ids", pa.binary()),
        ("chosen_token_losses", pa.binary()),
        ("rejected_token_losses", pa.binary()),
        ("flag", pa.string()),
    ]
)

def encode_f16(values) -> bytes:
    return np.asarray(values, dtype=np.float16).tobytes()


def decode_f16(blob: bytes | None) -> np.ndarray:
    return np.frombuffer(blob or b"", dtype=np.float16)


def encode_i32(values) -> bytes:
    return np.asarray(values, dtype="<i4").tobytes()


def decode_i32(blob: bytes | None) -> np.ndarray:
    return np.frombuffer(blob or b"", dtype="<i4")


VALIDATION_FLAG = "validation_pair"  # a pair held out to train θ_val (scoring.jobs.pairs)
NEVER_SELECTED = (VALIDATION_FLAG,)  # flag reasons no selection keeps, even with --include-flagged


def join_flags(*flags: str) -> str:
    """Merge flag strings ("" or "a,b") into one, keeping order and dropping repeats."""
    seen: list[str] = []
    for flag in flags:
        for reason in (flag or "").split(","):
            if reason and reason not in seen:
                seen.append(reason)
    return ",".join(seen)


def count_flags(flags) -> dict[str, int]:
    """reason -> rows carrying it, over flag strings ("" or "a,b": a row flagged "a,b" counts in both)."""
    counts: dict[str, int] = {}
    for flag in flags:
        for reason in (flag or "").split(","):
            if reason:
                counts[reason] = counts.get(reason, 0) + 1
    return counts
