"""The golden pair pipeline: 20 fixed preference pairs through ingest -> ref pass -> DPO warm-up of π_θ -> theta pass
-> DPO on the held-out validation pairs -> val pass -> pair scores, on the seeded tiny model, all fp32. Its output is
frozen in tests/golden/tiny_pair_scores.json.

Regenerate (and justify the change in the commit message) with:  python -m tests.golden_pairs
"""
from __future__ import annotations

from pathlib import Path

from scoring.ingest.catalog import ingest
from scoring.jobs.requests import score_request
from scoring.passes.engine import PassConfig
from scoring.store.cache import Cache
from scoring.train.dpo import DPOTrainConfig
from tests.golden_pipeline import regenerate, run_job

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "pairs20.jsonl"
GOLDEN = HERE / "golden" / "tiny_pair_scores.json"
PASS = PassConfig(max_length=128, chunk_size=8, dtype="fp32", embed=False, alone=False)
DPO = DPOTrainConfig(precision="fp32", learning_rate=1e-3, batch_size=4, micro_batch_size=4, epochs=2)
SCORES = ("n_prompt_tokens", "n_response_tokens", "n_chosen_tokens", "n_rejected_tokens", "logp_chosen",
          "logp_rejected", "len_diff", "margin_base", "irm", "lossdiff", "davir_dpo")


def run(cache: Cache, model_path: Path, val_fraction: float = 0.25):
    ingest(str(FIXTURE), cache, name="golden-pairs", progress=False)
    request = score_request(cache, "golden-pairs", str(model_path), pass_config=PASS, dpo=DPO,
                            val_fraction=val_fraction)
    return run_job(cache, "golden-pairs", request)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    regenerate(run, GOLDEN)
