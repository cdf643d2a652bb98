"""Host-side tokenisation of a pass: milliseconds per Alpaca example, as a chunk of a pass tokenises them.

    python benchmarks/tokenise.py                      # the default model's tokenizer, 2,048 Alpaca examples
    python benchmarks/tokenise.py --model FOLDER --n 4096 --chunks 1 64 512

A pass tokenises each chunk of its examples on the host between forwards (scoring/passes/runner.py), with
``formatting.encode_many``: each example's chat template rendered (twice: the prompt with the generation prompt, and
the whole conversation), then every segment of the chunk in one tokenizer call. On a GPU this is pass time, so it
counts against the scoring MFU of benchmarks/end_to_end.py. ``--chunks 1`` is one example per call, as the passes
tokenised before 2026-12-06. Also timed: the rendering alone, which the batch cannot speed up.

``--pass N`` also times a whole pass over the first N examples (``runner.run_pass``, the device's default pass config)
two ways: tokenising each chunk just before its forward ("inline"), and tokenising the next chunk on a thread while
the current one is scored ("prefetch", the default since 2026-12-06). The model is ``--model`` itself on the
device ``pick_device`` gives (a GPU's case), or with ``--small W`` a random 2-layer Llama of width W over the same
tokenizer on the CPU, whose forward is as short as a CPU allows with that vocabulary (width 8 and the default
tokenizer's 49,152 entries: still ~14 ms an example, mostly the softmax, against ~0.25 ms of tokenising).

The last line printed is JSON: {"cpu_model", "tokenizer", "examples", "ms_per_example": {"chunk N": ms, ...,
"render only": ms}, "pass": {"device", "model", "rows", "chunk", "seconds": {"inline": s, "prefetch": s}}} (best of
``--repeats``; "pass" only with ``--pass``).
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

from scoring.ingest.layouts import build_messages, detect_layout  # noqa: E402
from scoring.models import formatting  # noqa: E402
from scoring.models.loading import load_tokenizer, resolve  # noqa: E402
from scoring.models.precision import cpu_info  # noqa: E402
from scoring.store.cache import Cache  # noqa: E402


def alpaca_conversations(folder: Path, n: int) -> list[list[dict]]:
    """The first ``n`` Alpaca rows as the conversations ingest makes of them (scoring.ingest.layouts)."""
    rows = alpaca_rows(folder, n)
    spec = detect_layout(list(rows[0])) if rows else None
    return [build_messages(r, spec)[0] for r in rows]


def best_ms(fn, items: list, chunk: int, repeats: int) -> float:
    """Best of ``repeats`` of ``fn`` over ``items`` in chunks of ``chunk``, in ms per item."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(items), chunk):
            fn(items[start : start + chunk])
        times.append(time.perf_counter() - started)
    return round(min(times) / len(items) * 1e3, 3)


def pass_model(model_ref, tokenizer, small: int):
    """The model a ``--pass`` run scores with: ``model_ref`` on the device's pick, or a random 2-layer Llama of width
    ``small`` over ``tokenizer`` on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from scoring.models.loading import load_model, pick_device, pick_dtype

    if not small:
        device = pick_device()
        return load_model(model_ref, device, pick_dtype(device)), device
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=small, intermediate_size=2 * small, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval(), "cpu"


def time_pass(model, device: str, tokenizer, conversations: list[list[dict]], max_length: int, repeats: int) -> dict:
    """Seconds of a whole pass over ``conversations``, tokenising inline and ahead (best of ``repeats`` each,
    alternated), each run into a fresh cache."""
    import pandas as pd

    from scoring.jobs.requests import pass_config_for
    from scoring.passes.engine import default_batch_tokens
    from scoring.passes.runner import INSTRUCTIONS, run_pass

    config = pass_config_for("sft", max_length, default_batch_tokens(device))
    frame = pd.DataFrame({"idx": range(len(conversations)), "id": [str(i) for i in range(len(conversations))],
                          "messages": [json.dumps(c) for c in conversations]})  # fmt: skip
    seconds: dict[str, list[float]] = {"inline": [], "prefetch": []}
    for round_ in range(repeats):
        for mode in seconds:
            cache = Cache(Path(tempfile.mkdtemp(prefix="davir-tok-pass-")))
            started = time.perf_counter()
            ahead = mode == "prefetch"
            run_pass(cache, f"{mode}{round_}", INSTRUCTIONS, model, tokenizer, frame, config, prefetch=ahead)
            seconds[mode].append(time.perf_counter() - started)
    return {"device": device, "rows": len(conversations), "chunk": config.chunk_size,
            "seconds": {mode: round(min(times), 3) for mode, times in seconds.items()}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model folder or name (default: the embedded default)")
    parser.add_argument("--n", type=int, default=2048, help="Alpaca examples (default 2,048)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 64, 512], help="examples per call")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--alpaca", type=Path, default=ALPACA)
    parser.add_argument("--pass", dest="pass_rows", type=int, default=0, help="also time a pass over N examples")
    parser.add_argument("--small", type=int, default=0, help="--pass with a random 2-layer Llama of this width (CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for --pass (default: torch's)")
    args = parser.parse_args()

    model = resolve(args.model, Cache(Path(tempfile.mkdtemp(prefix="davir-tok-"))))
    tokenizer = load_tokenizer(model)
    conversations = alpaca_conversations(args.alpaca, args.n)
    timings = {f"chunk {chunk}": best_ms(lambda c: formatting.encode_many(tokenizer, c, args.max_length),
                                         conversations, chunk, args.repeats) for chunk in args.chunks}  # fmt: skip
    if getattr(tokenizer, "chat_template", None):
        render = lambda c: [formatting.chat_segments(tokenizer, m) for m in c]  # noqa: E731
        timings["render only"] = best_ms(render, conversations, 64, args.repeats)
    result = {"cpu_model": cpu_info()[0], "tokenizer": model.name, "examples": len(conversations),
              "ms_per_example": timings}  # fmt: skip
    if args.pass_rows:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        scorer, device = pass_model(model, tokenizer, args.small)
        rows = alpaca_conversations(args.alpaca, args.pass_rows)
        result["pass"] = {"model": f"random width {args.small}" if args.small else model.name, "threads":
                          torch.get_num_threads(), **time_pass(scorer, device, tokenizer, rows, args.max_length,
                                                               args.repeats)}  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
