"""Reports on a score table: how well each score finds labelled defects (AUROC), how well a proxy model's ranking
agrees with the target's (Spearman), and what the flags say.

The AUROC takes clean rows as the positive class, so 1.0 means a score ranks every clean row above every defect
row of a kind: the yardstick for the demo's planted defects (scoring.ingest.demo) and for swapped preference pairs.
"""
from __future__ import annotations

import json
import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from scoring.ingest.catalog import dataset_meta, kind_of, load_examples
from scoring.ingest.demo import DEFECT_KINDS
from scoring.schema import VALIDATION_FLAG, count_flags
from scoring.scores.tables import JOB_KIND, score_columns, score_table
from scoring.store.cache import Cache
from scoring.store.jobs import list_jobs


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span (as ``scipy.stats.rankdata(method='average')``)."""
    order = np.argsort(x, kind="mergesort")
    sx = x[order]
    starts = np.r_[0, np.flatnonzero(sx[1:] != sx[:-1]) + 1]
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def mann_whitney_auroc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """P(positive scores above negative) + 0.5 P(tie), from the Mann-Whitney U statistic; None if a side is empty."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if not len(pos) or not len(neg):
        return None
    ranks = _average_ranks(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def auroc_by_defect(labels: Sequence[str], scores: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float | None]]:
    """For each score, how well it ranks each defect kind *below* the clean rows.

    ``labels`` holds one defect kind per row ("" or None = clean); each score is a sequence aligned with it.
    The AUROC takes clean rows as the positive class: 1.0 means every clean row scores above every defect row
    of that kind, 0.5 is chance, 0.0 is perfectly backwards (a score where low = good reads near 0).
    Rows whose score is NaN are skipped for that score. Keys: every kind in ``DEFECT_KINDS``, any other label
    present, then "any" (all defects together); the value is None when that kind or the clean side has no rows.
    """
    lab = np.array(["" if not label or label == "clean" else str(label) for label in labels], dtype=object)
    kinds = list(DEFECT_KINDS) + sorted(set(lab) - set(DEFECT_KINDS) - {""})
    clean = lab == ""
    table: dict[str, dict[str, float | None]] = {}
    for name, values in scores.items():
        s = np.asarray(values, dtype=float)
        if s.shape != lab.shape:
            raise ValueError(f"score {name!r} has {s.size} values for {lab.size} labels")
        ok = ~np.isnan(s)
        pos = s[clean & ok]
        row = {kind: mann_whitney_auroc(pos, s[(lab == kind) & ok]) for kind in kinds}
        row["any"] = mann_whitney_auroc(pos, s[~clean & ok])
        table[name] = row
    return table


def format_auroc_table(table: Mapping[str, Mapping[str, float | None]]) -> str:
    """Plain-text table: one row per score, one column per defect kind (then "any"); "-" where there is no value."""
    if not table:
        return "(no scores)"
    columns: list[str] = []
    for row in table.values():
        columns += [c for c in row if c not in columns and c != "any"]
    columns.append("any")
    header = ["score"] + columns
    body = [[name] + ["-" if row.get(c) is None or math.isnan(row[c]) else f"{row[c]:.2f}" for c in columns]
            for name, row in table.items()]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in body])


def defect_labels(cache: Cache, dataset: str) -> pd.Series | None:
    """The ``defect`` column of the original records when the dataset has one (the demo does), by idx."""
    meta = dataset_meta(cache, dataset)
    if "defect" not in (meta.get("columns") or []):
        return None
    examples = load_examples(cache, dataset, columns=["idx", "original"])
    labels = [str((json.loads(o) or {}).get("defect") or "") for o in examples["original"]]
    return pd.Series(labels, index=examples["idx"].to_numpy())


def auroc_report(cache: Cache, dataset: str, table: pd.DataFrame) -> dict | None:
    """AUROC per score and defect kind (1 = every clean row scores above every defect row); None without labels.
    Held-out validation pairs are left out: no selection can keep them, and θ never trained on them."""
    labels = defect_labels(cache, dataset)
    if labels is None:
        return None
    table = table[~table["flag"].fillna("").str.contains(VALIDATION_FLAG, regex=False)]
    ordered = labels.reindex(table["idx"].to_numpy()).fillna("").tolist()
    report = auroc_by_defect(ordered, {c: table[c].to_numpy() for c in score_columns(table)})
    present = set(ordered) | {"any"}  # leave out the demo's defect kinds a dataset does not have (e.g. pairs)
    return {name: {k: v for k, v in row.items() if k in present} for name, row in report.items()}


def rank_agreement(cache: Cache, dataset: str) -> list[dict]:
    """Spearman rank correlation of each shared score between finished runs of different base models.

    This is how a proxy model is judged: score the dataset with the small proxy and with the target model, and
    read how well the proxy's ranking agrees.
    """
    meta = dataset_meta(cache, dataset)
    kind = JOB_KIND[kind_of(meta)]
    runs = [j for j in list_jobs(cache, dataset)
            if j.kind == kind and j.state == "done" and j.dataset_fingerprint == meta["fingerprint"]]  # fmt: skip
    out = []
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            if a.model_fingerprint == b.model_fingerprint:
                continue
            ta, _ = score_table(cache, dataset, a.id)
            tb, _ = score_table(cache, dataset, b.id)
            for name in sorted(set(score_columns(ta)) & set(score_columns(tb))):
                pair = pd.DataFrame({"a": ta[name], "b": tb[name]}).dropna()
                rho = pair["a"].rank().corr(pair["b"].rank()) if len(pair) > 2 else np.nan
                out.append({"score": name, "run_a": a.id, "model_a": a.model, "run_b": b.id,
                            "model_b": b.model, "spearman": None if np.isnan(rho) else float(rho),
                            "n": len(pair)})  # fmt: skip
    return out


def flag_counts(table: pd.DataFrame) -> dict[str, int]:
    """Rows per flag reason, most common first (ties by name)."""
    return dict(sorted(count_flags(table["flag"]).items(), key=lambda kv: (-kv[1], kv[0])))
