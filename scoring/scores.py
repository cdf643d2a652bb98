"""Scores: one small pure function each, over loss-table columns, registered by a snake_case name.

Inputs (columns of the joined loss table, one row per example; NaN where not computed yet):

    base_loss_sum, base_alone_loss_sum   summed NLL of the response tokens under the base model
                                         (given the prompt / with no prompt)
    ref_loss_sum                         the same under the reference model (base fine-tuned on the dataset)
    n_prompt_tokens, n_response_tokens   token counts (after truncation to max_length)

Registering a name twice raises, so two modules can never silently disagree on what ``davir`` means.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Score:
    name: str
    fn: Callable[[pd.DataFrame], pd.Series]
    needs: frozenset[str]  # model passes it reads: "base", "ref"
    doc: str
    higher_is: str  # what a high value means, for the help text


SCORES: dict[str, Score] = {}


def register(name: str, needs: set[str], higher_is: str):
    def wrap(fn):
        if name in SCORES:
            raise ValueError(f"score {name!r} is registered twice")
        SCORES[name] = Score(name, fn, frozenset(needs), (fn.__doc__ or "").strip(), higher_is)
        return fn

    return wrap


def _per_token(total: pd.Series, count: pd.Series) -> pd.Series:
    return total / count.where(count > 0)


@register("n_prompt_tokens", set(), "a longer prompt")
def n_prompt_tokens(t: pd.DataFrame) -> pd.Series:
    """Tokens before the first scored (assistant) token, after formatting with the template."""
    return t["n_prompt_tokens"].astype(float)


@register("n_response_tokens", set(), "a longer response")
def n_response_tokens(t: pd.DataFrame) -> pd.Series:
    """Scored (assistant) tokens."""
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


DEFAULT_SCORES = ("davir", "rho", "ifd", "ppl")
ALWAYS = ("loss_base", "loss_ref", "n_prompt_tokens", "n_response_tokens")


def parse_scores(text: str | None) -> list[str]:
    from .errors import UserError

    names = [s.strip() for s in (text or ",".join(DEFAULT_SCORES)).split(",") if s.strip()]
    unknown = [n for n in names if n not in SCORES]
    if unknown:
        raise UserError(f"unknown score(s) {', '.join(unknown)}; known: {', '.join(sorted(SCORES))}")
    return names


def passes_needed(names: list[str]) -> set[str]:
    needed: set[str] = {"base"}  # token counts come from the base pass
    for name in names:
        needed |= SCORES[name].needs
    return needed


def compute(table: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Every requested score plus the ones that are always shown, as columns; rows match ``table``."""
    out = pd.DataFrame(index=table.index)
    have_ref = "ref_loss_sum" in table
    for name in dict.fromkeys([*ALWAYS, *names]):
        if "ref" in SCORES[name].needs and not have_ref:
            continue
        out[name] = SCORES[name].fn(table).astype(float)
    return out
