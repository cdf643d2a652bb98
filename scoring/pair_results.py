"""Reading pair results and the LossDiff-IRM selection.

The pair loss table joins a pair dataset's examples to its job's ref / theta / val pair passes (DuckDB over the
immutable Parquet parts, in memory, like scoring.results); the pair scores (scoring.scores, kind "pair") are
computed from it.

LossDiff-IRM (arXiv 2510.13212): keep the pairs whose ``lossdiff`` AND ``irm`` both lie inside the middle percentile
band [LO, HI] (percentiles among the eligible pairs: unflagged and scored). Pairs below the band barely move the
model or contradict the rest (noise, e.g. swapped labels); pairs above it are the ones a validation-trained model
explains far better (overfitting risk). It is exactly the ``band:LO-HI`` rule of scoring.select over the two
scores, so a saved selection records it that way and its reproduce command is an ordinary ``select`` line;
dropped pairs carry ``outside_band:lossdiff`` / ``outside_band:irm`` (or ``flagged:…``, ``unscored``).

DEFAULT_BAND is 15-85. lossdiff and irm are strongly anti-correlated in practice (θ was trained on each pair, θ_val
was not: Spearman -0.84 to -0.88 on the shared data), so the intersection keeps far more than the product of the
two bands: on real scores 10-90 kept ~70 % of the eligible pairs and 15-85 kept 63 % (48 of 76 HH-RLHF pairs,
35 of 56 planted ones), the ~64 % the paper keeps. Measured figures are in the README.
"""
from __future__ import annotations

import re

import pandas as pd

from . import data
from .errors import UserError
from .results import _connect, _sql_str, parts_glob, pick_job
from .schema import join_flags
from .scores import compute_pairs
from .store import Cache

DEFAULT_BAND = (15.0, 85.0)
PAIR_RULE = "lossdiff-irm"


def pair_loss_table(cache: Cache, dataset: str, job: dict) -> pd.DataFrame:
    """One row per pair: idx, id, flag, token counts (ref pass), log-probs under each model (NaN where missing), beta."""
    examples = cache.examples_path(dataset)
    selects, joins = [], []
    for role in ("ref", "theta", "val"):
        glob = parts_glob(cache, job[f"{role}_pass"]) if job.get(f"{role}_pass") else None
        alias = role[0]
        counts = ", n_prompt_tokens, n_chosen_tokens, n_rejected_tokens, flag AS pass_flag" if role == "ref" else ""
        if glob:
            source = (f"(SELECT idx, chosen_logp AS {role}_chosen_logp, rejected_logp AS {role}_rejected_logp"
                      f"{counts} FROM read_parquet({_sql_str(glob)}))")  # fmt: skip
        else:
            empty = (", NULL::INT AS n_prompt_tokens, NULL::INT AS n_chosen_tokens, NULL::INT AS n_rejected_tokens, "
                     "NULL::VARCHAR AS pass_flag") if role == "ref" else ""  # fmt: skip
            source = (f"(SELECT NULL::BIGINT AS idx, NULL::DOUBLE AS {role}_chosen_logp, "
                      f"NULL::DOUBLE AS {role}_rejected_logp{empty} WHERE false)")  # fmt: skip
        joins.append(f"LEFT JOIN {source} {alias} ON {alias}.idx = e.idx")
        selects.append(f"{alias}.{role}_chosen_logp, {alias}.{role}_rejected_logp")
    query = f"""
        SELECT e.idx, e.id, e.flag AS ingest_flag, r.pass_flag, r.n_prompt_tokens, r.n_chosen_tokens,
               r.n_rejected_tokens, {', '.join(selects)}
        FROM read_parquet({_sql_str(examples)}) e {' '.join(joins)}
        ORDER BY e.idx
    """
    table = _connect().execute(query).df()
    table["flag"] = [join_flags(a, b) for a, b in zip(table["ingest_flag"], table["pass_flag"].fillna(""))]
    table = table.drop(columns=["ingest_flag", "pass_flag"])
    table["n_response_tokens"] = table["n_chosen_tokens"] + table["n_rejected_tokens"]
    table["beta"] = float((job.get("dpo") or {}).get("beta", 0.1))
    return table


def pair_score_table(cache: Cache, dataset: str, job_id: str | None = None) -> tuple[pd.DataFrame, dict]:
    """(one row per pair: idx, id, flag, n_prompt_tokens, n_response_tokens, then every pair score; the job)."""
    job = pick_job(cache, dataset, job_id)
    losses = pair_loss_table(cache, dataset, job)
    scores = compute_pairs(losses, job.get("scores", []))
    table = pd.concat([losses[["idx", "id", "flag"]], scores], axis=1)
    return table, job


# ---------------------------------------------------------------- LossDiff-IRM selection


def parse_band(text: str | None) -> tuple[float, float]:
    """"LO-HI" percentiles (0 <= LO < HI <= 100); None gives DEFAULT_BAND."""
    if text is None or not str(text).strip():
        return DEFAULT_BAND
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)\s*", str(text))
    if not m or not 0 <= float(m.group(1)) < float(m.group(2)) <= 100:
        raise UserError(f"--band {text!r}: expected LO-HI percentiles with 0 <= LO < HI <= 100, e.g. --band 15-85")
    return float(m.group(1)), float(m.group(2))


def select_lossdiff_irm(table: pd.DataFrame, band: tuple[float, float] = DEFAULT_BAND, budget=None,
                        include_flagged: bool = False):
    """The pairs inside the [LO, HI] percentile band of both lossdiff and irm (within ``budget``, default all).

    Returns scoring.select.SelectionResult: kept ids (closest to the band centre first) and a reason per dropped id.
    """
    from . import select as sel

    lo, hi = band
    budget = budget or sel.parse_budget("100%")
    return sel.select(table, ["lossdiff", "irm"], [sel.parse_rule(f"band:{lo:g}-{hi:g}")] * 2, budget,
                      include_flagged=include_flagged)  # fmt: skip


def lossdiff_irm_spec(dataset: str, band: tuple[float, float] = DEFAULT_BAND, budget: str = "100%",
                      include_flagged: bool = False, job: str | None = None):
    """The LossDiff-IRM rule as the SelectionSpec the CLI and the app both run (scoring.selections)."""
    from .selections import SelectionSpec

    lo, hi = band
    return SelectionSpec(dataset=dataset, scores=("lossdiff", "irm"), budget=budget, rules=(f"band:{lo:g}-{hi:g}",),
                         combine="and", include_flagged=include_flagged, job=job)  # fmt: skip


def select_command(cache: Cache, args) -> int:
    """``select NAME --rule lossdiff-irm [--band LO-HI] --budget B --save SEL`` (dispatched from cli.cmd_select)."""
    from .selections import save_spec

    if [str(r).strip().lower() for r in args.rule or []] != [PAIR_RULE]:
        raise UserError("--score is required (or use --rule lossdiff-irm on a preference-pair dataset)")
    meta = data.dataset_meta(cache, args.name)
    if meta.get("kind") != "pair":
        raise UserError(f"--rule lossdiff-irm needs a preference-pair dataset; {args.name!r} holds "
                        f"{meta.get('kind', 'sft')} examples")
    lo, hi = parse_band(getattr(args, "band", None))
    spec = lossdiff_irm_spec(args.name, (lo, hi), args.budget, args.include_flagged, args.job)
    _, result = save_spec(cache, spec, args.save)
    print(f"{args.save}: kept {len(result.kept_ids)} of {result.n_total} pairs (lossdiff and irm both inside the "
          f"{lo:g}-{hi:g} percentile band), {result.tokens_kept} tokens")
    counts = result.reason_counts()
    print("  dropped: " + (", ".join(f"{k} {v}" for k, v in counts.items()) if counts else "none"))
    return 0


# ---------------------------------------------------------------- one pair, for a pair view


def pair_example(cache: Cache, dataset: str, idx: int, job_id: str | None = None) -> dict:
    """One pair for display: prompt, chosen and rejected texts, flag, and per model pass ("ref", "theta", "val")
    the scored token ids and per-token NLL of each side (numpy arrays; empty where that pass has not run yet).

    The app's pair view colours tokens from these; decoding the ids needs the job's tokenizer."""
    from .schema import decode_f16, decode_i32

    job = pick_job(cache, dataset, job_id)
    examples = data.load_examples(cache, dataset, columns=["idx", "id", "prompt", "response", "rejected", "flag"])
    row = examples[examples["idx"] == int(idx)]
    if row.empty:
        raise UserError(f"dataset {dataset!r} has no pair with idx {idx}")
    row = row.iloc[0]
    out = {"idx": int(idx), "id": row["id"], "prompt": row["prompt"], "chosen": row["response"],
           "rejected": row["rejected"], "flag": row["flag"], "tokens": {}}  # fmt: skip
    for role in ("ref", "theta", "val"):
        glob = parts_glob(cache, job[f"{role}_pass"]) if job.get(f"{role}_pass") else None
        if glob is None:
            continue
        found = _connect().execute(
            f"SELECT * FROM read_parquet({_sql_str(glob)}) WHERE idx = ?", [int(idx)]).df()  # fmt: skip
        if found.empty:
            continue
        r = found.iloc[0]
        out["tokens"][role] = {side: {"ids": decode_i32(r[f"{side}_token_ids"]),
                                      "nll": decode_f16(r[f"{side}_token_losses"]).astype(float)}
                               for side in ("chosen", "rejected")}  # fmt: skip
    return out
