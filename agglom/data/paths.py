"""Paths in messages and in an output folder: shown on one line, and never followed out of the folder.

- :func:`shown`: a path as a message prints it. A path is taken as typed, so it may hold a newline or another
  control character (a CSV cell, ``out=$'a\\nb'``); such a path is shown as its ``repr`` so the message stays one
  line and says exactly which file is meant. Any other path is shown as it is (copyable into a shell).
- :func:`link_on_the_way` / :func:`inside`: what `agglom data synth | pack` may delete or write in their output
  folder (:mod:`agglom.data.manifest`). Everything is addressed relative to the folder's *resolved* path, and a
  symbolic link anywhere below it (a split folder, a shard, the manifest) is refused: deleting or writing through
  it would touch files outside the folder (a link ``val -> ~/.ssh`` plus a manifest listing
  ``val/authorized_keys``).
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def shown(path: PathLike) -> str:
    """``path`` for a one-line message: as typed, or its ``repr`` when it holds a non-printable character."""
    s = os.fspath(path)
    return repr(s) if not s.isprintable() else s


def relative_parts(rel: str) -> Optional[tuple]:
    """The parts of a folder-relative path, or None when it is empty, absolute or has a '..' part."""
    p = PurePosixPath(rel)
    if not p.parts or p.is_absolute() or ".." in p.parts or "\\" in rel:
        return None
    return p.parts


def link_on_the_way(root: Path, rel: str) -> Optional[Path]:
    """The first symbolic link met going from ``root`` (not checked: it is resolved by the caller) down to
    ``root/rel`` (itself included), or None."""
    cur = Path(root)
    for part in relative_parts(rel) or ():
        cur = cur / part
        if cur.is_symlink():
            return cur
    return None


def safe(root: Path, rel: str) -> bool:
    """Whether ``root/rel`` is a path inside ``root`` (relative, no '..') with no symbolic link on the way."""
    return relative_parts(rel) is not None and link_on_the_way(root, rel) is None


def link_message(link: Path, root: PathLike, note: str = "") -> str:
    """One line naming ``link``, its target and what to do."""
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    return (f"{shown(link)} is a symbolic link (to {shown(target)}); agglom deletes and writes only inside "
            f"out={shown(root)} itself, never through a link: replace the link with a real folder or file, or choose "
            f"another out={note}")


def inside(root: Path, rel: str, note: str = "") -> Path:
    """``root/rel`` when it stays inside the resolved folder ``root`` with no link on the way; ConfigError
    otherwise (an absolute or '..' path, a symbolic link, a path that resolves elsewhere)."""
    from agglom.config.load import ConfigError

    if relative_parts(rel) is None:
        raise ConfigError(f"{shown(rel)} is not a path inside out={shown(root)}; agglom writes only inside its "
                          f"output folder{note}")
    link = link_on_the_way(root, rel)
    if link is not None:
        raise ConfigError(link_message(link, root, note))
    path = Path(root) / rel
    real = Path(os.path.realpath(path))
    if real != Path(root) and Path(root) not in real.parents:
        raise ConfigError(f"{shown(path)} resolves to {shown(real)}, outside out={shown(root)}; agglom writes only "
                          f"inside its output folder{note}")
    return path


__all__ = ["shown", "relative_parts", "link_on_the_way", "link_message", "inside", "safe"]
