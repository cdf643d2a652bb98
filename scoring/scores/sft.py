"""Instruction-data scores (kind "sft"): DavIR, RHO, IFD, perplexity, token counts.

Inputs (columns of the joined loss table, one row per example; NaN where not computed yet):

    base_loss_sum, base_alone_loss_sum   summed NLL of the response tokens under the base model
                                         (given the prompt / with no prompt)
    ref_loss_sum                         the same under the reference model (base fine-tuned on the dataset)
    n_prompt_tokens, n_response_tokens   token counts (after truncation to max_length)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from scoring.scores.registry import register


def _per_token(total: pd.Series, count: pd.Series) -> pd.Series:
    return total / count.where(count > 0)


@register("n_prompt_tokens", set(), "a longer prompt", ("sft", "pair"))
def n_prompt_tokens(t: pd.DataFrame) -> pd.Series:
    """Tokens before the first scored (assistant) token, after formatting with the template."""
    return t["n_prompt_tokens"].astype(float)


@register("n_response_tokens", set(), "a longer response", ("sft", "pair"))
def n_response_tokens(t: pd.DataFrame) -> pd.Series:
    """Scored (assistant) tokens; for a pair, the chosen and the rejected reply together."""
    return t["n_response_tokens"].astype(float)


@register("loss_base", {"base"}, "the base model finds the response harder")
def loss_base(t: pd.DataFrame) -> pd.Series:
    """Mean NLL per response token under the base model."""
    return _per_token(t["base_loss_sum"], t["n_response_tokens"])


@register("loss_ref", {"ref"}, "the reference model still finds the response hard")
def loss_ref(t: pd.DataFrame) -> pd.Series:
    """Mean NLL per response token under the reference model (base fine-tuned on the whole dataset)."""
    return _per_token(t["ref_loss_sum"], t["n_response_tokens"])


@register("davir", {"base", "ref"}, "fine-tuning taught the model more of this example (keep the top)")
def davir(t: pd.DataFrame) -> pd.Series:
    """1 - loss_ref / loss_base: the relative drop of the response loss after fine-tuning (DavIR)."""
    return 1.0 - loss_ref(t) / loss_base(t).where(loss_base(t) > 0)


@register("rho", {"base", "ref"}, "a larger absolute loss drop (biased to long, hard answers)")
def rho(t: pd.DataFrame) -> pd.Series:
    """loss_base - loss_ref: the unnormalised loss reduction (RHO-LM baseline)."""
    return loss_base(t) - loss_ref(t)


@register("ppl", {"base"}, "the base model is more surprised by the response")
def ppl(t: pd.DataFrame) -> pd.Series:
    """exp(loss_base): perplexity of the response under the base model."""
    return np.exp(loss_base(t))


@register("ifd", {"base"}, "the prompt helps less to predict the response (Cherry LLM: harder instruction)")
def ifd(t: pd.DataFrame) -> pd.Series:
    """loss(response | prompt) / loss(response alone) under the base model (instruction-following difficulty)."""
    alone = _per_token(t["base_alone_loss_sum"], t["n_response_tokens"])
    return loss_base(t) / alone.where(alone > 0)
