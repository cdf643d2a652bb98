"""Fine-tune the tiny model's reference in this process (or under ``torchrun``, one rank), optionally stopping after
a number of optimizer steps as a cancelled job does; used by tests/test_distributed.py to train sharded (FSDP),
stop, and resume.

usage: python tests/sharded_train.py CACHE MODEL OUT.json [STOP_AFTER_STEPS]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scoring import ranks  # noqa: E402
from scoring.errors import UserError  # noqa: E402
from scoring.models.formatting import template_fingerprint  # noqa: E402
from scoring.models.loading import load_tokenizer, resolve  # noqa: E402
from scoring.store.cache import Cache  # noqa: E402
from scoring.train.sft import train_reference  # noqa: E402
from scoring.train.sft_config import TrainConfig  # noqa: E402

CONVS = [[{"role": "user", "content": f"What is {i} + {i * 7 % 13}?"},
          {"role": "assistant", "content": f"{i} + {i * 7 % 13} = {i + i * 7 % 13}. " * (1 + i % 3)}]
         for i in range(32)]  # fmt: skip
CONFIG = TrainConfig(learning_rate=1e-3, precision="fp32", batch_size=4, micro_batch_size=2)  # 8 steps


def main(cache: str, model: str, out: str, stop_after: int = 0) -> None:
    ranks.join()
    cache_ = Cache(Path(cache))
    base = resolve(model, cache_)
    tokenizer = load_tokenizer(base)
    steps: list[int] = []
    try:
        ref = train_reference(cache_, base, tokenizer, CONVS, "sharded-fp", template_fingerprint(tokenizer), 64,
                              CONFIG, on_progress=lambda step, total: steps.append(step),
                              should_stop=lambda: bool(stop_after) and len(steps) >= stop_after)  # fmt: skip
        result = {"path": ref.path if ref else None, "steps": steps}
    except UserError as e:
        result = {"error": str(e)}
    if ranks.current().main:
        Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *(int(a) for a in sys.argv[4:]))
