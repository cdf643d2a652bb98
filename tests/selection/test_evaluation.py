"""An evaluation's arms and statistics: random subsets matched in size and tokens, the rule turned over, the paired
bootstrap of selection − random and the words it allows."""
from __future__ import annotations

import numpy as np
import pytest

from scoring.errors import UserError
from scoring.selection.evaluation import BETTER, SAME, WORSE, flipped_rules, paired_difference, random_like, verdict


def test_random_like_matches_size_and_comes_close_in_tokens():
    rng = np.random.default_rng(0)
    ids = np.array([f"r{i}" for i in range(400)], dtype=object)
    tokens = rng.integers(10, 1000, size=400)
    target = 40 * 700  # well above the mean of a 40-row draw (~20,200): the closest of 256 draws
    picked = random_like(ids, tokens, 40, target, seed=3)
    assert len(picked) == len(set(picked)) == 40
    got = tokens[[int(i[1:]) for i in picked]].sum()
    one_draw = tokens[np.random.default_rng(9).choice(400, 40, replace=False)].sum()
    assert abs(got - target) < abs(one_draw - target)
    assert random_like(ids, tokens, 40, target, seed=3) == picked  # seeded
    assert random_like(ids, tokens, 40, target, seed=4) != picked
    assert sorted(random_like(ids, tokens, 400, 0, seed=0)) == sorted(ids.tolist())  # the whole pool
    with pytest.raises(UserError, match="pool"):
        random_like(ids, tokens, 401, 0, seed=0)


def test_flipped_rules():
    assert flipped_rules(("top", "bottom")) == ("bottom", "top")
    with pytest.raises(UserError, match="band"):
        flipped_rules(("band:10-90",))


def test_paired_difference_verdicts_follow_the_interval():
    rng = np.random.default_rng(0)
    base = rng.normal(2.0, 0.5, size=200)  # per-example NLL of a random arm
    randoms = np.stack([base + rng.normal(0, 0.05, 200) for _ in range(3)])
    better = paired_difference(base - 0.2, randoms, "nll")
    assert better["verdict"] == BETTER and better["ci95"][1] < 0
    assert better["selection_minus_random"] == pytest.approx(-0.2 - (randoms.mean() - base.mean()))
    assert better["random_sd"] > 0 and better["n_seeds"] == 3 and better["n_eval"] == 200
    assert paired_difference(base + 0.2, randoms, "nll")["verdict"] == WORSE
    wobble = rng.normal(0, 0.5, 200)
    noise = paired_difference(randoms.mean(axis=0) + wobble - wobble.mean(), randoms, "nll")  # mean difference 0
    assert noise["verdict"] == SAME and noise["ci95"][0] < 0 < noise["ci95"][1]
    # higher is better for accuracy: the same positive shift is "better"
    acc = (rng.random((3, 200)) < 0.3).astype(float)
    assert paired_difference(np.ones(200), acc, "accuracy")["verdict"] == BETTER


def test_seed_spread_widens_the_interval_and_one_seed_says_so():
    rng = np.random.default_rng(1)
    base = rng.normal(2.0, 0.3, size=100)
    tight = np.stack([base + s for s in (0.0, 0.01, -0.01)])
    loose = np.stack([base + s for s in (0.0, 0.3, -0.3)])
    sel = base - 0.05
    width = lambda r: np.diff(paired_difference(sel, r, "nll")["ci95"])[0]
    assert width(loose) > 2 * width(tight)
    one = paired_difference(sel, base[None, :], "nll")
    assert one["random_sd"] is None and "one random seed" in one["verdict"]


def test_verdict_words():
    assert verdict(-0.3, -0.1, "nll", 3) == BETTER
    assert verdict(-0.3, 0.1, "nll", 3) == SAME
    assert verdict(0.1, 0.3, "nll", 3) == WORSE
    assert verdict(0.1, 0.3, "preference_accuracy", 3) == BETTER
    assert verdict(-0.3, -0.1, "dpo_loss", 2) == BETTER
