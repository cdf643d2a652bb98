"""Packed scoring: the sequences of a micro-batch side by side in one row, no padding, a shared prefix run once.

Why: a padded batch spends a fifth of its work on pad tokens even after sorting by length, and with a chat
template every example starts with the same system prompt, which a plain loop recomputes for each one. On a CPU
every wasted token is paid in full.

How: the sequences of a micro-batch are concatenated into one row ``(1, N)``. ``position_ids`` restart for every
sequence, so rotary embeddings see the positions each would see alone. Attention is the only operation that mixes
positions; a custom attention function (registered in transformers' ``AttentionInterface`` under ``ATTENTION``)
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

from dataclasses import dataclass, field
from typing import Iterator

ATTENTION = "davir_packed"
MIN_SHARED_PREFIX = 4  # a shorter common prefix is not worth the extra concatenations in attention


@dataclass
class Pack:
    """Where each sequence sits in a packed row. Passed to the attention function through the model's kwargs."""

    prefix: int  # P: shared tokens at the head of the row
    starts: list[int]  # row position of each sequence's first own token
    lengths: list[int]  # own tokens of each sequence (its length minus P)
    _masks: dict = field(default_factory=dict)  # own length -> (L, P + L) bool mask, built once per batch

    def mask(self, length: int, device):
        """Causal mask aligned to the lower right: own token r sees the whole prefix and own tokens 0..r."""
        import torch

        if length not in self._masks:
            full = torch.ones(length, self.prefix + length, dtype=torch.bool, device=device)
            self._masks[length] = full.tril(diagonal=self.prefix)
        return self._masks[length]


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers attention-interface function: causal SDPA inside each packed sequence only.

    query (1, Hq, N, D); key, value (1, Hkv, N, D). Returns ((1, N, Hq, D), None) like the built-in functions.
    A call without a pack (a padded batch through the same model) is plain SDPA, so the model's attention
    implementation is switched once and for all instead of back and forth around each call -- a switch that
    worker threads sharing the model would race on.
    """
    import torch
    import torch.nn.functional as F

    pack: Pack | None = kwargs.get("davir_pack")
    if pack is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)  # fmt: skip
    groups = query.shape[1] // key.shape[1]
    gqa = {}
    if groups > 1 and query.device.type == "cpu":  # the CPU flash kernel reads each key head for its query group
        gqa = {"enable_gqa": True}
    elif groups > 1:  # grouped-query attention: one repeat per layer, not one per sequence
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    # The row is [prefix | seq 0 | seq 1 | ...] with no gaps: split, not slice, so autograd (when training through
    # a packed row) joins the pieces' gradients with one concatenation instead of a zero-filled tensor per slice.
    p = pack.prefix
    sizes = [p, *pack.lengths]
    queries, keys, values = query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2)
    outs = []
    if p:
        outs.append(F.scaled_dot_product_attention(queries[0], keys[0], values[0], is_causal=True, scale=scaling,
                                                   **gqa))  # fmt: skip
    for q, k, v, length in zip(queries[1:], keys[1:], values[1:], pack.lengths):  # q (1, Hq, L, D)
        if p:
            k = torch.cat([keys[0], k], dim=2)  # (1, Hkv, P + L, D)
            v = torch.cat([values[0], v], dim=2)
            outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=pack.mask(length, q.device), scale=scaling,
                                                       **gqa))  # fmt: skip
        else:
            outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, **gqa))
    out = torch.cat([o.transpose(1, 2) for o in outs], dim=1)  # (1, N, Hq, D), contiguous
    return out, None


def install(model) -> None:
    """Route the model's attention through ``packed_attention`` (idempotent; plain SDPA for unpacked calls).

    transformers builds no mask for an implementation it does not know, which is what both our paths want:
    packed rows carry their own layout, and padded rows are right-padded under causal attention.
    """
    from transformers import AttentionInterface

    if ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION, packed_attention)
    model.config._attn_implementation = ATTENTION


def can_pack(model, longest: int) -> bool:
    """True when packing gives exactly the numbers of the model's own attention.

    It needs a model that dispatches attention through transformers' interface, plain causal attention (no
    sliding window shorter than the sequence, no attention-logit soft-capping) and the SDPA backend (eager or
    flash-attention models are left as they are).
    """
    config = model.config
    if not getattr(model, "_supports_attention_backend", False):
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", ATTENTION):
        return False
    if getattr(config, "attn_logit_softcapping", None):
        return False
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and longest > window:
        return False
    return True


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
        from .fused import packed_trunk

        return packed_trunk(trunk, ids, pos, pack), pack
    hidden = trunk(input_ids=ids[None], position_ids=pos[None], use_cache=False, davir_pack=pack).last_hidden_state
    return hidden[0], pack  # (N, H)


def row_positions(pack: Pack, k: int, token_positions):
    """Row positions of sequence ``k``'s tokens at the given sequence positions (all >= pack.prefix)."""
    import numpy as np

    return pack.starts[k] + np.asarray(token_positions, dtype=np.int64) - pack.prefix
