"""Label cells of a pack CSV (`agglom data pack csv=`): what a label column means, read from all its values first.

One label column is either whole numbers (class indices 0..K-1; ``-1`` means uncertain and follows
``uncertain=``) or words (class names, sorted -> 0..K-1). The type is read from the whole column, so one odd cell
must not change it: before this, one ``1.0`` or ``yes`` in a 0/1 column made every value a class name and the task
"multiclass" with the ``0`` rows re-indexed. Now:

- numeric spellings of one value are one value: ``1``, ``1.0``, `` 1 ``, ``+1``;
- a column mixing numbers and words, a number that is not whole, a value below -1, or a class name spelt two ways
  (``Yes`` and ``yes``) is refused, naming the column, the odd values and their lines;
- a column that looks binary — 0/1, or a yes/no word pair (yes/no, true/false, positive/negative, ...), in at least
  95 % of its rows — with a few other values is refused the same way (a rare third value is a typo far more often
  than a class); other values that continue 0, 1 (2, 3, ...) are classes, and so is any value of a column where
  the pair holds less than 95 %;
- a genuinely multiclass column (of words or of numbers) works as before.

Several label columns make a multi-label target whose columns are binary by definition: a cell there is 1, 0,
-1 (uncertain) or blank (:func:`binary_cell`); anything else skips that one image, counted as ``bad_label``.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

BINARY_SHARE = 0.95
WORD_PAIRS = ({"yes", "no"}, {"y", "n"}, {"true", "false"}, {"t", "f"}, {"positive", "negative"}, {"pos", "neg"},
              {"present", "absent"})
Cell = Tuple[int, str]  # (CSV line, stripped value)


def as_number(v: str) -> Optional[float]:
    """The value of a numeric spelling (``1``, ``1.0``, ``+1``, ``1e0``), or None for a word (or nan/inf)."""
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _examples(cells: Sequence[Cell], limit: int = 4) -> str:
    """"'yes' (line 7), '1.0' (lines 9, 12)": odd values with the lines they are on."""
    lines: Dict[str, List[int]] = {}
    for ln, v in cells:
        lines.setdefault(v, []).append(ln)
    parts = []
    for v, ls in list(lines.items())[:limit]:
        shown = ", ".join(map(str, ls[:5])) + (f" and {len(ls) - 5} more" if len(ls) > 5 else "")
        parts.append(f"{v!r} (line{'s' if len(ls) > 1 else ''} {shown})")
    more = f" and {len(lines) - limit} other values" if len(lines) > limit else ""
    return ", ".join(parts) + more


def _refuse(column: str, problem: str, cells: Sequence[Cell], fix: str) -> None:
    from agglom.config.load import ConfigError

    raise ConfigError(f"label column {column!r} {problem}: {_examples(cells)}; {fix}")


def _binary_strays(column: str, cells: Sequence[Cell], key: Dict[str, str]) -> None:
    """Refuse the few values outside the binary pair of a column that looks binary (see the module)."""
    counts = Counter(key[v] for _, v in cells)
    if len(counts) < 3:
        return
    (a, na), (b, nb) = counts.most_common(2)
    pair = {a, b}
    if not (pair == {"0", "1"} or pair in WORD_PAIRS) or (na + nb) < BINARY_SHARE * len(cells):
        return
    if pair == {"0", "1"}:  # 2, 3, ... continuing 0, 1 are classes; a value past a gap is not
        present = sorted(int(k) for k in counts)
        if present == list(range(len(present))):
            return
    strays = [(ln, v) for ln, v in cells if key[v] not in pair]
    _refuse(column, f"looks binary ({' / '.join(sorted(pair))} in {na + nb} of {len(cells)} rows) but also holds",
            strays, "fix those cells, or blank them (a blank label drops the image)")


def label_names(column: str, cells: Sequence[Cell]) -> Optional[List[str]]:
    """The class names of a single label column of words (sorted), or None for a column of whole numbers;
    ConfigError for the columns the module describes. ``cells``: its non-blank cells, stripped, with their lines."""
    numbers = [(ln, v, as_number(v)) for ln, v in cells]
    nums = [(ln, v, x) for ln, v, x in numbers if x is not None]
    words = [(ln, v) for ln, v, x in numbers if x is None]
    if nums and words:
        odd = words if len(words) <= len(nums) else [(ln, v) for ln, v, _ in nums]
        _refuse(column, "mixes numbers and words", odd,
                "give every class one spelling: all whole numbers (0, 1, ...) or all names")
    if nums:
        bad = [(ln, v) for ln, v, x in nums if x != int(x)]
        if bad:
            _refuse(column, "holds numbers that are not whole", bad, "class labels are 0, 1, 2, ... (-1: uncertain)")
        neg = [(ln, v) for ln, v, x in nums if x < -1]
        if neg:
            _refuse(column, "holds values below -1", neg, "class labels are 0, 1, 2, ... (-1: uncertain)")
        labelled = [(ln, v) for ln, v, x in nums if x != -1]
        _binary_strays(column, labelled, {v: str(int(as_number(v) or 0)) for _, v in labelled})
        return None
    folded: Dict[str, Counter] = {}
    for _, v in words:
        folded.setdefault(v.casefold(), Counter())[v] += 1
    twice = [(ln, v) for ln, v in words if len(folded[v.casefold()]) > 1
             and v != folded[v.casefold()].most_common(1)[0][0]]
    if twice:
        _refuse(column, "spells a class name several ways", twice,
                f"use one spelling (e.g. {folded[twice[0][1].casefold()].most_common(1)[0][0]!r})")
    _binary_strays(column, words, {v: v.casefold() for _, v in words})
    return sorted({v for _, v in words})


def class_of(v: str, names: Optional[List[str]]) -> int:
    """A single-column cell (stripped, non-blank) as its class index (-1 stays -1: uncertain)."""
    if names is not None:
        return names.index(v)
    x = as_number(v)
    if x is None or x != int(x):
        raise ValueError(f"not a class label: {v!r}")
    return int(x)


def binary_cell(v: str) -> Optional[int]:
    """A multi-label cell: 1, 0, -1 (uncertain) in any numeric spelling, None for blank; ValueError otherwise."""
    v = v.strip()
    if v == "":
        return None
    x = as_number(v)
    if x is None or x not in (-1.0, 0.0, 1.0):
        raise ValueError(f"binary label expected (1, 0, -1 or blank), got {v!r}")
    return int(x)


__all__ = ["label_names", "class_of", "binary_cell", "as_number", "WORD_PAIRS", "BINARY_SHARE"]
