"""App-facing queries for the Evaluate page (and the Select page's verdict line). Never imports streamlit.

An evaluation (scoring.jobs.evaluate) trains one model per arm and measures each on eval sets; its report
(:func:`scoring.jobs.evaluate.report`) is the one source of every number here:

- the per-arm table (a first "start" row: the model every arm starts from), one column per (eval set, metric);
- the comparisons, one row per eval set and metric: selection, random mean ± sd, full, selection − random with its
  bootstrap 95 % interval and the verdict in words;
- the sweep in long form for a chart of "eval metric vs budget": the rule's value, random's band, full's level;
- the verdict of the latest finished evaluation of the rule the Select page is showing (same rule, same score job,
  same budget, or a sweep through that budget), and the CLI line that would run one.
"""
from __future__ import annotations

import math
import re
import shlex

import pandas as pd

from scoring.errors import UserError
from scoring.ingest.catalog import dataset_kind, kind_of, list_datasets
from scoring.jobs.evaluate import evaluate_request, evaluations, report
from scoring.jobs.runner import enqueue
from scoring.jobs.worker import ensure_worker
from scoring.scores.tables import pick_job
from scoring.selection.evaluation import LOWER_IS_BETTER
from scoring.selection.rules import parse_budget
from scoring.selection.saved import SelectionSpec, list_selections
from scoring.store.cache import Cache
from scoring.store.jobs import Job

START_ROW = "start"
ARM_COLUMNS = ["arm", "examples", "tokens", "steps"]
COMPARISON_COLUMNS = ["eval set", "metric", "primary", "better when", "selection", "random mean", "random sd",
                      "seeds", "full", "selection − random", "CI low", "CI high", "eval examples", "verdict"]  # fmt: skip
SWEEP_COLUMNS = ["eval", "metric", "budget", "budget_value", "budget_unit", "n_examples", "rule", "random_mean",
                 "random_sd", "random_lo", "random_hi", "random_band", "full", "selection_minus_random", "ci_lo",
                 "ci_hi", "verdict"]  # fmt: skip
BUDGET_UNITS = {"fraction": "% of rows", "count": "rows", "tokens": "tokens"}
VERDICT_KEYS = ("metric", "verdict", "selection_minus_random", "ci95", "selection", "random_mean", "random_sd",
                "n_seeds", "full")  # fmt: skip


# ---------------------------------------------------------------- the jobs


def evaluation_jobs(cache: Cache, dataset: str) -> list[Job]:
    """The dataset's evaluation jobs, newest first (finished, running and queued alike)."""
    return evaluations(cache, dataset)


def pending_evaluations(cache: Cache, dataset: str) -> list[Job]:
    """The dataset's queued / running / interrupted evaluation jobs, newest first."""
    return [j for j in evaluations(cache, dataset) if j.unfinished]


def evaluation_label(job: Job) -> str:
    """One line naming an evaluation in a picker: id, what it evaluates, state, when it was asked for."""
    ev = job.evaluation or {}
    what = ev.get("selection") or f"sweep of {ev.get('rule_of')} at {', '.join(ev.get('budgets') or [])}"
    return f"{job.id[:8]} · {what} · {job.state} · {(job.created or '')[:16].replace('T', ' ')}"


def is_sweep(job: Job) -> bool:
    return bool((job.evaluation or {}).get("rule_of"))


def notes(job: Job) -> list[str]:
    return list(report(job)["notes"])


# ---------------------------------------------------------------- the report as frames


def _metric_columns(out: dict) -> list[tuple[str, str]]:
    """(eval, metric) in report order: the start row's, then any an arm adds (while running, start may be missing)."""
    seen: dict[tuple[str, str], None] = {}
    for metrics in [out["start"] or {}, *[a["metrics"] for a in out["arms"]]]:
        for name, values in (metrics or {}).items():
            for metric in values:
                seen[(name, metric)] = None
    return list(seen)


def metric_column(eval_name: str, metric: str) -> str:
    """The arms table's column for one (eval set, metric)."""
    return f"{eval_name}: {metric}"


def arms_frame(job: Job) -> pd.DataFrame:
    """One row per arm, after a first "start" row (the model every arm starts from): arm, examples, tokens, steps,
    then one column per (eval set, metric) with the arm's mean (NaN where not measured yet)."""
    out = report(job)
    cols = _metric_columns(out)
    rows = []
    if out["start"]:
        rows.append({"arm": START_ROW, "examples": None, "tokens": None, "steps": None,
                     **{metric_column(e, m): _float(out["start"].get(e, {}).get(m)) for e, m in cols}})  # fmt: skip
    for arm in out["arms"]:
        rows.append({"arm": arm["name"], "examples": arm["n_examples"], "tokens": arm["n_tokens"],
                     "steps": arm["steps"],
                     **{metric_column(e, m): _float((arm["metrics"] or {}).get(e, {}).get(m)) for e, m in cols}})
    frame = pd.DataFrame(rows, columns=ARM_COLUMNS + [metric_column(e, m) for e, m in cols])
    for name in ("examples", "tokens", "steps"):
        frame[name] = frame[name].astype("Int64")
    return frame


def primary_bars(job: Job) -> pd.DataFrame:
    """Long form for a per-arm bar chart of each eval set's primary metric: eval, metric, arm, role, value (the
    start row first; role is the arm's kind: start, selection, random, full, bottom, saved)."""
    out = report(job)
    roles = {a["name"]: a.get("role") for a in (job.result or {}).get("arms", [])}
    rows = []
    for name, metric in out["primary"].items():
        if out["start"] and name in out["start"]:
            rows.append({"eval": name, "metric": metric, "arm": START_ROW, "role": START_ROW,
                         "value": _float(out["start"][name].get(metric))})  # fmt: skip
        for arm in out["arms"]:
            value = (arm["metrics"] or {}).get(name, {}).get(metric)
            if value is not None:
                rows.append({"eval": name, "metric": metric, "arm": arm["name"],
                             "role": roles.get(arm["name"]) or "", "value": float(value)})  # fmt: skip
    return pd.DataFrame(rows, columns=["eval", "metric", "arm", "role", "value"])


def comparisons_frame(job: Job) -> pd.DataFrame:
    """One row per eval set and metric (the primary one first, then the others): the selection's mean, random's
    mean and sd over seeds, the full set's mean, selection − random with its 95 % interval, and the verdict in
    words. Empty for a sweep (see :func:`sweep_frame`) and before the evaluation finished."""
    rows = []
    for name, c in (report(job)["comparisons"] or {}).items():
        for point, primary in [(c, True), *[(p, False) for p in (c.get("also") or {}).values()]]:
            rows.append({"eval set": name, "primary": primary, **_comparison_row(point)})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _comparison_row(point: dict) -> dict:
    lo, hi = point.get("ci95") or (None, None)
    metric = point["metric"]
    return {"metric": metric, "better when": "lower" if LOWER_IS_BETTER.get(metric) else "higher",
            "selection": _float(point.get("selection")), "random mean": _float(point.get("random_mean")),
            "random sd": _float(point.get("random_sd")), "seeds": point.get("n_seeds"), "full": _float(point.get("full")),
            "selection − random": _float(point.get("selection_minus_random")), "CI low": _float(lo),
            "CI high": _float(hi), "eval examples": point.get("n_eval"), "verdict": point.get("verdict") or ""}  # fmt: skip


OTHER_COLUMNS = ["eval set", "metric", "arm", "value", "arm − random", "CI low", "CI high", "verdict"]


def others_frame(job: Job) -> pd.DataFrame:
    """One row per (eval set, metric, other arm: full, bottom, other saved selections) judged against the same
    random arms as the selection: the arm's mean, arm − random with its 95 % interval, and the verdict. Empty when
    the report has no such comparison (no random arms, a sweep, or before the evaluation finished)."""
    rows = []
    for name, c in (report(job)["comparisons"] or {}).items():
        for point in [c, *(c.get("also") or {}).values()]:
            for arm, o in (point.get("others") or {}).items():
                lo, hi = o.get("ci95") or (None, None)
                rows.append({"eval set": name, "metric": point["metric"], "arm": arm, "value": _float(o.get("value")),
                             "arm − random": _float(o.get("minus_random")), "CI low": _float(lo),
                             "CI high": _float(hi), "verdict": o.get("verdict") or ""})  # fmt: skip
    return pd.DataFrame(rows, columns=OTHER_COLUMNS)


def comparison_lines(job: Job) -> list[str]:
    """One plain-text line per eval set on its primary metric, e.g. "gsm8k-test: better than random — nll
    selection 1.2000 vs random 1.2410 ± 0.0030 (3 seeds); selection − random −0.0410 [95 % CI −0.0600, −0.0200];
    full 1.2300"."""
    lines = []
    for name, c in (report(job)["comparisons"] or {}).items():
        text = f"{name}: {c.get('verdict') or 'no random arms'} — {c['metric']} selection {c['selection']:.4f}"
        if c.get("random_mean") is not None:
            sd = f" ± {c['random_sd']:.4f}" if c.get("random_sd") is not None else ""
            lo, hi = c["ci95"]
            text += (f" vs random {c['random_mean']:.4f}{sd} ({c['n_seeds']} seed{'s' if c['n_seeds'] > 1 else ''}); "
                     f"selection − random {_signed(c['selection_minus_random'])} [95 % CI {_signed(lo)}, "
                     f"{_signed(hi)}]")  # fmt: skip
        if c.get("full") is not None:
            text += f"; full {c['full']:.4f}"
        lines.append(text)
    return lines


def budget_value(text: str) -> tuple[float, str]:
    """A budget as a number for an x axis and its unit: "5%" -> (5.0, "% of rows"), "300" -> (300.0, "rows"),
    "2M-tokens" -> (2000000.0, "tokens")."""
    budget = parse_budget(text)
    value = budget.value * 100 if budget.kind == "fraction" else budget.value
    return float(value), BUDGET_UNITS[budget.kind]


def sweep_frame(job: Job) -> pd.DataFrame:
    """The sweep in long form, one row per (eval set, metric, budget): the budget as written and as a number with
    its unit, the rows the rule kept, the rule's value, random's mean and band (random_lo / random_hi: mean ± sd
    over seeds, or the min and max over seeds where the sd is not known: one seed), the full set's value (the same
    on every row), selection − random with its interval, and the verdict. Empty when the job is not a sweep."""
    out = report(job)
    arms = {a["name"]: a for a in out["arms"]}
    rows = []
    for name, points in (out["sweep"] or {}).items():
        for p in points:
            value, unit = budget_value(p["budget"])
            for point in [p, *(p.get("also") or {}).values()]:
                lo, hi, band = _random_band(point, arms, name, p["budget"])
                ci = point.get("ci95") or (None, None)
                rows.append({"eval": name, "metric": point["metric"], "budget": p["budget"], "budget_value": value,
                             "budget_unit": unit, "n_examples": p.get("n_examples"),
                             "rule": _float(point.get("selection")), "random_mean": _float(point.get("random_mean")),
                             "random_sd": _float(point.get("random_sd")), "random_lo": lo, "random_hi": hi,
                             "random_band": band, "full": _float(point.get("full")),
                             "selection_minus_random": _float(point.get("selection_minus_random")),
                             "ci_lo": _float(ci[0]), "ci_hi": _float(ci[1]), "verdict": point.get("verdict") or ""})
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def _random_band(point: dict, arms: dict, eval_name: str, budget: str) -> tuple[float, float, str]:
    """(lo, hi, how): random's mean ± sd when the sd is known, else the min and max of the random arms' means."""
    mean, sd = _float(point.get("random_mean")), point.get("random_sd")
    if sd is not None:
        return mean - float(sd), mean + float(sd), "mean ± sd"
    seeds = [a["metrics"].get(eval_name, {}).get(point["metric"]) for name, a in arms.items()
             if re.fullmatch(rf"random-\d+@{re.escape(budget)}", name)]  # fmt: skip
    seeds = [float(v) for v in seeds if v is not None]
    if not seeds:
        return mean, mean, ""
    return min(seeds), max(seeds), "min-max over seeds"


def _float(value) -> float:
    return math.nan if value is None else float(value)


# ---------------------------------------------------------------- starting one


def eval_choices(cache: Cache, dataset: str) -> list[str]:
    """The other ingested datasets of the same kind as ``dataset``: what it can be evaluated on."""
    kind = dataset_kind(cache, dataset)
    return [m["name"] for m in list_datasets(cache) if m["name"] != dataset and kind_of(m) == kind]


def split_budgets(text: str) -> list[str]:
    """ "5%, 10% 25%" -> ["5%", "10%", "25%"]; each checked (a UserError names the one not understood)."""
    budgets = [b for b in re.split(r"[,\s]+", text or "") if b]
    for budget in budgets:
        parse_budget(budget)
    return budgets


def _request_args(selection: str | None, options: dict) -> tuple[str | None, dict]:
    """With budgets and no rule_of, the evaluation is the sweep of ``selection``'s rule over them."""
    options = {k: v for k, v in options.items() if v is not None}
    if options.get("budgets") and not options.get("rule_of"):
        options["rule_of"], selection = selection, None
    if not options.get("budgets"):
        options.pop("budgets", None)
    return selection, options


def start_evaluation(cache: Cache, dataset: str, selection: str | None, **options) -> Job:
    """Queue the evaluation of saved selection ``selection`` (the keyword arguments of
    :func:`scoring.jobs.evaluate.evaluate_request`; with ``budgets`` and no ``rule_of``, the sweep of the
    selection's rule over them) and make sure a background worker runs it. Returns the job (an identical finished
    or active one when there is one). A UserError from the request propagates unchanged."""
    selection, options = _request_args(selection, options)
    job, _ = enqueue(cache, evaluate_request(cache, dataset, selection, **options))
    if job.state != "done":
        ensure_worker(cache)
    return job


def evaluate_command(dataset: str, selection: str | None, options: dict, cache: Cache | None = None) -> str:
    """The ``python -m scoring evaluate`` line that asks for the same evaluation (shell-quoted); ``options`` are
    :func:`start_evaluation`'s keyword arguments (CLI defaults are left out)."""
    q = shlex.quote
    selection, o = _request_args(selection, options)
    parts = ["python -m scoring"] + (["--cache", q(str(cache.root))] if cache is not None else [])
    parts += ["evaluate", q(dataset)] + ([q(selection)] if selection else [])
    if o.get("against") is not None:
        parts += ["--against", q(",".join(o["against"]) or "random")]
    if "seeds" in o:
        parts += ["--seeds", str(int(o["seeds"]))]
    for source in o.get("evals") or []:
        parts += ["--eval", q(str(source))]
    for key, flag in (("holdout", "--holdout"), ("epochs", "--epochs"), ("lr", "--lr")):
        if key in o:
            parts += [flag, f"{float(o[key]):g}"]
    if "objective" in o:
        parts += ["--objective", q(o["objective"])]
    if o.get("method", "full") != "full":
        parts += ["--train-method", q(o["method"])]
    if o.get("start_from", "theta") != "theta":
        parts += ["--start", q(o["start_from"])]
    if o.get("rule_of"):
        parts += ["--rule-of", q(o["rule_of"]), "--budgets", q(",".join(o["budgets"]))]
    return " ".join(parts)


# ---------------------------------------------------------------- the Select page's verdict


def _budget_key(text) -> tuple | None:
    try:
        budget = parse_budget(text)
    except UserError:
        return None
    return budget.kind, budget.value


def _same_rule(rule: dict, spec: SelectionSpec) -> bool:
    """Whether a saved rule record (scoring.jobs.evaluate's ``rule``, or a saved selection's record) states
    ``spec``'s rule, budget and score job aside (SelectionSpec.rule_key)."""
    try:
        other = SelectionSpec.from_record({**rule, "dataset": spec.dataset})
    except (UserError, TypeError, ValueError):  # a record this version cannot read states no rule of ours
        return False
    return other.rule_key() == spec.rule_key()


def _score_job_id(cache: Cache, spec: SelectionSpec) -> str | None:
    if spec.job:
        return spec.job
    try:
        return pick_job(cache, spec.dataset).id
    except UserError:
        return None


def verdict_for(cache: Cache, spec: SelectionSpec) -> dict | None:
    """The verdict of the latest finished evaluation of ``spec``'s rule: same dataset, scores, rules, combine,
    flagged rows, quota, near-duplicate filter and score job, and either a plain evaluation at ``spec.budget`` or
    a sweep through it (then that sweep point). Returns {eval set: {job, eval, budget, sweep, metric, verdict,
    selection_minus_random, ci95, selection, random_mean, random_sd, n_seeds, full}} or None when there is none."""
    source, wanted = _score_job_id(cache, spec), _budget_key(spec.budget)
    if source is None or wanted is None:
        return None
    for job in evaluations(cache, spec.dataset):
        ev = job.evaluation or {}
        if job.state != "done" or job.source_job != source or not _same_rule(ev.get("rule") or {}, spec):
            continue
        out = report(job)
        if ev.get("rule_of"):
            points = {name: next((p for p in pts if _budget_key(p["budget"]) == wanted), None)
                      for name, pts in (out["sweep"] or {}).items()}  # fmt: skip
            points = {name: p for name, p in points.items() if p is not None}
        else:
            points = out["comparisons"] if _budget_key((ev.get("rule") or {}).get("budget")) == wanted else {}
        if points:
            return {name: {"job": job.id, "eval": name, "budget": spec.budget, "sweep": bool(ev.get("rule_of")),
                           **{k: p.get(k) for k in VERDICT_KEYS}} for name, p in points.items()}  # fmt: skip
    return None


def verdict_lines(verdicts: dict) -> list[str]:
    """Plain-text lines for a :func:`verdict_for` answer, one per eval set, e.g. "Evaluated (job 1a2b3c4d): better
    than random on gsm8k-test — nll selection − random −0.0410 [−0.0600, −0.0200]; full 1.2300"."""
    lines = []
    for name, v in verdicts.items():
        how = f"sweep job {v['job'][:8]} at {v['budget']}" if v["sweep"] else f"job {v['job'][:8]}"
        if v.get("verdict"):
            lo, hi = v["ci95"]
            text = (f"Evaluated ({how}): {v['verdict']} on {name} — {v['metric']} selection − random "
                    f"{_signed(v['selection_minus_random'])} [{_signed(lo)}, {_signed(hi)}]")  # fmt: skip
        else:
            text = f"Evaluated ({how}) on {name} without random arms — {v['metric']} selection {v['selection']:.4f}"
        if v.get("full") is not None:
            text += f"; full {v['full']:.4f}"
        lines.append(text)
    return lines


def _signed(x: float) -> str:
    return f"{x:+.4f}".replace("-", "−")


def saved_name_for(cache: Cache, spec: SelectionSpec) -> str | None:
    """The name of a saved selection of ``spec``'s dataset with exactly ``spec``'s rule and budget, or None."""
    wanted = _budget_key(spec.budget)
    source = _score_job_id(cache, spec)
    for record in list_selections(cache, spec.dataset):
        if (_same_rule(record, spec) and _budget_key(record.get("budget")) == wanted
                and (record.get("runs") or [None])[0] in (None, source)):
            return record["name"]
    return None



def suggested_command(cache: Cache, spec: SelectionSpec) -> str:
    """The ``evaluate`` line for ``spec``'s rule: its saved selection's name (or NAME when it is not saved yet),
    the first other dataset of the same kind as the eval set (else a 10 % holdout), 3 random seeds and full."""
    choices = eval_choices(cache, spec.dataset)
    options = {"against": ["random", "full"], "seeds": 3, **({"evals": choices[:1]} if choices else {"holdout": 0.1})}
    return evaluate_command(spec.dataset, saved_name_for(cache, spec) or "NAME", options, cache=cache)
