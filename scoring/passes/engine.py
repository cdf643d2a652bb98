"""The forward engine: per-token NLL of the scored tokens of many sequences at once, fast on every device.

Throughput comes from four choices (benchmarks/throughput.py measures them against a plain loop):

1. No padding: examples are scored in chunks taken from a fixed shuffled order (so partial results are an
   unbiased sample); inside a chunk they are sorted by length and packed side by side into rows of at most
   ``batch_tokens`` real tokens, with attention kept inside each sequence and a prefix shared by the whole row
   (a chat template's system prompt) computed once (scoring/passes/packing.py). Models packing cannot serve exactly
   (sliding windows, soft-capped attention, flash-attention on a GPU) get padded micro-batches of similar
   lengths instead.
2. No full-vocabulary logits: we run the trunk, keep the hidden states of the positions that predict a scored
   token, and project only those through the LM head, a slice at a time, upcasting each slice to fp32 for the
   log-softmax. Prompt positions never reach the vocabulary.
3. bf16 where the device runs it fast (CUDA; a CPU with AMX / AVX512-BF16 whose measured bf16 products are not
   slower than fp32's, scoring/models/precision.py); fp32 otherwise.
4. On a CPU in bf16, fused kernels (scoring/passes/fused.py, scoring/passes/cpu_kernels.py) for everything a Llama-style layer
   does outside its matrix products and attention, and for the log-softmax of the LM head: 1.6x the eager
   speed of SmolLM2-135M. On a GPU, ``compile`` fuses the same steps with torch.compile.

A call's micro-batches depend only on the sequences it is given, so scoring the same chunk again (a resumed pass,
scoring/passes/runner.py) gives bit-identical numbers.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from scoring import schema
from scoring.models.formatting import Encoded
from scoring.models.loading import pick_device
from scoring.passes import packing
from scoring.passes.attention import can_pack, install
from scoring.passes.fused import supports as fused_supports
from scoring.passes.head import plain_linear_head, sliced_nll, trunk_inputs


@dataclass(frozen=True)
class PassConfig:
    """How a pass is run. Every field that can change a number is part of the pass fingerprint."""

    max_length: int = 1024  # tokens per example; longer ones are cut at the right and flagged too_long
    batch_tokens: int = 8192  # tokens per micro-batch (packed: real tokens; padded: rows x longest row)
    chunk_size: int = 64  # examples per engine call and part file, the most a crash can lose (jobs: default_chunk_size)
    head_rows: int = 512  # hidden states projected through the LM head at once (each worker: rows x vocab fp32 twice)
    embed: bool = True  # keep a mean-pooled last hidden state per example
    alone: bool = True  # also score the response with no prompt (IFD's denominator)
    seed: int = 0  # the shuffled scoring order
    dtype: str = "auto"  # "auto" (bf16 where it pays: loading.pick_dtype, else fp32), "bf16", "fp16", "fp32"
    pack: str = "auto"  # "auto" (packed rows on CPU where the model allows), "on" (wherever allowed), "off"
    compile: bool = False  # on a GPU: torch.compile each decoder layer (see compile_layers); ignored on a CPU
    kernels: str = "auto"  # "auto": packed bf16 rows of a Llama-style model on a CPU use fused.py's kernels; "off"


def default_batch_tokens(device: str | None = None) -> int:
    """Tokens per micro-batch when the user gives none: 8,192 on a CPU (the worker threads' rows stay in cache),
    65,536 on a GPU (large enough to keep the matrix units busy; the H200 figures in README use it). ``device``
    defaults to the one a worker on this machine would pick."""
    if device is None:
        device = pick_device()
    return 65536 if device.startswith("cuda") else PassConfig.batch_tokens


def default_chunk_size(batch_tokens: int) -> int:
    """Examples per chunk for micro-batches of ``batch_tokens``: 64 at the CPU's 8,192 and in proportion above it
    (512 at a GPU's 65,536), so a chunk holds about as many micro-batches on every device. A chunk is one engine call
    (its examples length-sorted together, its response-alone pass one more micro-batch, one host sync) and one
    Parquet part: 64 examples would fill a fifth of a GPU's micro-batch, and a crash there loses seconds of work."""
    return max(PassConfig.chunk_size, PassConfig.chunk_size * batch_tokens // PassConfig.batch_tokens)


def fingerprint_fields(config: PassConfig) -> dict:
    """All of it: even batching, which only moves low-order bits, so a key always means identical numbers.
    (``compile`` only when on, so the keys of passes made before it existed still match.)"""
    fields = asdict(config)
    if not fields["compile"]:
        del fields["compile"]
    return fields


# ---------------------------------------------------------------- the math


def trunk_and_head(model):
    """The transformer trunk (returns hidden states) and the LM head of a causal LM."""
    trunk = model.get_decoder() if hasattr(model, "get_decoder") else None
    if trunk is None or trunk is model:
        trunk = getattr(model, model.base_model_prefix)
    return trunk, model.get_output_embeddings()


def head_losses(model, states, targets, head_rows: int, fused: bool = False):
    """NLL of ``targets`` (N,) given hidden ``states`` (N, H): the LM head a slice at a time, never (N, V) at once.

    ``fused`` (bf16 on a CPU, see uses_kernels): the fp32 log-softmax of each slice by a kernel reading the bf16
    logits, instead of an fp32 copy of them and torch's log-softmax. Under autograd (training) with a plain linear
    head, scoring/passes/head.py's sliced loss, whose backward also works a slice at a time and adds the head's
    weight gradient straight into its ``.grad`` (training calls ``.backward()``)."""
    import torch
    import torch.nn.functional as F

    if torch.is_grad_enabled() and states.requires_grad and (weight := plain_linear_head(model)) is not None:
        return sliced_nll(states, weight, targets, head_rows, into_grad=True)  # trained by .backward()
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    losses = []
    for start in range(0, states.shape[0], head_rows):
        logits = head(states[start : start + head_rows])  # (n, V), one slice at a time
        want = targets[start : start + head_rows]
        if fused and not cap and logits.dtype == torch.bfloat16:
            from scoring.passes import cpu_kernels  # compiled with numba on first use

            piece = torch.empty(logits.shape[0], dtype=torch.float32)
            cpu_kernels.cross_entropy(cpu_kernels.as_u16(logits), want.numpy(), piece.numpy())
            losses.append(piece)
            continue
        logits = logits.float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        losses.append(F.cross_entropy(logits, want, reduction="none"))  # (n,)
    return torch.cat(losses) if losses else states.new_zeros(0, dtype=torch.float32)


def response_losses(model, ids, attention, scored, head_rows: int = 2048, want_hidden: bool = False):
    """Per-token NLL of the scored tokens of a right-padded batch, without materialising (B, T, V) logits.

    ids, attention, scored: (B, T). Returns (losses (N,) fp32 in row-major order of ``scored[:, 1:]``,
    mean-pooled hidden state (B, H) fp32 or None).
    """
    trunk, _ = trunk_and_head(model)
    # Right padding under a causal mask: a real token never attends to the pads after it, so no padding mask is
    # needed and attention takes its fast is_causal path. Pad positions compute garbage nobody reads.
    hidden = trunk(**trunk_inputs(trunk, ids), use_cache=False).last_hidden_state  # (B, T, H)
    predicts = scored[:, 1:]  # (B, T-1): position t-1 predicts token t
    losses = head_losses(model, hidden[:, :-1][predicts], ids[:, 1:][predicts], head_rows)  # (N,)
    pooled = None
    if want_hidden:
        mask = attention.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, H)
    return losses, pooled


def micro_batches(lengths: list[int], batch_tokens: int) -> Iterator[list[int]]:
    """Indices grouped so that rows x longest row <= batch_tokens, shortest first (little padding)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batch: list[int] = []
    for i in order:
        longest = max([lengths[j] for j in batch] + [lengths[i]])
        if batch and longest * (len(batch) + 1) > batch_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _pad(seqs: list[list[int]], pad_id: int, device):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
    return ids.to(device), attention.to(device)


def _padded_batch(model, seqs, scoreds, config: PassConfig, pad_id: int, want_hidden: bool, device):
    import torch

    ids, attention = _pad(seqs, pad_id, device)
    scored = torch.zeros_like(ids, dtype=torch.bool)  # (B, T)
    for row, mask in enumerate(scoreds):
        scored[row, : len(mask)] = torch.tensor(mask)
    losses, pooled = response_losses(model, ids, attention, scored, config.head_rows, want_hidden)
    pieces = losses.split(scored[:, 1:].sum(1).tolist())
    return [(piece, pooled[row] if pooled is not None else None) for row, piece in enumerate(pieces)]


def packed_batch(model, seqs, scoreds, config: PassConfig, want_hidden: bool, device, fused: bool):
    """(per-token NLL of the scored tokens, mean-pooled hidden state or None) per sequence, the sequences packed in
    one row (scoring/passes/packing.py; the model ``install``-ed). Differentiable unless ``fused`` (train/sft.py trains
    through it)."""
    import torch

    first_scored = [mask.index(True) for mask in scoreds]
    prefix = packing.shared_prefix(seqs, first_scored)
    trunk, _ = trunk_and_head(model)
    hidden, pack = packing.packed_hidden(trunk, seqs, prefix, device, fused)  # (N, H)
    where, targets, counts = [], [], []
    for k, (seq, mask) in enumerate(zip(seqs, scoreds)):
        tokens = [t for t in range(1, len(seq)) if mask[t]]  # scored tokens; position t-1 predicts token t
        where.append(packing.row_positions(pack, k, [t - 1 for t in tokens]))
        targets.extend(seq[t] for t in tokens)
        counts.append(len(tokens))
    rows = torch.from_numpy(np.concatenate(where)).to(device)
    losses = head_losses(model, hidden[rows], torch.tensor(targets, dtype=torch.long, device=device),
                          config.head_rows, fused)  # fmt: skip
    out = []
    shared = hidden[:prefix].float().sum(0) if prefix else 0.0  # (H,)
    for k, piece in enumerate(losses.split(counts)):
        pooled = None
        if want_hidden:
            start, length = pack.starts[k], pack.lengths[k]
            pooled = (shared + hidden[start : start + length].float().sum(0)) / (prefix + length)  # (H,)
        out.append((piece, pooled))
    return out


def uses_packing(model, config: PassConfig, longest: int) -> bool:
    if config.pack == "off":
        return False
    on_cpu = next(model.parameters()).device.type == "cpu"
    return (config.pack == "on" or on_cpu) and can_pack(model, longest)


def uses_kernels(model, config: PassConfig, packed: bool) -> bool:
    """Packed rows through scoring/passes/fused.py's kernels (a Llama-style model in bf16 on a CPU)."""
    return packed and config.kernels != "off" and fused_supports(model, trunk_and_head(model)[0])


def compile_layers(model) -> None:
    """torch.compile each decoder layer in place, for dynamic shapes (once per model).

    Why: in eager mode the norms (with their fp32 round trip), rotary embeddings, SiLU x up and the residual adds
    run as separate memory-bound kernels, which on an H200 took as much time as the matrix products of a 0.5B
    model; compiled, they fuse (2.1x faster scoring there, a few seconds to compile). The layers share one code
    object and so their compiled graphs. Not used on a CPU: packed rows vary the graph per micro-batch, and each
    recompilation costs tens of seconds there.
    """
    import torch

    if getattr(model, "_davir_compiled", False):
        return
    trunk, _ = trunk_and_head(model)
    layers = getattr(trunk, "layers", None)
    if layers is None:
        return  # not a decoder-layer stack this knows: leave the model eager
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 8 * len(layers))
    for layer in layers:
        layer.compile(dynamic=True)
    model._davir_compiled = True


def cpu_workers(device) -> int:
    """Micro-batches scored at once on a CPU: one per torch thread, each single-threaded (1 on a GPU).

    Why: one micro-batch spread over all cores spends much of its time in thread hand-offs (RMSNorm, rotary,
    attention on 200-token sequences are too small to split well), and it stalls whenever another process takes
    a core -- the app, a test run, a second worker. Independent micro-batches on single-threaded workers keep
    every core busy and degrade gracefully. (Which examples share a row follows the worker count, so bf16
    numbers can differ in their low-order bits between machines with different core counts, as they do between
    CPU types; on one machine a pass and its resumption are bit-identical.)
    """
    import torch

    return 1 if device.type != "cpu" else max(1, torch.get_num_threads())


def score_sequences(model, seqs: list[list[int]], scoreds: list[list[bool]], config: PassConfig, pad_id: int,
                    want_hidden: bool = False) -> list[tuple]:
    """(per-token NLL of the scored tokens (n_i,) fp32, mean-pooled last hidden state (H,) or None) per sequence.

    Every sequence must have at least one scored token after its first. Order of the result = order given.
    """
    import torch

    if not seqs:
        return []
    device = next(model.parameters()).device
    if config.compile and device.type == "cuda":
        compile_layers(model)
    lengths = [len(s) for s in seqs]
    packed = uses_packing(model, config, max(lengths))
    fused = uses_kernels(model, config, packed)
    workers = cpu_workers(device)
    if packed:
        install(model)
        # Enough rows to give every worker one: a chunk of short examples fits in a single row otherwise.
        budget = min(config.batch_tokens, max(max(lengths), math.ceil(sum(lengths) / workers)))
        batches = list(packing.packed_batches(lengths, budget))
    else:
        batches = list(micro_batches(lengths, config.batch_tokens))

    def run(batch: list[int]) -> list[tuple]:
        args = ([seqs[i] for i in batch], [scoreds[i] for i in batch], config)
        with torch.inference_mode():  # thread-local: entered in the thread that computes
            if packed:
                return packed_batch(model, *args, want_hidden, device, fused)
            return _padded_batch(model, *args, pad_id, want_hidden, device)

    workers = min(workers, len(batches))
    if workers > 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(run, batches))
        finally:
            torch.set_num_threads(threads)
    else:
        results = [run(batch) for batch in batches]
    out: list = [None] * len(seqs)
    for batch, result in zip(batches, results):
        for i, item in zip(batch, result):
            out[i] = item
    return out


def score_encoded(model, encoded: list[Encoded], config: PassConfig, pad_id: int) -> list[dict]:
    """Loss rows (minus idx / id) for already-encoded examples, in the order given."""
    import torch

    rows: list[dict] = []
    for e in encoded:
        rows.append({
            "n_prompt_tokens": e.n_prompt_tokens,
            "n_response_tokens": e.n_response_tokens,
            "loss_sum": math.nan,
            "alone_loss_sum": math.nan,
            "token_ids": schema.encode_i32([t for t, s in zip(e.ids, e.scored) if s]),
            "token_losses": b"",
            "embedding": b"",
            "flag": e.flag,
        })  # fmt: skip
    todo = [i for i, e in enumerate(encoded) if e.n_response_tokens > 0]
    if not todo:
        return rows
    with torch.inference_mode():
        given = score_sequences(model, [encoded[i].ids for i in todo], [encoded[i].scored for i in todo], config,
                                pad_id, want_hidden=config.embed)  # fmt: skip
        pieces = _on_cpu([piece for piece, _ in given])
        pooled = _on_cpu([p for _, p in given]) if config.embed else [None] * len(todo)
        for i, piece, p in zip(todo, pieces, pooled):
            rows[i]["loss_sum"] = float(piece.double().sum())
            rows[i]["token_losses"] = schema.encode_f16(piece.numpy())
            if p is not None:
                rows[i]["embedding"] = schema.encode_f16(p.numpy())
        if config.alone:
            alone_ids = [encoded[i].alone_ids for i in todo]
            alone = score_sequences(model, alone_ids, [[False] + [True] * (len(a) - 1) for a in alone_ids], config,
                                    pad_id)  # fmt: skip
            for i, piece in zip(todo, _on_cpu([piece for piece, _ in alone])):
                rows[i]["alone_loss_sum"] = float(piece.double().sum())
    return rows


def _on_cpu(tensors: list) -> list:
    """The tensors on the CPU, moved in one copy (on a GPU, one sync instead of one per example)."""
    import torch

    if not tensors or tensors[0].device.type == "cpu":
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors]).cpu()
    return [piece.view(t.shape) for piece, t in zip(flat.split([t.numel() for t in tensors]), tensors)]
