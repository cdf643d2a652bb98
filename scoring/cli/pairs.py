"""The preference-pair parts of ``python -m scoring``: the LossDiff-IRM selection (``select --rule lossdiff-irm``,
with ``--band auto``), the ``influence`` report, and what ``status`` prints about a pair job (the warm-ups' reward
accuracy before and after, the latest influence report)."""
from __future__ import annotations

from scoring.cli.registry import print_counts
from scoring.errors import UserError
from scoring.ingest.catalog import dataset_kind
from scoring.jobs.influence import auto_band, latest_influence
from scoring.selection.influence import COMBINED
from scoring.selection.pairs import PAIR_RULE, lossdiff_irm_spec, parse_band
from scoring.selection.saved import save_spec
from scoring.store.cache import Cache
from scoring.store.jobs import Job

AUTO = "auto"


def select_pairs(cache: Cache, args) -> int:
    """``select NAME --rule lossdiff-irm [--band LO-HI|auto] --budget B --save SEL`` on a preference-pair dataset."""
    if [str(r).strip().lower() for r in args.rule or []] != [PAIR_RULE]:
        raise UserError("--score is required (or use --rule lossdiff-irm on a preference-pair dataset)")
    kind = dataset_kind(cache, args.name)
    if kind != "pair":
        raise UserError(f"--rule lossdiff-irm needs a preference-pair dataset; {args.name!r} holds {kind} examples")
    note = None
    if str(args.band or "").strip().lower() == AUTO:
        (lo, hi), note = auto_band(cache, args.name, args.job)
    else:
        lo, hi = parse_band(args.band)
    spec = lossdiff_irm_spec(args.name, (lo, hi), args.budget, args.include_flagged, args.job, note)
    _, result = save_spec(cache, spec, args.save, replace=getattr(args, "replace", False))
    print(f"{args.save}: kept {len(result.kept_ids)} of {result.n_total} pairs (lossdiff and irm both inside the "
          f"{lo:g}-{hi:g} percentile band), {result.tokens_kept} tokens")
    if note:
        print(f"  {note}")
    print_counts("dropped", result.reason_counts())
    return 0


def print_influence(job: Job) -> None:
    """The agreement table of an influence job."""
    r = job.result
    print(f"  influence check {job.id} on {r['n']} pairs (validation: {r['n_val']} pairs); LossDiff-IRM band "
          f"{r['band'][0]:g}-{r['band'][1]:g} keeps {r['kept']} (a random set would overlap TIF by {r['chance']})")
    print(f"    {'score':<14}{'spearman(IF)':>14}{'overlap(TIF)':>14}")
    for name in [*[s for s in r["spearman"] if s != COMBINED], COMBINED]:
        rho, over = r["spearman"].get(name), r["overlap"].get(name)
        print(f"    {name:<14}{_num(rho):>14}{_num(over):>14}")
    best = r.get("auto_band")
    if best:
        print(f"    auto band {best['band'][0]:g}-{best['band'][1]:g}: keeps {best['kept']}, overlap {best['overlap']} "
              f"(chance {best['chance']})")


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def print_pair_status(cache: Cache, job: Job) -> None:
    """What ``status`` adds for a pair score job: each warm-up's reward accuracy and margin before and after it,
    and the latest influence check."""
    for role, report in (job.warmups or {}).items():
        for on, stats in report.items():
            if not isinstance(stats, dict) or "before" not in stats:
                continue
            b, a = stats["before"], stats["after"]
            where = "its own training pairs" if on == "train" else f"the {on} pairs"
            print(f"  {role} warm-up (from {report['start']}) on {where} (n={a['n']}): reward accuracy "
                  f"{_num(b['reward_accuracy'])} -> {_num(a['reward_accuracy'])}, mean margin "
                  f"{_num(b['reward_margin'])} -> {_num(a['reward_margin'])}, log-prob preference accuracy "
                  f"{_num(b['preference_accuracy'])} -> {_num(a['preference_accuracy'])}")
    check = latest_influence(cache, job.dataset, job.id)
    if check:
        print_influence(check)
