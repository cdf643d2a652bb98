"""scoring.store.claims: flock claims are exclusive, released claims can be taken again, and a claim dies with its
process however it dies (SIGKILL included)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from scoring.store.claims import pid_alive, try_claim

ROOT = Path(__file__).resolve().parent.parent.parent

HOLD = """
import sys, time
from pathlib import Path
from scoring.store.claims import try_claim
claim = try_claim(Path(sys.argv[1]))
print("held" if claim else "busy", flush=True)
time.sleep(120)
"""


def test_a_claim_is_exclusive_within_the_process(tmp_path):
    path = tmp_path / "jobs" / ".claim-abc"  # the folder is created
    first = try_claim(path)
    assert first is not None and path.exists()
    assert path.read_text() == str(os.getpid())  # who holds it, for people reading the file
    assert try_claim(path) is None  # a second open is a second fd: flock refuses it
    assert try_claim(path) is None
    other = try_claim(tmp_path / "jobs" / ".claim-other")  # a different file is a different claim
    assert other is not None
    other.release()
    first.release()


def test_a_released_claim_can_be_taken_again(tmp_path):
    path = tmp_path / ".claim-1"
    first = try_claim(path)
    first.release()
    assert not path.exists()  # unlinked on release
    first.release()  # releasing twice is harmless
    second = try_claim(path)
    assert second is not None and path.exists()
    assert try_claim(path) is None
    second.release()
    third = try_claim(path)
    assert third is not None
    third.release()


def _hold_in_child(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    line = proc.stdout.readline().strip()
    assert line == "held", f"the child could not claim {path}: {line!r}"
    return proc


def test_a_claim_held_by_a_killed_process_is_free_again(tmp_path):
    path = tmp_path / ".claim-job"
    proc = _hold_in_child(path)
    try:
        assert path.read_text() == str(proc.pid)
        assert try_claim(path) is None  # held by a live process
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        claim = None
        for _ in range(50):  # the kernel drops the lock when the process is gone
            claim = try_claim(path)
            if claim is not None:
                break
            time.sleep(0.1)
        assert claim is not None, "the claim of a SIGKILLed process was not freed"
        assert path.read_text() == str(os.getpid())
        claim.release()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_a_child_cannot_take_a_claim_we_hold(tmp_path):
    path = tmp_path / ".claim-ours"
    ours = try_claim(path)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "busy"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        ours.release()


def test_pid_alive():
    assert pid_alive(os.getpid())
    assert not pid_alive(0) and not pid_alive(-5)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(proc.pid)
        proc.kill()
        deadline = time.time() + 10
        while pid_alive(proc.pid) and time.time() < deadline:  # killed, not reaped yet: a zombie counts as dead
            time.sleep(0.05)
        assert not pid_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert not pid_alive(proc.pid)  # reaped: gone
