"""The score registry: one small pure function per score, over loss-table columns, registered by a snake_case name.

Each score is registered for the kinds of dataset it applies to ("sft", "pair") and names the model passes it reads
("base", "ref" for instruction data; "ref", "theta", "val" for pairs), so a job runs only the passes its scores
need. Registering a name twice raises, so two modules can never silently disagree on what ``davir`` means.
The functions live in :mod:`scoring.scores.sft` and :mod:`scoring.scores.pairs` (both registered on import of
:mod:`scoring.scores`); the inputs they read are documented there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd

from scoring.errors import UserError


@dataclass(frozen=True)
class Score:
    name: str
    fn: Callable[[pd.DataFrame], pd.Series]
    needs: frozenset[str]  # model passes it reads: "base", "ref" (sft); "ref", "theta", "val" (pair)
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


# Per dataset kind: the scores a job computes when none are named, the ones always shown beside them, and the
# pass every job runs first (it supplies the token counts).
DEFAULTS = {"sft": ("davir", "rho", "ifd", "ppl"), "pair": ("irm", "lossdiff", "davir_dpo", "margin_base", "len_diff")}
ALWAYS = {
    "sft": ("loss_base", "loss_ref", "n_prompt_tokens", "n_response_tokens"),
    "pair": ("n_prompt_tokens", "n_response_tokens", "n_chosen_tokens", "n_rejected_tokens", "logp_chosen",
             "logp_rejected"),
}  # fmt: skip
FIRST_PASS = {"sft": "base", "pair": "ref"}
FIRST_SCORE = {"sft": "loss_base", "pair": "margin_base"}  # the first model score a run fills (its progress)
DEFAULT_SCORES = DEFAULTS["sft"]
PAIR_DEFAULT_SCORES = DEFAULTS["pair"]


def parse_scores(text: str | None, kind: str = "sft") -> list[str]:
    """Score names from "a,b,c" (the kind's defaults when empty); unknown or other-kind names are a UserError."""
    defaults = DEFAULTS[kind]
    names = [s.strip() for s in (text or ",".join(defaults)).split(",") if s.strip()]
    unknown = [n for n in names if n not in SCORES or kind not in SCORES[n].kinds]
    if unknown:
        known = sorted(n for n, s in SCORES.items() if kind in s.kinds)
        raise UserError(f"unknown score(s) {', '.join(unknown)} for {kind} data; known: {', '.join(known)}")
    return names


def passes_needed(names: list[str], kind: str = "sft") -> set[str]:
    """The model passes the named scores read, plus the kind's first pass (token counts come from it)."""
    needed: set[str] = {FIRST_PASS[kind]}
    for name in names:
        needed |= SCORES[name].needs
    return needed


def compute(table: pd.DataFrame, names: list[str], kind: str = "sft", passes=None) -> pd.DataFrame:
    """The requested scores plus the kind's ALWAYS ones, as columns; rows match ``table`` (NaN where a pass has not
    reached a row yet). A score reading a pass outside ``passes`` (the job's; default: the passes whose
    ``<role>_…`` columns the table holds) is left out."""
    out = pd.DataFrame(index=table.index)
    have = set(passes) if passes is not None else {str(c).split("_", 1)[0] for c in table.columns}
    for name in dict.fromkeys([*ALWAYS[kind], *names]):
        if not SCORES[name].needs <= have:
            continue
        out[name] = SCORES[name].fn(table).astype(float)
    return out
