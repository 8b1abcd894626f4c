"""One writer per teacher cache folder: ``agglom cache`` holds ``<cache>/<teacher>/.lock`` while it writes there.

Two runs on one output write the same temporary shard and rename it from under each other (the second ended with
"No such file or directory: .../.train-000000.tar.tmp") and race on ``manifest.json``. The lock is the run lock of
:mod:`agglom.runlock` (a POSIX record lock the kernel drops when its holder exits in any way, kill -9
included, so it is never left stale); only the refusal's wording is the cache's.
"""
from __future__ import annotations

from agglom.config.load import ConfigError
from agglom.runlock import RunLock


class CacheLockedError(ConfigError):
    """Another live process writes this teacher's cache; nothing was written (exit 2)."""


class CacheLock(RunLock):
    """``with CacheLock(teacher_dir):`` — exclusive for the block; :class:`CacheLockedError` names the folder and
    the holder (its pid, host, start time and command)."""

    def __enter__(self) -> "CacheLock":
        why = self._take()
        if why:
            raise CacheLockedError(f"{self.run_dir} is being written by {why}: another `agglom cache` run on the same "
                                   "cache.out. Wait for it to finish or stop it (two writers would overwrite each "
                                   "other's shards), or give another cache.out=")
        return self


__all__ = ["CacheLock", "CacheLockedError"]
