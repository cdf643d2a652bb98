"""The first-order influence IF(d) = ∇ℓ(θ; d)·∇L_val(θ) against a finite-difference estimate on a tiny model, and
its bounded-memory pieces (chunked validation gradient, one pair at a time)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scoring.models.loading import load_model, load_tokenizer, resolve
from scoring.train.influence import dpo_losses, influences, token_rows, trainable, validation_gradient

pytestmark = pytest.mark.usefixtures("cpu_one_thread")


def pairs(n: int, offset: int = 0):
    return [([{"role": "user", "content": f"What is {i} + {i}?"}], f"{i} + {i} = {2 * i}.", f"It is {2 * i + 3}.")
            for i in range(offset, offset + n)]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    from scoring.store.cache import Cache

    ref = resolve(str(tiny_model), Cache(tmp_path_factory.mktemp("c")))
    tok = load_tokenizer(ref)
    model = load_model(ref).double()
    torch.manual_seed(3)
    with torch.no_grad():  # θ ≠ π_ref: perturb the weights, so ℓ is not log 2 everywhere and gradients differ
        ref_rows = token_rows(tok, pairs(6) + pairs(4, 50), 64)
        ref_logps = dpo_ref_logps(model, ref_rows)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, tok, ref_rows, ref_logps


def dpo_ref_logps(model, rows):
    from scoring.train.influence import _side_logps  # noqa: PLC2701 (the tested module's own helper)

    with torch.no_grad():
        logps = _side_logps(model, [r["chosen"] for r in rows] + [r["rejected"] for r in rows], "cpu")
    return torch.stack([logps[: len(rows)], logps[len(rows):]], dim=1).numpy()


def test_influence_matches_finite_differences(setup):
    model, _, rows, ref = setup
    model, params = trainable(model, "all")
    train, val = rows[:6], rows[6:]
    g_val = validation_gradient(model, params, val, ref[6:], beta=0.5, chunk=3)
    got = influences(model, params, train, ref[:6], 0.5, g_val)
    # IF(d) = d/dε ℓ(θ + ε ∇L_val; d) at ε = 0, by central differences (float64)
    eps = 1e-4
    with torch.no_grad():
        def losses(sign):
            for p, g in zip(params, g_val):
                p.add_(sign * eps * g)
            out = dpo_losses(model, train, ref[:6], 0.5).numpy()
            for p, g in zip(params, g_val):
                p.sub_(sign * eps * g)
            return out

        fd = (losses(+1) - losses(-1)) / (2 * eps)
    np.testing.assert_allclose(got, fd, rtol=1e-4, atol=1e-8)
    assert np.abs(got).max() > 1e-4 and len(set(np.sign(got))) >= 1  # not trivially zero


def test_chunks_do_not_change_the_validation_gradient(setup):
    model, _, rows, ref = setup
    model, params = trainable(model, "all")
    whole = validation_gradient(model, params, rows, ref, 0.1, chunk=len(rows))
    chunked = validation_gradient(model, params, rows, ref, 0.1, chunk=3)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)


def test_lora_sketch_keeps_the_model_and_takes_adapters_only(tiny_model, tmp_path):
    from scoring.store.cache import Cache

    ref = resolve(str(tiny_model), Cache(tmp_path / "c"))
    tok = load_tokenizer(ref)
    rows = token_rows(tok, pairs(3), 64)
    plain = load_model(ref)
    before = dpo_losses(plain, rows, np.zeros((3, 2)), 0.1).detach()
    model, params = trainable(load_model(ref), "lora")
    assert params and all(p.requires_grad for p in params)
    assert sum(p.numel() for p in params) < sum(p.numel() for p in plain.parameters())
    torch.testing.assert_close(dpo_losses(model, rows, np.zeros((3, 2)), 0.1).detach(), before)  # B = 0: still θ
    g_val = validation_gradient(model, params, rows, np.zeros((3, 2)), 0.1)
    assert np.isfinite(influences(model, params, rows, np.zeros((3, 2)), 0.1, g_val)).all()


def test_a_pair_without_reply_tokens_gets_nan(setup):
    model, tok, rows, ref = setup
    cut = token_rows(tok, pairs(1), 4)  # the prompt alone fills 4 tokens
    assert cut == [None]
    model, params = trainable(model, "all")
    g_val = validation_gradient(model, params, rows[:2], ref[:2], 0.1)
    out = influences(model, params, [None, rows[0]], np.vstack([ref[:1], ref[:1]]), 0.1, g_val)
    assert np.isnan(out[0]) and np.isfinite(out[1])
