"""The DPO warm-up really trains on the pre-tokenised pairs, its checkpoint is reused by key, and the pairs it
cannot learn from are left out."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scoring.errors import UserError
from scoring.models.formatting import template_fingerprint
from scoring.models.loading import load_tokenizer, resolve
from scoring.train import dpo
from scoring.train.dpo import pair_dataset, pair_token_rows, train_dpo
from scoring.train.dpo_config import DPOTrainConfig

PAIRS = [([{"role": "user", "content": f"What is {i} + {i}?"}], f"{i} + {i} = {2 * i}.", f"Maybe {2 * i + 3}.")
         for i in range(8)]  # fmt: skip
CFG = DPOTrainConfig(precision="fp32", learning_rate=1e-3, batch_size=4, micro_batch_size=4, min_steps=2)


def test_training_changes_the_weights_and_the_same_inputs_reuse_the_checkpoint(cache, tiny_model):
    base = resolve(str(tiny_model), cache)
    tok = load_tokenizer(base)
    steps = []
    trained = train_dpo(cache, base, tok, PAIRS, template_fingerprint(tok), 64, CFG,
                        on_progress=lambda step, total: steps.append((step, total)))  # fmt: skip
    before, after = load_file(str(tiny_model / "model.safetensors")), load_file(trained.path + "/model.safetensors")
    assert before.keys() == after.keys()
    assert [k for k in before if not torch.equal(before[k], after[k])], "no weight moved"
    assert steps[-1] == (2, 2)  # 8 pairs, 4 per step (min_steps=2 keeps the batch)
    steps.clear()
    train_dpo(cache, base, tok, PAIRS, template_fingerprint(tok), 64, replace(CFG, min_steps=4),
              on_progress=lambda step, total: steps.append((step, total)))  # fmt: skip
    assert steps[-1] == (4, 4)  # min_steps=4: the batch shrinks to 2 pairs, one epoch makes 4 steps
    assert (Path(trained.path) / "davir_dpo.json").exists()
    assert not list(cache.models_dir().glob(".dpo-*.partial"))  # the staging folder is cleaned up
    mtime = (Path(trained.path) / "model.safetensors").stat().st_mtime_ns
    again = train_dpo(cache, base, tok, PAIRS, template_fingerprint(tok), 64, CFG)
    assert again.path == trained.path and (Path(again.path) / "model.safetensors").stat().st_mtime_ns == mtime


def test_pairs_cut_to_an_empty_side_are_left_out(tiny_model, cache):
    tok = load_tokenizer(resolve(str(tiny_model), cache))
    too_long = [{"role": "user", "content": "Add these: " + " + ".join(map(str, range(100)))}]
    pairs = [PAIRS[0], (too_long, "4950.", "Maybe 12.")]  # the prompt fills max_length: no reply is left
    rows = pair_token_rows(tok, pairs, 64, ref_logps=[(-1.0, -2.0), (-3.0, -4.0)])
    assert len(rows) == 1 and rows[0]["ref_chosen_logps"] == -1.0 and rows[0]["ref_rejected_logps"] == -2.0
    assert rows[0]["chosen_ids"] != rows[0]["rejected_ids"] and rows[0]["prompt_ids"]
    with pytest.raises(UserError):
        train_dpo(cache, resolve(str(tiny_model), cache), tok, pairs[1:], template_fingerprint(tok), 64, CFG)


def test_the_pair_dataset_holds_every_row_in_arrow_built_a_chunk_at_a_time(tiny_model, cache, monkeypatch):
    """What DPO trains on: pair_token_rows' rows, in order, each with its own pair's reference log-probs across
    chunk boundaries, a dropped pair inside a chunk; the ids as int32 Arrow lists, not Python lists."""
    import pyarrow as pa

    tok = load_tokenizer(resolve(str(tiny_model), cache))
    too_long = [{"role": "user", "content": "Add these: " + " + ".join(map(str, range(100)))}]
    pairs = PAIRS[:3] + [(too_long, "4950.", "Maybe 12.")] + PAIRS[3:]
    logps = [(-float(i), -float(i) - 0.5) for i in range(len(pairs))]
    monkeypatch.setattr(dpo, "PAIR_CHUNK", 2)
    data = pair_dataset(tok, pairs, 64, ref_logps=logps)
    assert data.to_list() == pair_token_rows(tok, pairs, 64, ref_logps=logps)
    assert len(data) == 8 and data[3]["ref_chosen_logps"] == -4.0  # the fourth row is the fifth pair
    table = data.data.table
    assert all(table.schema.field(c).type == pa.list_(pa.int32()) for c in ("prompt_ids", "chosen_ids", "rejected_ids"))
    assert pair_dataset(tok, [(too_long, "4950.", "Maybe 12.")], 64) is None


def test_trls_weight_hash_is_skipped_only_while_our_trainer_is_built():
    """TRL's constructor hashes every weight to key a cache of its own that the trainer never uses (and cannot hash
    a sharded model): skipped inside ``unhashed_weights``, and TRL's function is back after, even on an error."""
    from trl.trainer import dpo_trainer

    from scoring.train.dpo import unhashed_weights

    hashed = dpo_trainer.hash_module
    with pytest.raises(RuntimeError, match="inside"), unhashed_weights():
        assert dpo_trainer.hash_module(torch.nn.Linear(2, 2)) is None
        raise RuntimeError("inside")
    assert dpo_trainer.hash_module is hashed and len(hashed(torch.nn.Linear(2, 2))) == 64
