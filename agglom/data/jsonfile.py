"""The small JSON files agglom writes and reads back (datasheets, manifests, sidecars, cache manifests): atomic
writes, and reads that fail with one line naming the file instead of a ``JSONDecodeError`` traceback.

A truncated ``dataset.json`` (a copy cut short, an editor's half save) is the user's to fix, so a bad file is a
:class:`agglom.config.load.ConfigError` (exit 2) whose message gives the line and what to do; ``fix`` says what
for the kind of file at hand. The same goes for a file made to hurt: one that is not a regular file (a link to
``/dev/zero`` would be read forever), one over ``max_bytes`` (refused from its size, before it is read) and one
nested deeper than Python's parser can follow (``[`` x 100000 would end in a ``RecursionError``).
:func:`peek_json` is the quiet form for a file agglom only looks at to decide whether it is its own.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional


def _no_follow(path: str, flags: int) -> int:
    """An ``open`` opener that does not follow a symbolic link at ``path`` (ELOOP instead)."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)


def write_json_atomic(path: os.PathLike, obj: Any, indent: int = 2, sort_keys: bool = False) -> None:
    """``obj`` as indented JSON at ``path``, written beside it as ``<name>.tmp`` and renamed into place. A ``.tmp``
    that is a symbolic link is not written through (``OSError``, ELOOP): the rename replaces the link itself."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n"
    with open(tmp, "w", opener=_no_follow) as f:
        f.write(text)
    os.replace(tmp, path)


def _size_text(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n} bytes"


def read_json(path: os.PathLike, fix: str = "rewrite it or remove it", max_bytes: Optional[int] = None) -> Any:
    """The parsed content of ``path``; ConfigError "<path>: not valid JSON at line N (...); <fix>" when it is not
    JSON (truncated, not UTF-8, a binary file, nested too deeply), not a regular file or over ``max_bytes``
    (checked before reading); ReadableError when it cannot be read at all."""
    from agglom.config.load import ConfigError
    from agglom.data.paths import shown
    from agglom.errors import ReadableError

    path = Path(path)
    if path.exists() and not path.is_file():  # a device or fifo in a received folder would be read forever
        raise ConfigError(f"{shown(path)}: not a regular file; {fix}")
    try:
        with open(path, "rb") as f:
            if max_bytes is not None and os.fstat(f.fileno()).st_size > max_bytes:
                raise ConfigError(f"{shown(path)}: {_size_text(os.fstat(f.fileno()).st_size)}, over the "
                                  f"{_size_text(max_bytes)} agglom reads for this file; {fix}")
            raw = f.read() if max_bytes is None else f.read(max_bytes + 1)
        if max_bytes is not None and len(raw) > max_bytes:  # grew while it was read
            raise ConfigError(f"{shown(path)}: over the {_size_text(max_bytes)} agglom reads for this file; {fix}")
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{shown(path)}: not UTF-8 text (byte {e.start}), so not a JSON file agglom wrote; "
                          f"{fix}") from None
    except OSError as e:
        raise ReadableError(f"cannot read {shown(path)}: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        what = "empty" if not text.strip() else f"not valid JSON at line {e.lineno} ({e.msg})"
        raise ConfigError(f"{shown(path)}: {what}; {fix}") from None
    except RecursionError:
        raise ConfigError(f"{shown(path)}: JSON nested too deeply to read (no file agglom reads nests more than a "
                          f"few levels); {fix}") from None


def read_json_object(path: os.PathLike, fix: str = "rewrite it or remove it",
                     max_bytes: Optional[int] = None) -> dict:
    """:func:`read_json` of a file that must hold a JSON object (a manifest, a pack's index); ConfigError naming
    the file when it holds anything else."""
    from agglom.config.load import ConfigError
    from agglom.data.paths import shown

    obj = read_json(path, fix=fix, max_bytes=max_bytes)
    if not isinstance(obj, dict):
        raise ConfigError(f"{shown(path)}: not a JSON object; {fix}")
    return obj


def peek_json(path: os.PathLike, max_bytes: int = 16 << 20) -> Optional[Any]:
    """The parsed content of ``path``, or None when it is missing, not a regular file, over ``max_bytes``, not
    JSON or nested too deeply: for a file looked at only to tell whether agglom wrote it."""
    from agglom.config.load import ConfigError
    from agglom.errors import ReadableError

    try:
        return read_json(path, max_bytes=max_bytes)
    except (ConfigError, ReadableError, OSError):
        return None


__all__ = ["read_json", "read_json_object", "peek_json", "write_json_atomic"]
