"""The LM head's per-token loss a slice at a time, in the backward pass too: memory bounded by the slice, not the
number of tokens.

Why: projecting N hidden states through a vocabulary of V entries makes an (N, V) logits matrix; autograd keeps it
(and its log-softmax) for the backward pass, so training on N scored tokens holds ~2·N·V floats. For SmolLM2
(V = 49,152) and one micro-batch of eight 1,024-token LIMA answers that is ~3 GB, more than the model, its gradients
and Adam's moments together. Here the forward keeps only the hidden states, the weight and the targets; the backward
recomputes each slice's logits and turns them into the gradients at once (softmax minus one-hot), so at most
``rows`` x V logits exist at any time. The numbers are those of ``cross_entropy`` over the whole matrix up to float
rounding (tests/passes/test_head.py).
"""
from __future__ import annotations

from functools import cache


def _forward(ctx, states, weight, targets, rows: int):
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
    return out


def _backward(ctx, grad):  # grad: (N,) d loss / d nll of each token
    import torch

    states, weight, targets = ctx.saved_tensors
    need_states, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_states = torch.empty_like(states) if need_states else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
    with torch.autocast(states.device.type, enabled=False):
        w = weight.to(states.dtype)
        for start in range(0, states.shape[0], ctx.rows):
            x = states[start : start + ctx.rows]
            g = torch.softmax((x @ w.T).float(), -1)  # (n, V): d nll / d logits = softmax - one-hot
            g[torch.arange(g.shape[0], device=g.device), targets[start : start + ctx.rows]] -= 1.0
            g *= grad[start : start + ctx.rows, None].float()
            if need_states:
                grad_states[start : start + ctx.rows] = (g.to(w.dtype) @ w).to(states.dtype)
            if need_weight:
                grad_weight.addmm_(g.T, x.float())  # in place: no (V, H) temporary per slice
    return grad_states, None if grad_weight is None else grad_weight.to(weight.dtype), None, None


@cache
def _sliced_function():
    """The autograd Function, made on first use (torch is imported lazily, as everywhere in the engine)."""
    import torch

    class SlicedNLL(torch.autograd.Function):
        """NLL of ``targets`` (N,) under logits = states (N, H) @ weight (V, H)^T, fp32, sliced by ``rows``."""

        forward = staticmethod(_forward)
        backward = staticmethod(_backward)

    return SlicedNLL


def sliced_nll(states, weight, targets, rows: int = 512):
    """(N,) fp32 per-token NLL, differentiable in ``states`` and ``weight``, never more than ``rows`` x V logits."""
    return _sliced_function().apply(states, weight, targets, rows)


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
