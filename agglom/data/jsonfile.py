"""The small JSON files agglom writes and reads back (datasheets, manifests, sidecars): atomic writes, and reads that
fail with one line naming the file instead of a ``JSONDecodeError`` traceback.

A truncated ``dataset.json`` (a copy cut short, an editor's half save) is the user's to fix, so a bad file is a
:class:`agglom.config.load.ConfigError` (exit 2) whose message gives the line and what to do; ``fix`` says what
for the kind of file at hand.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON at ``path``, written beside it as ``<name>.tmp`` and renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: os.PathLike, fix: str = "rewrite it or remove it") -> Any:
    """The parsed content of ``path``; ConfigError "<path>: not valid JSON at line N (...); <fix>" when it is not
    JSON (truncated, not UTF-8, a binary file), ReadableError when it cannot be read at all."""
    from agglom.config.load import ConfigError
    from agglom.errors import ReadableError

    path = Path(path)
    if path.exists() and not path.is_file():  # a device or fifo in a received folder would be read forever
        raise ConfigError(f"{path}: not a regular file; {fix}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}), so not a JSON file agglom wrote; {fix}") from None
    except OSError as e:
        raise ReadableError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        what = "empty" if not text.strip() else f"not valid JSON at line {e.lineno} ({e.msg})"
        raise ConfigError(f"{path}: {what}; {fix}") from None
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply to be a file agglom wrote; {fix}") from None


__all__ = ["read_json", "write_json_atomic"]
