"""App-facing queries for preference-pair datasets (the Pairs page). Never imports streamlit.

Everything reads the pair job's materialised score view (:mod:`scoring.scores.views`, one row per pair with the pair
scores) and returns small frames: pre-binned histograms, a fixed-seed sample for the LossDiff-vs-IRM scatter, the
band's edges in score units, and one pair with its per-token log-prob changes. The band selection is
:func:`scoring.selection.pairs.lossdiff_irm_spec` run by :func:`scoring.selection.saved.run_selection` -- the call
``python -m scoring select NAME --rule lossdiff-irm --band LO-HI`` makes -- so the page and the CLI keep the same ids.
"""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scoring.ingest.catalog import dataset_kind
from scoring.queries.tokens import cache_tokenizer, pair_example, pair_token_frame
from scoring.queries.view import histograms, kept_mask, percentiles
from scoring.scores.view_reads import column, sample_order
from scoring.scores.views import View
from scoring.selection.pairs import BAND_SCORES, lossdiff_irm_spec
from scoring.selection.rules import SelectionResult
from scoring.selection.saved import SelectionSpec, reproduce_command, run_selection
from scoring.store.cache import Cache

DIST_SCORES = ("margin_base", "irm", "davir_dpo", "lossdiff")  # the margin distributions the page draws
SCATTER_POINTS = 3000


def is_pair_dataset(cache: Cache, dataset: str | None) -> bool:
    return bool(dataset) and dataset_kind(cache, dataset) == "pair"


def has_band_scores(view: View) -> bool:
    return all(s in view.score_columns for s in BAND_SCORES)


def distributions(view: View) -> pd.DataFrame:
    """Equal-width histograms (binned in DuckDB when the view was built) of the margin scores the view has."""
    return histograms(view, [s for s in DIST_SCORES if s in view.score_columns])


# ---------------------------------------------------------------- the LossDiff-IRM band


@dataclass(frozen=True)
class BandSummary:
    """What the band keeps: the spec (as saved), its result, and each score's band edges in score units."""

    spec: SelectionSpec
    result: SelectionResult
    edges: dict[str, tuple[float, float]]  # score -> (lowest, highest) value inside its percentile band
    n_eligible: int

    @property
    def n_kept(self) -> int:
        return len(self.result.kept_ids)

    @property
    def n_dropped(self) -> int:
        return self.result.n_total - self.n_kept


def _eligible(view: View, include_flagged: bool) -> np.ndarray:
    """View positions selectable by the band: both band scores finite, and unflagged unless asked (as select)."""
    ok = np.ones(view.n_rows, dtype=bool)
    for name in BAND_SCORES:
        ok &= np.isfinite(column(view, name))
    if not include_flagged:
        ok &= np.asarray([not f for f in column(view, "flag")], dtype=bool)
    return np.flatnonzero(ok)


def band_spec(dataset: str, bands, include_flagged: bool = False, job: str | None = None) -> SelectionSpec:
    """The selection for a (lossdiff, irm) pair of percentile bands: with one band for both, exactly the spec of
    ``select --rule lossdiff-irm --band LO-HI``; otherwise the same rule with a band per score."""
    (a, b) = bands
    if tuple(a) == tuple(b):
        return lossdiff_irm_spec(dataset, tuple(a), "100%", include_flagged, job)
    rules = tuple(f"band:{lo:g}-{hi:g}" for lo, hi in (a, b))
    return SelectionSpec(dataset=dataset, scores=BAND_SCORES, budget="100%", rules=rules, combine="and",
                         include_flagged=include_flagged, job=job)  # fmt: skip


def band_edges(view: View, bands, include_flagged: bool = False) -> dict[str, tuple[float, float]]:
    """Per band score, the smallest and largest value whose percentile among the eligible pairs lies in its band.

    Percentile as scoring.selection.engine defines it: (rank - 1) / (m - 1) * 100 over the m eligible pairs (ties aside)."""
    elig = _eligible(view, include_flagged)
    m = len(elig)
    out = {}
    for name, band in zip(BAND_SCORES, bands):
        values = np.sort(column(view, name)[elig])
        if not m:
            continue
        lo = min(math.ceil(band[0] / 100 * (m - 1) - 1e-9), m - 1)
        hi = max(math.floor(band[1] / 100 * (m - 1) + 1e-9), lo)
        out[name] = (float(values[lo]), float(values[hi]))
    return out


def band_summary(cache: Cache, view: View, bands, include_flagged: bool = False) -> BandSummary:
    """Run the LossDiff-IRM selection (every pair inside both bands: budget 100 %) on the view."""
    spec = band_spec(view.dataset, bands, include_flagged, view.job.id)
    result, _ = run_selection(cache, spec, view)
    return BandSummary(spec, result, band_edges(view, bands, include_flagged), len(_eligible(view, include_flagged)))


def scatter(view: View, n: int = SCATTER_POINTS, kept_pos=None) -> pd.DataFrame:
    """A fixed-seed sample of up to ``n`` pairs with both band scores: id, lossdiff, irm, and kept / dropped."""
    order = sample_order(view, scored_only=True)
    finite = np.isfinite(column(view, "lossdiff")[order]) & np.isfinite(column(view, "irm")[order])
    pos = order[finite][: int(n)]
    kept = kept_mask(view.n_rows, kept_pos)[pos]
    return pd.DataFrame({"id": column(view, "id")[pos], "lossdiff": column(view, "lossdiff")[pos],
                         "irm": column(view, "irm")[pos], "rows": np.where(kept, "kept", "dropped")})  # fmt: skip


def n_with_band_scores(view: View) -> int:
    return int((np.isfinite(column(view, "lossdiff")) & np.isfinite(column(view, "irm"))).sum())


def band_command(cache: Cache, spec: SelectionSpec, name: str) -> str:
    """The CLI line that saves the same selection as the page: ``--rule lossdiff-irm --band LO-HI`` for one band,
    else the general rule with a band per score (scoring.selection.saved.reproduce_command)."""
    q = shlex.quote
    head = f"python -m scoring --cache {q(str(cache.root))} "
    if len(set(spec.rules)) > 1:
        return head + reproduce_command(spec.record(spec.job or "", "", name or "NAME")).removeprefix("python -m scoring ")
    band = spec.rules[0].removeprefix("band:")
    parts = ["select", q(spec.dataset), "--rule lossdiff-irm", "--band", band, "--budget", q(spec.budget)]
    include_flagged, job_id = spec.include_flagged, spec.job
    if include_flagged:
        parts.append("--include-flagged")
    if job_id:
        parts += ["--job", q(job_id)]
    return head + " ".join([*parts, "--save", q(name or "NAME")])


# ---------------------------------------------------------------- one pair


def pair_detail(cache: Cache, view: View, idx: int) -> dict:
    """One pair for the pair view: id, flag, prompt, chosen, rejected, every score with its percentile, and per
    reply ("chosen", "rejected") a token frame (empty before the reference pass has reached the pair)."""
    ex = pair_example(cache, view.dataset, idx, view.job.id)
    pos = int(np.searchsorted(column(view, "idx"), int(idx)))
    tokenizer = cache_tokenizer(cache, view) if ex["tokens"] else None
    empty = pd.DataFrame(columns=["token", "ref_logp", "theta_logp", "change"])
    tokens = {s: pair_token_frame(tokenizer, ex["tokens"], s) if "ref" in ex["tokens"] else empty
              for s in ("chosen", "rejected")}  # fmt: skip
    return {"idx": ex["idx"], "id": str(ex["id"]), "flag": str(ex["flag"] or ""), "prompt": ex["prompt"],
            "chosen": ex["chosen"], "rejected": ex["rejected"], "scores": percentiles(view, pos),
            "tokens": tokens, "has_theta": "theta" in ex["tokens"]}  # fmt: skip
