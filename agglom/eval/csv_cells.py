"""CSV cells that a spreadsheet opens as text: a sample key, path or attribute value starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return would be run as a formula when someone opens ``predictions.csv`` in a
spreadsheet (keys come from shards that may come from anyone). Such text cells are written behind a ``'``, the
spreadsheet convention for "this is text", and :func:`read_rows` takes it off again, so files round-trip exactly.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Dict, List

_FORMULA = ("=", "+", "-", "@", "\t", "\r", "'")  # the quote itself, so that a key starting with ' round-trips


def cell(value: Any) -> Any:
    """``value`` as written to a CSV: text that a spreadsheet would evaluate gets a leading ``'``."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA) else value


def uncell(text: str) -> str:
    """The text :func:`cell` was given."""
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA) else text


def read_rows(path: str | os.PathLike) -> List[Dict[str, str]]:
    """The rows of a CSV written with :func:`cell`, as dicts of text."""
    with Path(path).open(newline="") as f:
        return [{uncell(k): uncell(v) for k, v in r.items()} for r in csv.DictReader(f)]


__all__ = ["cell", "uncell", "read_rows"]
