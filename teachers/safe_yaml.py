"""YAML for files a user may have been sent (recipes, a run's ``config.yaml``, teacher cards, prompt files).

:class:`StrictLoader` is PyYAML's safe loader with three refusals, each a :class:`YAMLInputError` naming the line:
- **anchors and aliases** (``&name`` / ``*name`` / ``<<: *name``): a 552-byte recipe of nested aliases expands to
  billions of nodes when omegaconf copies it, and no shipped recipe or card uses them;
- **duplicate keys** in one mapping: PyYAML keeps the last one silently, so a recipe that sets ``optim.lr`` twice
  trains with whichever came last;
- **nesting deeper than** :data:`MAX_DEPTH` (a recursion error otherwise), and files larger than :data:`MAX_BYTES`
  (a recipe is a few kB; a path to ``/dev/zero`` would never end).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import yaml

MAX_DEPTH = 64
MAX_BYTES = 4 << 20  # 4 MiB


class YAMLInputError(ValueError):
    """A YAML document agglom refuses to read; the message names the line and what to change."""


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}" if mark is not None else "somewhere"


class StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses aliases, duplicate keys and deep nesting (see the module docstring)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise YAMLInputError(f"{_where(event.start_mark)}: YAML anchors and aliases (&name, *name, <<:) are not "
                                 "accepted; write the values out")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise YAMLInputError(f"{_where(event.start_mark)}: nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not key_node.start_mark:
                raise YAMLInputError(f"{_where(key_node.start_mark)}: key {key!r} is given twice (first at "
                                     f"{_where(first)}); keep one")
        return super().construct_mapping(node, deep=deep)


def load_text(text: str, loader: type = StrictLoader) -> Any:
    """One YAML document from ``text`` with ``loader`` (a :class:`StrictLoader` subclass); a malformed or refused
    one is a :class:`YAMLInputError` with a one-line reason."""
    if len(text) > MAX_BYTES:
        raise YAMLInputError(f"{len(text)} characters; a recipe or card is at most {MAX_BYTES >> 20} MiB")
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise YAMLInputError(f"not valid YAML ({_where(mark)}): {getattr(e, 'problem', None) or e}") from None


def read_text(path: Union[str, Path]) -> str:
    """The text of a small regular file (at most :data:`MAX_BYTES`): a device, a fifo or a huge file is refused
    before it is read."""
    p = Path(path)
    if not p.is_file():
        raise YAMLInputError(f"{p} is not a regular file")
    if p.stat().st_size > MAX_BYTES:
        raise YAMLInputError(f"{p} is {p.stat().st_size} bytes; a recipe or card is at most {MAX_BYTES >> 20} MiB")
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise YAMLInputError(f"{p} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def load_file(path: Union[str, Path], loader: type = StrictLoader) -> Any:
    """:func:`load_text` of :func:`read_text`."""
    return load_text(read_text(path), loader)


__all__ = ["StrictLoader", "YAMLInputError", "load_text", "load_file", "read_text", "MAX_DEPTH", "MAX_BYTES"]
