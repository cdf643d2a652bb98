"""Packed scoring: the sequences of a micro-batch side by side in one row, no padding, a shared prefix run once.

Why: a padded batch spends a fifth of its work on pad tokens even after sorting by length, and with a chat
template every example starts with the same system prompt, which a plain loop recomputes for each one. On a CPU
every wasted token is paid in full.

How: the sequences of a micro-batch are concatenated into one row ``(1, N)``. ``position_ids`` restart for every
sequence, so rotary embeddings see the positions each would see alone. Attention is the only operation that mixes
positions; a custom attention function (scoring/passes/attention.py)
runs causal SDPA over each sequence's own slice, so no token attends across a boundary. Everything else (linears,
norms, MLP, the LM head) works position by position and runs once over the whole row.

Shared prefix: when every sequence of the micro-batch starts with the same ``P`` tokens, those positions are
computed once at the head of the row. Each sequence's own tokens attend to the prefix and, causally, to
themselves. ``P`` stops before any position whose hidden state predicts a scored token, so every state the loss
reads belongs to one sequence. The numbers equal those of scoring each sequence alone (up to float rounding).

The layout of a packed row::

    [ prefix (P) | own tokens of seq 0 (L0) | own tokens of seq 1 (L1) | ... ]
    positions:  0..P-1 | P..P+L0-1          | P..P+L1-1                | ...
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from scoring.passes.attention import Pack
from scoring.passes.fused import packed_trunk
from scoring.passes.head import trunk_inputs

MIN_SHARED_PREFIX = 4  # a shorter common prefix is not worth the extra concatenations in attention


def packed_batches(lengths: list[int], batch_tokens: int) -> Iterator[list[int]]:
    """Indices grouped so each group's real tokens fit in ``batch_tokens``, shortest first (similar lengths
    together, so a shared prefix is likely and per-sequence attention is balanced)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batch: list[int] = []
    total = 0
    for i in order:
        if batch and total + lengths[i] > batch_tokens:
            yield batch
            batch, total = [], 0
        batch.append(i)
        total += lengths[i]
    if batch:
        yield batch


def shared_prefix(seqs: list[list[int]], first_scored: list[int]) -> int:
    """Tokens every sequence starts with, stopping before the first position that predicts a scored token."""
    if len(seqs) < 2:
        return 0
    limit = min(min(first_scored) - 1, min(len(s) for s in seqs) - 1)
    first = seqs[0]
    p = 0
    while p < limit and all(s[p] == first[p] for s in seqs[1:]):
        p += 1
    return p if p >= MIN_SHARED_PREFIX else 0


def packed_hidden(trunk, seqs: list[list[int]], prefix: int, device, fused: bool = False):
    """Run the trunk over the packed row (the model must be ``install``-ed). Returns (hidden (N, H), pack).

    ``fused``: through scoring/fused.py's kernels instead of the trunk's own forward (where ``fused.supports``)."""
    import torch

    row: list[int] = list(seqs[0][:prefix])
    positions: list[int] = list(range(prefix))
    starts, lengths = [], []
    for seq in seqs:
        own = seq[prefix:]
        starts.append(len(row))
        lengths.append(len(own))
        row.extend(own)
        positions.extend(range(prefix, len(seq)))
    pack = Pack(prefix=prefix, starts=starts, lengths=lengths)
    ids = torch.tensor(row, dtype=torch.long, device=device)  # (N,)
    pos = torch.tensor(positions, dtype=torch.long, device=device)  # (N,)
    if fused:
        return packed_trunk(trunk, ids, pos, pack), pack
    inputs = trunk_inputs(trunk, ids[None])
    hidden = trunk(**inputs, position_ids=pos[None], use_cache=False, davir_pack=pack).last_hidden_state
    return hidden[0], pack  # (N, H)


def row_positions(pack: Pack, k: int, token_positions):
    """Row positions of sequence ``k``'s tokens at the given sequence positions (all >= pack.prefix)."""
    return pack.starts[k] + np.asarray(token_positions, dtype=np.int64) - pack.prefix
