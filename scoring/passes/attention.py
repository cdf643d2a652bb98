"""Attention inside each sequence of a packed row: the one operation that mixes positions.

A packed row holds several sequences side by side (:mod:`scoring.passes.packing`). ``packed_attention``, registered
in transformers' ``AttentionInterface`` under ``ATTENTION`` by :func:`install`, runs causal SDPA over each
sequence's own slice (plus the shared prefix), so no token attends across a boundary. :func:`can_pack` says when
that gives exactly the numbers of the model's own attention.

Two ways to run it, the same numbers (to the kernels' rounding):

- on a GPU in bf16 / fp16 where torch has variable-length flash attention (``torch.nn.attention.varlen``, torch >=
  2.10): **one kernel call per layer** for the whole row. The prefix is a sequence of its own; each sequence's own
  tokens are queries over [prefix | own tokens] as keys (the prefix's keys gathered once per sequence), causal
  aligned to the lower right as flash attention aligns it (:meth:`Pack.varlen_layout`);
- elsewhere (a CPU, fp32, an older torch): one SDPA call per sequence, the prefix's keys concatenated in front.
"""
from __future__ import annotations

import functools
import inspect
import itertools
from dataclasses import dataclass, field

ATTENTION = "davir_packed"


@dataclass
class Pack:
    """Where each sequence sits in a packed row. Passed to the attention function through the model's kwargs."""

    prefix: int  # P: shared tokens at the head of the row
    starts: list[int]  # row position of each sequence's first own token
    lengths: list[int]  # own tokens of each sequence (its length minus P)
    _masks: dict = field(default_factory=dict)  # own length -> (L, P + L) bool mask, built once per batch
    _varlen: tuple | None = None  # varlen_layout's answer, built once per batch (every layer uses it)

    def mask(self, length: int, device):
        """Causal mask aligned to the lower right: own token r sees the whole prefix and own tokens 0..r."""
        import torch

        if length not in self._masks:
            full = torch.ones(length, self.prefix + length, dtype=torch.bool, device=device)
            self._masks[length] = full.tril(diagonal=self.prefix)
        return self._masks[length]

    def varlen_layout(self, device) -> tuple:
        """(key rows, cu_seq_q, cu_seq_k, max_q, max_k) for one variable-length attention call over the row.

        Queries stay in row order: [prefix (P) | own tokens of seq 0 | of seq 1 | ...], one segment each. Keys are
        gathered as [prefix | prefix, own 0 | prefix, own 1 | ...], so segment i's queries (L_i) meet its P + L_i
        keys; causal attention aligned to the lower right lets own token r see the prefix and own tokens 0..r.
        ``key rows`` is None when there is no prefix (the keys are the row itself)."""
        import torch

        if self._varlen is None:
            p = self.prefix
            q_lengths = ([p] if p else []) + list(self.lengths)
            k_lengths = ([p] if p else []) + [p + length for length in self.lengths]
            rows = None
            if p:
                prefix = torch.arange(p)
                rows = torch.cat([prefix] + [torch.cat([prefix, torch.arange(start, start + length)])
                                             for start, length in zip(self.starts, self.lengths)]).to(device)  # fmt: skip
            cu_q, cu_k = (torch.tensor([0, *itertools.accumulate(n)], dtype=torch.int32, device=device)
                          for n in (q_lengths, k_lengths))  # fmt: skip
            self._varlen = (rows, cu_q, cu_k, max(q_lengths), max(k_lengths))
        return self._varlen


def varlen_kernel(query):
    """torch's variable-length flash attention, as :func:`causal_varlen` adapts it, when it serves ``query`` (CUDA,
    in bf16 or fp16 or under autocast to one of them, a head size that is a multiple of 8 up to 256, a torch that
    has it), else None."""
    size = query.shape[-1]
    if not query.is_cuda or varlen_dtype(query) is None or size > 256 or size % 8:
        return None
    return _torch_varlen()


def varlen_dtype(query):
    """The half precision the kernel runs ``query`` in: its own, or under CUDA autocast the autocast's (training
    under bf16 autocast keeps the residual stream, and so the rotated queries and keys, in fp32; SDPA would cast
    them down the same way); None when neither is half."""
    import torch

    half = (torch.bfloat16, torch.float16)
    if query.dtype in half:
        return query.dtype
    if query.is_cuda and torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") in half:
        return torch.get_autocast_dtype("cuda")
    return None


@functools.cache
def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return causal_varlen(varlen_attn)


def causal_varlen(varlen_attn):
    """``varlen_attn`` (either of torch's signatures: the first releases take ``is_causal`` and no ``scale`` or
    grouped-query heads; later ones ``window_size``, ``scale`` and ``enable_gqa``) as one call
    ``(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, scale) -> out``: causal, aligned to the lower right, any number
    of key heads dividing the query heads."""
    params = inspect.signature(varlen_attn).parameters

    def call(q, k, v, cu_q, cu_k, max_q, max_k, scale):
        options: dict = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
        if q.shape[1] != k.shape[1]:
            if "enable_gqa" in params:
                options["enable_gqa"] = True
            else:
                groups = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if "scale" in params:
            options["scale"] = scale
        elif scale is not None:  # the kernel's own scale is 1 / sqrt(D)
            q = q * (scale * q.shape[-1] ** 0.5)
        return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **options)

    return call


def varlen_attention(query, key, value, pack: Pack, scaling, kernel):
    """The packed row's attention as one call of ``kernel`` (:func:`causal_varlen`'s). query (1, Hq, N, D);
    key, value (1, Hkv, N, D). Returns (1, N, Hq, D)."""
    rows, cu_q, cu_k, max_q, max_k = pack.varlen_layout(query.device)
    dtype = varlen_dtype(query) or query.dtype  # (the CPU tests run the layout in fp32)
    q = query[0].transpose(0, 1).to(dtype).contiguous()  # (N, Hq, D)
    k, v = key[0].to(dtype), value[0].to(dtype)  # (Hkv, N, D)
    if rows is not None:
        k, v = k[:, rows], v[:, rows]  # (Hkv, T_k, D): the prefix's keys in front of each sequence's
    k, v = k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous()  # (T_k, Hkv, D)
    return kernel(q, k, v, cu_q, cu_k, max_q, max_k, scaling).unsqueeze(0)


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers attention-interface function: causal attention inside each packed sequence only.

    query (1, Hq, N, D); key, value (1, Hkv, N, D). Returns ((1, N, Hq, D), None) like the built-in functions.
    A call without a pack (a padded batch through the same model) is plain SDPA, so the model's attention
    implementation is switched once and for all instead of back and forth around each call -- a switch that
    worker threads sharing the model would race on.
    """
    pack: Pack | None = kwargs.get("davir_pack")
    if pack is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)  # fmt: skip
    return opaque_attend()(query, key, value, pack, scaling), None


def attend_packed(query, key, value, pack: Pack, scaling):
    """One varlen kernel call where it serves, else one SDPA call per sequence. (1, N, Hq, D)."""
    if (kernel := varlen_kernel(query)) is not None:
        return varlen_attention(query, key, value, pack, scaling, kernel)
    return per_sequence_attention(query, key, value, pack, scaling)


@functools.cache
def opaque_attend():
    """:func:`attend_packed` behind ``torch.compiler.disable`` (made once; torch is imported lazily): with compiled
    decoder layers (--compile) a layer's graph stops at the attention and resumes after it. Traced, the pack's
    layout (Python lists of each row's lengths) became guards of the graph, so every micro-batch recompiled every
    layer until torch.compile gave up and fell back to eager (a 2-layer model on a CPU: 30 s per batch, eager after 8
    batches). Outside torch.compile the wrapper only calls through."""
    import torch

    return torch.compiler.disable(attend_packed, recursive=True)


def per_sequence_attention(query, key, value, pack: Pack, scaling):
    """The packed row's attention as one SDPA call per sequence. query (1, Hq, N, D); key, value (1, Hkv, N, D).
    Returns (1, N, Hq, D), contiguous."""
    import torch
    import torch.nn.functional as F

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
    return torch.cat([o.transpose(1, 2) for o in outs], dim=1)  # (1, N, Hq, D), contiguous


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
