"""The CSV files a user hands to agglom (`agglom data pack csv=`, an ``attrs_csv``, `agglom data join csv=`, a CSV
sidecar), read the one way: every problem is a one-line ConfigError naming the file and the line.

- UTF-8, with or without the byte-order mark Excel's "CSV UTF-8" puts first (without this, the first column is
  named ``'\\ufeffpath'`` and "no column 'path'" follows); UTF-16 with its byte-order mark (Excel's "Unicode
  text") is decoded too, since the mark says which it is. Any other encoding (latin-1, cp1252: Excel's plain
  "CSV") is refused with the line of the first byte that is not UTF-8: a guess between those encodings would be
  silent and could be wrong, re-saving as UTF-8 is not.
- Column names are stripped of surrounding spaces (``path, label``); a name that appears twice in the header is
  refused (the second column would silently win).
- A row with more cells than the header (an unquoted comma in a value shifts every cell after it) is refused with
  its line; a shorter row reads its missing cells as blank.
- A cell over the csv module's limit (128 KiB) is refused naming the line its row starts on: no path, label or
  attribute is that long, and the limit is kept (not raised) because every cell but the path becomes sample
  metadata, which the readers cap at 1 MiB a sample (:mod:`agglom.data.limits`); such a cell is almost always a
  quote never closed, which swallows the rest of the file.
- The path is shown as typed, or as its ``repr`` when it holds a newline or another control character
  (:func:`agglom.data.paths.shown`), so every message is one line.
"""
from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path
from typing import Dict, List, Tuple

from agglom.data.paths import shown

Row = Tuple[int, Dict[str, str]]  # (line number of the row's last line, column -> cell)


def _decode(path: Path, raw: bytes, what: str) -> str:
    from agglom.config.load import ConfigError

    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{what} {shown(path)}: broken UTF-16 text (byte {e.start}); save it as UTF-8 CSV and "
                              "rerun") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{what} {shown(path)}: not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}: latin-1 or "
                          "Excel's plain 'CSV'?); save it as UTF-8 (Excel: 'CSV UTF-8') and rerun") from None


def _field_limit_message(path: Path, what: str, start: int) -> str:
    limit = csv.field_size_limit()
    return (f"{what} {shown(path)}: the row starting on line {start} has a cell over {limit:,} characters, which is "
            "not a CSV agglom can read (a cell holds a path, a label or an attribute: a few hundred characters at "
            "most); look for a quote opened and never closed on that line, or a whole document pasted into one cell")


def read_csv(path: Path, what: str = "csv") -> Tuple[List[str], List[Row]]:
    """(column names, rows with their line numbers) of the CSV at ``path``; ``what`` names it in messages."""
    from agglom.config.load import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {shown(path)}: file not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {shown(path)}: cannot read it ({e.strerror or e})") from None
    text = _decode(path, raw, what)
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ConfigError(f"{what} {shown(path)}: a NUL byte on line {line}: not a text CSV (a spreadsheet file?); "
                          "export it as CSV UTF-8 and rerun")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: List[Row] = []
    start = 1  # the line the row being read starts on
    try:
        header = _header(path, what, next(reader, []))
        while True:
            start = reader.line_num + 1
            cells = next(reader, None)
            if cells is None:
                break
            if not any(x.strip() for x in cells):
                continue  # a blank line
            extra = cells[len(header):]
            if any(x.strip() for x in extra):
                raise ConfigError(f"{what} {shown(path)}: line {reader.line_num} has {len(cells)} cells but the header "
                                  f"has {len(header)} columns (an unquoted comma in a value?); quote the value or "
                                  "fix the line")
            rows.append((reader.line_num, {c: (cells[i] if i < len(cells) else "") for i, c in enumerate(header)}))
    except csv.Error as e:
        if "field limit" in str(e):
            raise ConfigError(_field_limit_message(path, what, start)) from None
        raise ConfigError(f"{what} {shown(path)}: line {reader.line_num}: {e}; fix that line") from None
    return [c for c in header], rows


def _header(path: Path, what: str, cells: List[str]) -> List[str]:
    """The column names, stripped; a name given twice is refused."""
    from agglom.config.load import ConfigError

    header = [c.strip() for c in cells]
    seen: Dict[str, int] = {}
    for i, c in enumerate(header):
        if c and c in seen:
            raise ConfigError(f"{what} {shown(path)}: column {c!r} appears twice in the header (columns "
                              f"{seen[c] + 1} and {i + 1}); rename one")
        seen[c] = i
    return header


__all__ = ["read_csv", "Row"]
