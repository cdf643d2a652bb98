"""Every environment variable DavIR Studio reads, in one place.

| variable                 | meaning                                                        | default   |
|--------------------------|----------------------------------------------------------------|-----------|
| ``DAVIR_CACHE``          | cache folder (DuckDB queries, Parquet parts, models, exports)  | ``./cache`` |
| ``DAVIR_DEVICE``         | force the scoring device: ``cpu``, ``cuda``, ``cuda:1`` …       | auto      |
| ``DAVIR_WORKER_IDLE_EXIT`` | seconds an auto-started worker waits for work before exiting | ``60``    |
| ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` | (set by ``torchrun`` / ``accelerate launch``) this process's place among many (scoring.ranks) | one process |
| ``DAVIR_FSDP``           | ``1``: under a launcher, train sharded (FSDP) instead of data-parallel (scoring/train/sharded.py) | unset |
| ``DAVIR_KILL_AFTER_PARTS`` | tests only: ``RANK:N`` kills that rank after its N-th part of a pass | unset |
| ``HF_HUB_OFFLINE``       | (Hugging Face's own) no hub requests; ingest of a hub id fails at once | unset |
| ``XDG_CACHE_HOME``       | (the usual one) where this machine's own facts are kept: ``<it>/davir-studio`` (:func:`machine_dir`) | ``~/.cache`` |
| ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, ``LRU_CACHE_CAPACITY`` | (oneDNN's and PyTorch's) CPU matrix-product kernels kept per shape | ``64`` each (:func:`bound_kernel_caches`) |

``--cache DIR`` on the command line wins over ``DAVIR_CACHE``.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_VAR = "DAVIR_CACHE"
DEVICE_VAR = "DAVIR_DEVICE"
WORKER_IDLE_EXIT_VAR = "DAVIR_WORKER_IDLE_EXIT"
HUB_OFFLINE_VAR = "HF_HUB_OFFLINE"
XDG_CACHE_VAR = "XDG_CACHE_HOME"
KILL_AFTER_PARTS_VAR = "DAVIR_KILL_AFTER_PARTS"
FSDP_VAR = "DAVIR_FSDP"


# oneDNN (bf16 matrix products on a CPU) keeps a compiled kernel for every shape it meets, in two caches of 1,024
# entries by default, each kernel holding ~0.5 MB; packed rows give every micro-batch a new number of tokens, so a
# fine-tune's resident memory grew ~50 MB per optimizer step until the caches filled (+0.5-1 GB). 64 entries hold
# every shape of one micro-batch (forward, recomputation and backward of all its layers); a miss costs a few ms.
KERNEL_CACHES = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LRU_CACHE_CAPACITY": "64"}


def bound_kernel_caches() -> None:
    """Cap oneDNN's CPU kernel caches (unless the user set them): read once, when the first kernel is made, so
    this runs on importing :mod:`scoring`, before any model does."""
    for name, value in KERNEL_CACHES.items():
        os.environ.setdefault(name, value)


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``explicit`` if given, else ``$DAVIR_CACHE``, else ``./cache``."""
    value = explicit or os.environ.get(CACHE_VAR) or "cache"
    return Path(value).expanduser().resolve()


def machine_dir() -> Path:
    """Where facts about this machine (not about any dataset) are kept, whichever cache a job uses: the CPU's
    measured bf16 speed (scoring/models/precision.py)."""
    base = os.environ.get(XDG_CACHE_VAR) or Path.home() / ".cache"
    return Path(base).expanduser() / "davir-studio"


def device_override() -> str | None:
    return os.environ.get(DEVICE_VAR) or None


def launcher_place() -> tuple[int, int, int]:
    """(rank, world size, local rank) as ``torchrun`` / ``accelerate launch`` set them; (0, 1, 0) without one."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))


def fsdp_requested() -> bool:
    return os.environ.get(FSDP_VAR, "").upper() in ("1", "ON", "YES", "TRUE")


def kill_after_parts() -> str | None:
    return os.environ.get(KILL_AFTER_PARTS_VAR) or None


def worker_idle_exit() -> float:
    return float(os.environ.get(WORKER_IDLE_EXIT_VAR, "60"))


def hub_offline() -> bool:
    """``$HF_HUB_OFFLINE`` as the hub libraries read it. Read here at call time: ``datasets`` reads it once, at
    import, so a value set later (a test, a long-lived app process) would otherwise be missed."""
    return os.environ.get(HUB_OFFLINE_VAR, "").upper() in ("1", "ON", "YES", "TRUE")
