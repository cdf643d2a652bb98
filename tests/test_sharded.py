"""Training sharded (FSDP, ``DAVIR_FSDP=1``; scoring/train/sharded.py) on the CPU over gloo: the gradients two
sharded ranks make are one process's, summed or averaged as asked; a sharded reference fine-tune lands where one
process's does, and one stopped halfway and re-launched on twice the ranks lands where an uninterrupted sharded run
does; a checkpoint is only resumed under the layout that saved it; LoRA and a model without decoder layers are
refused; a DPO run that computes its own reference log-probs under a launcher, DDP or FSDP (loaded sharded), lands
where one process's does. (The DPO warm-ups of a pair job under FSDP: tests/test_distributed.py.)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from scoring.errors import UserError
from scoring.train import sharded
from tests.test_distributed import ROOT, _free_port, _gap, _update, _weights, launch
from tests.tiny import build_model

TRAIN = ROOT / "tests" / "sharded_train.py"


def _batch(seed: int = 1) -> dict:
    """Four right-padded rows of different lengths, the loss on all but their first 6 tokens."""
    torch.manual_seed(seed)
    ids = torch.randint(5, 300, (4, 24))
    attention = torch.ones_like(ids)
    for row, n in enumerate((24, 17, 20, 9)):
        attention[row, n:] = 0
    labels = torch.where(attention.bool(), ids, -100)
    labels[:, :6] = -100
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}


def _loss_sum(model, inputs: dict, packed: bool):
    from scoring.train.sft import sft_loss_sum

    return sft_loss_sum(model, inputs, packed)


def _gradients(rank: int, world: int, port: int, folder: str, out: str) -> None:
    """One of two gloo processes: the tiny model sharded, each rank's half of :func:`_batch` through the sharded
    model's forward method and backward, then the whole gradients gathered; for both reductions, packed or not."""
    from transformers import AutoModelForCausalLM

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DAVIR_DEVICE="cpu")  # fmt: skip
    inputs = _batch()
    total = float((inputs["labels"][:, 1:] != -100).sum())
    mine = {k: v[rank::world] for k, v in inputs.items()}
    for summed in (True, False):
        for packed in (False, True):
            model = sharded.shard(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), "cpu")
            sharded.set_reduction(model, summed)
            # summed: each rank's loss is over every rank's tokens; averaged: over its share, times the ranks
            scale = 1.0 if summed else float(world)
            loss = sharded.run(model, _loss_sum, mine, packed) * scale / total
            loss.backward()
            grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
            if rank == 0:
                torch.save(grads, Path(out, f"{summed}-{packed}.pt"))
    torch.distributed.destroy_process_group()


def test_two_sharded_ranks_make_one_process_gradients(tmp_path):
    import torch.multiprocessing as mp
    from transformers import AutoModelForCausalLM

    folder = build_model(tmp_path / "model")
    mp.spawn(_gradients, args=(2, _free_port(), str(folder), str(tmp_path)), nprocs=2, join=True)
    inputs = _batch()
    total = float((inputs["labels"][:, 1:] != -100).sum())
    for packed in (False, True):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        (_loss_sum(model, inputs, packed) / total).backward()
        want = {n: p.grad for n, p in model.named_parameters()}
        for summed in (True, False):
            got = torch.load(tmp_path / f"{summed}-{packed}.pt")
            assert got.keys() == want.keys()
            for name, grad in want.items():
                assert float(grad.norm()) > 0, name
                # measured: within 2e-7 of one process; a reduction that sums where it should average: 100 %
                assert _gap(got[name], grad) < 1e-5, (summed, packed, name)


def _train(cache: Path, model: Path, out: Path, nproc: int, stop_after: int = 0, fsdp: bool = True,
           method: str = "sft") -> dict:  # fmt: skip
    """tests/sharded_train.py in one process (``nproc`` 0) or under torchrun; its result ({path, steps} or error)."""
    run = launch(str(TRAIN), str(cache), str(model), str(out), str(stop_after), method, nproc=nproc,
                 env={"DAVIR_FSDP": "1" if fsdp else ""}, timeout=240)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(out.read_text())


def test_a_sharded_fine_tune_stopped_and_relaunched_is_the_uninterrupted_one(tmp_path):
    model = build_model(tmp_path / "model")
    one = _train(tmp_path / "one", model, tmp_path / "one.json", nproc=0)
    whole = _train(tmp_path / "whole", model, tmp_path / "whole.json", nproc=2)
    assert one["steps"] == whole["steps"] == list(range(1, 9))
    # loaded sharded: rank 0 alone read the base model whole, rank 1 built it on the meta device and got its shares
    loads = [json.loads((tmp_path / f"whole.json.loads-{rank}").read_text()) for rank in (0, 1)]
    assert loads == [[str(model)], []], loads
    for name in ("config.json", "generation_config.json"):  # and it saved what one process saves
        assert Path(whole["path"], name).read_text() == Path(one["path"], name).read_text()
    stopped = _train(tmp_path / "cut", model, tmp_path / "stopped.json", nproc=2, stop_after=3)
    assert stopped == {"path": None, "steps": [1, 2, 3]}
    (checkpoint,) = (tmp_path / "cut" / "models").glob(".ref-*.partial/checkpoint-*")
    assert (checkpoint / sharded.SHARDS).is_dir() and not list(checkpoint.glob("*.safetensors"))
    # one process cannot resume the shards: a clear error, and the checkpoint is left alone
    refused = _train(tmp_path / "cut", model, tmp_path / "refused.json", nproc=0)
    assert "saved with DAVIR_FSDP=1" in refused["error"] and checkpoint.is_dir()
    # re-launched on 4 ranks: the shards of 2 are resharded on load (each step still sees the same 4 examples)
    resumed = _train(tmp_path / "cut", model, tmp_path / "resumed.json", nproc=4)
    assert resumed["steps"] == [4, 5, 6, 7, 8]  # from the checkpoint on, not from step 1
    base = _weights(model)
    trained = {name: _weights(Path(result["path"])) for name, result in
               (("one", one), ("whole", whole), ("resumed", resumed))}  # fmt: skip
    assert trained["one"].keys() == trained["whole"].keys() == base.keys()  # a tied head saved once, like one process
    update = {name: _update(weights, base) for name, weights in trained.items()}
    assert float(update["one"].norm()) > 0
    # measured: the sharded update 3.0e-7 from one process's; the resumed one 9e-8 from the uninterrupted one (0
    # when re-launched on 2 ranks again); resumed without loading the shards: 65 %. The 64-token groups split the
    # ranks' shares of some micro-batches into different numbers of groups: without matching their forwards
    # (sharded.matched) the ranks wait for each other forever, and the 240 s timeout fails the test
    assert _gap(update["whole"], update["one"]) < 1e-4
    assert _gap(update["resumed"], update["whole"]) < 1e-6


def test_a_launched_dpo_run_computing_its_own_reference_log_probs_lands_where_one_process_does(tmp_path):
    """No reference pass gives the log-probs here: the trainer computes them first, each rank over its share of the
    pairs (sharded: in token groups whose numbers differ between the ranks), and every rank keeps them all."""
    model = build_model(tmp_path / "model")
    base = _weights(model)
    one = _train(tmp_path / "one", model, tmp_path / "one.json", nproc=0, method="dpo")
    update_one = _update(_weights(Path(one["path"])), base)
    assert one["steps"] == list(range(1, 9)) and float(update_one.norm()) > 0
    for fsdp in (False, True):
        two = _train(tmp_path / f"two-{fsdp}", model, tmp_path / f"{fsdp}.json", nproc=2, fsdp=fsdp, method="dpo")
        assert two["steps"] == one["steps"]
        # DDP: each rank reads the model whole; FSDP: rank 0 alone, the other ranks get their shares from it (TRL's
        # weight hash skipped: it cannot read the sharded weights, and the run fails with it)
        loads = [json.loads((tmp_path / f"{fsdp}.json.loads-{rank}").read_text()) for rank in (0, 1)]
        assert loads == [[str(model)], [] if fsdp else [str(model)]], (fsdp, loads)
        # measured: DDP 1.9e-7, FSDP 3.4e-7 (without resharding after the no-grad forwards, sharded.run: 69 %)
        assert _gap(_update(_weights(Path(two["path"])), base), update_one) < 1e-4, fsdp


def test_fsdp_is_asked_for_under_a_launcher_and_refuses_lora(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DAVIR_FSDP"):
        monkeypatch.delenv(name, raising=False)
    assert not sharded.wanted("full")
    monkeypatch.setenv("DAVIR_FSDP", "1")
    assert not sharded.wanted("full")  # one process: nothing to shard over
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert sharded.wanted("full")
    with pytest.raises(UserError, match="full fine-tuning only"):
        sharded.wanted("lora")
    monkeypatch.setenv("DAVIR_FSDP", "0")
    assert not sharded.wanted("full")


def test_a_model_without_decoder_layers_is_refused():
    with pytest.raises(UserError, match="no decoder layer class"):
        sharded.shard(torch.nn.Linear(2, 2), "cpu")
    assert not sharded.is_sharded(torch.nn.Linear(2, 2))


def test_a_lora_job_under_fsdp_fails_before_any_pass(tmp_path, monkeypatch):
    from scoring.jobs.runner import _run_owned
    from scoring.store.cache import Cache
    from scoring.store.jobs import Job

    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"), ("DAVIR_FSDP", "1")):
        monkeypatch.setenv(name, value)
    cache = Cache(tmp_path)
    job = Job(id="lora", kind="score", dataset="missing", dataset_fingerprint="f", train={"method": "lora"})
    with pytest.raises(UserError, match="failed on rank 0: DAVIR_FSDP=1 shards full fine-tuning only"):
        _run_owned(cache, job, progress=False)  # the dataset does not exist: no pass was started
    assert job.state == "failed" and not (tmp_path / "passes").exists()
