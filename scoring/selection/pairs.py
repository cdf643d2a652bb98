"""The LossDiff-IRM selection rule for preference pairs.

LossDiff-IRM (arXiv 2510.13212): keep the pairs whose ``lossdiff`` AND ``irm`` both lie inside the middle percentile
band [LO, HI] (percentiles among the eligible pairs: unflagged and scored). Pairs below the band barely move the
model or contradict the rest (noise, e.g. swapped labels); pairs above it are the ones a validation-trained model
explains far better (overfitting risk). It is exactly the ``band:LO-HI`` rule of scoring.selection.engine over the two
scores, so a saved selection records it that way and its reproduce command is an ordinary ``select`` line;
dropped pairs carry ``outside_band:lossdiff`` / ``outside_band:irm`` (or ``flagged:…``, ``unscored``).

DEFAULT_BAND is 12-88, chosen again after θ_val became θ after one DPO epoch on the validation pairs (the paper's
LossDiff). Before that, θ_val started from π_ref, lossdiff was by construction a decreasing function of irm
(Spearman −0.86 on the HH run in the README), the two bands nearly coincided and 15-85 kept ~56-63 %. Now the two
scores are only weakly related (Spearman −0.15 on the same run), the intersection keeps about the product of the two
band widths, and 12-88 (76 % × 76 % ≈ 58 %) keeps the middle of the 50-64 % the paper keeps: 58 % of the selectable
pairs on that run (15-85 kept 47 %, 10-90 66 %). Measured figures are in the README.
"""
from __future__ import annotations

import re

import pandas as pd

from scoring.errors import UserError
from scoring.selection.engine import select
from scoring.selection.rules import parse_budget, parse_rule
from scoring.selection.saved import SelectionSpec

DEFAULT_BAND = (12.0, 88.0)
PAIR_RULE = "lossdiff-irm"
BAND_SCORES = ("lossdiff", "irm")


def parse_band(text: str | None) -> tuple[float, float]:
    """"LO-HI" percentiles (0 <= LO < HI <= 100); None gives DEFAULT_BAND."""
    if text is None or not str(text).strip():
        return DEFAULT_BAND
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)\s*", str(text))
    if not m or not 0 <= float(m.group(1)) < float(m.group(2)) <= 100:
        raise UserError(f"--band {text!r}: expected LO-HI percentiles with 0 <= LO < HI <= 100, e.g. --band 12-88")
    return float(m.group(1)), float(m.group(2))


def select_lossdiff_irm(table: pd.DataFrame, band: tuple[float, float] = DEFAULT_BAND, budget=None,
                        include_flagged: bool = False):
    """The pairs inside the [LO, HI] percentile band of both lossdiff and irm (within ``budget``, default all).

    Returns a SelectionResult: kept ids (closest to the band centre first) and a reason per dropped id.
    """
    lo, hi = band
    budget = budget or parse_budget("100%")
    return select(table, list(BAND_SCORES), [parse_rule(f"band:{lo:g}-{hi:g}")] * 2, budget,
                  include_flagged=include_flagged)  # fmt: skip


def lossdiff_irm_spec(dataset: str, band: tuple[float, float] = DEFAULT_BAND, budget: str = "100%",
                      include_flagged: bool = False, job: str | None = None, band_auto: str | None = None):
    """The LossDiff-IRM rule as the SelectionSpec the CLI and the app both run (scoring.selection.saved);
    ``band_auto`` records how an automatic band was chosen."""
    lo, hi = band
    return SelectionSpec(dataset=dataset, scores=BAND_SCORES, budget=budget, rules=(f"band:{lo:g}-{hi:g}",),
                         combine="and", include_flagged=include_flagged, job=job, band_auto=band_auto)  # fmt: skip
