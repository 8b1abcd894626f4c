"""What `agglom teachers list | show | check` print: the card table, one card with its contract, a check's outcome.

Plain text builders over the zoo's own objects (cards, :func:`teachers.describe_teacher`,
:class:`teachers.check.TeacherCheck`), so the command module only parses, calls and prints.
"""
from __future__ import annotations

from typing import Any, Dict, List

import yaml

CONTRACT_KEYS = ("summary", "summary_dim", "spatial", "spatial_dim", "grid", "patch_size", "input_size", "resize",
                 "interpolation", "mean", "std")


def weights_status(card: Any) -> str:
    """``random`` (no weights), ``<source> (download)`` (fetched on first use), ``yes`` or ``MISSING`` (a file);
    a file shipped inside an installed package says so: it runs offline."""
    ok = card.weights_present()
    package = card.weights.package
    if ok is None:
        if package:  # a packaged file whose package is not installed
            return f"MISSING (package {package})"
        return "random" if card.weights.source == "none" else f"{card.weights.source} (download)"
    if package:
        return f"yes (offline: package {package})" if ok else f"MISSING (package {package})"
    return "yes" if ok else "MISSING"


def cards_table(include_tiny: bool = True) -> str:
    """Every card of the zoo as an aligned table (name, family, model, input, weights, licence) + the weights folder."""
    from . import list_cards, load_card, weights_root

    rows: List[List[str]] = [["name", "family", "model", "input", "weights", "licence"]]
    for name in list_cards():
        card = load_card(name)
        if card.tiny and not include_tiny:
            continue
        size = f"{card.input_size[0]}x{card.input_size[1]}"
        model = card.model if len(card.model) <= 48 else card.model[:45] + "..."
        rows.append([card.name, card.family, model, size, weights_status(card), card.licence])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines) + f"\n\nweights folder: {weights_root()}  (set AGGLOM_WEIGHTS to change it)"


def card_text(card: Any) -> str:
    """The card as YAML, its weights and digest, then its contract (architecture built without weights); a contract
    that cannot be built (one of :data:`teachers.USER_ERRORS`: a missing file, an offline hub) reads ``unavailable``."""
    from . import USER_ERRORS, describe_teacher

    path = card.weights_path()
    lines = [f"# card {card.name}  ({card.source_path})",
             yaml.safe_dump(card.to_dict(), sort_keys=False, width=120, default_flow_style=None).rstrip(),
             f"weights present: {weights_status(card)}" + (f"  ({path})" if path else ""),
             f"digest: {card.digest()}", "", "# contract (architecture built without weights)"]
    try:
        info: Dict[str, Any] = describe_teacher(card)
    except USER_ERRORS as e:
        return "\n".join(lines + [f"unavailable: {e}"])
    lines += [f"{k:<14} {info[k]}" for k in CONTRACT_KEYS]
    for k, v in info.get("differs_from_processor", {}).items():  # transformers folders: the card vs the processor
        lines.append(f"note           {k}: the card says {v['card']}, the model's image processor {v['processor']}")
    return "\n".join(lines)


def check_text(card: Any, r: Any, device: str, batch_size: int) -> str:
    """A :class:`teachers.check.TeacherCheck` as `agglom teachers check` prints it: input, dims, dtype, speed, checks."""
    t, rate = r.teacher, r.samples_per_s

    def dtype(d: Any) -> str:
        return str(d).replace("torch.", "")

    lines = [f"teacher {t.name} ({t.family}: {card.model}) on {device}, built in {r.build_s:.2f} s",
             f"input         {r.batch_shape} -> {t.input_size[0]}x{t.input_size[1]} ({t.resize_policy})",
             f"summary       {tuple(r.summary.shape)}  dim {t.summary_dim} ({t.summary_kind})",
             f"spatial       {tuple(r.spatial.shape)}  dim {t.spatial_dim}, grid {t.grid[0]}x{t.grid[1]}, "
             f"patch {t.patch_size[0]}x{t.patch_size[1]}",
             f"dtype         compute {dtype(t.dtype)}, outputs {dtype(r.summary.dtype)}",
             f"speed         {rate:.3g} samples/s (batch {batch_size}; "
             f"{1 / rate if rate > 0 else float('inf'):.3g} s per sample)"]
    lines += [f"{'ok  ' if ok else 'FAIL'}  {k}" for k, ok in r.checks.items()]
    return "\n".join(lines)


__all__ = ["CONTRACT_KEYS", "weights_status", "cards_table", "card_text", "check_text"]
