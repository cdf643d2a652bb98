"""First-order influence of a preference pair on the validation loss, at the warmed-up θ (arXiv 2510.13212).

    IF(d) = ∇θ ℓ(θ; d) · ∇θ L_val(θ),   ℓ(θ; d) = −log σ(β [(log πθ(y_w|x) − log πref(y_w|x)) − (log πθ(y_l|x) −
                                                            log πref(y_l|x))]),   L_val = mean of ℓ over the
                                                            validation pairs

A positive IF means a gradient step on the validation pairs lowers d's loss: LossDiff(d) = ℓ(θ; d) − ℓ(θ_val; d) is
η·IF(d) to first order, which is what LossDiff stands in for. log π_ref comes from the ref pass (fixed numbers, no
gradient), so ℓ is exactly the loss the warm-ups minimise and the scores use.

Over which parameters (``params``): "all" of them (tiny models, and the finite-difference test), or "lora":
fresh LoRA adapters on every linear layer of θ (A random with a fixed seed, B = 0, so the model is still exactly θ).
With B = 0 the gradient of each B is the weight gradient projected on A's random rows, so the LoRA dot product is a
seeded random sketch of the full one at a fraction of the memory; "auto" takes "all" below 20M parameters.

Memory stays bounded: ∇L_val is accumulated over chunks of validation pairs, then each pair's gradient is computed
alone (one forward and backward of its two sequences) and reduced to its dot product with ∇L_val at once, so at
most two gradients exist at any time.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scoring.models.formatting import encode_pairs

ALL_PARAMS_BELOW = 20_000_000  # "auto": every parameter for models smaller than this, else LoRA adapters
PARAMS = ("auto", "all", "lora")
LORA_SEED = 0


def token_rows(tokenizer, pairs: list[tuple[list[dict], str, str]], max_length: int) -> list[dict | None]:
    """Per pair {"chosen": ids, "rejected": ids, "n_prompt": int} with exactly the tokens the pair passes score
    (scoring.models.formatting.encode_side), or None when a side has no reply token left after truncation."""
    rows = []
    for c, r in encode_pairs(tokenizer, pairs, max_length):
        ok = any(c.scored) and any(r.scored)
        rows.append({"chosen": (c.ids, c.scored), "rejected": (r.ids, r.scored)} if ok else None)
    return rows


def _side_logps(model, sides: list[tuple[list[int], list[bool]]], device):
    """Summed log-probabilities of the scored tokens of each sequence, with gradient (right-padded batch)."""
    import torch

    width = max(len(ids) for ids, _ in sides)
    ids = torch.zeros((len(sides), width), dtype=torch.long)
    mask = torch.zeros((len(sides), width), dtype=torch.long)
    scored = torch.zeros((len(sides), width), dtype=torch.bool)
    for i, (seq, keep) in enumerate(sides):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        scored[i, : len(seq)] = torch.tensor(keep)
    ids, mask, scored = ids.to(device), mask.to(device), scored.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # fp32 or fp64 stay as they are (the finite-difference test runs in fp64)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (logp * scored[:, 1:]).sum(dim=1)


def dpo_losses(model, rows: list[dict], ref, beta: float, device: str = "cpu"):
    """ℓ(θ; d) for each row (a tensor with gradient); ``ref`` = (n, 2) log π_ref of (chosen, rejected)."""
    import torch
    import torch.nn.functional as F

    logps = _side_logps(model, [r["chosen"] for r in rows] + [r["rejected"] for r in rows], device)
    chosen, rejected = logps[: len(rows)], logps[len(rows):]
    ref = torch.as_tensor(np.asarray(ref, dtype=np.float64), device=device).to(chosen.dtype)
    margin = beta * ((chosen - ref[:, 0]) - (rejected - ref[:, 1]))
    return F.softplus(-margin)


def trainable(model, params: str = "auto"):
    """(model, the parameters IF is taken over): all of them, or fresh LoRA adapters (see the module docstring)."""
    import torch

    if params not in PARAMS:
        raise ValueError(f"params must be one of {PARAMS}, not {params!r}")
    if params == "auto":
        params = "all" if sum(p.numel() for p in model.parameters()) < ALL_PARAMS_BELOW else "lora"
    if params == "lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(LORA_SEED)  # A's random init: the sketch is the same on every run
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))  # fmt: skip
    chosen = [p for n, p in model.named_parameters() if params == "all" or "lora_" in n]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in chosen:
        p.requires_grad_(True)
    model.eval()  # no dropout: IF is a property of θ, not of a random mask
    return model, chosen


def _gradient(model, params, rows, ref, beta, device, scale: float) -> list:
    """Gradient of scale · Σ ℓ over ``rows``, accumulated into fresh tensors."""
    import torch

    loss = dpo_losses(model, rows, ref, beta, device).sum() * scale
    return list(torch.autograd.grad(loss, params))


def validation_gradient(model, params, rows: list[dict], ref, beta: float, device: str = "cpu",
                        chunk: int = 4) -> list:  # fmt: skip
    """∇θ L_val(θ), L_val the mean DPO loss over ``rows``, accumulated over chunks of ``chunk`` pairs."""
    total = None
    ref = np.asarray(ref, dtype=np.float64)
    for start in range(0, len(rows), chunk):
        grads = _gradient(model, params, rows[start: start + chunk], ref[start: start + chunk], beta, device,
                          1.0 / len(rows))  # fmt: skip
        total = grads if total is None else [t.add_(g) for t, g in zip(total, grads)]
    return total


def influences(model, params, rows: list[dict], ref, beta: float, g_val: list, device: str = "cpu",
               on_pair: Callable[[int], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> np.ndarray:  # fmt: skip
    """IF(d) = ∇ℓ(θ; d)·∇L_val(θ) for each row, one pair at a time (NaN for a None row; the rest NaN when stopped)."""
    out = np.full(len(rows), np.nan)
    ref = np.asarray(ref, dtype=np.float64)
    for i, row in enumerate(rows):
        if should_stop and should_stop():
            break
        if row is not None:
            grads = _gradient(model, params, [row], ref[i: i + 1], beta, device, 1.0)
            out[i] = float(sum((g.double() * v.double()).sum() for g, v in zip(grads, g_val)))
        if on_pair:
            on_pair(i + 1)
    return out
