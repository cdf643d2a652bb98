"""Host-side tokenisation of a pass: milliseconds per Alpaca example, as a chunk of a pass tokenises them.

    python benchmarks/tokenise.py                      # the default model's tokenizer, 2,048 Alpaca examples
    python benchmarks/tokenise.py --model FOLDER --n 4096 --chunks 1 64 512

A pass tokenises each chunk of its examples on the host between forwards (scoring/passes/runner.py), with
``formatting.encode_many``: each example's chat template rendered (twice: the prompt with the generation prompt, and
the whole conversation), then every segment of the chunk in one tokenizer call. On a GPU this is pass time, so it
counts against the scoring MFU of benchmarks/end_to_end.py. ``--chunks 1`` is one example per call, as the passes
tokenised before 2026-12-06. Also timed: the rendering alone, which the batch cannot speed up.

The last line printed is JSON: {"cpu_model", "tokenizer", "examples", "ms_per_example": {"chunk N": ms, ...,
"render only": ms}} (best of ``--repeats``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from end_to_end import ALPACA, alpaca_rows  # noqa: E402  (after the path: run as a script from anywhere)

from scoring.models import formatting  # noqa: E402
from scoring.models.loading import load_tokenizer, resolve  # noqa: E402
from scoring.models.precision import cpu_info  # noqa: E402
from scoring.store.cache import Cache  # noqa: E402


def alpaca_conversations(folder: Path, n: int) -> list[list[dict]]:
    """The first ``n`` Alpaca rows as the conversations ingest makes of them (instruction + input, then output)."""
    out = []
    for r in alpaca_rows(folder, n):
        prompt = "\n\n".join(t for t in (r["instruction"], r.get("input", "")) if t)
        out.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": r["output"]}])
    return out


def best_ms(fn, items: list, chunk: int, repeats: int) -> float:
    """Best of ``repeats`` of ``fn`` over ``items`` in chunks of ``chunk``, in ms per item."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(items), chunk):
            fn(items[start : start + chunk])
        times.append(time.perf_counter() - started)
    return round(min(times) / len(items) * 1e3, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model folder or name (default: the embedded default)")
    parser.add_argument("--n", type=int, default=2048, help="Alpaca examples (default 2,048)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 64, 512], help="examples per call")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--alpaca", type=Path, default=ALPACA)
    args = parser.parse_args()

    model = resolve(args.model, Cache(Path(tempfile.mkdtemp(prefix="davir-tok-"))))
    tokenizer = load_tokenizer(model)
    conversations = alpaca_conversations(args.alpaca, args.n)
    timings = {f"chunk {chunk}": best_ms(lambda c: formatting.encode_many(tokenizer, c, args.max_length),
                                         conversations, chunk, args.repeats) for chunk in args.chunks}  # fmt: skip
    if getattr(tokenizer, "chat_template", None):
        render = lambda c: [formatting.chat_segments(tokenizer, m) for m in c]  # noqa: E731
        timings["render only"] = best_ms(render, conversations, 64, args.repeats)
    print(json.dumps({"cpu_model": cpu_info()[0], "tokenizer": model.name, "examples": len(conversations),
                      "ms_per_example": timings}))  # fmt: skip


if __name__ == "__main__":
    main()
