"""Preference-pair scores (kind "pair"): IRM, LossDiff, DavIR-DPO, the base margin, lengths.

Inputs (scoring.scores.tables.loss_table of a pair job, one row per preference pair; x = prompt, y_w = chosen reply,
y_l = rejected reply; NaN where a pass has not run yet):

    ref_chosen_logp, ref_rejected_logp       log π_ref(y_w|x), log π_ref(y_l|x): summed over the reply tokens,
                                             π_ref = the base (SFT) model
    theta_chosen_logp, theta_rejected_logp   the same under π_θ = π_ref after one DPO epoch over the training pairs
    val_chosen_logp, val_rejected_logp       the same under θ_val = θ after one DPO epoch on the validation pairs
    n_prompt_tokens, n_chosen_tokens, n_rejected_tokens, n_response_tokens (= chosen + rejected)
    beta                                     the DPO β the models were trained with (default 0.1)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from scoring.scores.registry import register


def _implicit_reward(t: pd.DataFrame, model: str, side: str) -> pd.Series:
    """log π_model(y|x) - log π_ref(y|x) for side "chosen" or "rejected"."""
    return t[f"{model}_{side}_logp"] - t[f"ref_{side}_logp"]


def _dpo_margin(t: pd.DataFrame, model: str) -> pd.Series:
    """β [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))] for π = π_model."""
    return t["beta"] * (_implicit_reward(t, model, "chosen") - _implicit_reward(t, model, "rejected"))


def reward_stats(t: pd.DataFrame, model: str, beta: float) -> dict:
    """How well ``model`` ("ref", "theta", "val") has learnt the preference direction on the pairs of ``t``: the
    share of pairs whose DPO reward margin β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))] is
    positive (``reward_accuracy``; 0 for π_ref itself, whose margins are all 0), the mean margin, and the share it
    gives the chosen reply the higher log-probability (``preference_accuracy``). None where no pair is scored."""
    t = t.assign(beta=beta)
    logit = t[f"{model}_chosen_logp"] - t[f"{model}_rejected_logp"]
    margin = _dpo_margin(t, model) if model != "ref" else logit * 0.0
    ok = (margin.notna() & logit.notna()).to_numpy()
    if not ok.any():
        return {"n": 0, "reward_accuracy": None, "reward_margin": None, "preference_accuracy": None}
    margin, logit = margin.to_numpy(dtype=float)[ok], logit.to_numpy(dtype=float)[ok]
    return {"n": int(ok.sum()), "reward_accuracy": round(float((margin > 0).mean()), 4),
            "reward_margin": round(float(margin.mean()), 5), "preference_accuracy": round(float((logit > 0).mean()), 4)}


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
    after one DPO epoch over the training pairs (arXiv 2510.13212). A mislabelled pair goes against what the other pairs
    teach, so its margin stays low."""
    return _dpo_margin(t, "theta")


@register("lossdiff", {"ref", "theta", "val"}, "a step towards the validation pairs lowers this pair's loss more",
          ("pair",))
def lossdiff(t: pd.DataFrame) -> pd.Series:
    """l_DPO(θ; d) - l_DPO(θ_val; d), with l_DPO(π; d) = -log σ(β [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) -
    log π_ref(y_l))]) and θ_val = θ after one DPO epoch on the validation pairs: how much d's loss drops when θ
    takes a step towards the validation data, to first order η ∇ℓ(θ; d)·∇L_val(θ), the pair's influence on the
    validation loss (arXiv 2510.13212)."""
    return _dpo_loss(_dpo_margin(t, "theta")) - _dpo_loss(_dpo_margin(t, "val"))


@register("davir_dpo", {"ref", "theta"}, "DPO warm-up raised the chosen reply more, relative to its length", ("pair",))
def davir_dpo(t: pd.DataFrame) -> pd.Series:
    """β [(log π_θ(y_w|x) - log π_ref(y_w|x)) / |log π_ref(y_w|x)| - (log π_θ(y_l|x) - log π_ref(y_l|x)) /
    |log π_ref(y_l|x)|]: the DavIR paper's length-normalised margin (each side's relative loss reduction)."""
    norm_w = t["ref_chosen_logp"].abs().where(t["ref_chosen_logp"] != 0)
    norm_l = t["ref_rejected_logp"].abs().where(t["ref_rejected_logp"] != 0)
    return t["beta"] * (_implicit_reward(t, "theta", "chosen") / norm_w - _implicit_reward(t, "theta", "rejected") / norm_l)
