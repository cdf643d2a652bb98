"""Whether bf16 pays on this CPU: measured once per machine and kept in the cache, not read off a CPU flag.

A flag (``avx512_bf16``, ``amx_bf16``) says the CPU runs bf16 natively, not that it runs it faster. On an Intel
Xeon VM with AVX-512 BF16 but no AMX exposed, oneDNN's bf16 products ran at 37-41 GFLOP/s on one thread against
63-75 for fp32; the bf16 engine scored at 0.86x the speed of the plain fp32 loop there, and a fine-tune in bf16
autocast took 93-95 s against 73 s in fp32.

So "auto" (a pass's ``dtype``, a fine-tune's ``precision``) picks bf16 on a CPU only when the CPU has native bf16
**and** a one-thread product of a small transformer's MLP shape (:data:`PROBE`, the shape of SmolLM2-135M's) runs
at least :data:`BF16_MIN_GAIN` times as fast in bf16 as in fp32. With the threshold at 1.0, every CPU where bf16
products are not slower keeps the bf16 it had under the flag rule; only those where they are slower move to fp32.

The probe takes about a second on a CPU with native bf16. Its result is written once per machine to
``~/.cache/davir-studio/cpu-bf16-<signature>.json`` (``$XDG_CACHE_HOME`` if set; the signature: CPU model, CPU
flags, torch version) and copied into each cache that uses it (``<cache>/machine/``), and read from there afterwards,
so a pass and its resumption, two caches on one machine, or the ranks of a job sharing a cache across nodes never
disagree on a dtype because of timing noise. The first process to write a file wins; one that measured at the same
moment adopts its answer. Delete the files to measure again.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

from scoring.env import machine_dir
from scoring.store.jobs import now

PROBE = (1024, 576, 1536)  # rows x in x out: tokens of a micro-batch through SmolLM2-135M's MLP up-projection
BF16_MIN_GAIN = 1.0  # bf16 products must be at least this many times as fast as fp32's
PROBE_ROUNDS = 5  # timed products per dtype (after one untimed): the best one counts
NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")

_DECIDED: dict[str, dict] = {}  # record file name (one per signature) -> record, for this process


def cpu_info() -> tuple[str, str]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ("", "") where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("model name", platform.processor()), fields.get("flags", "")


def cpu_has_bf16() -> bool:
    """The CPU says it runs bf16 natively (AVX-512 BF16 or AMX)."""
    flags = set(cpu_info()[1].split())
    return any(flag in flags for flag in NATIVE_FLAGS)


def signature() -> str:
    """What the measurement depends on: the CPU model and flags, and torch (whose oneDNN picks the kernels); read
    without importing torch."""
    model, flags = cpu_info()
    return hashlib.sha256(f"{model}\n{flags}\n{importlib.metadata.version('torch')}".encode()).hexdigest()[:16]


def measure_gflops(dtype, rounds: int = PROBE_ROUNDS) -> float:
    """GFLOP/s of the best of ``rounds`` one-thread products of :data:`PROBE`'s shape in ``dtype``."""
    import torch

    rows, inner, out = PROBE
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, inner, generator=generator).to(dtype)
    w = torch.randn(out, inner, generator=generator).to(dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the scoring workers and each rank run
    try:
        with torch.inference_mode():
            torch.nn.functional.linear(x, w)  # the kernel is made on first use: not timed
            best = float("inf")
            for _ in range(rounds):
                start = time.perf_counter()
                torch.nn.functional.linear(x, w)
                best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return 2 * rows * inner * out / best / 1e9


def probe() -> dict:
    """Measure fp32 and bf16 products on this CPU now: the record :func:`cpu_bf16` keeps."""
    import torch

    fp32, bf16 = measure_gflops(torch.float32), measure_gflops(torch.bfloat16)
    return {"cpu": cpu_info()[0], "torch": torch.__version__, "probe": list(PROBE), "fp32_gflops": round(fp32, 2),
            "bf16_gflops": round(bf16, 2), "min_gain": BF16_MIN_GAIN, "bf16": bf16 >= BF16_MIN_GAIN * fp32,
            "measured": now()}  # fmt: skip


def cpu_bf16(cache_root: str | os.PathLike | None, measure: Callable[[], dict] | None = None) -> dict:
    """Whether "auto" uses bf16 on this CPU, and why: ``{"bf16": bool, "reason": str, ...}``.

    No native bf16: no (nothing measured). Otherwise, the first record found of: the one kept under ``cache_root``
    (a cache the ranks of a job share, nodes included, so they agree), this process's, this machine's
    (:func:`scoring.env.machine_dir`); or a fresh measurement (``measure``, default :func:`probe`), kept on the
    machine. The record is then kept under ``cache_root`` too, if it has none yet."""
    if not cpu_has_bf16():
        return {"bf16": False, "reason": "no native bf16 on this CPU"}
    shared, on_machine = _record_files(cache_root)
    record = _read(shared) or _DECIDED.get(on_machine.name) or _read(on_machine)
    if record is None:
        record = _keep(on_machine, (measure or probe)())
    if shared is not None and not shared.exists():
        record = _keep(shared, record)
    _DECIDED[on_machine.name] = record
    ratio = record["bf16_gflops"] / max(record["fp32_gflops"], 1e-9)
    verdict = "at least" if record["bf16"] else "under"
    return {**record, "reason": f"bf16 products {ratio:.2f}x fp32's ({verdict} {record['min_gain']}x)"}


def status_line(cache_root: str | os.PathLike | None) -> str:
    """What "auto" runs in on this CPU and why, for ``status``, from what is known (nothing is measured here)."""
    model = cpu_info()[0] or "unknown CPU"
    if not cpu_has_bf16():
        return f"cpu: {model}; \"auto\" dtype fp32 (no native bf16)"
    shared, on_machine = _record_files(cache_root)
    record = _read(shared) or _read(on_machine)
    if record is None:
        return f"cpu: {model}; \"auto\" dtype not decided yet (bf16 and fp32 products are timed at the first pass)"
    return (f"cpu: {model}; \"auto\" dtype {'bf16' if record['bf16'] else 'fp32'} (bf16 products "
            f"{record['bf16_gflops']:g} GFLOP/s, fp32 {record['fp32_gflops']:g}, measured {record.get('measured', '?')})")


def _record_files(cache_root: str | os.PathLike | None) -> tuple[Path | None, Path]:
    """Where this CPU's record is kept: (under ``cache_root``, None without one; on this machine)."""
    name = f"cpu-bf16-{signature()}.json"
    return (Path(cache_root) / "machine" / name if cache_root else None), machine_dir() / name


def _read(path: Path | None) -> dict | None:
    if path is None or not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if isinstance(record.get("bf16"), bool) and record["fp32_gflops"] > 0 and record["bf16_gflops"] > 0:
            return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    path.unlink(missing_ok=True)  # unreadable or from an older format: measured again
    return None


def _keep(path: Path | None, record: dict) -> dict:
    """Write ``record`` to ``path`` unless another process already has: then its record is the answer."""
    if path is None:
        return record
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".probe-")
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
        try:
            os.link(temp, path)  # fails if the file exists: the first writer wins
        except FileExistsError:
            record = _read(path) or record
        finally:
            os.unlink(temp)
    except OSError:  # a read-only cache: the measurement holds for this process
        pass
    return record
