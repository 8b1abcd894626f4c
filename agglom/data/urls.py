"""Which shard URLs agglom may open: local files always; a command (``pipe:``), a network scheme or stdin only when
the command line says ``--allow-remote-shards``.

A recipe, an override or a run folder's saved ``config.yaml`` may come from someone else, and WebDataset's
``gopen`` runs ``pipe:CMD`` as a shell command: so the permission is never read from a config. The CLI turns the
flag into the environment variable :data:`ALLOW_REMOTE_ENV` for this process and the ones it starts (data loader
workers, DeepSpeed ranks).
"""
from __future__ import annotations

import os
import re

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # a URL scheme (two letters at least: not a drive letter)
ALLOW_REMOTE_ENV = "AGGLOM_ALLOW_REMOTE_SHARDS"  # set to 1 by the command line's --allow-remote-shards only
ALLOW_REMOTE_FLAG = "--allow-remote-shards"


def is_remote(url: str) -> bool:
    """Whether ``url`` is read by something other than ``open()``: a command (``pipe:``), a network scheme
    (``https:``, ``s3:``, ...) or stdin (``-``). ``file:`` is a local file."""
    m = _SCHEME.match(url)
    return url == "-" or (m is not None and m.group(1).lower() != "file")


def remote_allowed() -> bool:
    """Whether this process may read non-local shard URLs: only when the command line said
    ``--allow-remote-shards`` (never from a recipe or a saved ``config.yaml``, which may come from someone else)."""
    return os.environ.get(ALLOW_REMOTE_ENV) == "1"


def check_url(url: str, where: str = "data.shards") -> None:
    """Refuse a shard URL that would run a command or reach a network unless the command line allowed it."""
    if is_remote(url) and not remote_allowed():
        from agglom.config.load import ConfigError

        what = "runs a shell command" if url.startswith("pipe:") else "is not a local file"
        raise ConfigError(f"{where}: {url[:80]!r} {what}; agglom reads local shard files only. To read remote "
                          f"or piped shards you trust, add {ALLOW_REMOTE_FLAG} to the command line (it is never "
                          "taken from a recipe or a run's config.yaml); write ./NAME for a local file whose name has "
                          "a colon")


def local_path(url: str) -> str:
    """The file a local URL names (a `file:` prefix removed)."""
    return url[len("file://"):] if url.startswith("file://") else url[len("file:"):] if url.startswith("file:") else url


__all__ = ["ALLOW_REMOTE_ENV", "ALLOW_REMOTE_FLAG", "is_remote", "remote_allowed", "check_url", "local_path"]
