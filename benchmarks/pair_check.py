"""The preference-pair method on real pairs, end to end through the job queue: warm-up reward accuracy before and
after, AUROC on planted swaps, Spearman(lossdiff, irm) with θ_val trained from θ and from π_ref, each score's
agreement with the first-order influence IF, and the wall time of each stage. Prints a JSON line per run (lines
starting with '{"config"'; TRL's own log lines go to stdout too) and, last, one JSON object with them all.

    python benchmarks/pair_check.py --source ../shared/data/hh-rlhf/helpful-base/test.jsonl.gz --limit 256 \\
        --swap 0.2 --max-length 384 --config full:5e-6 --config full:5e-5 --influence 128

Each ``--config METHOD:LR[:OBJECTIVE]`` trains its own θ (the ref pass is shared); the first one also gets θ_val from
π_ref (the old reading) and, with ``--influence N``, an influence check of both. ``--val FILE --val-limit N`` uses a
separate validation file instead of a held-out 10 %. Results depend on the CPU/GPU only in time.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/pair_check.py` from a checkout
    sys.path.insert(0, str(REPO))

from scoring.ingest.catalog import ingest, load_examples
from scoring.ingest.demo import write_planted_pairs
from scoring.jobs.influence import influence_request
from scoring.jobs.requests import pass_config_for, score_request
from scoring.jobs.runner import enqueue, run
from scoring.scores.reports import auroc_by_defect, auroc_report
from scoring.scores.tables import score_table
from scoring.selection.influence import percentiles, spearman
from scoring.selection.pairs import DEFAULT_BAND, select_lossdiff_irm
from scoring.store.cache import Cache
from scoring.train.dpo_config import DPOTrainConfig


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def parse_config(text: str) -> DPOTrainConfig:
    method, lr, *objective = text.split(":")
    rate = float(lr)
    cfg = replace(DPOTrainConfig(), method=method, **({"lora_learning_rate": rate} if method == "lora" else
                                                       {"learning_rate": rate}))  # fmt: skip
    return replace(cfg, objective=objective[0]) if objective else cfg


def run_job(cache: Cache, request) -> tuple[object, float]:
    started = time.perf_counter()
    job, _ = enqueue(cache, request)
    if job.state != "done":
        job = run(cache, job.id, progress=True)
    if job.state != "done":
        raise SystemExit(f"job {job.id} {job.state}: {job.error}")
    return job, round(time.perf_counter() - started, 1)


def summary(cache: Cache, name: str, job) -> dict:
    table, _ = score_table(cache, name, job.id)
    pool = table[table["flag"] == ""]
    out = {"job": job.id, "warmups": job.warmups, "timings": job.timings, "n_pool": len(pool),
           "spearman_lossdiff_irm": spearman(pool["lossdiff"].to_numpy(float), pool["irm"].to_numpy(float))}
    kept = select_lossdiff_irm(table, DEFAULT_BAND)
    out["band_kept"] = len(kept.kept_ids)
    report = auroc_report(cache, name, table)
    if report:
        out["auroc_swapped"] = {s: report[s].get("swapped_pair") for s in ("irm", "lossdiff", "davir_dpo",
                                                                            "margin_base") if s in report}
        combined = (percentiles(pool["lossdiff"].to_numpy(float)) + percentiles(pool["irm"].to_numpy(float))) / 2
        labels = pool["id"].isin(swapped_ids(cache, name)).to_numpy()
        rep = auroc_by_defect(["swapped_pair" if x else "" for x in labels], {"lossdiff_irm_rank": combined})
        out["auroc_swapped"]["lossdiff_irm_rank"] = rep["lossdiff_irm_rank"]["swapped_pair"]
        kept_ids = set(kept.kept_ids)
        is_kept = pool["id"].isin(kept_ids).to_numpy()
        out["band_keeps"] = {"swapped": round(float(is_kept[labels].mean()), 3),
                             "clean": round(float(is_kept[~labels].mean()), 3)}
    return out


def swapped_ids(cache: Cache, name: str) -> set[str]:
    ex = load_examples(cache, name, columns=["id", "original"])
    return {i for i, o in zip(ex["id"], ex["original"]) if json.loads(o).get("defect") == "swapped_pair"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True)
    ap.add_argument("--limit", type=int, default=256)
    ap.add_argument("--swap", type=float, default=0.0, help="plant this share of swapped pairs (0: none)")
    ap.add_argument("--val", help="separate validation pairs file")
    ap.add_argument("--val-limit", type=int, default=None)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--config", action="append", default=None, help="METHOD:LR[:OBJECTIVE] (default: the defaults)")
    ap.add_argument("--influence", type=int, default=0, help="influence check on this many sampled pairs")
    ap.add_argument("--cache", default="cache")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    cache = Cache(args.cache)
    name = args.name or Path(args.source).name.split(".")[0] + f"-{args.limit}"
    source = args.source
    if args.swap:
        source, _ = write_planted_pairs(args.source, cache.root / "demo" / f"{name}.jsonl", args.limit, args.swap)
    ingest(str(source), cache, name=name, limit=args.limit, replace=True, progress=False)
    val = None
    if args.val:
        val = f"{name}-val"
        ingest(args.val, cache, name=val, limit=args.val_limit, replace=True, progress=False)
    config = pass_config_for("pair", args.max_length)
    result = {"cpu": cpu_name(), "dataset": name, "source": args.source, "limit": args.limit, "swap": args.swap,
              "max_length": args.max_length, "runs": []}  # fmt: skip
    configs = [parse_config(c) for c in args.config] if args.config else [DPOTrainConfig()]
    for i, cfg in enumerate(configs):
        starts = ("theta", "ref") if i == 0 else ("theta",)
        for start in starts:
            request = score_request(cache, name, None, None, config, dpo=cfg, val=val, val_start=start)
            job, wall = run_job(cache, request)
            entry = {"config": {"method": cfg.method, "lr": cfg.lora_learning_rate if cfg.method == "lora" else
                                cfg.learning_rate, "objective": cfg.objective}, "val_from": start, "wall_s": wall,
                     **summary(cache, name, job)}  # fmt: skip
            if args.influence and i == 0:
                check, wall = run_job(cache, influence_request(cache, name, job.id, args.influence))
                entry["influence"] = {**check.result, "wall_s": wall}
            result["runs"].append(entry)
            print(json.dumps(entry), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
