"""How well the cheap pair scores agree with the influence they stand for (the ``influence`` job's report).

On a sample of pairs with their first-order influence IF (scoring.train.influence) and their scores:

- **Spearman** of each score with IF, and of the combined LossDiff-IRM rank: the mean of a pair's lossdiff and irm
  percentiles (the band keeps pairs whose two percentiles are both central, so this is the single number the rule
  is closest to ranking by).
- **Overlap** with TIF, the paper's truncated-influence selection: TIF keeps the k pairs whose IF percentile lies
  closest to 50 (the middle band of IF), k = how many pairs LossDiff-IRM keeps with the band. The overlap
  coefficient |A ∩ B| / min(|A|, |B|) of the two kept sets (the paper reports 0.73-0.78 for LossDiff-IRM), and the
  same for each score alone (its k most central pairs; the paper: 0.60-0.70). A random set of k pairs overlaps
  TIF by k/n on average: ``chance``.
- **Auto band**: of the bands LO-HI on a 5-point grid that keep between 50 % and 65 % of the sample (the share the
  paper keeps), the one whose LossDiff-IRM selection overlaps TIF most above chance (overlap − k/n; plain overlap
  would always favour the widest band). ``select --rule lossdiff-irm --band auto`` uses it.

Percentiles are taken within the sample, as the selection takes them within the pool.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from scoring.selection.pairs import BAND_SCORES, DEFAULT_BAND
from scoring.selection.ranking import twice_avg_ranks

AGREEMENT_SCORES = ("lossdiff", "irm", "davir_dpo", "margin_base")
COMBINED = "lossdiff_irm"
AUTO_KEEP = (0.50, 0.65)  # the kept shares the auto band may choose between
GRID = np.arange(0, 101, 5)


def percentiles(values: np.ndarray) -> np.ndarray:
    """0..100 average-rank percentiles, as the selection engine computes them (50 for a single value)."""
    n = len(values)
    if n == 1:
        return np.array([50.0])
    return (twice_avg_ranks(values) / 2 - 1) * 100 / (n - 1)


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    ra, rb = percentiles(a[ok]), percentiles(b[ok])
    if ra.std() == 0 or rb.std() == 0:
        return None
    return round(float(np.corrcoef(ra, rb)[0, 1]), 4)


def central(pct: np.ndarray, k: int) -> np.ndarray:
    """(n,) bool: the k rows whose percentile is closest to 50 (ties by position)."""
    keep = np.zeros(len(pct), dtype=bool)
    keep[np.argsort(np.abs(pct - 50), kind="stable")[:k]] = True
    return keep


def overlap(a: np.ndarray, b: np.ndarray) -> float | None:
    """The overlap coefficient |A ∩ B| / min(|A|, |B|) of two boolean masks."""
    small = min(a.sum(), b.sum())
    return round(float((a & b).sum() / small), 4) if small else None


def band_keep(pcts: dict[str, np.ndarray], band: tuple[float, float]) -> np.ndarray:
    """LossDiff-IRM's kept mask: both scores' percentiles inside [LO, HI]."""
    lo, hi = band
    return np.logical_and.reduce([(pcts[s] >= lo) & (pcts[s] <= hi) for s in BAND_SCORES])


def agreement(table: pd.DataFrame, band: tuple[float, float] = DEFAULT_BAND) -> dict:
    """The report over ``table`` (one row per sampled pair: ``influence`` and the score columns, rows with a NaN
    influence or band score left out): {"n", "band", "kept", "chance", "spearman", "overlap", "auto_band"}."""
    t = table[np.isfinite(table["influence"]) & table[list(BAND_SCORES)].notna().all(axis=1)]
    influence = t["influence"].to_numpy(dtype=float)
    pcts = {s: percentiles(t[s].to_numpy(dtype=float)) for s in AGREEMENT_SCORES if s in t and t[s].notna().all()}
    if len(t) == 0:
        return {"n": 0, "band": list(band), "kept": 0, "chance": None, "spearman": {}, "overlap": {}, "auto_band": None}
    combined = (pcts["lossdiff"] + pcts["irm"]) / 2
    rho = {s: spearman(t[s].to_numpy(dtype=float), influence) for s in pcts}
    rho[COMBINED] = spearman(combined, influence)
    kept = band_keep(pcts, band)
    k = int(kept.sum())
    tif = central(percentiles(influence), k)
    over = {s: overlap(central(p, k), tif) for s, p in pcts.items()}
    over[COMBINED] = overlap(kept, tif)
    return {"n": len(t), "band": [float(band[0]), float(band[1])], "kept": k, "chance": round(k / len(t), 4),
            "spearman": rho, "overlap": over, "auto_band": auto_band(pcts, percentiles(influence))}


def auto_band(pcts: dict[str, np.ndarray], influence_pct: np.ndarray) -> dict | None:
    """The grid band keeping AUTO_KEEP of the sample whose selection overlaps TIF most above chance."""
    n, best = len(influence_pct), None
    for lo in GRID[GRID < 50]:
        for hi in GRID[GRID > 50]:
            kept = band_keep(pcts, (float(lo), float(hi)))
            k = int(kept.sum())
            if not AUTO_KEEP[0] <= k / n <= AUTO_KEEP[1]:
                continue
            over = overlap(kept, central(influence_pct, k)) or 0.0
            lift = over - k / n
            if best is None or lift > best["lift"] + 1e-12:
                best = {"band": [float(lo), float(hi)], "kept": k, "overlap": over, "chance": round(k / n, 4),
                        "lift": round(lift, 4)}  # fmt: skip
    return best
