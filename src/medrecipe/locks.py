"""Exclusive locks on run directories and request caches, so two processes never share one.

Two `medrecipe run`s on one run directory would both pay for every request and overwrite
each other's outputs; two processes writing one request cache would send the same request
twice. A lock is an advisory `flock` on a small file (`<dir>/.lock`, or `<cache>.lock`)
that records who holds it (pid, host, command line, start time). The operating system
drops it when the holder exits, even on SIGKILL, so a stale lock cannot block a later run.

Inside one process a lock is reference-counted: the pipeline holds the run directory while
the engine, a judge and the evaluation runner each open the cache it contains.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from medrecipe.errors import UserError

__all__ = ["LockHeld", "PathLock"]


class LockHeld(UserError):
    """Another process holds the lock; the message names it."""


_held: dict[str, tuple[int, int]] = {}  # resolved lock file -> (fd, reference count)
_guard = threading.Lock()


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (it did not record its details)"
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    return (f"process {holder.get('pid', '?')} on {holder.get('host', '?')} "
            f"(started {when}: {holder.get('command', '?')})")


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


class PathLock:
    """An exclusive, process-wide lock file; `acquire` raises LockHeld naming the holder."""

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self.what = what  # "run directory /x" / "request cache /y", for the message
        self._mine = False

    def acquire(self) -> PathLock:
        key = str(self.path.resolve())
        with _guard:
            if key in _held:
                fd, count = _held[key]
                _held[key] = (fd, count + 1)
                self._mine = True
                return self
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _read_holder(self.path)
                raise LockHeld(
                    f"the {self.what} is in use by {_describe(holder)}. Two processes on one "
                    "run directory or cache would pay for the same requests twice; wait for it "
                    "to finish, stop it, or use another run_dir / generate.cache_dir") from None
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                    "command": " ".join(sys.argv)[:500]}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
            _held[key] = (fd, 1)
            self._mine = True
        return self

    def release(self) -> None:
        if not self._mine:
            return
        self._mine = False
        key = str(self.path.resolve())
        with _guard:
            fd, count = _held.get(key, (-1, 0))
            if count > 1:
                _held[key] = (fd, count - 1)
                return
            _held.pop(key, None)
            if fd >= 0:
                os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> PathLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
