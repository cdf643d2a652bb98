"""A job's memory: each step's peak resident set is recorded beside its time, status shows a running job's, and the
CPU kernel caches that grew with the shapes of the data are capped."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from scoring.cli.commands import _job_line
from scoring.jobs import memory
from scoring.models.precision import cpu_has_bf16
from scoring.store.jobs import Job


def test_the_peak_follows_an_allocation_and_resets():
    memory.reset_peak()
    before = memory.peak_mb()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MB, touched
    during = memory.peak_mb()
    assert during - before > 50 and memory.rss_mb() >= during - 70
    del block
    if memory.reset_peak():  # Linux: a new peak starts from what is resident now
        assert memory.peak_mb() < during - 50


def test_status_shows_a_running_jobs_memory():
    job = Job(id="abc", kind="score", dataset="d", state="running", stage="training reference", rss_mb=2048.0)
    assert "RSS 2.0 GB" in _job_line(job)
    job.state = "done"
    assert "RSS" not in _job_line(job)


KERNEL_CACHE_PROBE = """
import ctypes, random, sys
{setup}
import torch

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
layer = torch.nn.Linear(576, 1536, bias=False)

def step(m):
    x = torch.randn(m, 576, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        layer(x).float().sum().backward()

step(64)
before = libc.mallinfo2().uordblks
for m in random.Random(0).sample(range(65, 1100), 150):  # a new number of tokens each time, as packed rows give
    step(m)
print((libc.mallinfo2().uordblks - before) / 2**20)
"""


def _heap_growth_mb(setup: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    out = subprocess.run([sys.executable, "-c", KERNEL_CACHE_PROBE.format(setup=setup)], capture_output=True,
                         text=True, env={**env, "OMP_NUM_THREADS": "1"}, check=True, timeout=300)  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def test_importing_scoring_bounds_the_cpu_kernel_caches():
    """bf16 matrix products of 150 different shapes: oneDNN's kernel caches, left at their defaults, grow the heap by
    ~1.5 MB per shape (a fine-tune over packed rows grew ~50 MB per optimizer step); importing scoring caps them."""
    if not cpu_has_bf16():
        pytest.skip("bf16 products on this CPU do not go through oneDNN's bf16 kernels")
    capped = _heap_growth_mb("import scoring")
    uncapped = _heap_growth_mb("")
    assert capped < 60, capped
    assert uncapped > 2 * capped + 60, (capped, uncapped)  # the probe sees the growth it guards against
