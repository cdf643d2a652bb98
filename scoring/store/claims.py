"""Exclusive claims on jobs and chunks: an flock held on a file for as long as the work goes on.

Why flock and not a lock file with a pid: the kernel drops an flock when its process dies, however it dies, so a
claim left by a ``kill -9`` is free again at once, with no stale-pid bookkeeping and no take-over races.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` runs on this machine (a zombie -- killed, not yet reaped -- counts as dead)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class Claim:
    """An exclusive claim on a job or a chunk: an flock held on ``path`` for as long as we work on it.

    The kernel drops an flock when its process dies, however it dies, so a claim left by a ``kill -9`` is free
    again at once: no pid bookkeeping, no stale-lock races. The file also holds our pid, for people reading it.
    """

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # unlink first, while still holding the lock
        os.close(self._fd)
        self._fd = None


def try_claim(path: Path) -> Claim | None:
    """Claim ``path`` exclusively, or return None when a live process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder released (unlinked) it between our open and our lock: try the new file
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return Claim(path, fd)
    return None
