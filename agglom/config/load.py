"""Merge schema -> recipe YAML -> CLI overrides; fail early and by name on a bad key or type."""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Type, get_type_hints

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agglom.errors import ConfigError
from teachers.safe_yaml import StrictLoader, YAMLInputError, load_text, read_text


class RecipeLoader(StrictLoader):
    """YAML for recipes, saved run configs and overrides: booleans are only true/false (YAML 1.2), so
    `log.progress=off` stays a word instead of becoming False; floats such as 1e-3 parse as numbers (as in
    omegaconf); anchors/aliases, duplicate keys and deep nesting are refused (:mod:`teachers.safe_yaml`)."""


RecipeLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"""^(?:
     [-+]?[0-9]+(?:_[0-9]+)*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9]+(?:_[0-9]+)*(?:[eE][-+]?[0-9]+)
    |\.[0-9]+(?:_[0-9]+)*(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


def parse_value(text: str) -> Any:
    """One override's value as YAML (a number, a list, a mapping, null, true/false or a word)."""
    return load_text(text, RecipeLoader)


_RESOLVER = re.compile(r"\$\{[^}]*:")  # ${oc.env:X}, ${oc.decode:...}: a resolver, not a ${section.key} reference


def _check_resolvers(value: Any, source: str) -> None:
    """Refuse omegaconf resolvers anywhere in ``value``: ``${oc.env:TOKEN}`` would copy an environment variable
    into the saved ``config.yaml`` and the run folder's name. Set such values on the command line instead."""
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list):
        for v in value:
            _check_resolvers(v, source)
        return
    m = _RESOLVER.search(value) if isinstance(value, str) else None
    if m:
        raise ConfigError(f"{source}: {m.group(0)}...}} calls an omegaconf resolver, which agglom does not run (it "
                          "would copy environment values into the saved config); give the value itself, e.g. "
                          "data.root=\"$DATA\" on the command line")


def _string_typed(schema: Type[Any], key: str) -> Optional[bool]:
    """True when the dotted ``key`` is a str field of ``schema``, False for Optional[str], None otherwise: such a
    value is taken as typed (a path with ` #`, `: ` or a newline, a name like 007), never parsed as YAML."""
    tp: Any = schema
    for part in key.split("."):
        if not is_dataclass(tp) or part not in {f.name for f in fields(tp)}:
            return None
        tp = get_type_hints(tp)[part]
    if tp is str:
        return True
    return False if tp == Optional[str] else None


def _override(item: str, schema: Type[Any]) -> DictConfig:
    key, value = item.split("=", 1)
    _check_resolvers(value, f"override {item!r}")
    typed = _string_typed(schema, key)
    if typed is None:
        parsed = parse_value(value)
    else:  # Optional[str]: `key=null` (or `key=`) still clears it
        parsed = None if typed is False and value in ("", "null", "~") else value
    conf = OmegaConf.create()
    OmegaConf.update(conf, key, parsed, force_add=True)
    return conf


def split_args(argv: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """Split CLI args into (recipe path, dotlist), ignoring the DeepSpeed launcher's --local_rank."""
    recipe: Optional[str] = None
    dotlist: List[str] = []
    skip_next = False
    for i, arg in enumerate(argv):
        if skip_next:
            skip_next = False
            continue
        if arg.startswith("--local_rank") or arg.startswith("--local-rank"):
            skip_next = "=" not in arg and i + 1 < len(argv)
            continue
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r} is not key=value (use recipe=PATH and dotted keys, e.g. optim.lr=1e-3)")
        key, value = arg.split("=", 1)
        if key == "recipe":
            recipe = value
        else:
            dotlist.append(f"{key}={value}")
    return recipe, dotlist


def all_keys(schema: Type[Any], prefix: str = "") -> List[str]:
    """Every dotted key of a dataclass schema (sections and leaves)."""
    out: List[str] = []
    hints = get_type_hints(schema)
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        out.append(key)
        tp = hints[f.name]
        if is_dataclass(tp):
            out.extend(all_keys(tp, key + "."))
    return out


def _close_keys(bad: str, schema: Type[Any], extra: Iterable[str] = ()) -> List[str]:
    keys = all_keys(schema) + list(extra)
    parent = bad.rsplit(".", 1)[0] if "." in bad else ""
    siblings = [k for k in keys if (k.rsplit(".", 1)[0] if "." in k else "") == parent]
    close = difflib.get_close_matches(bad, keys, n=3, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(bad.rsplit(".", 1)[-1], [k.rsplit(".", 1)[-1] for k in siblings], n=3, cutoff=0.4)
        close = [f"{parent}.{c}" if parent else c for c in close]
    return close or siblings[:8]


def _explain(err: OmegaConfBaseException, schema: Type[Any], source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    msg = str(err).splitlines()[0]
    if "Key" in type(err).__name__ or "not in" in msg or "Missing key" in msg or "Key '" in msg:
        close = _close_keys(key, schema)
        return ConfigError(f"unknown key '{key}' in {source}; closest valid keys: {', '.join(close)}")
    return ConfigError(f"bad value for '{key}' in {source}: {msg}")


def _open_free_dicts(node: Any) -> None:
    """Dict-typed fields (model_args, routing, ...) take any key; dataclass sections stay closed."""
    if node._is_none() or node._is_missing():
        return
    if isinstance(node, DictConfig):
        if OmegaConf.get_type(node) is dict:
            OmegaConf.set_struct(node, False)
        for key in node.keys():
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                _open_free_dicts(child)
    elif isinstance(node, ListConfig):
        for child in node:
            if isinstance(child, (DictConfig, ListConfig)):
                _open_free_dicts(child)


def read_recipe(path: str) -> Any:
    """A recipe (or a run's saved ``config.yaml``) as plain data, read with :class:`RecipeLoader`; every problem
    is a :class:`ConfigError` naming the file."""
    if not Path(path).exists():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        loaded = load_text(read_text(path), RecipeLoader)
    except YAMLInputError as e:
        raise ConfigError(f"recipe {path}: {e}") from None
    _check_resolvers(loaded, f"recipe {path}")
    return {} if loaded is None else loaded


def load_config(schema: Type[Any], argv: Sequence[str] = (), recipe: Optional[str] = None) -> DictConfig:
    """Build the resolved config for `schema` from an optional recipe file and key=value overrides, then check
    every value (:func:`agglom.config.validate.validate`): a bad key, type or value raises :class:`ConfigError`."""
    path, dotlist = split_args(argv)
    path = path or recipe
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    _open_free_dicts(cfg)
    if path:
        loaded = read_recipe(path)
        if not isinstance(loaded, dict):
            raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(loaded).__name__}")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(loaded))
        except OmegaConfBaseException as e:
            raise _explain(e, schema, f"recipe {path}") from e
        except (TypeError, ValueError) as e:  # omegaconf's merge of a list into a mapping-typed key, and the like
            raise ConfigError(f"recipe {path}: {e} (a key's value has the wrong shape)") from None
    for item in dotlist:
        try:
            cfg = OmegaConf.merge(cfg, _override(item, schema))
        except OmegaConfBaseException as e:
            raise _explain(e, schema, f"override {item!r}") from e
        except YAMLInputError as e:
            raise ConfigError(f"override {item!r}: {e}") from None
        except (TypeError, ValueError) as e:  # e.g. a list given for a mapping-typed key, or the reverse
            key = item.split("=", 1)[0]
            raise ConfigError(f"override {item!r}: the value's shape does not fit {key} (a list where a mapping "
                              f"{{key: value}} is expected, or the reverse; see --help) ({e})") from None
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise _explain(e, schema, "config") from e
    from agglom.config.validate import validate

    return validate(cfg)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, path: os.PathLike) -> None:
    """Write the resolved config atomically, so a run can be reproduced from this file alone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(to_yaml(cfg))
    os.replace(tmp, path)


def _help_of(f: Any) -> str:
    text = f.metadata.get("help", "") if f.metadata else ""
    return text() if callable(text) else str(text)


def describe(schema: Type[Any]) -> str:
    """One line per key with its default (and the field's ``metadata["help"]``, when it has one), for `--help`."""
    base = OmegaConf.to_container(OmegaConf.structured(schema), resolve=True)
    notes: dict = {}

    def collect(tp: Any, prefix: str) -> None:
        hints = get_type_hints(tp)
        for f in fields(tp):
            if is_dataclass(hints[f.name]):
                collect(hints[f.name], f"{prefix}{f.name}.")
            elif _help_of(f):
                notes[f"{prefix}{f.name}"] = _help_of(f)

    collect(schema, "")
    from agglom.config.validate import RULES

    for key, rule in RULES.items():  # choice-valued keys list their choices (from the registries)
        if rule.options is not None and key not in notes:
            notes[key] = "one of " + " | ".join(rule.options())
    lines: List[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node and prefix.count(".") < 3:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            line = f"  {prefix[:-1]:<36} = {node!r}"
            note = notes.get(prefix[:-1])
            lines.append(f"{line}   # {note}" if note else line)

    walk(base, "")
    return "\n".join(lines)


__all__ = ["ConfigError", "load_config", "save_config", "to_yaml", "describe", "split_args", "all_keys",
           "DictConfig", "ListConfig"]
