"""The LM head's per-token loss a slice at a time, in the backward pass too: memory bounded by the slice, not the
number of tokens.

Why: projecting N hidden states through a vocabulary of V entries makes an (N, V) logits matrix; autograd keeps it
(and its log-softmax) for the backward pass, so training on N scored tokens holds ~2·N·V floats. For SmolLM2
(V = 49,152) and one micro-batch of eight 1,024-token LIMA answers that is ~3 GB, more than the model, its gradients
and Adam's moments together. Here the forward keeps only the hidden states, the weight and the targets; the backward
recomputes each slice's logits and turns them into the gradients at once (softmax minus one-hot), so at most
``rows`` x V logits exist at any time. The numbers are those of ``cross_entropy`` over the whole matrix up to float
rounding (tests/passes/test_head.py).

Training (``into_grad``): the weight's gradient is added straight into ``weight.grad``, slice by slice, instead of
being returned to autograd as a new (V, H) fp32 tensor that autograd then adds there (113 MB more at the peak of a
backward pass on SmolLM2, whose head is also its input embedding). The gradient is the same; what changes is that
only ``.backward()`` sees it (``torch.autograd.grad`` would not), which is how Trainer trains.

The other end of the model gets the same treatment (:func:`trunk_inputs`): while training, the input embedding's
lookup adds its gradient into ``weight.grad`` row by row (``index_add_``), where autograd's own embedding backward
makes a dense (V, H) fp32 gradient first and then adds it there: on the default model another 113 MB at the end of
every group's backward pass, the moment every other gradient is already allocated.
"""
from __future__ import annotations

from functools import cache


def _forward(ctx, states, weight, targets, rows: int, into_grad: bool):
    import torch

    with torch.autocast(states.device.type, enabled=False):
        w = weight.to(states.dtype)
        out = torch.empty(states.shape[0], dtype=torch.float32, device=states.device)
        for start in range(0, states.shape[0], rows):
            logits = (states[start : start + rows] @ w.T).float()  # (n, V)
            want = targets[start : start + rows, None]
            out[start : start + rows] = torch.logsumexp(logits, -1) - logits.gather(1, want)[:, 0]
    ctx.save_for_backward(states, weight, targets)
    ctx.rows = rows
    # the parameter itself: its .grad is where the weight's gradient goes (fp32 only: it is summed in fp32)
    ctx.param = weight if into_grad and weight.is_leaf and weight.dtype == torch.float32 else None
    return out


def _backward(ctx, grad):  # grad: (N,) d loss / d nll of each token
    import torch

    states, weight, targets = ctx.saved_tensors
    need_states, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_states = torch.empty_like(states) if need_states else None
    param = ctx.param if need_weight else None
    if param is not None:  # accumulated in place; autograd gets None for the weight
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        grad_weight = param.grad
    elif need_weight:
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    else:
        grad_weight = None
    with torch.autocast(states.device.type, enabled=False):
        w = weight.to(states.dtype)
        for start in range(0, states.shape[0], ctx.rows):
            x = states[start : start + ctx.rows]
            g = (x @ w.T).float()  # (n, V) logits, made into d nll / d logits = softmax - one-hot in place
            g.sub_(torch.logsumexp(g, -1, keepdim=True)).exp_()
            g[torch.arange(g.shape[0], device=g.device), targets[start : start + ctx.rows]] -= 1.0
            g *= grad[start : start + ctx.rows, None].float()
            if need_states:
                grad_states[start : start + ctx.rows] = (g.to(w.dtype) @ w).to(states.dtype)
            if need_weight:
                grad_weight.addmm_(g.T, x.float())  # in place: no (V, H) temporary per slice
    returned = None if grad_weight is None or param is not None else grad_weight.to(weight.dtype)
    return grad_states, returned, None, None, None


@cache
def _function(name: str, forward, backward, doc: str):
    """An autograd Function class, made on first use (torch is imported lazily, as everywhere in the engine)."""
    import torch

    return type(name, (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward), "__doc__": doc})


def _sliced_function():
    return _function("SlicedNLL", _forward, _backward,
                     "NLL of ``targets`` (N,) under logits = states (N, H) @ weight (V, H)^T, fp32, sliced by ``rows``.")


def sliced_nll(states, weight, targets, rows: int = 512, into_grad: bool = False):
    """(N,) fp32 per-token NLL, differentiable in ``states`` and ``weight``, never more than ``rows`` x V logits.
    ``into_grad`` (training through ``.backward()``, a leaf fp32 weight): the weight's gradient is accumulated
    directly into ``weight.grad``."""
    return _sliced_function().apply(states, weight, targets, rows, into_grad)


def plain_linear_head(model):
    """The LM head's weight when the head is a bias-free linear layer with no logit soft-capping (what
    :func:`sliced_nll` computes exactly), else None."""
    import torch

    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    if getattr(model.config, "final_logit_softcapping", None):
        return None
    return head.weight


def _embed_forward(ctx, ids, weight, padding_idx):
    import torch.nn.functional as F

    ctx.save_for_backward(ids)
    ctx.param, ctx.padding_idx = weight, padding_idx
    return F.embedding(ids, weight)


def _embed_backward(ctx, grad):  # grad: (..., H) d loss / d each looked-up row
    import torch

    (ids,) = ctx.saved_tensors
    param = ctx.param
    if param.grad is None:
        param.grad = torch.zeros_like(param)
    ids, grad = ids.reshape(-1), grad.reshape(-1, grad.shape[-1])
    if ctx.padding_idx is not None:  # nn.Embedding's rule: the padding row is never trained
        keep = ids != ctx.padding_idx
        ids, grad = ids[keep], grad[keep]
    param.grad.index_add_(0, ids, grad.to(param.grad.dtype))
    return None, None, None


def _embed_function():
    return _function("EmbedIntoGrad", _embed_forward, _embed_backward,
                     "``F.embedding(ids, weight)`` whose backward adds the weight's gradient into ``weight.grad``.")


def trunk_inputs(trunk, ids) -> dict:
    """The keyword arguments that feed ``ids`` to ``trunk`` (a transformers decoder): ``input_ids``, or, while
    training a plain fp32 embedding through ``.backward()``, ``inputs_embeds`` looked up so that the embedding's
    gradient goes straight into its ``.grad`` (module docstring). Anything else (no grad, a frozen or LoRA-wrapped
    embedding, a scaled or max-norm one, bf16 weights) keeps the trunk's own lookup."""
    import torch

    embedding = trunk.get_input_embeddings() if hasattr(trunk, "get_input_embeddings") else None
    weight = getattr(embedding, "weight", None)
    plain = (type(embedding) is torch.nn.Embedding and embedding.max_norm is None and not embedding.sparse
             and embedding.scale_grad_by_freq is False)  # fmt: skip
    if not (torch.is_grad_enabled() and plain and weight.requires_grad and weight.is_leaf
            and weight.dtype == torch.float32):  # fmt: skip
        return {"input_ids": ids}
    return {"inputs_embeds": _embed_function().apply(ids, weight, embedding.padding_idx)}
