"""Fine-tune the tiny model's reference in this process (or under ``torchrun``, one rank), optionally stopping after
a number of optimizer steps as a cancelled job does; or (``dpo``) train it by DPO on pairs whose reference
log-probs the trainer computes itself. Used by tests/test_sharded.py to train sharded (FSDP), stop, and resume.
Each rank also writes the folders it loaded a whole model from to ``OUT.json.loads-RANK``.

usage: python tests/sharded_train.py CACHE MODEL OUT.json [STOP_AFTER_STEPS [dpo]]
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
from scoring.train.dpo import train_dpo  # noqa: E402
from scoring.train.dpo_config import DPOTrainConfig  # noqa: E402
from scoring.train.sft import train_reference  # noqa: E402
from scoring.train.sft_config import TrainConfig  # noqa: E402

CONVS = [[{"role": "user", "content": f"What is {i} + {i * 7 % 13}?"},
          {"role": "assistant", "content": f"{i} + {i * 7 % 13} = {i + i * 7 % 13}. " * (1 + i % 3)}]
         for i in range(32)]  # fmt: skip
PAIRS = [([{"role": "user", "content": f"Say something about {i}."}], f"{i} is a number. " * (1 + i % 4),
          f"no {i}" if i % 2 else "I will not.") for i in range(32)]  # fmt: skip
DPO_CONFIG = DPOTrainConfig(learning_rate=1e-3, precision="fp32", batch_size=4, micro_batch_size=2, min_steps=0,
                            micro_batch_tokens=64)  # 8 steps; a group: one pair or two (ranks run different numbers)
CONFIG = TrainConfig(learning_rate=1e-3, precision="fp32", batch_size=4, micro_batch_size=2,  # 8 steps
                     micro_batch_tokens=64)  # a token group: one row or two (so ranks run different numbers)


def count_loads() -> list[str]:
    """Every whole-model load of this process (``AutoModelForCausalLM.from_pretrained``), by folder."""
    from transformers import AutoModelForCausalLM

    loads: list[str] = []
    load = AutoModelForCausalLM.from_pretrained

    def counted(path, *args, **kwargs):
        loads.append(str(path))
        return load(path, *args, **kwargs)

    AutoModelForCausalLM.from_pretrained = counted
    return loads


def main(cache: str, model: str, out: str, stop_after: str = "0", method: str = "sft") -> None:
    ranks.join()
    loads = count_loads()
    cache_ = Cache(Path(cache))
    base = resolve(model, cache_)
    tokenizer = load_tokenizer(base)
    steps: list[int] = []
    hooks = {"on_progress": lambda step, total: steps.append(step),
             "should_stop": lambda: int(stop_after) > 0 and len(steps) >= int(stop_after)}  # fmt: skip
    try:
        if method == "dpo":
            ref = train_dpo(cache_, base, tokenizer, PAIRS, template_fingerprint(tokenizer), 64, DPO_CONFIG,
                            "cpu", **hooks)  # fmt: skip
        else:
            ref = train_reference(cache_, base, tokenizer, CONVS, "sharded-fp", template_fingerprint(tokenizer), 64,
                                  CONFIG, **hooks)  # fmt: skip
        result = {"path": ref.path if ref else None, "steps": steps}
    except UserError as e:
        result = {"error": str(e)}
    Path(f"{out}.loads-{ranks.current().rank}").write_text(json.dumps(loads))
    if ranks.current().main:
        Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
