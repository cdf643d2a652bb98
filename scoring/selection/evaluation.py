"""What an evaluation compares and how it judges: the arms (which examples each model trains on) and the statistics
of the paired difference selection − random.

Arms (scoring.jobs.evaluate trains one model per arm, all from the same start with the same config):

- ``selection``: the saved selection's kept rows (minus any evaluation holdout);
- ``random-SEED``: a seeded random subset of the same pool with the same number of rows and, among ``TRIES`` such
  draws, the one whose token count is closest to the selection's, so that neither side wins by seeing more text;
- ``full``: every selectable row of the pool (unflagged, not held out);
- ``bottom``: the same rule turned over (top <-> bottom) at the same budget, the arm a useful score should lose to;
- ``sel:NAME``: another saved selection of the dataset.

The judgement is per eval example: d(e) = metric_selection(e) − mean over seeds metric_random(e). The interval is a
two-way bootstrap (eval examples and random seeds both resampled), so it widens with the spread between random
seeds as well as with the eval set's noise; with one seed the seed spread is not measured and the verdict says so.
The verdict never claims more than the interval: "better than random" only when the whole 95 % interval is on the
good side of 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scoring.errors import UserError

TRIES = 256  # random draws of the right size; the one closest in tokens is the arm
N_BOOT = 2000
# metric -> True when lower is better
LOWER_IS_BETTER = {"nll": True, "accuracy": False, "preference_accuracy": False, "dpo_loss": True}
BETTER, SAME, WORSE = "better than random", "no detectable difference", "worse than random"


@dataclass(frozen=True)
class Arm:
    """One model to train: its name in the report, the ids it trains on, and which sweep budget it belongs to."""

    name: str  # "selection", "random-0", "full", "bottom", "sel:NAME"; in a sweep "rule@10%", "random-0@10%"
    ids: tuple[str, ...]
    role: str  # "selection" | "random" | "full" | "bottom" | "saved"
    budget: str | None = None  # the sweep point (None outside a sweep)
    seed: int | None = None


def random_like(ids: np.ndarray, tokens: np.ndarray, n: int, target_tokens: int, seed: int,
                tries: int = TRIES) -> list[str]:  # fmt: skip
    """``n`` of ``ids`` drawn at random (seeded): of ``tries`` uniform draws, the one whose token total is closest
    to ``target_tokens`` (the first on a tie). Same size exactly, tokens as close as chance allows."""
    if n > len(ids):
        raise UserError(f"a random arm of {n} rows needs a pool of at least {n}; the pool has {len(ids)}")
    rng = np.random.default_rng(seed)
    best, best_gap = None, None
    for _ in range(tries if n < len(ids) else 1):
        pick = rng.choice(len(ids), size=n, replace=False)
        gap = abs(int(tokens[pick].sum()) - int(target_tokens))
        if best_gap is None or gap < best_gap:
            best, best_gap = pick, gap
    return [str(ids[i]) for i in np.sort(best)]


def flipped_rules(rules: tuple[str, ...]) -> tuple[str, ...]:
    """The bottom arm's rules: each "top" becomes "bottom" and back; a band has no bottom (UserError)."""
    flip = {"top": "bottom", "bottom": "top"}
    out = []
    for rule in rules:
        key = str(rule).strip().lower()
        if key not in flip:
            raise UserError(f"--against bottom turns a top/bottom rule over; rule {rule!r} has no bottom (compare "
                            "against another saved selection with --against NAME instead)")  # fmt: skip
        out.append(flip[key])
    return tuple(out)


def paired_difference(selection: np.ndarray, randoms: np.ndarray, metric: str, seed: int = 0,
                      n_boot: int = N_BOOT) -> dict:  # fmt: skip
    """Compare the selection's per-example metric (E,) with the random arms' (S, E) on the same eval examples.

    Returns the mean difference selection − random (mean over seeds), its two-way bootstrap 95 % interval, the
    verdict in words, and the random arms' mean and spread (sd over seeds of each arm's mean)."""
    sel = np.asarray(selection, dtype=float)  # (E,)
    rnd = np.atleast_2d(np.asarray(randoms, dtype=float))  # (S, E)
    if rnd.shape[1] != sel.shape[0] or not len(sel):
        raise ValueError(f"selection has {sel.shape[0]} eval examples, the random arms {rnd.shape[1]}")
    n_seeds, n_ex = rnd.shape
    diff = float(np.mean(sel - rnd.mean(axis=0)))
    rng = np.random.default_rng(seed)
    ex = rng.integers(0, n_ex, size=(n_boot, n_ex))  # (B, E)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))  # (B, S)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        r = rnd[seeds[b]][:, ex[b]].mean(axis=0)  # (E,) the resampled seeds' mean on the resampled examples
        boots[b] = np.mean(sel[ex[b]] - r)
    lo, hi = (float(x) for x in np.percentile(boots, [2.5, 97.5]))
    arm_means = rnd.mean(axis=1)  # (S,)
    return {
        "metric": metric,
        "lower_is_better": LOWER_IS_BETTER[metric],
        "selection": float(sel.mean()),
        "random_mean": float(arm_means.mean()),
        "random_sd": float(arm_means.std(ddof=1)) if n_seeds > 1 else None,
        "n_seeds": int(n_seeds),
        "n_eval": int(n_ex),
        "selection_minus_random": diff,
        "ci95": [lo, hi],
        "verdict": verdict(lo, hi, metric, n_seeds),
    }


def verdict(lo: float, hi: float, metric: str, n_seeds: int) -> str:
    """The words for a 95 % interval of selection − random: better only when all of it is on the good side of 0."""
    good_side = (hi < 0) if LOWER_IS_BETTER[metric] else (lo > 0)
    bad_side = (lo > 0) if LOWER_IS_BETTER[metric] else (hi < 0)
    words = BETTER if good_side else WORSE if bad_side else SAME
    return words + (" (one random seed: the seed-to-seed spread is not in the interval)" if n_seeds < 2 else "")
