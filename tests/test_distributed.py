"""One job over many processes (scoring.ranks): ``torchrun --nproc-per-node 2`` (gloo, on the CPU), and
``accelerate launch`` of the same, against one process over the tiny model -- the same ids and identical losses for
the base pass, each part on disk once, the reference trained under DDP within float tolerance of the one-process
one -- and a rank killed mid-pass, after which
the re-launched job resumes with nothing lost; a pair job's two DPO warm-ups (π_θ and θ_val) trained under DDP
against one process, to float tolerance, and the pair scores they give. Plus the collective steps themselves, in two
real gloo processes.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from scoring import ranks
from scoring.passes.runner import chunk_ranges
from scoring.store.cache import Cache
from scoring.store.jobs import Job, job_path, save_job
from scoring.train.dpo_config import DPOTrainConfig
from scoring.train.sft_config import TrainConfig
from scoring.train.trainer import per_rank_batches
from tests.tiny import build_model

ROOT = Path(__file__).resolve().parents[1]
ROWS = 200  # four chunks (64, 64, 64, 8): rank 1's are the 2nd and the 4th, so a rank 1 killed after its first part
# leaves the 4th unwritten whatever rank 0 manages before the launcher stops it
FSDP = {"DAVIR_FSDP": "1"}  # train sharded (scoring/train/sharded.py) instead of data-parallel
SCORE = ("score", "d", "--scores", "davir,ppl", "--max-length", "64", "--wait")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*argv: str, nproc: int = 0, env: dict | None = None, timeout: int = 600,
           accelerate: bool = False) -> subprocess.CompletedProcess:  # fmt: skip
    """``python ARGV`` (``nproc`` 0) or ``torchrun --nproc-per-node N ARGV`` (gloo, one thread per process; with
    ``accelerate``, ``accelerate launch --multi_gpu --num_processes N ARGV``, which starts the same torch launcher),
    with ``env`` added to this process's environment less any launcher place of its own."""
    launcher = [sys.executable] if not nproc else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
        "--master-port", str(_free_port())]  # fmt: skip
    if nproc and accelerate:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", str(_free_port())]  # fmt: skip
    run_env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", **(env or {}))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        run_env.pop(name, None)
    with subprocess.Popen([*launcher, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                          env=run_env) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(process)
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _stop(process: subprocess.Popen) -> None:
    """Stop a run and every rank it started. torchrun puts each rank in a session of its own, so killing torchrun
    (what ``subprocess.run``'s timeout does) would leave them running, holding the port, the cores and the pipes;
    SIGTERM lets torchrun stop them itself, and any rank still there a minute later is killed."""
    ranks_of = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()
                and _parent(entry) == process.pid]  # fmt: skip
    process.terminate()
    try:
        process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        for pid in [process.pid, *ranks_of]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.communicate()


def _parent(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _scoring(cache: Path, *argv: str, nproc: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m scoring`` (``nproc`` 0) or ``torchrun --nproc-per-node N -m scoring`` with the cache at ``cache``."""
    return launch("-m", "scoring", "--cache", str(cache), *argv, nproc=nproc, env=env)


def _ingested(root: Path, name: str, model: Path) -> Path:
    cache = root / name
    rows = [{"instruction": f"Add {i} and {i * 3 % 17}.", "output": f"{i} + {i * 3 % 17} = {i + i * 3 % 17}. " * (1 + i % 4)}
            for i in range(ROWS)]  # fmt: skip
    data = root / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = _scoring(cache, "ingest", str(data), "--name", "d")
    assert out.returncode == 0, out.stderr
    return cache


def _passes(cache: Path) -> dict[str, tuple[str, list[str], pd.DataFrame]]:
    """{role: (pass key, part file names, the rows sorted by idx)}."""
    out = {}
    for folder in sorted((cache / "passes").iterdir()):
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["complete"]
        files = sorted((folder / "parts").glob("part-*.parquet"))
        rows = pd.concat([pd.read_parquet(f) for f in files]).sort_values("idx").reset_index(drop=True)
        out[manifest["role"]] = (folder.name, [f.name for f in files], rows)
    return out


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _update(trained: dict, base: dict) -> torch.Tensor:
    """What training changed: trained - base over every weight, flattened into one vector."""
    return torch.cat([(trained[k] - base[k]).flatten() for k in base])


def _gap(update: torch.Tensor, reference: torch.Tensor) -> float:
    """How far ``update`` is from ``reference``, relative to the size of ``reference``."""
    return float((update - reference).norm() / reference.norm())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same score job run by one process and by two ranks under torchrun, each in its own cache."""
    root = tmp_path_factory.mktemp("ranks")
    model = build_model(root / "model")
    one, two = _ingested(root, "one", model), _ingested(root, "two", model)
    for cache, nproc in ((one, 0), (two, 2)):
        out = _scoring(cache, *SCORE, "--model", str(model), nproc=nproc)
        assert out.returncode == 0, out.stderr[-4000:]
    return root, model, one, two


def test_two_ranks_score_what_one_process_scores(runs):
    root, _, one, two = runs
    single, ranked = _passes(one), _passes(two)
    assert set(single) == set(ranked) == {"base", "ref"}
    key, files, rows = ranked["base"]
    assert key == single["base"][0]  # the same pass: same data, model, template and config
    assert files == [f"part-{s:09d}-{e:09d}.parquet" for s, e in chunk_ranges(ROWS, 64)]  # each chunk once
    assert not list(two.rglob("*.tmp"))
    assert rows["id"].tolist() == single["base"][2]["id"].tolist() and rows["idx"].is_unique
    for column in ("loss_sum", "n_response_tokens", "alone_loss_sum"):
        assert np.array_equal(rows[column].to_numpy(), single["base"][2][column].to_numpy()), column
    # the reference, trained data-parallel: the same steps on the same examples, to float tolerance. Measured on
    # the update (trained - base): 0.3 % apart here; each rank stepping on its own half-batch's gradients: 24 %
    base, a, b = _weights(root / "model"), _weights(next((one / "models").glob("ref-*"))), _weights(
        next((two / "models").glob("ref-*")))
    update_one, update_two = _update(a, base), _update(b, base)
    assert float(update_one.norm()) > 0
    assert _gap(update_two, update_one) < 0.02
    ref_one, ref_two = single["ref"][2], ranked["ref"][2]
    assert ref_two["id"].tolist() == ref_one["id"].tolist()
    np.testing.assert_allclose(ref_two["loss_sum"], ref_one["loss_sum"], rtol=2e-3)
    base_loss = rows["loss_sum"].to_numpy()
    assert np.mean(ref_two["loss_sum"].to_numpy() < base_loss) > 0.9  # it did train
    # rank 0 alone wrote the job records: the score job, done, and the map that follows it (rank 0 alone computes it)
    records = {r["kind"]: r for r in (json.loads(p.read_text()) for p in (two / "jobs").glob("*.json"))}
    assert records["score"]["state"] == "done" and records["score"]["reference_model"]
    assert records["score"]["processes"] == 2 and _records(one)["score"]["processes"] == 1
    assert records["layout"]["state"] == "done"
    assert Cache(two).map_path(records["score"]["base_pass"]).exists()


def _records(cache: Path) -> dict[str, dict]:
    """The job records of a cache by kind (one job of each kind there)."""
    return {r["kind"]: r for r in (json.loads(p.read_text()) for p in (cache / "jobs").glob("*.json"))}


def test_accelerate_launch_runs_the_job_on_two_processes_as_torchrun_does(runs, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2 -m scoring score … --wait`` (``--multi_gpu`` is accelerate's
    name for the torch launcher; on a CPU its ranks use gloo): two processes, each chunk written once, the base
    pass's losses one process's exactly and the reference's update within 2 % of one process's."""
    root, model, one, _ = runs
    cache = _ingested(tmp_path, "acc", model)
    out = launch("-m", "scoring", "--cache", str(cache), *SCORE, "--model", str(model), nproc=2, accelerate=True)
    assert out.returncode == 0, out.stderr[-4000:]
    assert _records(cache)["score"]["processes"] == 2
    single, ranked = _passes(one), _passes(cache)
    assert ranked["base"][:2] == single["base"][:2]  # the same pass key and parts
    for column in ("loss_sum", "n_response_tokens", "alone_loss_sum"):
        assert np.array_equal(ranked["base"][2][column].to_numpy(), single["base"][2][column].to_numpy()), column
    base = _weights(root / "model")
    update_one = _update(_weights(next((one / "models").glob("ref-*"))), base)
    update_acc = _update(_weights(next((cache / "models").glob("ref-*"))), base)
    assert _gap(update_acc, update_one) < 0.02


def test_a_rank_killed_mid_pass_and_the_job_relaunched_loses_nothing(runs):
    root, model, one, _ = runs
    cache = _ingested(root, "killed", model)
    out = _scoring(cache, *SCORE, "--model", str(model), nproc=2, env={"DAVIR_KILL_AFTER_PARTS": "1:1"})
    assert out.returncode != 0  # rank 1 died after its first part; the launcher stopped rank 0
    parts = list((cache / "passes").glob("*/parts/part-*.parquet"))
    assert 1 <= len(parts) < len(chunk_ranges(ROWS, 64))
    status = _scoring(cache, "status")  # rank 0 killed by the launcher ("interrupted"), or failed first on the lost peer
    assert "interrupted" in status.stdout or "failed" in status.stdout
    out = _scoring(cache, *SCORE, "--model", str(model), nproc=2)
    assert out.returncode == 0, out.stderr[-4000:]
    resumed, single = _passes(cache), _passes(one)
    assert resumed["base"][1] == single["base"][1]
    assert np.array_equal(resumed["base"][2]["loss_sum"].to_numpy(), single["base"][2]["loss_sum"].to_numpy())
    assert not list(cache.rglob("*.tmp"))


PAIRS, VAL_FRACTION = 96, 0.333  # 64 training pairs and 32 validation pairs: each warm-up's shrunk batch (4 and 2
# pairs, DPOTrainConfig.for_pairs) is already a multiple of 2 ranks, so both launches train the same checkpoints


def _pair_models(cache: Path) -> dict[int, tuple[str, dict, dict]]:
    """{training pairs: (checkpoint folder name, its davir_dpo.json, its weights)} for the DPO warm-ups in ``cache``."""
    out = {}
    for folder in (cache / "models").glob("dpo-*"):
        meta = json.loads((folder / "davir_dpo.json").read_text())
        out[meta["n_pairs"]] = (folder.name, meta, _weights(folder))
    return out


def test_two_ranks_train_the_dpo_warm_ups_one_process_trains(tmp_path):
    model = build_model(tmp_path / "model")
    topics = ("planets", "rivers", "capitals", "birds", "colours", "numbers", "songs", "trees")
    rows = [{"id": f"p{i:03d}", "prompt": f"Write one sentence about {topics[i % 8]} (item {i}).",
             "chosen": f"Here is a sentence about {topics[i % 8]}: they are interesting, item {i}.",
             "rejected": f"I do not know about {topics[i % 8]}." if i % 2 else f"qzx vvk {topics[i % 8]} plo {i}"}
            for i in range(PAIRS)]  # fmt: skip
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    caches, tables = {}, {}
    for name, nproc, env in (("one", 0, {}), ("two", 2, {}), ("fsdp", 2, FSDP)):
        cache = caches[name] = tmp_path / name
        assert _scoring(cache, "ingest", str(data), "--name", "d").returncode == 0
        out = _scoring(cache, "score", "d", "--model", str(model), "--max-length", "64", "--val-fraction",
                       str(VAL_FRACTION), "--wait", nproc=nproc, env=env)  # fmt: skip
        assert out.returncode == 0, out.stderr[-4000:]
        out = _scoring(cache, "scores", "d", "--out", str(tmp_path / f"{name}.csv"))
        assert out.returncode == 0, out.stderr
        tables[name] = pd.read_csv(tmp_path / f"{name}.csv").sort_values("id").reset_index(drop=True)
    single = _pair_models(caches["one"])
    base = _weights(tmp_path / "model")
    for launch in ("two", "fsdp"):  # data-parallel, then sharded (DAVIR_FSDP=1)
        ranked = _pair_models(caches[launch])
        assert set(single) == set(ranked) == {64, 32}  # π_θ on the training pairs, θ_val on the validation pairs
        for n_pairs in (64, 32):
            (_, meta_one, one), (_, meta_two, two) = single[n_pairs], ranked[n_pairs]
            assert meta_two["steps"] == meta_one["steps"] >= 16 and meta_two["train"] == meta_one["train"]
            # the same steps on the same pairs: the update (trained - base) within float tolerance. Measured: 2e-6
            # apart under DDP, 1.7-2.1e-6 under FSDP; each rank stepping on its own half-batch's gradients: 21 %
            update_one = _update(one, base)
            assert float(update_one.norm()) > 0
            assert _gap(_update(two, base), update_one) < 1e-3, (launch, n_pairs)
        assert single[64][0] == ranked[64][0]  # π_θ's key does not name the launch: one process's is reused
        one, two = tables["one"], tables[launch]
        assert two["id"].tolist() == one["id"].tolist()
        for column in ("irm", "lossdiff", "davir_dpo"):
            scale = float(one[column].abs().max())
            assert scale > 0
            np.testing.assert_allclose(two[column], one[column], rtol=0, atol=1e-3 * scale, err_msg=(launch, column))
        assert np.array_equal(two["margin_base"].to_numpy(), one["margin_base"].to_numpy())  # π_ref's pass: exact


def _collectives(rank: int, world: int, port: int, out: str) -> None:
    """One of two gloo processes: every collective step of scoring.ranks, results written to ``out``."""
    import torch

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DAVIR_DEVICE="cpu")  # fmt: skip
    here = ranks.join()
    layer = torch.nn.Linear(3, 2)
    for p in layer.parameters():
        p.grad = torch.full_like(p, float(rank + 1))
    ranks.reduce_gradients(layer.parameters(), average=True)
    averaged = float(layer.weight.grad[0, 0])
    ranks.reduce_gradients(layer.parameters(), average=False)
    result = {
        "rank": here.rank, "shard": ranks.shard(list(range(7))), "from_main": ranks.from_main(f"list of {rank}"),
        "all_true": ranks.all_true(rank == 0), "any_true": ranks.any_true(rank == 1),
        "means": ranks.means_over_ranks({"a": [float(rank)] * (rank + 1), "none": []}),
        "averaged": averaged, "summed": float(layer.bias.grad[0]),
    }  # fmt: skip
    ranks.barrier()
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def test_collective_steps_in_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_collectives, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert results[0]["shard"] == [0, 2, 4, 6] and results[1]["shard"] == [1, 3, 5]
    for r in results:
        assert r["from_main"] == "list of 0"
        assert r["all_true"] is False and r["any_true"] is True
        assert r["means"] == {"a": pytest.approx((0 + 1 + 1) / 3), "none": None}
        assert r["averaged"] == pytest.approx(1.5) and r["summed"] == pytest.approx(3.0)


def test_one_process_needs_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert ranks.join() == ranks.Ranks(0, 1, 0) and ranks.current().main and not ranks.current().many
    assert ranks.from_main("x") == "x" and ranks.all_true(True) and not ranks.any_true(False)
    assert ranks.shard([1, 2, 3]) == [1, 2, 3]
    assert ranks.device("cuda") == "cuda"


def test_a_rank_other_than_0_writes_no_job_record(tmp_path, monkeypatch):
    cache = Cache(tmp_path)
    job = Job(id="abc", kind="score", dataset="d", dataset_fingerprint="f")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ranks.device("cuda") == "cuda:1" and ranks.device("cpu") == "cpu"
    save_job(cache, job)
    assert not job_path(cache, "abc").exists()
    monkeypatch.setenv("RANK", "0")
    save_job(cache, job)
    assert job_path(cache, "abc").exists()


def test_score_under_a_launcher_must_wait(tmp_path, monkeypatch, capsys):
    from scoring.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["--cache", str(tmp_path), "score", "anything"]) == 2
    assert "add --wait" in capsys.readouterr().err


def test_a_step_keeps_its_examples_over_any_number_of_ranks():
    default = TrainConfig()  # 8 examples per step, 8 per forward
    assert per_rank_batches(default, 1) == (8, 1)
    assert per_rank_batches(default, 2) == (4, 1) and per_rank_batches(default, 8) == (1, 1)
    small = TrainConfig(batch_size=16, micro_batch_size=2)
    assert per_rank_batches(small, 1) == (2, 8) and per_rank_batches(small, 4) == (2, 2)
    with pytest.raises(Exception, match="does not split evenly over 3 processes"):
        per_rank_batches(default, 3)
    with pytest.raises(Exception, match="over 16 processes"):
        per_rank_batches(default, 16)
    # a DPO warm-up on a few pairs shrinks its batch, to a multiple of the ranks
    assert DPOTrainConfig().for_pairs(20).batch_size == 1
    assert DPOTrainConfig().for_pairs(20, world=2).batch_size == 2
    assert DPOTrainConfig().for_pairs(400, world=2).batch_size == DPOTrainConfig().batch_size


def test_a_launch_past_its_timeout_leaves_no_rank_running(tmp_path):
    """The tests' launcher kills every rank of a run that outlives its timeout, not torchrun alone."""
    script = tmp_path / "sleep.py"
    script.write_text("import os, sys, time\n"
                      "open(os.path.join(sys.argv[1], os.environ['RANK']), 'w').write(str(os.getpid()))\n"
                      "time.sleep(300)\n")  # fmt: skip
    with pytest.raises(subprocess.TimeoutExpired):
        launch(str(script), str(tmp_path), nproc=2, timeout=20)
    pids = [int((tmp_path / rank).read_text()) for rank in ("0", "1")]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone (reaped by init once its parent was killed with it)
