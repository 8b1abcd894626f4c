"""Typed recipes: schema dataclasses and the schema -> YAML -> CLI merge."""
from agglom.config.load import ConfigError, load_config, save_config, to_yaml
from agglom.config.schema import Recipe

__all__ = ["ConfigError", "Recipe", "load_config", "save_config", "to_yaml"]
