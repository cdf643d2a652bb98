"""Peak memory of each stage of a score job on the default model, by dataset and size: is it bounded by the
configuration, not the data?

    python benchmarks/memory.py                                  # GSM8K 200 and 2,000 rows, LIMA 200, HH-RLHF 200
    python benchmarks/memory.py --runs gsm8k:200 lima:64 --train-steps 1

Each run ingests the first N rows of a dataset in ../shared/data (gsm8k: train.jsonl, instruction data; lima:
lima.json, long answers; hh: HH-RLHF helpful-base pairs) into one benchmark cache (``--cache``, default
/tmp/davir-memory; the default model is converted once there), then runs the real score job in a fresh Python
process: for instruction data the base pass (with IFD's response-alone pass), the reference fine-tune and the
reference pass; for pairs the reference pass, the two DPO warm-ups and their passes. The fine-tunes stop after
``--train-steps`` optimizer steps (their sampler puts the longest batch first, so the steps run are the most
memory-hungry ones); passes run over every row. ``--max-length`` (default 1024) is the job's.

Each stage's peak resident memory is what the job itself records (``peak_mb``, scoring/jobs/memory.py: the
kernel's VmHWM, reset at the start of each stage), in the one process that runs all stages, as a worker does.

The last line printed is JSON: {"cpu", "model", "max_length", "train_steps", "target_mb", "runs": {"gsm8k:200":
{"peak_mb": {stage: MB}, "seconds": {stage: s}, "rows": N}, ...}, "max_peak_mb", "meets_target", "flat"}; ``flat``
compares each stage's peak across the sizes of one dataset (largest / smallest).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"
SOURCES = {
    "gsm8k": DATA / "gsm8k" / "train.jsonl",
    "lima": DATA / "lima" / "lima.json",
    "hh": DATA / "hh-rlhf" / "helpful-base" / "test.jsonl.gz",
}
DEFAULT_RUNS = ["gsm8k:200", "gsm8k:2000", "lima:200", "hh:200"]
TARGET_MB = 3 * 1024


def child(cache_root: Path, data: str, rows: int, max_length: int, train_steps: int) -> dict:
    """In a fresh process: ingest, run the score job here, return what it recorded."""
    from scoring.ingest.catalog import ingest
    from scoring.jobs.requests import pass_config_for, score_request
    from scoring.jobs.runner import enqueue, run
    from scoring.store.cache import Cache
    from scoring.train.dpo_config import DPOTrainConfig
    from scoring.train.sft_config import TrainConfig

    cache = Cache(cache_root)
    name = f"{data}-{rows}"
    ingest(str(SOURCES[data]), cache, name=name, limit=rows, progress=False)
    kind = "pair" if data == "hh" else "sft"
    request = score_request(cache, name, pass_config=pass_config_for(kind, max_length),
                            train=TrainConfig(max_steps=train_steps), dpo=DPOTrainConfig(max_steps=train_steps))
    enqueue(cache, request)
    started = time.perf_counter()
    job = run(cache, request.id)
    if job.state != "done":
        raise SystemExit(f"{name}: the job ended {job.state}: {job.error}")
    return {"rows": rows, "peak_mb": job.peak_mb, "seconds": job.timings,
            "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="DATA:ROWS, DATA one of " + ", ".join(SOURCES))
    parser.add_argument("--cache", default="/tmp/davir-memory", help="the benchmark's cache (reused between runs)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--train-steps", type=int, default=2, help="optimizer steps of each fine-tune")
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("DATA", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.cache), args.child[0], int(args.child[1]), args.max_length,
                               args.train_steps)))  # fmt: skip
        return

    runs: dict[str, dict] = {}
    for spec in args.runs:
        data, _, rows = spec.partition(":")
        if data not in SOURCES or not rows.isdigit():
            parser.error(f"--runs: {spec!r} is not DATA:ROWS with DATA one of {', '.join(SOURCES)}")
        if not args.json_only:
            print(f"{spec} ...", file=sys.stderr, flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--cache", args.cache, "--max-length", str(args.max_length), "--train-steps",
             str(args.train_steps), "--child", data, rows],
            capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"), check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise SystemExit(f"{spec} failed:\n{out.stderr[-3000:]}")
        runs[spec] = json.loads(out.stdout.strip().splitlines()[-1])
        if not args.json_only:
            print(f"  {json.dumps(runs[spec]['peak_mb'])}", file=sys.stderr, flush=True)

    flat: dict[str, dict[str, float]] = {}
    for data in {s.partition(":")[0] for s in runs}:
        sizes = sorted((r["rows"], r) for s, r in runs.items() if s.startswith(data + ":"))
        if len(sizes) > 1:
            small, large = sizes[0][1]["peak_mb"], sizes[-1][1]["peak_mb"]
            flat[data] = {stage: round(large[stage] / small[stage], 3) for stage in small if stage in large}
    peak = max(max(r["peak_mb"].values()) for r in runs.values())
    print(json.dumps({
        "cpu": _cpu(), "cores": os.cpu_count(), "model": "default (SmolLM2-135M-Instruct)",
        "max_length": args.max_length, "train_steps": args.train_steps, "target_mb": TARGET_MB, "runs": runs,
        "max_peak_mb": peak, "meets_target": peak <= TARGET_MB, "flat": flat, "date": time.strftime("%Y-%m-%d"),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
