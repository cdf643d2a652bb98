"""Attention inside each sequence of a packed row: the one operation that mixes positions.

A packed row holds several sequences side by side (:mod:`scoring.passes.packing`). ``packed_attention``, registered
in transformers' ``AttentionInterface`` under ``ATTENTION`` by :func:`install`, runs causal SDPA over each
sequence's own slice (plus the shared prefix), so no token attends across a boundary. :func:`can_pack` says when
that gives exactly the numbers of the model's own attention.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ATTENTION = "davir_packed"


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
