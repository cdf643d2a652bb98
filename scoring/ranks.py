"""One job, many processes: this process's place under ``torchrun`` / ``accelerate launch`` and the few collective
steps a job needs.

The launchers start the same command once per device and tell each process where it stands through the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); without them a process is
rank 0 of a world of one, and every function here is free (no process group, no communication). With them:

- :func:`join` starts PyTorch's process group once (NCCL on CUDA, gloo on a CPU), before the Trainer would, and
  pins the process to its GPU (``cuda:<LOCAL_RANK>``, :func:`device`);
- a scoring pass hands each rank a deterministic share of the chunks still missing (:func:`shard` over a list that
  rank 0 drew up, :func:`from_main`), so no file lock has to work across nodes, and a re-launch with another
  world size resumes from whatever parts are on disk;
- the ranks agree before they act on anything one of them could see differently (a cancel request, a finished
  pass): :func:`all_true`, :func:`any_true`;
- rank 0 alone writes the job record, manifests and trained checkpoints (:attr:`Ranks.main`); every rank waits at a
  :func:`barrier` between stages.

Training under the launcher is data-parallel through Trainer / TRL (their DDP); the token-bounded training step
(scoring/train/bounded.py) reduces the gradients itself with :func:`reduce_gradients`, because it runs the model's
trunk and LM head directly rather than through the DDP wrapper's forward, whose hooks would otherwise do it. With
``DAVIR_FSDP=1`` the model is sharded over the ranks instead and FSDP reduces them (scoring/train/sharded.py).

``DAVIR_KILL_AFTER_PARTS=RANK:N`` (for tests of a crash) makes rank RANK kill itself with SIGKILL right after it has
written its N-th part of a pass, as a lost node would.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from datetime import timedelta

from scoring.env import device_override, kill_after_parts, launcher_place

TIMEOUT_MINUTES = 180  # a rank waits this long at a collective step (rank 0 alone computes a 1M-row map meanwhile)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: rank ``rank`` of ``world``, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes job records, manifests and checkpoints."""
        return self.rank == 0

    @property
    def many(self) -> bool:
        return self.world > 1


def current() -> Ranks:
    """This process's place, from the launcher's environment (a world of one without a launcher)."""
    ranks = Ranks(*launcher_place())
    if not 0 <= ranks.rank < ranks.world:
        raise ValueError(f"RANK={ranks.rank} is not in a world of WORLD_SIZE={ranks.world}")
    return ranks


def _dist():
    import torch.distributed as dist

    return dist


def join() -> Ranks:
    """Start the process group once when launched as many processes (idempotent; a no-op for a world of one)."""
    ranks = current()
    if not ranks.many:
        return ranks
    import torch

    dist = _dist()
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and (device_override() or "cuda").startswith("cuda")
        if cuda:
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=TIMEOUT_MINUTES))
    return ranks


def device(base: str) -> str:
    """``base`` ("cuda", "cpu", ...) for this process: under a launcher, CUDA means this rank's own GPU."""
    ranks = current()
    return f"cuda:{ranks.local_rank}" if base == "cuda" and ranks.many else base


def _flag_device() -> str:
    dist = _dist()
    return f"cuda:{current().local_rank}" if dist.get_backend() == "nccl" else "cpu"


def barrier() -> None:
    """Every rank waits here until all have arrived (free for a world of one)."""
    if join().many:
        _dist().barrier()


def _reduce_int(number: int, op_name: str) -> int:
    if not join().many:
        return number
    import torch

    dist = _dist()
    value = torch.tensor([int(number)], device=_flag_device())
    dist.all_reduce(value, op=getattr(dist.ReduceOp, op_name))
    return int(value.item())


def all_true(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on every rank (a collective step: every rank must call it)."""
    return bool(_reduce_int(flag, "MIN"))


def any_true(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (a collective step)."""
    return bool(_reduce_int(flag, "MAX"))


def most(number: int) -> int:
    """The largest of every rank's ``number`` (a collective step)."""
    return _reduce_int(number, "MAX")


def from_main(obj):
    """Rank 0's ``obj`` on every rank (a collective step; ``obj`` must pickle)."""
    if not join().many:
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=0, device=_flag_device())
    return box[0]


def means_over_ranks(values: dict[str, list[float]]) -> dict[str, float | None]:
    """{name: mean of every rank's values} (None where no rank has one); a collective step, with the same names, in
    the same order, on every rank."""
    sums = [(sum(v), len(v)) for v in values.values()]
    if join().many:
        import torch

        flat = torch.tensor([x for pair in sums for x in pair], dtype=torch.float64, device=_flag_device())
        _dist().all_reduce(flat)
        sums = [(flat[2 * i].item(), flat[2 * i + 1].item()) for i in range(len(sums))]
    return {name: (total / count if count else None) for name, (total, count) in zip(values, sums)}


def shard(items: list, ranks: Ranks | None = None) -> list:
    """This rank's share of ``items``: every ``world``-th item from position ``rank`` (deterministic, disjoint, and
    together all of them)."""
    ranks = ranks or current()
    return items[ranks.rank :: ranks.world]


def reduce_gradients(parameters, average: bool) -> None:
    """Sum (``average=False``) or average the gradients of ``parameters`` over all ranks, in place, a few large
    all-reduces rather than one per tensor. A no-op for a world of one."""
    ranks = join()
    if not ranks.many:
        return
    import torch

    dist = _dist()
    grads = [p.grad for p in parameters if p.grad is not None]
    bucket: list = []

    def flush():
        if not bucket:
            return
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        if average:
            flat /= ranks.world
        at = 0
        for g in bucket:
            g.copy_(flat[at : at + g.numel()].view_as(g))
            at += g.numel()
        bucket.clear()

    size = 0
    for g in grads:  # the same order on every rank: the model's parameter order
        bucket.append(g)
        size += g.numel()
        if size >= 32 * 2**20:  # 32M elements per all-reduce
            flush()
            size = 0
    flush()


def maybe_fail(parts_written: int) -> None:
    """The crash a test asks for with ``DAVIR_KILL_AFTER_PARTS=RANK:N``: this rank dies after its N-th part."""
    spec = kill_after_parts()
    if not spec:
        return
    rank, n = (int(x) for x in spec.split(":"))
    if current().rank == rank and parts_written >= n:
        os.kill(os.getpid(), signal.SIGKILL)
