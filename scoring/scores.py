"""Scores: one small pure function each, over loss-table columns, registered by a snake_case name.

Inputs (columns of the joined loss table, one row per example; NaN where not computed yet):

    base_loss_sum, base_alone_loss_sum   summed NLL of the response tokens under the base model
                                         (given the prompt / with no prompt)
    ref_loss_sum                         the same under the reference model (base fine-tuned on the dataset)
    n_prompt_tokens, n_response_tokens   token counts (after truncation to max_length)

Pair inputs (scoring.pair_results.pair_loss_table, one row per preference pair; x = prompt, y_w = chosen reply,
y_l = rejected reply; NaN where a pass has not run yet):

    ref_chosen_logp, ref_rejected_logp       log π_ref(y_w|x), log π_ref(y_l|x): summed over the reply tokens,
                                             π_ref = the base (SFT) model
    theta_chosen_logp, theta_rejected_logp   the same under π_θ = π_ref after one DPO epoch over all pairs
    val_chosen_logp, val_rejected_logp       the same under θ_val = π_ref after one DPO epoch on the validation pairs
    n_prompt_tokens, n_chosen_tokens, n_rejected_tokens, n_response_tokens (= chosen + rejected)
    beta                                     the DPO β the models were trained with (default 0.1)

Each score is registered for the kinds of dataset it applies to ("sft", "pair"). Registering a name twice raises,
so two modules can never silently disagree on what ``davir`` means.
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
    kinds: frozenset[str] = frozenset({"sft"})  # dataset kinds it applies to: "sft", "pair"


SCORES: dict[str, Score] = {}


def register(name: str, needs: set[str], higher_is: str, kinds: tuple[str, ...] = ("sft",)):
    def wrap(fn):
        if name in SCORES:
            raise ValueError(f"score {name!r} is registered twice")
        SCORES[name] = Score(name, fn, frozenset(needs), (fn.__doc__ or "").strip(), higher_is, frozenset(kinds))
        return fn

    return wrap


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


# ---------------------------------------------------------------- preference pairs


def _implicit_reward(t: pd.DataFrame, model: str, side: str) -> pd.Series:
    """log π_model(y|x) - log π_ref(y|x) for side "chosen" or "rejected"."""
    return t[f"{model}_{side}_logp"] - t[f"ref_{side}_logp"]


def _dpo_margin(t: pd.DataFrame, model: str) -> pd.Series:
    """β [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))] for π = π_model."""
    return t["beta"] * (_implicit_reward(t, model, "chosen") - _implicit_reward(t, model, "rejected"))


def _dpo_loss(margin: pd.Series) -> pd.Series:
    """-log σ(margin) = log(1 + exp(-margin)), computed without overflow."""
    with np.errstate(invalid="ignore"):  # NaN (a pass not run yet) stays NaN
        return pd.Series(np.logaddexp(0.0, -margin.to_numpy(dtype=float)), index=margin.index)


@register("n_chosen_tokens", set(), "a longer chosen reply", ("pair",))
def n_chosen_tokens(t: pd.DataFrame) -> pd.Series:
    """Scored tokens of the chosen reply."""
    return t["n_chosen_tokens"].astype(float)


@register("n_rejected_tokens", set(), "a longer rejected reply", ("pair",))
def n_rejected_tokens(t: pd.DataFrame) -> pd.Series:
    """Scored tokens of the rejected reply."""
    return t["n_rejected_tokens"].astype(float)


@register("len_diff", set(), "the chosen reply is longer than the rejected one", ("pair",))
def len_diff(t: pd.DataFrame) -> pd.Series:
    """n_chosen_tokens - n_rejected_tokens: the length bias a preference pair carries."""
    return t["n_chosen_tokens"].astype(float) - t["n_rejected_tokens"].astype(float)


@register("logp_chosen", {"ref"}, "the base model finds the chosen reply likely", ("pair",))
def logp_chosen(t: pd.DataFrame) -> pd.Series:
    """log π_ref(y_w|x): summed log-probability of the chosen reply under the base model."""
    return t["ref_chosen_logp"]


@register("logp_rejected", {"ref"}, "the base model finds the rejected reply likely", ("pair",))
def logp_rejected(t: pd.DataFrame) -> pd.Series:
    """log π_ref(y_l|x): summed log-probability of the rejected reply under the base model."""
    return t["ref_rejected_logp"]


@register("margin_base", {"ref"}, "the base model already prefers the chosen reply", ("pair",))
def margin_base(t: pd.DataFrame) -> pd.Series:
    """log π_ref(y_w|x) - log π_ref(y_l|x): the base model's own preference (no training)."""
    return t["ref_chosen_logp"] - t["ref_rejected_logp"]


@register("irm", {"ref", "theta"}, "DPO warm-up widened this pair's margin more (LossDiff-IRM: keep the middle)",
          ("pair",))
def irm(t: pd.DataFrame) -> pd.Series:
    """β [(log π_θ(y_w|x) - log π_ref(y_w|x)) - (log π_θ(y_l|x) - log π_ref(y_l|x))]: the implicit reward margin
    after one DPO epoch over all pairs (arXiv 2510.13212). A mislabelled pair goes against what the other pairs
    teach, so its margin stays low."""
    return _dpo_margin(t, "theta")


@register("lossdiff", {"ref", "theta", "val"}, "the pair fits the all-pairs model worse than the validation model",
          ("pair",))
def lossdiff(t: pd.DataFrame) -> pd.Series:
    """l_DPO(θ; d) - l_DPO(θ_val; d), with l_DPO(π; d) = -log σ(β [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) -
    log π_ref(y_l))]): how much better the validation-trained model explains the pair than the all-pairs model
    (arXiv 2510.13212)."""
    return _dpo_loss(_dpo_margin(t, "theta")) - _dpo_loss(_dpo_margin(t, "val"))


@register("davir_dpo", {"ref", "theta"}, "DPO warm-up raised the chosen reply more, relative to its length", ("pair",))
def davir_dpo(t: pd.DataFrame) -> pd.Series:
    """β [(log π_θ(y_w|x) - log π_ref(y_w|x)) / |log π_ref(y_w|x)| - (log π_θ(y_l|x) - log π_ref(y_l|x)) /
    |log π_ref(y_l|x)|]: the DavIR paper's length-normalised margin (each side's relative loss reduction)."""
    norm_w = t["ref_chosen_logp"].abs().where(t["ref_chosen_logp"] != 0)
    norm_l = t["ref_rejected_logp"].abs().where(t["ref_rejected_logp"] != 0)
    return t["beta"] * (_implicit_reward(t, "theta", "chosen") / norm_w - _implicit_reward(t, "theta", "rejected") / norm_l)


DEFAULT_SCORES = ("davir", "rho", "ifd", "ppl")
ALWAYS = ("loss_base", "loss_ref", "n_prompt_tokens", "n_response_tokens")
PAIR_DEFAULT_SCORES = ("irm", "lossdiff", "davir_dpo", "margin_base", "len_diff")
PAIR_ALWAYS = ("n_prompt_tokens", "n_response_tokens", "n_chosen_tokens", "n_rejected_tokens", "logp_chosen",
               "logp_rejected")  # fmt: skip


def parse_scores(text: str | None, kind: str = "sft") -> list[str]:
    """Score names from "a,b,c" (the kind's defaults when empty); unknown or other-kind names are a UserError."""
    from .errors import UserError

    defaults = PAIR_DEFAULT_SCORES if kind == "pair" else DEFAULT_SCORES
    names = [s.strip() for s in (text or ",".join(defaults)).split(",") if s.strip()]
    unknown = [n for n in names if n not in SCORES or kind not in SCORES[n].kinds]
    if unknown:
        known = sorted(n for n, s in SCORES.items() if kind in s.kinds)
        raise UserError(f"unknown score(s) {', '.join(unknown)} for {kind} data; known: {', '.join(known)}")
    return names


def pair_passes_needed(names: list[str]) -> set[str]:
    """Model passes ("ref", "theta", "val") the pair scores read; the ref pass always runs (token counts)."""
    needed: set[str] = {"ref"}
    for name in names:
        needed |= SCORES[name].needs
    return needed


def compute_pairs(table: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Every requested pair score plus PAIR_ALWAYS, as columns; rows match ``table`` (NaN where a pass is missing)."""
    out = pd.DataFrame(index=table.index)
    for name in dict.fromkeys([*PAIR_ALWAYS, *names]):
        out[name] = SCORES[name].fn(table).astype(float)
    return out


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
