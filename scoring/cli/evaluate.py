"""``python -m scoring evaluate``: does the cut help? Trains the selection, random subsets of the same size and the
full set from the same start (scoring.jobs.evaluate) and prints, per eval set, each arm's metrics and the verdict
on selection − random; with ``--rule-of SEL --budgets …`` the same at several budgets (the sweep)."""
from __future__ import annotations

import json

from scoring import ranks
from scoring.cli.registry import arg, command
from scoring.errors import UserError
from scoring.jobs.evaluate import DEFAULT_AGAINST, STARTS, evaluate_request, evaluations, report
from scoring.jobs.runner import enqueue, run
from scoring.jobs.worker import ensure_worker
from scoring.store.cache import Cache
from scoring.store.jobs import Job


def evaluate_args(args) -> dict:
    """The keyword arguments of :func:`evaluate_request` from the command line."""
    against = [a.strip() for a in (args.against or ",".join(DEFAULT_AGAINST)).split(",") if a.strip()]
    budgets = [b.strip() for b in (args.budgets or "").split(",") if b.strip()]
    return {"against": against, "seeds": args.seeds, "evals": args.eval or [], "holdout": args.holdout, "epochs": args.epochs,
                "objective": args.objective, "method": args.train_method, "lr": args.lr, "start_from": args.start, "rule_of": args.rule_of,
                "budgets": budgets}  # fmt: skip


@command(
    "evaluate",
    arg("name", help="dataset name"),
    arg("selection", nargs="?", help="saved selection to evaluate (or --rule-of SEL --budgets … for a sweep)"),
    arg("--against", help="comma-separated arms besides the selection: random, full, bottom (the rule turned over) "
        "and names of other saved selections (default random,full)"),
    arg("--seeds", type=int, default=3, help="random arms, one per seed (default 3)"),
    arg("--eval", action="append", metavar="SOURCE", help="eval set: an ingested dataset or any source ingest reads "
        "(several allowed)"),
    arg("--holdout", type=float, metavar="F", help="also evaluate on a seeded share F of the dataset itself, which "
        "no arm trains on"),
    arg("--epochs", type=float, help="training epochs of every arm (default 3 for instruction data; pairs: 2 more "
        "from the warm-up θ)"),
    arg("--objective", choices=["sft", "dpo", "davir-dpo"], help="sft (instruction data); pairs: dpo (default) or "
        "davir-dpo"),
    arg("--train-method", choices=["full", "lora"], default="full", help="full fine-tuning (default) or LoRA"),
    arg("--lr", type=float, help="peak learning rate of every arm (default: the method's, 2e-5 full / 2e-4 LoRA for "
        "instruction data, the score job's DPO rate for pairs)"),
    arg("--start", choices=STARTS, default="theta", help="pairs: continue from the warm-up θ (default, the paper's "
        "protocol) or start from π_ref"),
    arg("--rule-of", metavar="SEL", help="sweep: run SEL's rule at each of --budgets against random at each"),
    arg("--budgets", help="sweep budgets, comma-separated (e.g. 5%%,10%%,25%%,50%%)"),
    arg("--wait", action="store_true", help="do the work here, in the foreground"),
    arg("--json", action="store_true", help="print the report as one JSON object on the last line"),
)  # fmt: skip
def cmd_evaluate(cache: Cache, args) -> int:
    """Train on the selection, on random subsets of the same size and token count (one per seed) and on the full
    set, all from the same start with the same config, and measure each on the eval sets: mean response NLL per
    token (and exact-match accuracy of greedy answers where the eval set has computed answers); for preference
    pairs, held-out preference accuracy and DPO loss. Prints each arm's examples, tokens, steps and metrics, and
    per eval set the paired difference selection − random with a bootstrap 95 % interval and its verdict. A job
    like the others: queued for the background worker unless --wait, resumable, cached by fingerprint.

    example: python -m scoring evaluate gsm8k davir-top25 --eval gsm8k-test --seeds 3 --wait
    example: python -m scoring evaluate gsm8k --rule-of davir-top25 --budgets 10%,25%,50% --eval gsm8k-test --wait
    """
    if ranks.current().many and not args.wait:
        raise UserError("under torchrun / accelerate launch every process does the work: add --wait")
    request = evaluate_request(cache, args.name, args.selection, **evaluate_args(args))
    job, _ = enqueue(cache, request)
    if not args.wait and job.state != "done":
        ensure_worker(cache)
        print(f"evaluation {job.id} queued; follow with `python -m scoring status {args.name}`, "
              f"see it with `python -m scoring evaluate {args.name} ... --wait` or on the Evaluate page")
        return 0
    if ranks.from_main(job.state) != "done":
        job = run(cache, job.id, progress=True)
    if job.state != "done":
        raise UserError(f"evaluation {job.id}: {job.state}" + (f" — {job.error}" if job.error else ""))
    if not ranks.current().main:
        return 0
    print_report(job)
    if args.json:
        print(json.dumps(report(job)))
    return 0


def print_evaluations(cache: Cache, dataset: str) -> None:
    """What ``status`` adds: the verdict of each finished evaluation of the dataset, newest first."""
    for job in evaluations(cache, dataset):
        if job.state != "done":
            continue
        what = job.evaluation["selection"] or f"the rule of {job.evaluation['rule_of']}"
        for name, c in (job.result.get("comparisons") or {}).items():
            print(f"  evaluation {job.id} of {what} on {name}: {_comparison(c)}")
        for name, points in (job.result.get("sweep") or {}).items():
            verdicts = ", ".join(f"{p['budget']} {p.get('verdict', '-')}" for p in points)
            print(f"  sweep {job.id} of {what} on {name}: {verdicts}")


def _num(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_report(job: Job) -> None:
    """Each arm's size and metrics, then the comparisons (or the sweep) per eval set."""
    r, ev = job.result, job.evaluation
    train = ev["train"]
    print(f"evaluation {job.id} of {ev['selection'] or 'the rule of ' + ev['rule_of']} on {job.dataset}: every arm "
          f"trains {train['epochs']:g} epoch(s) from {ev['start']} ({train['method']}, lr "
          f"{train['lora_learning_rate'] if train['method'] == 'lora' else train['learning_rate']:g}, batch "
          f"{train['batch_size']})")  # fmt: skip
    for note in r.get("notes", []):
        print(f"  note: {note}")
    evals = list(r["evals"])
    head = "".join(f"{f'{e}:{m}':>28}" for e in evals for m in r["evals"][e])
    print(f"  {'arm':<18}{'examples':>9}{'tokens':>10}{'steps':>7}{head}")
    start = r.get("start") or {}
    rows = [{"name": f"start ({start.get('name')})", "metrics": start.get("metrics", {})}, *r["arms"]]
    for a in rows:
        cells = "".join(f"{_num(a['metrics'].get(e, {}).get(m)):>28}" for e in evals for m in r["evals"][e])
        print(f"  {a['name']:<18}{a.get('n_examples', ''):>9}{a.get('n_tokens', ''):>10}"
              f"{'' if a.get('steps') is None else a['steps']:>7}{cells}")  # fmt: skip
    for name, c in (r.get("comparisons") or {}).items():
        print(f"  {name}: {_comparison(c)}")
        for arm, o in (c.get("others") or {}).items():
            lo, hi = o["ci95"]
            print(f"    {arm}: {_num(o['value'])}, − random {o['minus_random']:+.4f} [95 % CI {lo:+.4f}, {hi:+.4f}]: "
                  f"{o['verdict']}")
    for name, points in (r.get("sweep") or {}).items():
        print(f"  sweep on {name} ({points[0]['metric']}):")
        for p in points:
            print(f"    {p['budget']:>8} ({p['n_examples']} rows): {_comparison(p)}")


def _comparison(c: dict) -> str:
    """One line: the primary metric for selection, random (mean ± sd) and full, then the difference and verdict."""
    out = f"{c['metric']} selection {_num(c['selection'])}"
    if "random_mean" in c:
        sd = f" ± {_num(c['random_sd'])}" if c.get("random_sd") is not None else ""
        lo, hi = c["ci95"]
        out += (f", random {_num(c['random_mean'])}{sd} ({c['n_seeds']} seeds); selection − random "
                f"{c['selection_minus_random']:+.4f} [95 % CI {lo:+.4f}, {hi:+.4f}]: {c['verdict']}")
    if "full" in c:
        out += f"; full {_num(c['full'])}"
    return out
