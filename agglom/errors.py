"""Failures a user must act on, each printed by the CLI on one line without a traceback.

A :class:`ConfigError` is a mistake in what the user asked for (a key, a value, a recipe, a path): exit 2.
A :class:`ReadableError` says which file, what happened and what to do — a full disk, a damaged or tampered
checkpoint — and the CLI prints it on its own, without a traceback, exiting with 1.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A recipe problem a user must fix; the CLI prints it on one line and exits with 2."""

    exit_code = 2


class ReadableError(RuntimeError):
    """A runtime failure explained in its message; the CLI prints it and exits with ``exit_code``."""

    exit_code = 1


__all__ = ["ConfigError", "ReadableError"]
