"""One writer per run directory: an OS lock on ``<run>/.lock`` held for the life of the training process.

Two trains on one run would interleave ``metrics.jsonl`` and race on checkpoints, and a second launch with other
settings would silently continue the first one's weights. The lock is a POSIX record lock (``fcntl.lockf``):
the kernel drops it when the holder exits in any way (kill -9 included), so a lock is never left stale; a lock
file naming a process that has gone is simply taken over (and said so). Record locks belong to the process, so
DataLoader workers forked while it is held do not keep it after the trainer dies. Under DDP/DeepSpeed rank 0
takes the lock and every rank learns the outcome.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

from agglom.errors import ConfigError

LOCK_NAME = ".lock"


class RunLockedError(ConfigError):
    """Another live process trains this run; nothing was written."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(fd: int) -> Dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    try:
        return json.loads(raw.decode()) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        return {}


def _describe(holder: Dict[str, Any]) -> str:
    if not holder:
        return "another process (it has not written its name yet)"
    cmd = " ".join(holder.get("argv") or [])[:200]
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
            + (f" (command: {cmd})" if cmd else ""))


_HELD: set = set()  # lock files this process holds: never opened again here (closing any fd would release them)


def held_by(run_dir: Path) -> Optional[str]:
    """Who holds ``<run_dir>/.lock`` now (another process training, evaluating or caching into it), or None.
    Asks for a shared lock without waiting, on a read-only descriptor, so a read-only folder can be asked too."""
    path = Path(run_dir) / LOCK_NAME
    if not path.is_file() or str(path.resolve()) in _HELD:
        return None
    import fcntl

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        return _describe(_read(fd))
    finally:
        os.close(fd)


class RunLock:
    """``with RunLock(run_dir):`` — exclusive for the block; ``RunLockedError`` (exit 2) names the holder.
    ``activity`` says what the holder does in the message (trained, evaluated, cached).

    A run directory that this lock created and that holds nothing else when the block ends (a launch that failed
    before writing anything) is removed again."""

    def __init__(self, run_dir: Path, engine: Any = None, activity: str = "trained") -> None:
        self.activity = activity
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.engine = engine
        self.is_main = engine is None or engine.is_main
        self.fd: Optional[int] = None
        self.created = False
        self.previous: Dict[str, Any] = {}

    def _take(self) -> Optional[str]:
        """Take the lock (rank 0); returns why not, or None."""
        self.created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            holder = _read(fd)
            os.close(fd)
            return _describe(holder)
        self.fd = fd
        self.key = str(self.path.resolve())
        _HELD.add(self.key)
        self.previous = _read(fd)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "argv": ["agglom", *sys.argv[1:]]}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        pid = self.previous.get("pid")
        if pid and self.previous.get("host") == me["host"] and pid != me["pid"] and not _pid_alive(int(pid)):
            print(f"agglom: {self.path}: the previous holder (pid {pid}) ended without releasing the lock; "
                  "taking it over", flush=True)
        return None

    def __enter__(self) -> "RunLock":
        why = self._take() if self.is_main else None
        ok = 0.0 if why else 1.0
        if self.engine is not None:
            ok = self.engine.all_reduce_min(ok)
        if ok < 1:
            self.__exit__(None, None, None)
            raise RunLockedError(
                f"{self.run_dir} is being {self.activity} by {why or 'another process (see rank 0)'}. Wait for it to "
                f"finish or stop it; a second writer would interleave its files"
                + (". To train other settings side by side, choose another name=" if self.activity == "trained" else
                   "; or give this one another out="))
        return self

    def _cleanup(self) -> None:
        if self.created and self.run_dir.is_dir() and {p.name for p in self.run_dir.iterdir()} <= {LOCK_NAME}:
            try:
                self.path.unlink()
                self.run_dir.rmdir()
            except OSError:
                pass

    def __exit__(self, *exc: Any) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        self._cleanup()  # while still held: nobody else can be using the folder
        os.close(self.fd)  # closing releases the record lock
        _HELD.discard(self.key)
        self.fd = None


__all__ = ["RunLock", "RunLockedError", "LOCK_NAME", "held_by"]
