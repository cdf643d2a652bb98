"""The ``evaluate`` job: does the cut help? Train one model per arm -- the selection, random subsets of the same size
and token count, the full set, optionally the rule turned over and other saved selections -- all from the same start
with the same config, and measure each on the eval sets (scoring.jobs.measure); then the paired difference
selection − random with its bootstrap interval and a verdict (scoring.selection.evaluation).

- Instruction data: every arm fine-tunes the base model with the reference fine-tune's code (response-only loss,
  scoring.train.sft), ``--epochs`` (default 3, the DavIR paper's recipe) with the reference's other defaults.
- Preference pairs: every arm continues from the score job's 1-epoch warm-up θ for 2 more DPO epochs (the
  LossDiff-IRM paper's protocol; ``--start ref`` starts from π_ref), with the objective asked for (DPO or DavIR-DPO),
  against π_ref's log-probs from the score job's ref pass. ``min_steps`` is off: every arm has the same batch.
- Pool: the score table's selectable rows (unflagged; for pairs, not validation pairs). ``--holdout F`` takes a
  seeded share of the pool out as one more eval set, "<dataset>-holdout": no arm trains on it, the selection's rows
  in it are left out of the selection arm.
- Sweep (``--rule-of SEL --budgets 5%,25%``): SEL's rule at each budget against random at each, full once.

Resumable at the granularity of one arm or one Trainer checkpoint: checkpoints and passes are keyed by content
(scoring.train.trainer, scoring.passes.runner), each finished arm's per-example metrics are saved at once under
``<cache>/evaluations/<job id>/``, and a re-run skips what is there. The job id is a fingerprint of the request, so
asking again for a finished evaluation returns its report at once.
"""
from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pyarrow as pa

from scoring import ranks
from scoring.errors import UserError
from scoring.ingest.catalog import dataset_kind
from scoring.jobs.measure import EvalSet, eval_set, load_eval_set, measure, record_steps, resolve_eval
from scoring.jobs.pairs import as_pairs, ref_logps, validation_split, with_logps
from scoring.jobs.requests import with_id
from scoring.jobs.steps import Steps, start
from scoring.models.loading import ModelRef, model_card, pick_device, resolve
from scoring.passes.engine import PassConfig
from scoring.passes.runner import INSTRUCTIONS, PAIRS
from scoring.schema import NEVER_SELECTED
from scoring.scores.tables import pick_job, score_table
from scoring.selection.evaluation import Arm, flipped_rules, paired_difference, random_like
from scoring.selection.rules import kept_sha256, parse_budget
from scoring.selection.saved import SelectionSpec, load_selection, run_selection
from scoring.store.cache import Cache, atomic_write_parquet
from scoring.store.jobs import Job, list_jobs, save_job
from scoring.store.keys import key_of
from scoring.train.dpo import DPOTrainConfig, train_dpo
from scoring.train.sft import TrainConfig, train_reference

EVALUATE_JOB = "evaluate"
EVALUATE_CODE_VERSION = "1"
AGAINST = ("random", "full", "bottom")  # besides saved selections' names
DEFAULT_AGAINST = ("random", "full")
DEFAULT_EPOCHS = {"sft": 3.0, "pair": 2.0}
OBJECTIVES = {"sft": ("sft",), "pair": ("dpo", "davir-dpo")}
STARTS = ("theta", "ref")


def evaluate_request(cache: Cache, dataset: str, selection: str | None = None, *, against=DEFAULT_AGAINST,
                     seeds: int = 3, evals=(), holdout: float | None = None, epochs: float | None = None,
                     objective: str | None = None, method: str = "full", lr: float | None = None,
                     start_from: str = "theta", rule_of: str | None = None, budgets=None) -> Job:  # fmt: skip
    """The evaluation of saved selection ``selection`` (or, with ``rule_of`` and ``budgets``, the sweep of that
    selection's rule over budgets), not yet saved. Every input is checked here, before a worker sees it."""
    kind = dataset_kind(cache, dataset)
    if (selection is None) == (rule_of is None):
        raise UserError("name one saved selection to evaluate, or --rule-of SEL with --budgets for a sweep")
    record, result = load_selection(cache, dataset, selection or rule_of)
    source = pick_job(cache, dataset, (record.get("runs") or [None])[0])
    _check_source(source, kind, start_from)
    against = _against(cache, dataset, [a for a in against if a], record)
    if seeds < 1 and "random" in against:
        raise UserError(f"--seeds {seeds}: need at least one random seed")
    if holdout is not None and not 0 < holdout < 1:
        raise UserError(f"--holdout {holdout}: must lie strictly between 0 and 1")
    specs = [resolve_eval(cache, e) for e in evals]
    if not specs and holdout is None:
        raise UserError("name at least one eval set (--eval NAME_OR_FILE) or hold out a share (--holdout 0.1)")
    for spec in specs:
        if spec["kind"] != kind:
            raise UserError(f"eval set {spec['name']!r} holds {spec['kind']} examples; {dataset!r} holds {kind}")
    budgets = [parse_budget(b).text for b in budgets or []]
    if rule_of and not budgets:
        raise UserError("--rule-of needs --budgets, e.g. --budgets 5%,10%,25%,50%")
    evaluation = {
        "selection": selection, "rule_of": rule_of, "budgets": budgets, "selection_sha": result.kept_sha256,
        "rule": _rule_record(record), "against": against, "seeds": int(seeds), "evals": specs,
        "holdout": holdout, "holdout_seed": 0, "start": start_from if kind == "pair" else "base",
        "train": _train_config(kind, source, epochs, objective, method, lr),
    }  # fmt: skip
    pass_config = dict(source.pass_config)
    if kind == "sft":
        pass_config.update(embed=False, alone=False)
    return with_id(Job(id="", kind=EVALUATE_JOB, dataset=dataset, dataset_fingerprint=source.dataset_fingerprint,
                       model=source.model, model_fingerprint=source.model_fingerprint, source_job=source.id,
                       evaluation=evaluation, pass_config=pass_config, code_version=EVALUATE_CODE_VERSION,
                       trust_remote_code=source.trust_remote_code, scores=[]))  # fmt: skip


def _check_source(source: Job, kind: str, start_from: str) -> None:
    if source.state != "done":
        raise UserError(f"score job {source.id} has not finished ({source.state}); wait for it (`status`) first")
    if kind == "pair":
        if start_from not in STARTS:
            raise UserError(f"--start {start_from!r}: choose one of {', '.join(STARTS)}")
        if start_from == "theta" and not source.theta_model:
            raise UserError(f"score job {source.id} trained no θ to continue from; use --start ref")


def _against(cache: Cache, dataset: str, against: list[str], record: dict) -> list[str]:
    out = []
    for name in against:
        if name in AGAINST:
            if name == "bottom":
                flipped_rules(tuple(record.get("rules") or [record.get("rule", "top")]))  # raises for a band
        else:
            load_selection(cache, dataset, name)  # raises, listing the saved ones
        out.append(name)
    return list(dict.fromkeys(out))


def _rule_record(record: dict) -> dict:
    """The parts of a saved selection's record that rebuild its rule (at another budget, or turned over)."""
    keys = ("scores", "rules", "combine", "budget", "include_flagged", "quota", "dedup", "runs")
    return {k: record.get(k) for k in keys}


def _train_config(kind: str, source: Job, epochs: float | None, objective: str | None, method: str,
                  lr: float | None) -> dict:  # fmt: skip
    """Every arm's training config: the method's defaults (for pairs, the score job's DPO settings), with the
    epochs, objective, method and learning rate asked for; ``min_steps`` off, so every arm has the same batch."""
    objective = objective or OBJECTIVES[kind][0]
    if objective not in OBJECTIVES[kind]:
        raise UserError(f"--objective {objective!r} does not train {kind} data: choose {', '.join(OBJECTIVES[kind])}")
    if method not in ("full", "lora"):
        raise UserError(f"--train-method {method!r}: choose full or lora")
    epochs = float(epochs or DEFAULT_EPOCHS[kind])
    if epochs <= 0:
        raise UserError(f"--epochs {epochs}: must be positive")
    if lr is not None and lr <= 0:
        raise UserError(f"--lr {lr}: must be positive")
    rate = {} if lr is None else {"lora_learning_rate" if method == "lora" else "learning_rate": float(lr)}
    if kind == "sft":
        return asdict(TrainConfig(epochs=epochs, method=method, **rate))
    dpo = {**(source.dpo or asdict(DPOTrainConfig())), "epochs": epochs, "method": method, "objective": objective}
    return asdict(DPOTrainConfig(**{**dpo, "min_steps": 0, **rate}))


def _spec(dataset: str, rule: dict, budget: str | None = None, rules: tuple | None = None) -> SelectionSpec:
    """The evaluation's rule record as a spec, at ``budget`` and with ``rules`` when given."""
    spec = SelectionSpec.from_record({**rule, "dataset": dataset})
    return replace(spec, budget=budget or spec.budget, rules=tuple(rules) if rules else spec.rules)


# ----------------------------------------------------------------------------------------------------------- arms


def pool_of(cache: Cache, job: Job) -> tuple[pd.DataFrame, set]:
    """The selectable rows (id, n_tokens) of the score job's table -- unflagged, or for a selection made with
    ``--include-flagged`` every row but validation pairs -- minus the evaluation's holdout; and the holdout ids (a
    seeded share of the selectable rows, by id hash: scoring.jobs.pairs.validation_split)."""
    table, _ = score_table(cache, job.dataset, job.source_job)
    flags = table["flag"].fillna("")
    if job.evaluation["rule"].get("include_flagged"):  # the pool the rule chose from: flagged rows too
        pool = table[[not any(r in f.split(",") for r in NEVER_SELECTED) for f in flags]]
    else:
        pool = table[flags == ""]
    tokens = pool["n_prompt_tokens"].fillna(0) + pool["n_response_tokens"].fillna(0)
    pool = pd.DataFrame({"id": pool["id"].astype(str).to_numpy(), "n_tokens": tokens.astype(int).to_numpy()})
    ev = job.evaluation
    held = validation_split(pool["id"].tolist(), ev["holdout"], ev["holdout_seed"]) if ev["holdout"] else set()
    return pool[~pool["id"].isin(held)].reset_index(drop=True), held


def build_arms(cache: Cache, job: Job, pool: pd.DataFrame) -> list[Arm]:
    """Every arm of the evaluation, in report order (per budget: rule, random seeds, bottom; then full, saved)."""
    ev, dataset = job.evaluation, job.dataset
    ids, tokens = pool["id"].to_numpy(dtype=object), pool["n_tokens"].to_numpy()
    in_pool = set(ids)
    points = [(b, f"@{b}") for b in ev["budgets"]] if ev["rule_of"] else [(None, "")]
    arms = []
    for budget, at in points:
        if ev["rule_of"]:
            kept = _kept(run_selection(cache, _spec(dataset, ev["rule"], budget))[0].kept_ids, in_pool)
            arms.append(Arm(f"rule{at}", kept, "selection", budget))
        else:
            _, result = load_selection(cache, dataset, ev["selection"])
            if result.kept_sha256 != ev["selection_sha"]:
                raise UserError(f"selection {ev['selection']!r} was saved again since this evaluation was asked for")
            kept = _kept(result.kept_ids, in_pool)
            arms.append(Arm("selection", kept, "selection"))
        if not kept:
            raise UserError(f"the selection keeps no row of the pool{' at ' + budget if budget else ''}")
        target = int(pool.set_index("id").loc[list(kept), "n_tokens"].sum())
        if "random" in ev["against"]:
            for seed in range(ev["seeds"]):
                picked = random_like(ids, tokens, len(kept), target, seed)
                arms.append(Arm(f"random-{seed}{at}", tuple(picked), "random", budget, seed))
        if "bottom" in ev["against"]:
            rules = flipped_rules(tuple(ev["rule"]["rules"] or ("top",)))
            spec = _spec(dataset, ev["rule"], budget, rules)
            arms.append(Arm(f"bottom{at}", _kept(run_selection(cache, spec)[0].kept_ids, in_pool), "bottom", budget))
    if "full" in ev["against"]:
        arms.append(Arm("full", tuple(ids), "full"))
    for name in ev["against"]:
        if name not in ("random", "full", "bottom"):
            arms.append(Arm(f"sel:{name}", _kept(load_selection(cache, dataset, name)[1].kept_ids, in_pool), "saved"))
    return arms


def _kept(ids, pool: set) -> tuple[str, ...]:
    return tuple(str(i) for i in ids if str(i) in pool)


# ------------------------------------------------------------------------------------------------------------ run


def run_evaluate_job(cache: Cache, job: Job, should_stop, progress: bool) -> None:
    """Train and measure every arm not measured yet, then write the report into ``job.result``."""
    kind = dataset_kind(cache, job.dataset)
    rows = PAIRS if kind == "pair" else INSTRUCTIONS
    steps, base, examples, config = start(cache, job, rows, should_stop, progress)
    source = pick_job(cache, job.dataset, job.source_job)
    if kind == "pair":
        examples = with_logps(cache, examples, source.ref_pass)
    pool, held = pool_of(cache, job)
    arms = build_arms(cache, job, pool)
    evals = [load_eval_set(cache, spec, list(rows.columns)) for spec in job.evaluation["evals"]]
    if held:
        holdout = examples[examples["id"].astype(str).isin(held)].assign(original="", flag="")
        evals.append(eval_set(f"{job.dataset}-holdout", key_of({"of": job.dataset_fingerprint, "ids": sorted(held)}),
                              kind, holdout))  # fmt: skip
    first = resolve(source.theta_model["path"], cache) if job.evaluation["start"] == "theta" else base
    beta = float((source.dpo or {}).get("beta", 0.1))
    result = dict(job.result or {})
    result["evals"] = {ev.name: ev.metrics for ev in evals}
    result["notes"] = _notes(job, kind, held)
    result["start"] = {"name": job.evaluation["start"], "model": model_card(first),
                       "metrics": _measured(steps, "start", first, evals, config, base, beta)}  # fmt: skip
    done = {a["name"]: a for a in result.get("arms", [])}
    for i, arm in enumerate(arms):
        if ranks.from_main(arm.name not in done or not _values_path(cache, job, arm.name).exists()):
            steps.stage(f"arm {i + 1}/{len(arms)}: {arm.name} ({len(arm.ids)} examples)")
            model = _train_arm(steps, kind, arm, first, examples, config, source.ref_pass)
            metrics = _measured(steps, arm.name, model, evals, config, base, beta)
            done[arm.name] = _arm_record(arm, examples, pool, model, metrics)
        result["arms"] = [done[a.name] for a in arms if a.name in done]
        job.result = result
        save_job(cache, job)
    result["comparisons"], result["sweep"] = compare(cache, job, arms, evals)
    job.result = result


def _notes(job: Job, kind: str, held: set) -> list[str]:
    """What the reader of the report must know about its eval sets."""
    notes = []
    if held and kind == "pair" and job.evaluation["start"] == "theta":
        notes.append("the warm-up θ every arm starts from trained on the held-out pairs for one epoch: the holdout "
                     "is not unseen; use --eval with a separate file, or --start ref")  # fmt: skip
    elif held:
        notes.append("no arm trains on the held-out rows, but the scores the selection ranks by were computed with "
                     "them in the data (the reference fine-tune saw them)")  # fmt: skip
    return notes


def _train_arm(steps: Steps, kind: str, arm: Arm, first: ModelRef, examples: pd.DataFrame, config: PassConfig,
               ref_pass: str | None) -> ModelRef:  # fmt: skip
    """The arm's model: ``first`` trained on the arm's rows (a checkpoint with the same content key is reused)."""
    job, cache = steps.job, steps.cache
    rows = examples[examples["id"].astype(str).isin(set(arm.ids))].sort_values("idx")
    fingerprint = key_of({"dataset": job.dataset_fingerprint, "ids": kept_sha256(arm.ids)})
    what, role = f"training arm {arm.name} ({len(rows)} examples)", f"arm {arm.name}"
    if kind == "sft":
        conversations = (json.loads(m) for m in rows["messages"])  # parsed as tokenised, never all at once
        return steps.train(role, what, lambda on_step: train_reference(
            cache, first, steps.tokenizer, conversations, fingerprint, steps.template, config.max_length,
            TrainConfig(**job.evaluation["train"]), pick_device(), on_step, steps.should_stop))  # fmt: skip
    return steps.train(role, what, lambda on_step: train_dpo(
        cache, first, steps.tokenizer, as_pairs(rows), steps.template, config.max_length,
        DPOTrainConfig(**job.evaluation["train"]), pick_device(), on_step, steps.should_stop, job.trust_remote_code,
        ref_logps(rows), f"pair-pass:{ref_pass}"))  # fmt: skip


def _values_path(cache: Cache, job: Job, arm: str):
    return cache.root / "evaluations" / job.id / f"{key_of({'arm': arm})[:16]}.parquet"


def _measured(steps: Steps, name: str, model: ModelRef, evals: list[EvalSet], config: PassConfig, ref: ModelRef,
              beta: float) -> dict:  # fmt: skip
    """{eval: {metric: mean}} of ``model``; the per-example values saved for the comparisons."""
    frames, means = [], {}
    for ev in evals:
        values = measure(steps, model, ev, config, ref, beta, name)
        means[ev.name] = {m: float(np.mean(v)) for m, v in values.items()}
        frames += [pd.DataFrame({"eval": ev.name, "metric": m, "i": np.arange(len(v)), "value": v})
                   for m, v in values.items()]  # fmt: skip
    if ranks.current().main:
        table = pa.Table.from_pandas(pd.concat(frames), preserve_index=False)
        atomic_write_parquet(_values_path(steps.cache, steps.job, name), table)
    ranks.barrier()  # every rank reads them in the comparisons
    return means


def _arm_record(arm: Arm, examples: pd.DataFrame, pool: pd.DataFrame, model: ModelRef, metrics: dict) -> dict:
    n_tokens = int(pool.set_index("id").loc[list(arm.ids), "n_tokens"].sum())
    return {"name": arm.name, "role": arm.role, "budget": arm.budget, "seed": arm.seed, "n_examples": len(arm.ids),
            "n_tokens": n_tokens, "steps": record_steps(model), "model": model_card(model), "metrics": metrics}


def values(cache: Cache, job: Job, arm: str) -> pd.DataFrame:
    """The per-example values (eval, metric, i, value) one arm of ``job`` scored."""
    return pd.read_parquet(_values_path(cache, job, arm))


def compare(cache: Cache, job: Job, arms: list[Arm], evals: list[EvalSet]) -> tuple[dict, dict | None]:
    """(comparisons, sweep): per eval set, selection − random on its primary metric (others under "also"), with the
    full set's value beside it; in a sweep, one such point per budget."""
    budgets = job.evaluation["budgets"] if job.evaluation["rule_of"] else [None]
    full = next((a for a in arms if a.role == "full"), None)
    by_budget = {}
    for budget in budgets:
        group = [a for a in arms if a.budget == budget]
        sel = next(a for a in group if a.role == "selection")
        randoms = [a for a in group if a.role == "random"]
        others = [a for a in arms if a.role in ("bottom", "saved", "full") and a.budget in (budget, None)]
        by_budget[budget] = {ev.name: _point(cache, job, sel, randoms, others, full, ev) for ev in evals}
    if job.evaluation["rule_of"]:
        sweep = {ev.name: [{"budget": b, **by_budget[b][ev.name]} for b in budgets] for ev in evals}
        return {}, sweep
    return by_budget[None], None


def _point(cache: Cache, job: Job, sel: Arm, randoms: list[Arm], others: list[Arm], full: Arm | None,
           ev: EvalSet) -> dict:  # fmt: skip
    """The comparison on one eval set: per metric, selection vs random (and every other arm vs the same random
    arms under "others"), full beside it; the primary metric at the top level, the rest under "also"."""
    read = {a.name: values(cache, job, a.name) for a in [sel, *randoms, *others, *([full] if full else [])]}

    def per_example(arm: Arm, metric: str) -> np.ndarray:
        v = read[arm.name]
        return v[(v["eval"] == ev.name) & (v["metric"] == metric)].sort_values("i")["value"].to_numpy()

    out = {}
    for metric in ev.metrics:
        s = per_example(sel, metric)
        point = {"metric": metric, "selection": float(s.mean()), "n_examples": len(sel.ids)}
        rnd = np.stack([per_example(r, metric) for r in randoms]) if randoms else None
        if rnd is not None:
            point.update(paired_difference(s, rnd, metric))
        if full is not None:
            point["full"] = float(per_example(full, metric).mean())
        if rnd is not None:  # every other arm against the same random arms: the proxies' and full's evidence
            point["others"] = {a.name: _short(paired_difference(per_example(a, metric), rnd, metric))
                               for a in others}  # fmt: skip
        out[metric] = point
    primary = out[ev.primary]
    return {**primary, "also": {m: p for m, p in out.items() if m != ev.primary}}


def _short(point: dict) -> dict:
    keep = ("selection", "selection_minus_random", "ci95", "verdict")
    return {("value" if k == "selection" else "minus_random" if k == "selection_minus_random" else k): point[k]
            for k in keep}  # fmt: skip


def evaluations(cache: Cache, dataset: str, selection: str | None = None) -> list[Job]:
    """The dataset's evaluation jobs (of ``selection`` or sweeping its rule), newest first."""
    jobs = [j for j in list_jobs(cache, dataset) if j.kind == EVALUATE_JOB and (
        selection is None or selection in (j.evaluation["selection"], j.evaluation["rule_of"]))]  # fmt: skip
    return sorted(jobs, key=lambda j: j.created or "", reverse=True)


def report(job: Job) -> dict:
    """The JSON report of a finished evaluation (what ``evaluate --json`` prints last)."""
    r = job.result or {}
    arms = [{k: a[k] for k in ("name", "n_examples", "n_tokens", "steps", "metrics")} for a in r.get("arms", [])]
    return {"job": job.id, "dataset": job.dataset, "selection": job.evaluation["selection"] or
            job.evaluation["rule_of"], "start": r.get("start", {}).get("metrics"), "arms": arms,
            "comparisons": r.get("comparisons") or {}, "sweep": r.get("sweep"), "notes": r.get("notes", []),
            "primary": {name: metrics[0] for name, metrics in r.get("evals", {}).items()},
            "train": job.evaluation["train"], "state": job.state}  # fmt: skip

