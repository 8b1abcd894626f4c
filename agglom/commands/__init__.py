"""Subcommands: each is a typed schema + a run function, imported lazily so `--help` stays fast."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Type


@dataclass
class Command:
    """A CLI subcommand: options are the fields of `schema`, given as key=value (dotted for nesting)."""

    schema: Type[Any]
    run: Callable[[Any], Optional[int]]
    help: str
    positional: Optional[str] = None  # a field that may be given as a bare first argument


# name -> (module, attribute); the attribute is a Command
COMMANDS: Dict[str, Tuple[str, str]] = {
    "data synth": ("agglom.commands.data", "synth"),
    "data pack": ("agglom.commands.data", "pack"),
    "data info": ("agglom.commands.data", "info"),
    "data join": ("agglom.commands.data", "join"),
    "teachers list": ("agglom.commands.teachers", "list_cmd"),
    "teachers show": ("agglom.commands.teachers", "show"),
    "teachers check": ("agglom.commands.teachers", "check"),
    "train": ("agglom.commands.train", "train"),
    "curate": ("agglom.commands.curate", "curate"),
    "finetune": ("agglom.commands.finetune", "finetune"),
    "eval": ("agglom.commands.evaluate", "evaluate"),
    "sweep": ("agglom.commands.sweep", "sweep"),
    "cache": ("agglom.commands.cache", "cache"),
    "cache check": ("agglom.commands.cache", "check"),
    "export": ("agglom.commands.export", "export"),
    "monitor": ("agglom.commands.monitor", "monitor"),
}
